"""The index file: one vector per indexed segment, searched by inner product.

Every retriever (amr.retrievers) reduces an item to one vector and a query to
one vector, so that score = inner product. The vectors are concatenations of
named *parts* (audio, metadata), which lets `explain` split a score into what
the audio and what the metadata contributed. A row is one *segment* of an
item: a short clip is one segment spanning the whole clip; a long recording
can be several (amr.segments), each with its start and end time.

Layout (format ``amr-index``, version 3): a small HDF5 *manifest*, and beside
it a folder of append-only columns and the approximate index's files::

    index.h5                  the manifest, rewritten (atomically) by every build and append
      attrs  format, version, amr_version
             fingerprint      the retriever's fingerprint (an index refuses any other)
             kind, fusion     the retriever's kind (trained, zero-shot) and fusion mode
             parts            JSON [[name, dim], ...]; dims add up to the vector size D
             retriever        JSON spec that amr.retrievers.load_retriever turns back into it
             configuration    the retriever's configuration id (its options except the seed)
             audio            JSON CacheInfo of the indexed caches (audio model, weights
                              sha256, ...), so query by example embeds clips the same way
             sources          JSON [cache path, ...] of every cache indexed
             auto_tags        K: items without metadata got their K top machine tags as metadata
             ann              JSON AnnInfo of the approximate index, or "" for exact search only
             store            JSON StoreState: the column folder's token and how much of each
                              column belongs to this version of the index
             query_encoder    JSON record of the query encoder (amr.query_encoder: format, version,
                              token, fingerprint, text model and its fingerprint, ...), {} for
                              a kind of model without one; absent in an index of an older amr
      dead   (ceil(N/8),) uint8: bit r (little-endian bit order) set: row r was replaced
    index.<token>.data/       raw little-endian arrays, only ever appended to:
      vectors     (N, D)  float32; float16 in an index with an ivf-pq approximate index
      row_item    (N,)    int32: the item of each row; an item's rows are consecutive
      spans       (N, 2)  float32: start and end of each row's segment, in seconds
      part_norms  (N, P)  float32: each vector's norm in each part (cosines within a
                          part: query by example compares audio with audio)
      tags        (N, K)  int16: the K most probable AudioSet classes of the row's audio, best first
      tag_probs   (N, K)  float16: their probabilities
      item_ends   (M,)    int64: item i is items[item_ends[i-1]:item_ends[i]] (0 for i = 0)
      items       (B,)    uint8: the items as utf-8 JSON (amr.items.Item), concatenated
      id_ends     (M,)    int64, and ids (B',) uint8: the items' ids, the same way
      lookup.<token>      the M ids' 16-byte blake2b hashes, sorted, then (M,) int64 the item
                          of each: id → item through a memory map, without a dict of ids;
                          its sha256 is in ``store`` and checked before an append uses it
    index.<token>.faiss       the approximate index (amr.search), if any; an ivf-pq one keeps
    index.<token>.ivfdata     its inverted lists in this second file, memory-mapped
    index.<token>.query/      the query encoder: `amr query` encodes text with it, without torch

Appending writes rows and items past the ends the manifest records, then a
new manifest with the new ends: a killed run leaves the index as it was (the
next run cuts the columns back to the recorded ends), and a query running
meanwhile reads the version it opened. An id indexed again gets a new item
and new rows; its old rows are marked dead (never returned, not counted)
until a compaction (amr.indexing) rewrites the columns without them. Opening
an index maps its columns and reads the dead bitmap (N/8 bytes): a query of
an index of any size touches only the rows it returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from amr import __version__
from amr.audioset import audioset_class_names
from amr.cache import CacheInfo
from amr.errors import AmrError
from amr.files import atomic_output, sha256_file, writing
from amr.fusion import Fusion
from amr.hdf5 import created, open_versioned
from amr.items import Item
from amr.metrics import rank_items
from amr.retrievers import Retriever, describe
from amr.search import (
    PART_RERANK,
    ann_candidates,
    bits,
    exact_search,
    read_ann,
    rerank,
    search_parameters,
)

FORMAT = "amr-index"
VERSION = 3
TAGS_STORED = 5  # machine tags kept per row, for --explain
_TINY = 1e-12
# An index of a few rows per item asks the approximate index for this many
# more candidates, so that k distinct items survive keeping each item's best row.
DUPLICATE_ALLOWANCE = 4
ON_DISK_KINDS = ("ivf-pq",)  # approximate indexes whose lists stay on disk (and whose vectors are float16)
LOOKUP_CHUNK = 1 << 22  # new ids hashed and merged into the lookup at once (24 bytes each in RAM)
_LOOKUP_BLOCK = 1 << 20  # entries of the old lookup merged at once
_HASH = np.dtype("S16")


@dataclass(frozen=True)
class AnnInfo:
    """The approximate index next to an index file, and how well it does."""

    kind: str  # "ivf-sq8" (in RAM) or "ivf-pq" (lists on disk); both re-ranked exactly (amr.search)
    nlist: int
    nprobe: int
    recall_at_10: float  # against exact search, on perturbed item vectors, at nprobe (after re-ranking), when trained
    token: str  # names the sidecar file(s)
    seconds: float  # build time
    rerank: int = 2  # candidates re-ranked per result
    trained_rows: int = 0  # rows when its lists were trained (an index grown past twice that is retrained)


@dataclass(frozen=True)
class StoreState:
    """Which column folder holds an index's rows and items, and how much of each column is the index."""

    token: str  # the folder is <stem>.<token>.data
    rows: int  # N
    items: int  # M (item slots: replaced items keep theirs, dead)
    item_bytes: int
    id_bytes: int
    vector_dtype: str  # "float32", or "float16" beside an ivf-pq index
    lookup: str  # the lookup file is lookup.<lookup> in the folder
    dead_rows: int = 0
    dead_items: int = 0
    lookup_sha256: str = ""  # of the lookup file, verified before an append trusts it ("": an index made before it was recorded)


