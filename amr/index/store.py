"""The columns of an index: read through memory maps, appended to by one writer, compacted.

The layout is amr.index.format's. `StoreWriter` is the one way rows get
into an index: it appends past the ends a version records, keeps the id
lookup (an id seen before marks its old rows dead) and hands back the state
and dead bitmap to commit; `compact` copies the live rows into a new folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from amr.errors import AmrError
from amr.files import sha256_file, writing
from amr.index.format import TAGS_STORED, IndexHeader, StoreState, commit, data_folder
from amr.items import Item

LOOKUP_CHUNK = 1 << 22  # new ids hashed and merged into the lookup at once (24 bytes each in RAM)
_LOOKUP_BLOCK = 1 << 20  # entries of the old lookup merged at once
_HASH = np.dtype("S16")


@dataclass
class Rows:
    """Items and, per row, its item (an index into ``items``), segment span,
    vector and machine tags: what an index stores, or a batch of it. Vectors
    may be a memory map."""

    items: list[Item]
    row_item: np.ndarray  # (N,) int
    spans: np.ndarray  # (N, 2) float32 seconds
    vectors: np.ndarray  # (N, D)
    tags: np.ndarray  # (N, TAGS_STORED) int
    tag_probs: np.ndarray  # (N, TAGS_STORED)

    def __len__(self) -> int:
        return len(self.row_item)


def _columns(header: IndexHeader, vector_dtype: str) -> dict[str, tuple[np.dtype, tuple[int, ...], str]]:
    """name → (dtype, shape of one entry, the StoreState count that is its length)."""
    return {
        "vectors": (np.dtype(vector_dtype).newbyteorder("<"), (header.dim,), "rows"),
        "row_item": (np.dtype("<i4"), (), "rows"),
        "spans": (np.dtype("<f4"), (2,), "rows"),
        "part_norms": (np.dtype("<f4"), (len(header.parts),), "rows"),
        "tags": (np.dtype("<i2"), (TAGS_STORED,), "rows"),
        "tag_probs": (np.dtype("<f2"), (TAGS_STORED,), "rows"),
        "item_ends": (np.dtype("<i8"), (), "items"),
        "items": (np.dtype("u1"), (), "item_bytes"),
        "id_ends": (np.dtype("<i8"), (), "items"),
        "ids": (np.dtype("u1"), (), "id_bytes"),
    }


class Store:
    """Read access to the columns of one version of an index (memory maps)."""

    def __init__(self, path: Path, header: IndexHeader, state: StoreState):
        self.folder = data_folder(path, state.token)
        self.state = state
        columns = _columns(header, state.vector_dtype)
        maps = {name: _map(self.folder / name, dtype, (getattr(state, count), *shape)) for name, (dtype, shape, count) in columns.items()}
        self.vectors = maps["vectors"]
        self.row_item = maps["row_item"]
        self.spans = maps["spans"]
        self.part_norms = maps["part_norms"]
        self.tags = maps["tags"]
        self.tag_probs = maps["tag_probs"]
        self._item_ends, self._items = maps["item_ends"], maps["items"]
        self._id_ends, self._ids = maps["id_ends"], maps["ids"]
        lookup = self.folder / f"lookup.{state.lookup}"
        self.lookup_hashes = _map(lookup, _HASH, (state.items,))
        self.lookup_items = _map(lookup, np.dtype("<i8"), (state.items,), offset=state.items * _HASH.itemsize)

    def item(self, i: int) -> Item:
        if not 0 <= i < self.state.items:
            raise AmrError(f"{self.folder / 'row_item'}: names item {i} of {self.state.items}; the index is damaged, rebuild it")
        try:
            return Item(**json.loads(_slice(self._items, self._item_ends, i).tobytes()))
        except (ValueError, TypeError) as e:  # undecodable bytes, not JSON, not an item
            raise AmrError(f"{self.folder / 'items'}: item {i} is not an item's JSON ({e}); the index is damaged, rebuild it") from None

    def id(self, i: int) -> str:
        try:
            return _slice(self._ids, self._id_ends, i).tobytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise AmrError(f"{self.folder / 'ids'}: id {i} is not UTF-8 ({e}); the index is damaged, rebuild it") from None

    def verify_lookup(self) -> None:
        """Refuse a lookup whose bytes differ from what was written (an append
        trusting a damaged one would index every id again, as new)."""
        file = self.folder / f"lookup.{self.state.lookup}"
        if self.state.lookup_sha256 and sha256_file(file) != self.state.lookup_sha256:
            raise AmrError(f"{file}: damaged (its sha256 is not the one the index records); rebuild the index")

    def item_rows(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First row and end row of each of ``items``."""
        items = np.asarray(items, np.int64)
        return np.searchsorted(self.row_item, items, side="left"), np.searchsorted(self.row_item, items, side="right")

    def find(self, hashes: np.ndarray) -> np.ndarray:
        """The latest item of each id hash (-1: none); the latest of an id is its live one."""
        left = np.searchsorted(self.lookup_hashes, hashes, side="left")
        right = np.searchsorted(self.lookup_hashes, hashes, side="right")
        # equal hashes sit in item order (each merge puts new items after old ones)
        return np.where(right > left, self.lookup_items[np.maximum(right - 1, 0)] if len(self.lookup_items) else -1, -1)


