"""Clips reassembled from their windows' frames, which arrive in any order, from any batch, worker or Ray actor.

`PendingClip` is one clip on its way (the one reassembly, used by the batcher
and by `assemble`); `assemble` turns the rows an engine streams back (one per
window, or one per failed clip) into finished clips with their tags.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from amr.audio.encoder import AudioEncoder
from amr.cache import ClipEmbedding
from amr.items import ClipFailure, Item
from amr.segments import SegmentGrid

Row = dict[str, Any]  # one window's frames, or a clip's failure: see `assemble`


@dataclass
class PendingClip:
    """A clip's frames, window by window, until every window (and each of its
    `augment_views` views) has arrived; `windows` is known once a window of the
    clip's last segment has. A window's views come whole (`add`, a row of an
    engine) or one at a time (`add_view`, as the batcher runs them)."""

    augment_views: int = 0
    windows: int | None = None
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # window -> (t, C)
    augmented: dict[int, np.ndarray] = field(default_factory=dict)  # window -> (t, K, C)
    _views: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # window -> view -> (t, C), until all K are in

    def add(self, window: int, frames: np.ndarray, augmented: np.ndarray | None = None) -> None:
        self.frames[window] = frames
        if augmented is not None:
            self.augmented[window] = augmented

    def add_view(self, window: int, view: int, frames: np.ndarray) -> None:
        views = self._views.setdefault(window, {})
        views[view] = frames
        if len(views) == self.augment_views:
            self.augmented[window] = np.stack([views[v] for v in range(self.augment_views)], 1)
            del self._views[window]

    @property
    def complete(self) -> bool:
        if self.windows is None or len(self.frames) < self.windows:
            return False
        return not self.augment_views or len(self.augmented) == self.windows

    def joined(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The clip's (T, C) frames and, with augmented views, its (T, K, C) views, in window order."""
        windows = range(self.windows or 0)
        frames = np.concatenate([self.frames[w] for w in windows])
        augmented = np.concatenate([self.augmented[w] for w in windows]) if self.augmented else None
        return frames, augmented


def assemble(items: Sequence[Item], encoder: AudioEncoder, grid: SegmentGrid, rows: Iterator[Row]) -> Iterator[ClipEmbedding | ClipFailure]:
    """Each clip once all of its windows' rows have arrived (in any order), with its
    tags and its segments' tags (computed here, by the process that writes); a
    failure row makes the clip a ClipFailure, and its other rows are ignored.

    A row: ``clip`` (the item's index), ``window`` (its number in the clip),
    ``windows`` (the clip's window count, on the windows of its last segment; -1
    before), ``frames`` (t, C), ``augmented`` (t, K, C) with augmented views, and
    ``kind`` and ``reason``, empty but for a failure (amr.extraction.ray's rows too)."""
    pending: dict[int, PendingClip] = {}
    failed: set[int] = set()
    for row in rows:
        index = int(row["clip"])
        if index in failed:
            continue
        if row["kind"]:
            pending.pop(index, None)
            failed.add(index)
            yield ClipFailure(items[index].id, items[index].audio, str(row["kind"]), str(row["reason"]))
            continue
        clip = pending.setdefault(index, PendingClip())  # no views to wait for: a row brings its window's with it
        clip.add(int(row["window"]), row["frames"], row["augmented"] if "augmented" in row else None)
        if row["windows"] >= 0:
            clip.windows = int(row["windows"])
        if clip.complete:
            del pending[index]
            frames, augmented = clip.joined()
            yield ClipEmbedding(items[index], frames, encoder.tags(frames), augmented, encoder.segments(frames, grid))
    if pending:
        raise RuntimeError(f"the engine ended with {len(pending)} clips incomplete, e.g. {items[next(iter(pending))].audio}")
