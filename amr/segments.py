"""Long recordings, searched by segment.

A clip longer than ``long_seconds`` (default 30 s) is indexed as overlapping
segments of ``seconds`` (10 s, the tagger's own window) every ``hop`` (5 s),
so that a dog barking at minute 37 of a field recording can be found, and a
search returns the time it is at. Segments are spans of the clip's cached
frame sequence; the last one ends with the clip. `amr extract` stores the
tagger's class probabilities of each segment (the mean of its frames through
the tagger's head), so zero-shot and trained models embed segments alike;
`amr index` writes one row per segment with its start and end time, `amr
query` returns each file's best segment and `amr evaluate` scores a file by
its best segment.

Defaults and why: 10 s is what EfficientAT's taggers were trained on (their
tags are calibrated for it); a 5 s hop means every event of up to 5 s lies
whole inside some segment; and clips up to 30 s (Clotho's longest, AudioCaps'
10 s, most sound-effect libraries) stay one item, so the benchmarks' protocol
is untouched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from amr.errors import AmrError


@dataclass(frozen=True)
class SegmentGrid:
    """How long clips are cut: every clip longer than ``long_seconds`` into
    ``seconds``-long segments every ``hop`` seconds."""

    seconds: float = 10.0
    hop: float = 5.0
    long_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.hop <= self.seconds <= self.long_seconds:
            raise AmrError(f"segments: need 0 < hop ({self.hop}) <= length ({self.seconds}) <= long-clip threshold ({self.long_seconds})")

    def spans(self, frames: int, frames_per_window: int, window_seconds: float) -> list[tuple[int, int]]:
        """[start, end) frame spans of a clip of ``frames`` frames: the whole clip
        when it is not longer than ``long_seconds``, else windows of ``seconds``
        every ``hop``, the last one ending with the clip (so every frame is in a
        segment and none is shorter than ``seconds``).

        Seconds count in the encoder's windows: one of ``window_seconds`` gives
        ``frames_per_window`` frames (32 for 10 s: its last frame covers the
        window's last 0.08 s), so 30 s is 96 frames, 10 s 32 and 5 s 16, and a
        clip of exactly 30 s stays whole."""
        rate = frames_per_window / window_seconds
        if frames <= round(self.long_seconds * rate):
            return [(0, frames)]
        width = max(1, round(self.seconds * rate))
        step = max(1, round(self.hop * rate))
        count = math.ceil(max(0, frames - width) / step) + 1
        starts = [min(k * step, frames - width) for k in range(count)]
        return [(start, start + width) for start in starts]

    def as_dict(self) -> dict[str, float]:
        return asdict(self)