def _slice(blob: np.ndarray, ends: np.ndarray, i: int) -> np.ndarray:
    start = int(ends[i - 1]) if i else 0
    return blob[start : int(ends[i])]


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """The 16-byte blake2b hash of each id (collisions: about 1 in 10^22 for 10^8 ids)."""
    return np.array([hashlib.blake2b(i.encode("utf-8"), digest_size=16).digest() for i in ids], dtype=_HASH)


class StoreWriter:
    """Appends rows and items to an index's columns, past the ends ``state``
    records (cutting off what a killed run left there), and keeps its id
    lookup and dead bitmap: an id seen before marks its old rows dead.
    Nothing of the old columns is read but the lookup (streamed through)."""

    def __init__(self, path: Path, header: IndexHeader, state: StoreState | None = None, dead: np.ndarray | None = None):
        """``state`` and ``dead``: the version appended to; None: a new, empty store of float32 vectors."""
        state = state or _new_state()
        dead = dead if dead is not None else np.zeros(0, np.uint8)
        self.path, self.header, self.state = Path(path), header, state
        self.folder = data_folder(path, state.token)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.columns = _columns(header, state.vector_dtype)
        self.files = {}
        for name, (dtype, shape, count) in self.columns.items():
            handle = open(self.folder / name, "ab")
            handle.truncate(getattr(state, count) * dtype.itemsize * int(np.prod(shape, dtype=np.int64)))
            self.files[name] = handle
        if state.lookup:
            Store(path, header, state).verify_lookup()
        self.dead = _grown(np.asarray(dead, np.uint8), state.rows)
        self.first_new_item = state.items
        self._committed_lookup = state.lookup  # the lookup readers of the current version use: kept
        self.replaced = 0  # items that were in the index before this writer and were added again
        self.repeated = 0  # items added twice by this writer (the last one counts)
        self._pending: list[str] = []
        self._bounds = np.cumsum([0] + [dim for _, dim in header.parts])

    def append(self, rows: Rows) -> None:
        """Add a batch of items and their rows (``rows.row_item`` numbers the batch's items from 0)."""
        n, state = len(rows), self.state
        shapes = (rows.vectors.shape, rows.spans.shape, rows.tags.shape, rows.tag_probs.shape)
        if shapes != ((n, self.header.dim), (n, 2), (n, TAGS_STORED), (n, TAGS_STORED)):
            raise ValueError(f"{n} rows of {self.header.dim} dims: vectors, spans, tags and tag_probs of shapes {shapes}")
        row_item = np.asarray(rows.row_item, np.int64)
        if n and (row_item.min() < 0 or row_item.max() >= len(rows.items) or np.any(np.diff(row_item) < 0)):
            raise ValueError("row_item must be non-decreasing item indices (an item's rows consecutive)")
        vectors = np.asarray(np.asarray(rows.vectors).astype(self.columns["vectors"][0]), np.float32)  # as stored
        norms = np.stack([np.linalg.norm(vectors[:, a:b], axis=1) for a, b in zip(self._bounds[:-1], self._bounds[1:])], axis=1)
        blobs = [item.to_json().encode("utf-8") for item in rows.items]
        ids = [item.id.encode("utf-8") for item in rows.items]
        self._write("vectors", vectors)
        self._write("row_item", row_item + state.items)
        self._write("spans", rows.spans)
        self._write("part_norms", norms)
        self._write("tags", rows.tags)
        self._write("tag_probs", rows.tag_probs)
        self._write("item_ends", state.item_bytes + np.cumsum([len(b) for b in blobs], dtype=np.int64))
        self._write("id_ends", state.id_bytes + np.cumsum([len(b) for b in ids], dtype=np.int64))
        self._write("items", b"".join(blobs))
        self._write("ids", b"".join(ids))
        self.state = replace(
            state,
            rows=state.rows + n,
            items=state.items + len(blobs),
            item_bytes=state.item_bytes + sum(map(len, blobs)),
            id_bytes=state.id_bytes + sum(map(len, ids)),
        )
        self._pending += [item.id for item in rows.items]
        if len(self._pending) >= LOOKUP_CHUNK:
            self._absorb()

    def finish(self) -> tuple[StoreState, np.ndarray]:
        """Flush everything to disk; the state and dead bitmap to record in a manifest."""
        self._absorb()
        for name, handle in self.files.items():
            with writing(self.folder / name):
                handle.flush()
                os.fsync(handle.fileno())
            handle.close()
        return self.state, _grown(self.dead, self.state.rows)[: (self.state.rows + 7) // 8]

    def _write(self, name: str, values: np.ndarray | bytes) -> None:
        raw = values if isinstance(values, bytes) else np.ascontiguousarray(values, self.columns[name][0]).tobytes()
        with writing(self.folder / name):
            self.files[name].write(raw)

    def _absorb(self) -> None:
        """Merge the pending ids into the lookup; mark the rows of the items they replace dead."""
        if not self._pending and self.state.lookup:
            return
        for name, handle in self.files.items():
            with writing(self.folder / name):
                handle.flush()
        first = self.state.items - len(self._pending)
        hashes = id_hashes(self._pending)
        order = np.argsort(hashes, kind="stable")
        hashes, items = hashes[order], first + order.astype(np.int64)
        self._pending = []
        old = Store(self.path, self.header, replace(self.state, items=first)) if self.state.lookup else None
        repeated = items[:-1][hashes[:-1] == hashes[1:]]  # an id twice in this batch: the earlier is replaced
        previous = old.find(hashes) if old is not None else np.full(len(hashes), -1)
        previous = np.unique(previous[previous >= 0])
        self.replaced += int(np.sum(previous < self.first_new_item))
        self.repeated += int(np.sum(previous >= self.first_new_item)) + len(repeated)
        self._kill(np.concatenate([previous, repeated]))
        token = secrets.token_hex(4)
        _merge_lookup(old, hashes, items, self.folder / f"lookup.{token}")
        if self.state.lookup and self.state.lookup != self._committed_lookup:
            (self.folder / f"lookup.{self.state.lookup}").unlink(missing_ok=True)  # made by this writer, superseded
        self.state = replace(self.state, lookup=token, lookup_sha256=sha256_file(self.folder / f"lookup.{token}"))

    def _kill(self, items: np.ndarray) -> None:
        """Mark every row of ``items`` dead."""
        if not len(items):
            return
        rows = _rows_of(self.path, self.state, items)
        self.dead = _grown(self.dead, self.state.rows)
        np.bitwise_or.at(self.dead, rows >> 3, (1 << (rows & 7)).astype(np.uint8))
        self.state = replace(self.state, dead_rows=self.state.dead_rows + len(rows), dead_items=self.state.dead_items + len(items))


def _grown(bitmap: np.ndarray, n: int) -> np.ndarray:
    """``bitmap`` padded with zeros to hold at least n bits."""
    return np.concatenate([bitmap, np.zeros(max(0, (n + 7) // 8 - len(bitmap)), np.uint8)])


def _rows_of(path: Path, state: StoreState, items: np.ndarray) -> np.ndarray:
    """Every row of ``items``, read from the columns as written so far."""
    row_item = _map(data_folder(path, state.token) / "row_item", np.dtype("<i4"), (state.rows,))
    starts, ends = np.searchsorted(row_item, items, side="left"), np.searchsorted(row_item, items, side="right")
    counts = ends - starts
    return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))


def _merge_lookup(old: Store | None, hashes: np.ndarray, items: np.ndarray, out: Path) -> None:
    """Write the lookup of ``old`` plus the sorted (``hashes``, ``items``) to
    ``out``, streaming the old one block by block; equal hashes keep item order."""
    old_hashes = old.lookup_hashes if old is not None else np.zeros(0, _HASH)
    old_items = old.lookup_items if old is not None else np.zeros(0, np.int64)
    total = len(old_hashes) + len(hashes)
    with writing(out), open(out, "wb") as f:
        if total:  # its space taken now: writing a memory map onto a full disk would crash (SIGBUS), not fail
            os.posix_fallocate(f.fileno(), 0, total * (_HASH.itemsize + 8))
    if not total:
        return
    out_hashes = np.memmap(out, _HASH, "r+", shape=(total,))
    out_items = np.memmap(out, np.dtype("<i8"), "r+", offset=total * _HASH.itemsize, shape=(total,))
    taken = written = 0
    for start in range(0, max(len(old_hashes), 1), _LOOKUP_BLOCK):
        block_hashes, block_items = old_hashes[start : start + _LOOKUP_BLOCK], old_items[start : start + _LOOKUP_BLOCK]
        last = start + _LOOKUP_BLOCK >= len(old_hashes)
        upto = len(hashes) if last else int(np.searchsorted(hashes, block_hashes[-1], side="right"))
        merged_hashes = np.concatenate([block_hashes, hashes[taken:upto]])
        merged_items = np.concatenate([block_items, items[taken:upto]])
        order = np.argsort(merged_hashes, kind="stable")  # old entries (older items) first among equal hashes
        out_hashes[written : written + len(order)] = merged_hashes[order]
        out_items[written : written + len(order)] = merged_items[order]
        written, taken = written + len(order), upto
    out_hashes.flush()
    out_items.flush()
    del out_hashes, out_items


COPY_ITEMS = 1 << 16  # items a compaction copies at once


def compact(path: Path, header: IndexHeader, state: StoreState, dead: np.ndarray, vector_dtype: str) -> tuple[StoreState, np.ndarray]:
    """The rows and items of ``state`` without the dead ones, in a new column
    folder, vectors stored as ``vector_dtype``: streamed in blocks of
    COPY_ITEMS items (nothing is returned to the manifest: the caller commits)."""
    old = Store(path, header, state)
    writer = StoreWriter(path, header, _new_state(vector_dtype))
    for first in range(0, state.items, COPY_ITEMS):
        items = np.arange(first, min(first + COPY_ITEMS, state.items))
        starts, ends = old.item_rows(items)
        r0, r1 = int(starts[0]), int(ends[-1])
        alive = ~bits(dead, r0, r1) if state.dead_rows else np.ones(r1 - r0, bool)
        kept = items[alive[starts - r0]]  # an item lives while its rows do
        row_item = old.row_item[r0:r1][alive]
        writer.append(
            Rows(
                [old.item(int(i)) for i in kept],
                np.searchsorted(kept, row_item),
                old.spans[r0:r1][alive],
                old.vectors[r0:r1][alive],
                old.tags[r0:r1][alive],
                old.tag_probs[r0:r1][alive],
            )
        )
    return writer.finish()


def _new_state(vector_dtype: str = "float32") -> StoreState:
    """An empty store in a new folder."""
    return StoreState(secrets.token_hex(4), 0, 0, 0, 0, vector_dtype, "")


def write_index(path: Path, header: IndexHeader, rows: Rows | Iterable[Rows], vector_dtype: str = "float32") -> None:
    """Write a new index of ``rows`` (one batch, or batches streamed in turn),
    exact search only; what was at ``path`` before is removed."""
    writer = StoreWriter(path, header, _new_state(vector_dtype))
    for batch in [rows] if isinstance(rows, Rows) else rows:
        writer.append(batch)
    state, dead = writer.finish()
    commit(path, header, state, dead, None)


def bits(bitmap: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Entries start … stop-1 of a packed bitmap (little-endian bit order), as booleans."""
    first = start // 8
    unpacked = np.unpackbits(bitmap[first : (stop + 7) // 8], bitorder="little").astype(bool)
    return unpacked[start - 8 * first : stop - 8 * first]


def _map(file: Path, dtype: np.dtype, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
    """A read-only memory map of ``shape`` entries at ``offset`` of a column file, which must be that long."""
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        available = file.stat().st_size - offset
    except FileNotFoundError:
        raise AmrError(f"{file}: missing; the index is incomplete, rebuild it") from None
    if available < size:
        raise AmrError(f"{file}: {max(available, 0)} bytes where the index needs {size}; the index is damaged, rebuild it")
    if size == 0:
        return np.zeros(shape, dtype)
    # A plain ndarray view (the map stays alive as its base): indexing skips np.memmap's per-call overhead.
    return np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape).view(np.ndarray)