@dataclass(frozen=True)
class IndexHeader:
    """Everything that says which model made an index's vectors."""

    fingerprint: str
    kind: str
    fusion: Fusion
    parts: list[tuple[str, int]]
    retriever: dict[str, Any]
    configuration: str
    audio: CacheInfo
    sources: list[str] = field(default_factory=list)
    auto_tags: int = 0  # items without metadata got their clip's K most probable AudioSet classes as metadata
    query_encoder: dict[str, Any] | None = None  # amr.query_encoder's record; {}: none for this kind; None: an older index

    @classmethod
    def of(cls, retriever: Retriever, audio: CacheInfo, sources: list[str], auto_tags: int = 0) -> IndexHeader:
        return cls(
            fingerprint=retriever.fingerprint,
            kind=retriever.kind,
            fusion=Fusion(retriever.fusion),
            parts=[(name, int(dim)) for name, dim in retriever.parts],
            retriever=retriever.spec,
            configuration=retriever.configuration,
            audio=audio,
            sources=sources,
            auto_tags=auto_tags,
        )

    @property
    def dim(self) -> int:
        return sum(d for _, d in self.parts)

    def require_retriever(self, retriever: Retriever, path: Path) -> None:
        """Refuse a retriever other than the one that built the index."""
        if retriever.fingerprint != self.fingerprint:
            raise AmrError(
                f"{path}: built with {describe(self.retriever)} (fingerprint {self.fingerprint[:12]}), "
                f"not {describe(retriever.spec)} (fingerprint {retriever.fingerprint[:12]}); "
                "its vectors are not comparable: use that model, or index into another file"
            )


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


# --- the columns ----------------------------------------------------------------------------


def data_folder(path: Path, token: str) -> Path:
    return Path(path).with_name(f"{Path(path).stem}.{token}.data")


