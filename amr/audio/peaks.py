"""Waveform overviews: the minimum and maximum sample of each of a fixed
number of equal stretches of a file, for the page to draw.

A file is decoded block by block (never whole: a recording of hours takes
the memory of one block), channels together (the overview's min and max are
over all channels). Overviews are computed the first time one is asked for and
kept, one small JSON file per audio file in a folder beside the index
(``<index>.peaks/``), format ``amr-peaks`` version 1::

    {"format": "amr-peaks", "version": 1, "audio": path, "size": bytes, "mtime_ns": ...,
     "frames": n, "sample_rate": r, "duration": seconds, "peaks": [[min, max], ...]}

An overview whose file has since changed (size or modification time), or of
another version, is computed again. If the folder cannot be written the
overview is still returned, and kept in memory only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from amr.errors import AmrError
from amr.files import atomic_write

FORMAT = "amr-peaks"
VERSION = 1
BUCKETS = 400
BLOCK_FRAMES = 1 << 16


def compute_peaks(path: Path, buckets: int = BUCKETS, block_frames: int = BLOCK_FRAMES) -> dict[str, Any]:
    """The overview of ``path`` (see the module docstring), without the cache fields."""
    try:
        with sf.SoundFile(str(path)) as f:
            frames, rate = f.frames, f.samplerate
            count = max(1, min(buckets, frames))  # a file of fewer frames than buckets: one bucket per frame
            low = np.full(count, np.inf, np.float32)
            high = np.full(count, -np.inf, np.float32)
            position = 0
            for block in f.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                n = len(block)
                lows, highs = block.min(axis=1), block.max(axis=1)
                bucket = np.minimum((np.arange(position, position + n, dtype=np.int64) * count) // max(frames, 1), count - 1)
                starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
                np.minimum.at(low, bucket[starts], np.minimum.reduceat(lows, starts))
                np.maximum.at(high, bucket[starts], np.maximum.reduceat(highs, starts))
                position += n
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise AmrError(f"{path}: cannot be decoded for its waveform ({e})") from None
    low[~np.isfinite(low)], high[~np.isfinite(high)] = 0, 0  # buckets no frame reached (a header that promised more)
    peaks = [[round(float(a), 4), round(float(b), 4)] for a, b in zip(low, high)]
    return {"frames": position, "sample_rate": rate, "duration": position / rate if rate else 0.0, "peaks": peaks}


class PeakCache:
    """Overviews kept in ``folder`` (and in memory), computed when first asked for."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.memory: dict[str, dict[str, Any]] = {}

    def get(self, audio: Path) -> dict[str, Any]:
        try:
            stat = audio.stat()
        except OSError as e:
            raise AmrError(f"{audio}: the audio file is not readable ({e.strerror})") from None
        key = hashlib.sha256(str(audio).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        fresh = {"format": FORMAT, "version": VERSION, "audio": str(audio), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        kept = self.memory.get(key) or self._read(key)
        if kept is not None and all(kept.get(name) == value for name, value in fresh.items()):
            self.memory[key] = kept
            return kept
        overview = {**fresh, **compute_peaks(audio)}
        self.memory[key] = overview
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder / f"{key}.json", json.dumps(overview))
        except OSError:
            pass  # a read-only place: the overview lives in memory until the server stops
        return overview

    def _read(self, key: str) -> dict[str, Any] | None:
        try:
            kept = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return kept if isinstance(kept, dict) else None


def peaks_folder(index_path: Path) -> Path:
    return Path(os.fspath(index_path) + ".peaks")
