"""The index on disk: its manifest, its files' names and its format version, defined here once.

Every retriever (amr.model.retrievers) reduces an item to one vector and a query to
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
             retriever        JSON spec that amr.model.retrievers.load_retriever turns back into it
             configuration    the retriever's configuration id (its options except the seed)
             audio            JSON CacheInfo of the indexed caches (audio model, weights
                              sha256, ...), so query by example embeds clips the same way
             sources          JSON [cache path, ...] of every cache indexed
             auto_tags        K: items without metadata got their K top machine tags as metadata
             ann              JSON AnnInfo of the approximate index, or "" for exact search only
             store            JSON StoreState: the column folder's token and how much of each
                              column belongs to this version of the index
             query_encoder    JSON record of the query encoder (amr.model.query_encoder: format, version,
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
    index.<token>.faiss       the approximate index (amr.index.ann), if any; an ivf-pq one keeps
    index.<token>.ivfdata     its inverted lists in this second file, memory-mapped
    index.<token>.query/      the query encoder: `amr query` encodes text with it, without torch

Appending writes rows and items past the ends the manifest records, then a
new manifest with the new ends: a killed run leaves the index as it was (the
next run cuts the columns back to the recorded ends), and a query running
meanwhile reads the version it opened. An id indexed again gets a new item
and new rows; its old rows are marked dead (never returned, not counted)
until a compaction (amr.index.store) rewrites the columns without them. Opening
an index maps its columns and reads the dead bitmap (N/8 bytes): a query of
an index of any size touches only the rows it returns.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from amr import __version__
from amr.cache import CacheInfo
from amr.errors import AmrError
from amr.files import atomic_output
from amr.hdf5 import created, open_versioned
from amr.index.kinds import AnnKind
from amr.model.fusion import Fusion
from amr.model.retrievers import Retriever, describe

FORMAT = "amr-index"
VERSION = 3
TAGS_STORED = 5  # machine tags kept per row, for --explain


@dataclass(frozen=True)
class AnnInfo:
    """The approximate index next to an index file, and how well it does."""

    kind: AnnKind  # ivf-sq8 (in RAM) or ivf-pq (lists on disk); both re-ranked exactly (amr.index.search)
    nlist: int
    nprobe: int
    recall_at_10: float  # against exact search, on perturbed item vectors, at nprobe (after re-ranking), when trained
    token: str  # names the sidecar file(s)
    seconds: float  # build time
    rerank: int = 2  # candidates re-ranked per result
    trained_rows: int = 0  # rows when its lists were trained (an index grown past twice that is retrained)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AnnKind(self.kind))  # a kind this amr does not know: ValueError


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
    query_encoder: dict[str, Any] | None = None  # amr.model.query_encoder's record; {}: none for this kind; None: an older index

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


# --- file names -------------------------------------------------------------------------------


def data_folder(path: Path, token: str) -> Path:
    return Path(path).with_name(f"{Path(path).stem}.{token}.data")


def query_folder(path: Path, token: str) -> Path:
    """The folder of the index's query encoder (amr.model.query_encoder)."""
    return Path(path).with_name(f"{Path(path).stem}.{token}.query")


def ann_path(path: Path, token: str) -> Path:
    """The approximate index file of token ``token``."""
    return Path(path).with_name(f"{Path(path).stem}.{token}.faiss")


def sidecar_path(path: Path, info: AnnInfo) -> Path:
    """The approximate index file ``info`` describes."""
    return ann_path(path, info.token)


def lists_path(sidecar: Path) -> Path:
    """The inverted lists file of an ivf-pq sidecar: ``<sidecar stem>.ivfdata`` beside it."""
    return sidecar.with_suffix(".ivfdata")


def sidecars(path: Path) -> list[Path]:
    """The approximate index files beside the index at ``path`` (of any build)."""
    pattern = re.compile(re.escape(path.stem) + r"\.[0-9a-f]{8}\.(faiss|ivfdata)")
    return sorted(p for p in path.parent.glob(f"{path.stem}.*") if pattern.fullmatch(p.name))


# --- the manifest -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """What the manifest of an index records: one version of it."""

    header: IndexHeader
    ann: AnnInfo | None
    state: StoreState
    dead: np.ndarray  # (ceil(N/8),) uint8


def read_manifest(path: Path) -> Manifest:
    """The manifest at ``path``; a file of another format or version, or damaged attributes, are an AmrError."""
    with open_versioned(path, FORMAT, VERSION, "index") as f:
        if "dead" not in f:
            raise AmrError(f"{path}: dataset dead missing; rebuild the index")
        header = _header_from_attrs(path, f)
        return Manifest(header, _ann_info(path, str(f.attrs["ann"])), _store_state(path, str(f.attrs["store"])), f["dead"][:])


def commit(path: Path, header: IndexHeader, state: StoreState, dead: np.ndarray, ann: AnnInfo | None) -> None:
    """Make ``state`` (and ``ann``) the index at ``path``, atomically, then remove
    the files of other versions (`remove_unused`)."""
    _write_manifest(path, header, state, dead, ann)
    remove_unused(path, header, state, ann)


def _write_manifest(path: Path, header: IndexHeader, state: StoreState, dead: np.ndarray, ann: AnnInfo | None) -> None:
    with atomic_output(path) as tmp, created(tmp, path) as (f, _):
        _write_attrs(f, header, ann)
        f.attrs["store"] = json.dumps(asdict(state))
        f.create_dataset("dead", data=np.asarray(dead, np.uint8))


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
        try:
            recorded = read_manifest(path)
        except AmrError:  # no index there that a successful build would keep: nothing of its files is recorded
            remove_unused(path, None, None, None)
        else:
            remove_unused(path, recorded.header, recorded.state, recorded.ann)
        raise


# --- attributes -------------------------------------------------------------------------------

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