def query_folder(path: Path, token: str) -> Path:
    """The folder of the index's query encoder (amr.query_encoder)."""
    return Path(path).with_name(f"{Path(path).stem}.{token}.query")


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

    def __init__(self, path: Path, header: IndexHeader, state: StoreState, dead: np.ndarray):
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
    writer = StoreWriter(path, header, new_state(vector_dtype), np.zeros(0, np.uint8))
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


def new_state(vector_dtype: str = "float32") -> StoreState:
    """An empty store in a new folder."""
    return StoreState(secrets.token_hex(4), 0, 0, 0, 0, vector_dtype, "")


# --- the manifest ---------------------------------------------------------------------------


def write_manifest(path: Path, header: IndexHeader, state: StoreState, dead: np.ndarray, ann: AnnInfo | None) -> None:
    """Make ``state`` (and ``ann``) the index at ``path``, atomically."""

    with atomic_output(path) as tmp, created(tmp, path) as (f, _):
        _write_attrs(f, header, ann)
        f.attrs["store"] = json.dumps(asdict(state))
        f.create_dataset("dead", data=np.asarray(dead, np.uint8))


def write_index(path: Path, header: IndexHeader, rows: Rows | Iterable[Rows], vector_dtype: str = "float32") -> None:
    """Write a new index of ``rows`` (one batch, or batches streamed in turn),
    exact search only; what was at ``path`` before is removed."""
    writer = StoreWriter(path, header, new_state(vector_dtype), np.zeros(0, np.uint8))
    for batch in [rows] if isinstance(rows, Rows) else rows:
        writer.append(batch)
    state, dead = writer.finish()
    write_manifest(path, header, state, dead, None)
    remove_unused(path, header, state, None)


def remove_unused(path: Path, header: IndexHeader | None, state: StoreState | None, ann: AnnInfo | None) -> None:
    """Delete the column folders, sidecars and query encoders beside ``path`` that this version
    does not use (older versions, or what a killed run left; all of them for no version), and
    superseded lookups."""
    path = Path(path)
    pattern = re.compile(re.escape(path.stem) + r"\.([0-9a-f]{8})\.(data|faiss|ivfdata|query)")
    query = header.query_encoder if header is not None else None
    tokens = {"data": state.token if state else None, "faiss": ann.token if ann else None, "query": (query or {}).get("token")}
    for other in path.parent.glob(f"{path.stem}.*"):
        match = pattern.fullmatch(other.name)
        if match is None:
            continue
        used = tokens.get(match.group(2), tokens["faiss"])
        if match.group(1) != used:
            shutil.rmtree(other) if other.is_dir() else other.unlink(missing_ok=True)
    for lookup in data_folder(path, state.token).glob("lookup.*") if state is not None else ():
        if lookup.name != f"lookup.{state.lookup}":
            lookup.unlink(missing_ok=True)


@contextmanager
def unrecorded_removed_on_failure(path: Path) -> Iterator[None]:
    """Around a build or append: when it fails (a full disk, Ctrl-C), remove the
    column folders, sidecars and lookups it made, which the manifest at ``path``
    does not record (all of them when there is no readable index there)."""
    try:
        yield
    except BaseException:
        header, state, ann = None, None, None
        try:
            with open_versioned(path, FORMAT, VERSION, "index") as f:
                header = _header_from_attrs(path, f)
                state, ann = _store_state(path, str(f.attrs["store"])), _ann_info(path, str(f.attrs["ann"]))
        except (AmrError, KeyError):
            pass  # no index there that a successful build would keep: nothing of its files is recorded
        remove_unused(path, header, state, ann)
        raise


def sidecar_path(path: Path, info: AnnInfo) -> Path:
    return Path(path).with_name(f"{Path(path).stem}.{info.token}.faiss")


