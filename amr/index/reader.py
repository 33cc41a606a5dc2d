"""`Index`: read access to one version of an index, its columns memory-mapped.

Opening reads the manifest (amr.index.format), maps the columns
(amr.index.store) and loads the approximate index (amr.index.ann) if there
is one; what it returns is what amr.index.search searches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from amr.errors import AmrError
from amr.index.ann import ann_candidates, read_ann, search_parameters
from amr.index.format import read_manifest, sidecar_path
from amr.index.store import Rows, Store, bits, id_hashes
from amr.items import Item


class Index:
    """Read access to an index; vectors and items are memory-mapped.

    ``items_count`` counts item slots (``row_item`` values, ``item(i)``),
    replaced items included; ``live_items`` and ``live_rows`` what searches return."""

    def __init__(self, path: Path):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        self.header, self.ann_info, self.state, self.dead = manifest.header, manifest.ann, manifest.state, manifest.dead
        self.store = Store(self.path, self.header, self.state)
        self.vectors = self.store.vectors
        self.row_item = self.store.row_item
        self.spans = self.store.spans
        self.part_norms = self.store.part_norms
        self.tags = self.store.tags
        self.tag_probs = self.store.tag_probs
        n = self.state.rows
        if self.dead.shape != ((n + 7) // 8,):
            raise AmrError(f"{self.path}: its dead bitmap has {self.dead.size} bytes for {n} rows; rebuild the index")
        self.items_count = self.state.items
        self.live_rows = n - self.state.dead_rows
        self.live_items = self.items_count - self.state.dead_items
        self.single_rows = n == self.items_count  # one segment per item: rows are items
        self.ann = None
        self._params = None
        if self.ann_info is not None:
            self.ann = read_ann(sidecar_path(self.path, self.ann_info), self.ann_info.kind.on_disk)
            if self.ann.ntotal != n or self.ann.d != self.header.dim:
                raise AmrError(
                    f"{sidecar_path(self.path, self.ann_info)}: holds {self.ann.ntotal} vectors of {self.ann.d} dims, "
                    f"the index {n} of {self.header.dim}; run `amr index --ann` again"
                )
            self.ann.nprobe = self.ann_info.nprobe
            self._params = search_parameters(self.ann, self.dead if self.state.dead_rows else None)
        self._file = os.open(self.store.folder / "vectors", os.O_RDONLY) if self.ann is not None else None

    def __len__(self) -> int:
        """Rows (segments), dead ones included."""
        return self.state.rows

    def __del__(self) -> None:
        if getattr(self, "_file", None) is not None:
            os.close(self._file)

    def candidates(self, queries: np.ndarray, pool: int) -> np.ndarray:
        """``pool`` candidate rows per query from the approximate index (-1: none; never a dead row)."""
        return ann_candidates(self.ann, queries, pool, self._params)

    def item(self, i: int) -> Item:
        """Item ``i`` (an item index; the item of a row is ``row_item[row]``)."""
        return self.store.item(i)

    def item_of_row(self, row: int) -> Item:
        return self.item(int(self.row_item[row]))

    def part(self, name: str | None) -> tuple[slice, np.ndarray | None]:
        """The columns of part ``name`` and the rows' norms in it; all columns and no norms for None."""
        if name is None:
            return slice(None), None
        start = 0
        for p, (part, dim) in enumerate(self.header.parts):
            if part == name:
                return slice(start, start + dim), self.part_norms[:, p]
            start += dim
        raise AmrError(f"{self.path}: has no {name} part (fusion {self.header.fusion.value}: parts {self.header.parts})")

    def ids(self) -> list[str | None]:
        """The id of each item slot; None for a replaced one (its id is now a later item's)."""
        ids: list[str | None] = [self.store.id(i) for i in range(self.items_count)]
        if self.state.dead_items:
            firsts, _ = self.store.item_rows(np.arange(self.items_count))
            for i in np.flatnonzero(bits(self.dead, 0, len(self))[firsts]):
                ids[i] = None
        return ids

    def find(self, ids: Sequence[str]) -> np.ndarray:
        """The item of each id (-1 where the index has none), through the on-disk lookup."""
        return self.store.find(id_hashes(ids)) if len(ids) else np.zeros(0, np.int64)

    def number(self, item_id: str) -> int | None:
        """The item of ``item_id`` (None where the index has none), through the on-disk lookup."""
        found = int(self.find([item_id])[0])
        return found if found >= 0 else None

    def rows(self, keep: Sequence[int] | None = None) -> Rows:
        """Stored rows of the items ``keep`` (item indices, in order; all live ones when None), renumbered."""
        if keep is None:
            keep = [i for i, item_id in enumerate(self.ids()) if item_id is not None] if self.state.dead_items else range(self.items_count)
        starts, ends = self.store.item_rows(np.asarray(keep, np.int64))
        selected = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(starts) else np.zeros(0, np.int64)
        counts = ends - starts
        return Rows(
            items=[self.item(i) for i in keep],
            row_item=np.repeat(np.arange(len(counts)), counts),
            spans=self.spans[selected],
            vectors=self.vectors[selected],
            tags=self.tags[selected],
            tag_probs=self.tag_probs[selected],
        )

    def read_vectors(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (sorted, distinct), read from the file
        rather than through its memory map: beside an on-disk index the
        vectors are re-ranked from disk, and mapped pages would stay in the
        process (the kernel maps their neighbours too) until it held the whole
        file. Read this way, the page cache keeps what is read warm while the
        process holds only these rows. All reads are requested at once first,
        so waiting is for the slowest, not for each in turn."""
        size = self.vectors.itemsize * self.header.dim
        offsets = (rows * size).tolist()
        for offset in offsets:
            os.posix_fadvise(self._file, offset, size, os.POSIX_FADV_WILLNEED)
        out = np.empty((len(rows), self.header.dim), self.vectors.dtype)
        buffer = memoryview(out).cast("B")
        for i, offset in enumerate(offsets):
            if os.preadv(self._file, [buffer[i * size : (i + 1) * size]], offset) != size:
                raise AmrError(f"{self.store.folder / 'vectors'}: shorter than the index says; rebuild the index")
        return out


def open_index(path: Path) -> Index:
    return Index(path)
