"""The batcher: log-mel windows of many clips -> full batches of one bucket width -> finished clips."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from amr.audio.encoder import AudioEncoder
from amr.extraction.clips import PendingClip

# A window waits for at most this many later windows before its bucket runs part-full,
# so that clips keep reaching part files when one bucket is rare (a killed run then
# loses little). On the shared data (950 windows) no bucket is forced.
MAX_WAIT_WINDOWS = 1024


@dataclass
class EncodedClip:
    key: Hashable
    frames: np.ndarray  # (T, C) float32
    augmented: np.ndarray | None  # (T, K, C), with augmented views


@dataclass
class _Row:
    """One log-mel window waiting for the model: a clip's window, clean (view None) or an augmented view."""

    key: Hashable
    window: int
    view: int | None
    mel: np.ndarray  # (n_mels, T)
    arrival: int  # windows added to the batcher before this one


class WindowBatcher:
    """Collects log-mel windows of many clips, runs them through the encoder in
    full batches of one bucket width, and hands back each clip (frames and
    augmented views) once all of its windows are embedded.

    A clip arrives as segments of consecutive windows (`add`), in any order and
    interleaved with other clips; `last` marks its final segment. A bucket runs
    as soon as it holds a full batch, so fewer than one batch per bucket ever
    waits (memory stays flat: under 16 x 2048 mel frames, 16 MB, for EfficientAT);
    a bucket whose oldest window has waited for `max_wait` later windows runs
    part-full. `flush` runs what is left. Which windows share a batch never
    changes a clip's values (see amr.audio.encoder), so neither does arrival order."""

    def __init__(self, encoder: AudioEncoder, augment_views: int = 0, max_wait: int = MAX_WAIT_WINDOWS):
        self.encoder = encoder
        self.augment_views = augment_views
        self.max_wait = max_wait
        self._clips: dict[Hashable, PendingClip] = {}
        self._waiting: dict[int, list[_Row]] = defaultdict(list)  # bucket width -> rows, oldest first
        self._arrivals = 0

    def add(
        self, key: Hashable, first_window: int, mels: Sequence[np.ndarray], views: Sequence[np.ndarray] = (), last: bool = True
    ) -> list[EncodedClip]:
        """Windows first_window, first_window + 1, ... of clip `key` ((n_mels, T) each;
        with augmented views, `views[i]` holds window i's (K, n_mels, T))."""
        clip = self._clips.setdefault(key, PendingClip(self.augment_views))
        for i, mel in enumerate(mels):
            rows = self._waiting[self.encoder.bucket_width(mel.shape[1])]
            rows.append(_Row(key, first_window + i, None, mel, self._arrivals))
            if self.augment_views:
                rows.extend(_Row(key, first_window + i, v, view, self._arrivals) for v, view in enumerate(views[i]))
            self._arrivals += 1
        if last:
            clip.windows = first_window + len(mels)
        done = []
        for width in list(self._waiting):
            while width in self._waiting and self._due(width):
                done += self._run(width)
        if last and key in self._clips:  # its windows may all have run already
            done += self._complete(key)
        return done

    def drop(self, key: Hashable) -> None:
        """Forget a clip (one of its segments failed to decode)."""
        self._clips.pop(key, None)
        for width in list(self._waiting):
            self._waiting[width] = [row for row in self._waiting[width] if row.key != key]
            if not self._waiting[width]:
                del self._waiting[width]

    def flush(self) -> list[EncodedClip]:
        """Run every waiting window; returns the clips this completes."""
        done = []
        while self._waiting:
            done += self._run(next(iter(self._waiting)))
        return done

    @property
    def waiting_frames(self) -> int:
        return sum(width * len(rows) for width, rows in self._waiting.items())

    def _due(self, width: int) -> bool:
        rows = self._waiting[width]
        return len(rows) >= self.encoder.batch_rows(width) or rows[0].arrival < self._arrivals - self.max_wait

    def _run(self, width: int) -> list[EncodedClip]:
        """One batch of bucket `width`: its oldest rows."""
        waiting = self._waiting[width]
        rows, self._waiting[width] = waiting[: self.encoder.batch_rows(width)], waiting[self.encoder.batch_rows(width) :]
        if not self._waiting[width]:
            del self._waiting[width]
        for row, frames in zip(rows, self.encoder.encode([row.mel for row in rows])):
            clip = self._clips[row.key]
            if row.view is None:
                clip.add(row.window, frames)
            else:
                clip.add_view(row.window, row.view, frames)
        done = []
        for key in dict.fromkeys(row.key for row in rows):
            done += self._complete(key)
        return done

    def _complete(self, key: Hashable) -> list[EncodedClip]:
        """[the clip] if every window (and view) of it is embedded, else []."""
        clip = self._clips[key]
        if not clip.complete:
            return []
        del self._clips[key]
        return [EncodedClip(key, *clip.joined())]