def sidecars(path: Path) -> list[Path]:
    """The approximate index files beside the index at ``path`` (of any build)."""
    pattern = re.compile(re.escape(path.stem) + r"\.[0-9a-f]{8}\.(faiss|ivfdata)")
    return sorted(p for p in path.parent.glob(f"{path.stem}.*") if pattern.fullmatch(p.name))


# --- reading --------------------------------------------------------------------------------


class Index:
    """Read access to an index; vectors and items are memory-mapped.

    ``items_count`` counts item slots (``row_item`` values, ``item(i)``),
    replaced items included; ``live_items`` and ``live_rows`` what searches return."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open_versioned(self.path, FORMAT, VERSION, "index") as f:
            if "dead" not in f:
                raise AmrError(f"{self.path}: dataset dead missing; rebuild the index")
            self.header = _header_from_attrs(self.path, f)
            self.ann_info = _ann_info(self.path, str(f.attrs["ann"]))
            self.state = _store_state(self.path, str(f.attrs["store"]))
            self.dead = f["dead"][:]
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
            self.ann = read_ann(sidecar_path(self.path, self.ann_info), self.ann_info.kind in ON_DISK_KINDS)
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


def search(
    index: Index, queries: np.ndarray, top: int, exact: bool = False, part: str | None = None, per_item: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` best rows per query, best first: (rows (Q, k) int64, scores (Q, k) float32).

    Scores are inner products; with ``part`` (query by example: "audio") they
    are the cosine between the query's and the row's vectors in that part,
    whatever the other parts hold. ``per_item`` keeps only each item's best
    row (its best segment), so k counts items; otherwise every row counts.
    Uses the approximate index when there is one (unless ``exact``); k is
    ``min(top, live items or rows)``. Equal scores rank the lower row first; an
    approximate search that finds fewer than k pads with row -1. Dead
    (replaced) rows are never returned."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.header.dim:
        raise ValueError(f"queries must be (Q, {index.header.dim}), got {queries.shape}")
    if not np.isfinite(queries).all():
        raise ValueError("queries must be finite")
    try:
        return _search(index, queries, top, exact, part, per_item)
    except ValueError as e:  # finite queries, and amr writes finite vectors only: a NaN score is a damaged column
        folder = index.store.folder
        damaged = f"{folder / 'vectors'} or {folder / 'part_norms'}"
        raise AmrError(f"{damaged}: hold non-finite values ({e}); the index is damaged, rebuild it") from None


def _search(index: Index, queries: np.ndarray, top: int, exact: bool, part: str | None, per_item: bool) -> tuple[np.ndarray, np.ndarray]:
    grouped = per_item and not index.single_rows
    k = min(top, index.live_items if grouped else index.live_rows)
    if k == 0:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    columns, norms = index.part(part)
    dead = index.dead if index.state.dead_rows else None
    if index.ann is not None and not exact:
        per_result = index.ann_info.rerank if part is None else max(PART_RERANK, index.ann_info.rerank)
        pool = per_result * k * (DUPLICATE_ALLOWANCE if grouped else 1)
        candidates = ann_candidates(index.ann, queries, pool, index._params)
        if candidates.size and candidates.max() >= len(index):  # lists of random bytes
            sidecar = sidecar_path(index.path, index.ann_info)
            raise AmrError(f"{sidecar}: proposed row {candidates.max()} of {len(index)}: damaged; run `amr index --ann` again")
        if index.ann_info.kind in ON_DISK_KINDS:
            rows, scores = _rerank_from_disk(index, queries, candidates, pool if grouped else k, columns, norms)
        else:
            rows, scores = rerank(index.vectors, queries, candidates, pool if grouped else k, columns, norms)
        return _best_per_item(rows, scores, index.row_item, k) if grouped else (rows, scores)
    if not grouped:
        return exact_search(index.vectors[:, columns], queries[:, columns], k, norms, dead=dead)
    return _exact_per_item(index, queries[:, columns], columns, norms, k, dead)


def _rerank_from_disk(
    index: Index, queries: np.ndarray, candidates: np.ndarray, k: int, columns: slice, norms: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """`rerank` of candidate rows whose vectors are read for it (`Index.read_vectors`)."""
    wanted = np.unique(candidates[candidates >= 0])
    local = np.where(candidates >= 0, np.searchsorted(wanted, candidates), -1)  # order kept: ties still go to the lower row
    found, scores = rerank(index.read_vectors(wanted), queries, local, k, columns, None if norms is None else norms[wanted])
    return np.where(found >= 0, wanted[np.maximum(found, 0)], -1), scores


def _exact_per_item(
    index: Index, queries: np.ndarray, columns: slice, norms: np.ndarray | None, k: int, dead: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Every row scored, each item by its best row (the first of equal ones), the best k items."""
    steps = np.diff(index.row_item)
    if (steps < 0).any():
        raise AmrError(f"{index.store.folder / 'row_item'}: not in item order; the index is damaged, rebuild it")
    firsts = np.flatnonzero(np.r_[True, steps != 0])
    out_rows = np.empty((len(queries), k), np.int64)
    out_scores = np.empty((len(queries), k), np.float32)
    block = max(1, (1 << 24) // max(1, len(index)))  # queries scored at once: at most 16 M scores
    for q0 in range(0, len(queries), block):
        scores = queries[q0 : q0 + block] @ np.asarray(index.vectors[:, columns], np.float32).T
        if norms is not None:
            scores /= np.maximum(norms, _TINY)
        if dead is not None:
            scores[:, bits(dead, 0, len(index))] = -np.inf
        item_scores = np.maximum.reduceat(scores, firsts, axis=1)
        best_items = rank_items(item_scores, k)
        for r, items in enumerate(best_items):
            for c, item in enumerate(items):
                start = firsts[item]
                end = firsts[item + 1] if item + 1 < len(firsts) else len(index)
                out_rows[q0 + r, c] = start + int(np.argmax(scores[r, start:end]))
            out_scores[q0 + r] = item_scores[r, items]
    return out_rows, out_scores


def _best_per_item(rows: np.ndarray, scores: np.ndarray, row_item: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Of rows ranked best first (-1: none), each item's first, the first k (padded with -1)."""
    out_rows = np.full((len(rows), k), -1, np.int64)
    out_scores = np.full((len(rows), k), -np.inf, np.float32)
    for q, (ranked, values) in enumerate(zip(rows, scores)):
        seen: set[int] = set()
        c = 0
        for row, score in zip(ranked, values):
            if row < 0 or c == k:
                break
            item = int(row_item[row])
            if item not in seen:
                seen.add(item)
                out_rows[q, c], out_scores[q, c] = row, score
                c += 1
    return out_rows, out_scores


def explain(index: Index, query: np.ndarray, row: int, part: str | None = None) -> dict[str, float]:
    """How much each part (audio, metadata) contributed to the score of
    ``row`` for ``query``: part-wise inner products, which add up to the
    score. With ``part`` (the score is a cosine in it), that cosine."""
    vector = np.asarray(index.vectors[row], dtype=np.float32)
    if part is not None:
        columns, norms = index.part(part)
        return {part: float(query[columns] @ vector[columns] / max(float(norms[row]), _TINY))}
    contributions, start = {}, 0
    for name, dim in index.header.parts:
        contributions[name] = float(query[start : start + dim] @ vector[start : start + dim])
        start += dim
    return contributions


def machine_tags(index: Index, row: int) -> list[tuple[str, float]]:
    """The row's most probable AudioSet classes, as the index stores them."""
    classes = audioset_class_names()
    return [(classes[c], round(float(p), 3)) for c, p in zip(index.tags[row], index.tag_probs[row])]


# --- internals ----------------------------------------------------------------------------

_HEADER_ATTRS = ("fingerprint", "kind", "fusion", "parts", "retriever", "configuration", "audio", "sources", "auto_tags", "ann", "store")


def _write_attrs(f: h5py.File, header: IndexHeader, ann: AnnInfo | None) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["version"] = VERSION
    f.attrs["amr_version"] = __version__
    f.attrs["fingerprint"] = header.fingerprint
    f.attrs["kind"] = header.kind
    f.attrs["fusion"] = header.fusion.value
    f.attrs["parts"] = json.dumps(header.parts)
    f.attrs["retriever"] = json.dumps(header.retriever)
    f.attrs["configuration"] = header.configuration
    f.attrs["audio"] = json.dumps(asdict(header.audio))
    f.attrs["sources"] = json.dumps(header.sources)
    f.attrs["auto_tags"] = header.auto_tags
    f.attrs["ann"] = json.dumps(asdict(ann)) if ann is not None else ""
    if header.query_encoder is not None:
        f.attrs["query_encoder"] = json.dumps(header.query_encoder)


def _header_from_attrs(path: Path, f: h5py.File) -> IndexHeader:
    missing = [name for name in _HEADER_ATTRS if name not in f.attrs]
    if missing:
        raise AmrError(f"{path}: index attribute(s) {', '.join(missing)} missing; rebuild the index")
    try:
        return IndexHeader(
            fingerprint=str(f.attrs["fingerprint"]),
            kind=str(f.attrs["kind"]),
            fusion=Fusion(str(f.attrs["fusion"])),
            parts=_parts(path, f.attrs["parts"]),
            retriever=json.loads(f.attrs["retriever"]),
            configuration=str(f.attrs["configuration"]),
            audio=CacheInfo(**json.loads(f.attrs["audio"])),
            sources=json.loads(f.attrs["sources"]),
            auto_tags=int(f.attrs["auto_tags"]),
            query_encoder=json.loads(f.attrs["query_encoder"]) if "query_encoder" in f.attrs else None,
        )
    except (ValueError, TypeError, OverflowError) as e:
        raise AmrError(f"{path}: damaged index attributes ({e}); rebuild the index") from None


def _parts(path: Path, attribute: str) -> list[tuple[str, int]]:
    """The ``parts`` attribute: distinct names, each with a positive whole number of dimensions."""
    parts = json.loads(attribute)
    if not isinstance(parts, list) or not parts or not all(isinstance(p, list) and len(p) == 2 for p in parts):
        raise ValueError(f"parts {attribute!r} is not a list of [name, dims]")
    if any(not isinstance(n, str) or isinstance(d, bool) or not isinstance(d, int) or d < 1 for n, d in parts):
        raise ValueError(f"parts {attribute!r}: each needs a name and a whole number of dimensions >= 1")
    if len({n for n, _ in parts}) != len(parts):
        raise ValueError(f"parts {attribute!r} repeat a name")
    return [(n, d) for n, d in parts]


def _ann_info(path: Path, ann: str) -> AnnInfo | None:
    if not ann:
        return None
    try:
        return AnnInfo(**json.loads(ann))
    except (ValueError, TypeError) as e:
        raise AmrError(f"{path}: damaged 'ann' attribute ({e}); run `amr index --ann` again") from None


def _store_state(path: Path, store: str) -> StoreState:
    try:
        state = StoreState(**json.loads(store))
        np.dtype(state.vector_dtype)
    except (ValueError, TypeError) as e:
        raise AmrError(f"{path}: damaged 'store' attribute ({e}); rebuild the index") from None
    counts = ("rows", "items", "item_bytes", "id_bytes", "dead_rows", "dead_items")
    if not all(isinstance(getattr(state, n), int) and getattr(state, n) >= 0 for n in counts):
        raise AmrError(f"{path}: damaged 'store' attribute (counts {', '.join(counts)} must be whole numbers >= 0); rebuild the index")
    if state.vector_dtype not in ("float32", "float16"):
        raise AmrError(f"{path}: vectors of type {state.vector_dtype}; this amr reads float32 and float16")
    return state


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
