"""Decoding, shared by both engines: a segment of a clip -> resampled -> the log-mels of its windows (+ SpecAugmented views)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from amr.audio import frontend as audio
from amr.errors import AmrError

SEGMENT_WINDOWS = 18  # windows a worker decodes per task (3 minutes of audio)


@dataclass
class DecodedSegment:
    """Log-mels of consecutive windows of one clip, from one decoding task (not
    amr.cache.Segment, a span of a long clip's frames)."""

    number: int  # the clip's segment number: windows number * SEGMENT_WINDOWS ...
    mels: list[np.ndarray]  # (n_mels, T) per window
    views: list[np.ndarray]  # (K, n_mels, T) per window, when augmenting
    more: bool  # the clip goes on beyond this segment
    error: tuple[str, str] | None = None  # (kind, reason)

    @property
    def first_window(self) -> int:
        return self.number * SEGMENT_WINDOWS


def decode_segment(
    path: str, number: int, front_end: audio.MelFrontEnd, window_seconds: float, augment_views: int = 0, seed: int = 0
) -> DecodedSegment:
    """Segment `number` of the clip at `path`: the log-mels of its windows
    number * SEGMENT_WINDOWS ... (number + 1) * SEGMENT_WINDOWS - 1, and their
    augmented views; an undecodable file gives a DecodedSegment with `error` set."""
    sample_rate = front_end.settings.sample_rate
    mels, views = [], []
    try:
        windows = audio.iter_windows(Path(path), sample_rate, window_seconds, start_window=number * SEGMENT_WINDOWS)
        more = False
        for k, window in enumerate(windows):
            if k == SEGMENT_WINDOWS:
                more = True
                break
            with torch.inference_mode():
                mel = front_end(torch.from_numpy(window)[None])[0, 0]
            mels.append(mel.numpy())
            if augment_views:
                generator = torch.Generator().manual_seed(_view_seed(path, number, k, seed))
                fill = front_end.settings.mask_value
                views.append(torch.stack([audio.spec_augment(mel, generator, fill) for _ in range(augment_views)]).numpy())
    except audio.AudioError as e:
        return DecodedSegment(number, [], [], False, error=(e.kind, str(e)))
    except AmrError as e:
        return DecodedSegment(number, [], [], False, error=("unreadable", str(e)))
    return DecodedSegment(number, mels, views, more)


def _view_seed(path: str, segment: int, window: int, seed: int) -> int:
    """Augmentation depends on the clip and window only, never on run order."""
    return zlib.crc32(f"{path}|{segment}|{window}|{seed}".encode())
