"""The index: one vector per item, searched by inner product.

Every retriever (a trained checkpoint, the zero-shot model) reduces an item to
one vector and a query to one vector, so that score = inner product. The
vectors are concatenations of named *segments* (audio, metadata), which lets
`explain` split a score into what the audio and what the metadata contributed.

File layout (format ``amr-index``, version 1), one HDF5 file::

    attrs          format, version, amr_version
                   fingerprint      the retriever's fingerprint (an index refuses any other)
                   fusion           the retriever's fusion mode
                   segments         JSON [[name, dim], ...]; dims add up to the vector size
                   retriever        JSON spec that `load_retriever` turns back into the retriever
                   audio            JSON CacheInfo of the indexed caches (audio model, weights
                                    sha256, ...), so query by example embeds clips the same way
                   sources          JSON [cache path, ...] of every cache indexed
                   auto_tags        K: items without metadata got their K top machine tags as metadata
                   ann              JSON AnnInfo of the FAISS sidecar, or "" for exact search only
    vectors        (N, D)   float32, contiguous: memory-mapped on open
    ids            (N,)     utf-8 item ids
    items          (B,)     uint8: the items as utf-8 JSON (amr.items.Item), concatenated
    item_offsets   (N+1,)   int64: item i is items[item_offsets[i]:item_offsets[i+1]]
    segment_norms  (N, S)   float32: each vector's norm in each segment (cosines within a
                            segment: query by example compares audio with audio)
    tags           (N, K)   int16: the K most probable AudioSet classes of the clip, best first
    tag_probs      (N, K)   float16: their probabilities

The datasets are contiguous and uncompressed so that vectors and items are
read through memory maps: opening an index of a million items takes
milliseconds and a query touches only the rows it returns. An approximate
index lives next to the file as ``<stem>.<token>.faiss``; the token is
recorded in ``ann`` so a sidecar of another build is never used. It is a
FAISS IVF index with 8-bit scalar-quantised vectors (a quarter of the
memory and memory traffic of float32) that proposes a few candidates per result;
their exact scores, from ``vectors``, decide the top k, so the scores
(and `explain`) of what it finds are those of exact search. Files are
written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import faiss
import h5py
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from amr import __version__
from amr.cache import CacheInfo, EmbeddingCache, open_caches
from amr.errors import AmrError
from amr.hdf5 import open_versioned
from amr.items import Item

FORMAT = "amr-index"
VERSION = 1
TAGS_STORED = 5  # machine tags kept per item, for --explain
# Up to this many items exact search (one matrix product over N x 512 float32,
# memory-bound: ~7 ms per query at 1e5 items on two cores, bench/query.py)
# leaves most of a 20 ms query for the text encoder; above it `amr index`
# builds an approximate index unless told otherwise.
EXACT_LIMIT = 50_000
ENCODE_BATCH = 512  # items per Retriever.encode_items call
_TINY = 1e-12  # floor of a norm that divides
# Candidates per result the approximate index proposes for exact re-ranking:
# 2 recovers what 8-bit quantisation mis-ranks (recall@10 0.98 at 1e6 items,
# as with 4; 1 gives 0.96), and each candidate row read from the memory map
# can cost a page fault.
RERANK = 2
# A segment search (query by example: audio cosine) takes its candidates from
# the full inner product, which ranks differently: it needs a larger pool.
SEGMENT_RERANK = 10
RECALL_TARGET = 0.97  # recall@10 the nprobe of an approximate index is chosen for
NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)  # tried in order
RECALL_QUERIES = 500  # perturbed item vectors the recall check uses
QUERY_COSINE = 0.5  # how close those probes are to their item, like a text query to its clip

console = Console(stderr=True)


class Retriever(Protocol):
    """What the index consumes: a model that maps items and queries to vectors
    whose inner product is the retrieval score.

    ``spec`` is a JSON-able description that `load_retriever` turns back into
    an equivalent retriever (``{"kind": "checkpoint", "path": ...}``); the index
    records it so `amr query` can encode queries with the model that built it.
    """

    fingerprint: str
    fusion: str
    segments: list[tuple[str, int]]
    spec: dict[str, Any]

    def encode_items(self, cache: EmbeddingCache, indices: Sequence[int], auto_tags: int = 0) -> np.ndarray:
        """(n, dim) float32 item vectors; items without metadata get valid (audio-only) vectors."""
        ...

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """(q, dim) float32 query vectors."""
        ...

    def encode_examples(self, sequences: list[np.ndarray], tags: np.ndarray) -> np.ndarray:
        """(q, dim) float32 from clips' frame sequences and (q, 527) tag
        probabilities: each clip's audio vector in the audio segment, zeros elsewhere."""
        ...


def _checkpoint_retriever(spec: dict[str, Any]) -> Retriever:
    from amr.checkpoint import load_checkpoint

    return load_checkpoint(Path(spec["path"]))


# kind → loader of a spec of that kind (another model adds its kind here); loaders import lazily.
def _zero_shot_retriever(spec: dict[str, Any]) -> Retriever:
    from amr.zeroshot import load_zero_shot

    return load_zero_shot(spec)


RETRIEVER_KINDS: dict[str, Callable[[dict[str, Any]], Retriever]] = {
    "checkpoint": _checkpoint_retriever,
    "zero-shot": _zero_shot_retriever,
}


def load_retriever(spec: dict[str, Any]) -> Retriever:
    """The one factory from a recorded spec back to a retriever."""
    loader = RETRIEVER_KINDS.get(spec.get("kind", ""))
    if loader is None:
        raise AmrError(f"unknown retriever kind {spec.get('kind')!r} in {spec}; this amr knows {', '.join(RETRIEVER_KINDS)}")
    return loader(spec)


def checkpoint_spec(path: Path) -> dict[str, Any]:
    return {"kind": "checkpoint", "path": str(Path(path).resolve())}


@dataclass(frozen=True)
class AnnInfo:
    """The approximate index next to an index file, and how well it does."""

    kind: str  # "ivf-sq8": IVF lists of 8-bit scalar-quantised vectors, re-ranked exactly
    nlist: int
    nprobe: int
    recall_at_10: float  # against exact search, on perturbed item vectors, at nprobe (after re-ranking)
    token: str  # names the sidecar file
    seconds: float  # build time


@dataclass(frozen=True)
class IndexHeader:
    """Everything that says which model made an index's vectors."""

    fingerprint: str
    fusion: str
    segments: list[tuple[str, int]]
    retriever: dict[str, Any]
    audio: CacheInfo
    sources: list[str] = field(default_factory=list)
    auto_tags: int = 0  # items without metadata got their clip's K most probable AudioSet classes as metadata

    @property
    def dim(self) -> int:
        return sum(d for _, d in self.segments)

    def require_retriever(self, retriever: Retriever, path: Path) -> None:
        """Refuse a retriever other than the one that built the index."""
        if retriever.fingerprint != self.fingerprint:
            raise AmrError(
                f"{path}: built with {_describe(self.retriever)} (fingerprint {self.fingerprint[:12]}), "
                f"not {_describe(retriever.spec)} (fingerprint {retriever.fingerprint[:12]}); "
                "its vectors are not comparable: use that model, or index into another file"
            )


@dataclass
class IndexReport:
    path: Path
    items: int  # in the index now
    added: int  # encoded by this run (new ids and replaced ones)
    replaced: int  # ids that were in the index and were encoded again
    ann: AnnInfo | None
    seconds: float


class Index:
    """Read access to an index file; vectors and items are memory-mapped."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with _open(self.path) as f:
            missing = [name for name in _DATASETS if name not in f]
            if missing:
                raise AmrError(f"{self.path}: dataset(s) {', '.join(missing)} missing; rebuild the index")
            self.header = _header_from_attrs(self.path, f)
            ann = str(f.attrs["ann"])
            n = f["vectors"].shape[0]
            self.vectors = _memmap(self.path, f["vectors"])
            self.tags = _memmap(self.path, f["tags"])
            self.tag_probs = _memmap(self.path, f["tag_probs"])
            self.segment_norms = _memmap(self.path, f["segment_norms"])
            self._items = _memmap(self.path, f["items"])
            self._item_offsets = _memmap(self.path, f["item_offsets"]).copy()  # 8 MB per million items: no page faults
        if self.vectors.shape != (n, self.header.dim):
            raise AmrError(f"{self.path}: vectors of shape {self.vectors.shape} do not match the segments {self.header.segments}")
        self.ann_info = AnnInfo(**json.loads(ann)) if ann else None
        self.ann: faiss.IndexIVF | None = None
        if self.ann_info is not None:
            self.ann = _read_sidecar(self.path, self.ann_info, n)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def item(self, row: int) -> Item:
        start, end = int(self._item_offsets[row]), int(self._item_offsets[row + 1])
        return Item(**json.loads(self._items[start:end].tobytes()))

    def segment(self, name: str | None) -> tuple[slice, np.ndarray | None]:
        """The columns of segment ``name`` and the rows' norms in it; all columns and no norms for None."""
        if name is None:
            return slice(None), None
        start = 0
        for s, (segment, dim) in enumerate(self.header.segments):
            if segment == name:
                return slice(start, start + dim), self.segment_norms[:, s]
            start += dim
        raise AmrError(f"{self.path}: has no {name} segment (fusion {self.header.fusion}: segments {self.header.segments})")

    def ids(self) -> list[str]:
        with h5py.File(self.path, "r") as f:
            return list(f["ids"].asstr()[:])


def open_index(path: Path) -> Index:
    return Index(path)


def search(
    index: Index, queries: np.ndarray, top: int, exact: bool = False, segment: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` best rows per query, best first: (rows (Q, k) int64, scores (Q, k) float32).

    Scores are inner products; with ``segment`` (query by example: "audio")
    they are the cosine between the query's and the item's parts in that
    segment, whatever the other segments hold. Uses the approximate index
    when there is one (unless ``exact``); k is ``min(top, len(index))``.
    Equal scores rank the lower row first; an approximate search that finds
    fewer than k rows pads with row -1."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.header.dim:
        raise ValueError(f"queries must be (Q, {index.header.dim}), got {queries.shape}")
    k = min(top, len(index))
    columns, norms = index.segment(segment)
    if index.ann is not None and not exact:
        pool = RERANK * k if segment is None else SEGMENT_RERANK * k
        return ann_search(index.ann, index.vectors, queries, k, pool, columns, norms)
    return exact_search(index.vectors[:, columns], queries[:, columns], k, norms)


def ann_search(
    ann: faiss.IndexIVF,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    pool: int,
    columns: slice | None = None,
    norms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``pool`` candidates from the approximate index, the best k of them by
    their exact scores over ``columns`` (divided by the rows' ``norms`` when
    given); ties by row, missing candidates are row -1."""
    columns = columns or slice(None)
    _, candidates = ann.search(queries, min(pool, len(vectors)))
    found = candidates >= 0
    rows = np.where(found, candidates, 0)
    parts = np.asarray(vectors[rows.ravel()][:, columns], np.float32).reshape(*rows.shape, -1)
    exact = np.einsum("qd,qcd->qc", queries[:, columns], parts)
    if norms is not None:
        exact /= np.maximum(norms[rows], _TINY)
    scores = np.where(found, exact, -np.inf).astype(np.float32)
    order = np.lexsort((candidates, -scores), axis=1)[:, :k]
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(scores, order, axis=1)


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, norms: np.ndarray | None = None, block: int = 1 << 16
) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive top-k by inner product (divided by the rows' ``norms`` when
    given), in blocks of rows so memory stays bounded for any number of
    queries; ties go to the lower row."""
    n = vectors.shape[0]
    best_rows = np.empty((queries.shape[0], 0), np.int64)
    best_scores = np.empty((queries.shape[0], 0), np.float32)
    for start in range(0, n, block):
        scores = queries @ vectors[start : start + block].T
        if norms is not None:
            scores /= np.maximum(norms[start : start + block], _TINY)
        if scores.shape[1] > k:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        best_rows = np.concatenate([best_rows, part + start], axis=1)
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        order = np.lexsort((best_rows, -best_scores), axis=1)[:, :k]
        best_rows = np.take_along_axis(best_rows, order, axis=1)
        best_scores = np.take_along_axis(best_scores, order, axis=1)
    return best_rows, best_scores


def explain(index: Index, query: np.ndarray, row: int, segment: str | None = None) -> dict[str, float]:
    """How much each segment (audio, metadata) contributed to the score of
    ``row`` for ``query``: segment-wise inner products, which add up to the
    score. With ``segment`` (the score is a cosine in it), that cosine."""
    vector = np.asarray(index.vectors[row], dtype=np.float32)
    if segment is not None:
        columns, norms = index.segment(segment)
        return {segment: float(query[columns] @ vector[columns] / max(float(norms[row]), _TINY))}
    contributions, start = {}, 0
    for name, dim in index.header.segments:
        contributions[name] = float(query[start : start + dim] @ vector[start : start + dim])
        start += dim
    return contributions


def machine_tags(index: Index, row: int) -> list[tuple[str, float]]:
    """The clip's most probable AudioSet classes, as the index stores them."""
    from amr.mobilenet import audioset_class_names

    names = audioset_class_names()
    return [(names[c], round(float(p), 3)) for c, p in zip(index.tags[row], index.tag_probs[row])]


# --- building -----------------------------------------------------------------------------


def build_index(
    retriever: Retriever,
    caches: Sequence[Path],
    output: Path,
    *,
    splits: Sequence[str] | None = None,
    append: bool = False,
    ann: bool | None = None,
    auto_tags: int | None = None,
    progress: bool = True,
) -> IndexReport:
    """Encode every item of ``caches`` (in ``splits``, all when None) and write the index.

    ``append`` adds to the index at ``output`` without re-encoding what it
    holds; an id encoded again replaces the old vector. ``ann`` builds the
    approximate index: True, False, or None for "when the index holds more
    than EXACT_LIMIT items" (an appended index keeps its choice).
    ``auto_tags`` K gives items without metadata their clip's K most probable
    AudioSet classes as metadata (default 0; an appended index keeps its K)."""
    started = time.perf_counter()
    output = Path(output)
    opened = open_caches(caches)
    try:
        header = IndexHeader(
            fingerprint=retriever.fingerprint,
            fusion=retriever.fusion,
            segments=[(name, int(dim)) for name, dim in retriever.segments],
            retriever=retriever.spec,
            audio=opened[0].info,
            sources=[str(c.path.resolve()) for c in opened],
        )
        previous = _previous(output, header, retriever, auto_tags) if append else None
        header = replace(header, auto_tags=previous.header.auto_tags if previous is not None else auto_tags or 0)
        selected = [(c, _select(c, splits)) for c in opened]
        total = sum(len(rows) for _, rows in selected)
        if total == 0:
            raise AmrError(f"{', '.join(str(c) for c in caches)}: no items in split(s) {', '.join(splits or ())}")
        encoded = _encode(retriever, selected, header, progress)
    finally:
        for cache in opened:
            cache.close()

    rows, replaced = _last_of_each_id(encoded), 0
    if previous is not None:
        new_ids = {item.id for item in rows.items}
        kept = [row for row, item_id in enumerate(previous.ids()) if item_id not in new_ids]
        replaced = len(previous) - len(kept)
        rows = _Rows.stored(previous, kept) + rows
        header = replace(header, sources=_merged(previous.header.sources, header.sources))
    if ann is None:
        ann = (previous is not None and previous.ann_info is not None) or len(rows.items) > EXACT_LIMIT
    write_index(output, header, rows.items, rows.vectors, rows.tags, rows.probs)
    info = add_ann(output, progress=progress) if ann else None
    return IndexReport(output, len(rows.items), len(encoded.items), replaced, info, time.perf_counter() - started)


def write_index(
    path: Path,
    header: IndexHeader,
    items: Sequence[Item],
    vectors: np.ndarray,
    tags: np.ndarray,
    tag_probs: np.ndarray,
) -> None:
    """Write an exact-search index (no sidecar) atomically. ``vectors`` may be a memory map."""
    n = len(items)
    if vectors.shape != (n, header.dim) or tags.shape[0] != n or tag_probs.shape != tags.shape:
        raise ValueError(f"{n} items, vectors {vectors.shape} (dim {header.dim}), tags {tags.shape}, probs {tag_probs.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    blobs = [item.to_json().encode("utf-8") for item in items]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    with h5py.File(tmp, "w") as f:
        _write_attrs(f, header, ann="")
        out = f.create_dataset("vectors", (n, header.dim), np.float32)
        norms = f.create_dataset("segment_norms", (n, len(header.segments)), np.float32)
        bounds = np.cumsum([0] + [dim for _, dim in header.segments])
        for start in range(0, n, 1 << 16):
            block = np.asarray(vectors[start : start + (1 << 16)], np.float32)
            out[start : start + len(block)] = block
            norms[start : start + len(block)] = np.stack(
                [np.linalg.norm(block[:, a:b], axis=1) for a, b in zip(bounds[:-1], bounds[1:])], axis=1
            )
        f.create_dataset("ids", data=np.array([item.id for item in items], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("items", data=np.frombuffer(b"".join(blobs), np.uint8))
        f.create_dataset("item_offsets", data=offsets)
        f.create_dataset("tags", data=tags.astype(np.int16))
        f.create_dataset("tag_probs", data=tag_probs.astype(np.float16))
    old = _sidecars(path)
    tmp.replace(path)
    for sidecar in old:
        sidecar.unlink()


def add_ann(path: Path, progress: bool = True) -> AnnInfo:
    """Build the approximate index of an index file: FAISS IVF (inner
    product) over 8-bit scalar-quantised residuals, nlist ≈ 2·√N lists
    trained by k-means on 40 vectors per list (10 iterations), and nprobe
    the smallest of NPROBES whose recall@10 against exact search (after
    re-ranking, as `search` does) reaches RECALL_TARGET on perturbed item
    vectors. The recall is printed to stderr and recorded in the file.

    Measured on a million clustered 512-dim vectors, two cores: 2·√N lists
    (2000) build in 46 s and answer in 1.7 ms at nprobe 64; 4·√N lists
    (4000) take 171 s and 2.0 ms at nprobe 128, for the same recall (0.98).
    FAISS HNSW (M 32) needed efSearch 512 for recall 0.975 and 30 s to
    build 1e5 items, so a million would take many minutes."""
    started = time.perf_counter()
    vectors = Index(path).vectors
    n, dim = vectors.shape
    nlist = max(1, min(round(2 * math.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
    rng = np.random.default_rng(0)
    train = np.ascontiguousarray(vectors[np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))])
    ivf = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    ivf.cp.niter = 10
    with _status(progress, f"training {nlist} lists on {len(train)} vectors"):
        ivf.train(train)
    del train
    with _status(progress, f"adding {n} vectors"):
        for start in range(0, n, 1 << 16):
            ivf.add(np.ascontiguousarray(vectors[start : start + (1 << 16)]))
    probes = perturbed_queries(vectors, RECALL_QUERIES, rng)
    truth, _ = exact_search(vectors, probes, min(10, n))
    for nprobe in [p for p in NPROBES if p < nlist] + [nlist]:
        ivf.nprobe = nprobe
        recall = recall_at(ann_search(ivf, vectors, probes, truth.shape[1], RERANK * truth.shape[1])[0], truth)
        if recall >= RECALL_TARGET:
            break
    info = AnnInfo("ivf-sq8", nlist, nprobe, round(recall, 4), secrets.token_hex(4), round(time.perf_counter() - started, 1))
    faiss.write_index(ivf, str(sidecar_path(path, info)))
    with h5py.File(path, "a") as f:
        f.attrs["ann"] = json.dumps(asdict(info))
    for stale in _sidecars(path):
        if stale != sidecar_path(path, info):
            stale.unlink()
    console.print(
        f"approximate index: IVF-SQ8, {nlist} lists, nprobe {nprobe}, re-ranked: recall@10 {recall:.3f} against exact search "
        f"({len(probes)} perturbed item vectors), built in {info.seconds:.0f} s",
        highlight=False,
        soft_wrap=True,
    )
    return info


def perturbed_queries(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Probe queries near the collection: random items moved in a random
    direction until their cosine to the item is QUERY_COSINE (about what a
    text query has to its clip), unit length."""
    rows = np.sort(rng.choice(len(vectors), min(count, len(vectors)), replace=False))
    base = np.asarray(vectors[rows], dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    sine = math.sqrt(1 - QUERY_COSINE**2)
    return np.ascontiguousarray(QUERY_COSINE * base + sine * noise)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k rows that were found."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def sidecar_path(path: Path, info: AnnInfo) -> Path:
    return path.with_name(f"{path.stem}.{info.token}.faiss")


# --- internals ----------------------------------------------------------------------------


def _select(cache: EmbeddingCache, splits: Sequence[str] | None) -> list[int]:
    return [i for i, item in enumerate(cache.items) if splits is None or item.split in splits]


@dataclass
class _Rows:
    """Items with their vectors and machine tags, in index order."""

    items: list[Item]
    vectors: np.ndarray
    tags: np.ndarray
    probs: np.ndarray

    @classmethod
    def stored(cls, index: Index, rows: list[int]) -> _Rows:
        return cls([index.item(r) for r in rows], index.vectors[rows], index.tags[rows], index.tag_probs[rows])

    def take(self, rows: list[int]) -> _Rows:
        return _Rows([self.items[r] for r in rows], self.vectors[rows], self.tags[rows], self.probs[rows])

    def __add__(self, other: _Rows) -> _Rows:
        return _Rows(
            self.items + other.items,
            np.concatenate([self.vectors, other.vectors]),
            np.concatenate([self.tags, other.tags]),
            np.concatenate([self.probs, other.probs]),
        )


def _last_of_each_id(rows: _Rows) -> _Rows:
    """An id encoded twice (in two caches) keeps its last version."""
    last = {item.id: row for row, item in enumerate(rows.items)}
    return rows if len(last) == len(rows.items) else rows.take(sorted(last.values()))


def _encode(retriever: Retriever, selected: list[tuple[EmbeddingCache, list[int]]], header: IndexHeader, progress: bool) -> _Rows:
    total = sum(len(rows) for _, rows in selected)
    tags = np.empty((total, TAGS_STORED), np.int16)
    out = _Rows([], np.empty((total, header.dim), np.float32), tags, np.empty(tags.shape, np.float16))
    bar = Progress(
        TextColumn("index"), BarColumn(), TextColumn("{task.completed}/{task.total} items"), TimeElapsedColumn(),
        console=console, disable=not progress, transient=True,
    )
    with bar:
        task = bar.add_task("index", total=total)
        for cache, rows in selected:
            for start in range(0, len(rows), ENCODE_BATCH):
                batch = rows[start : start + ENCODE_BATCH]
                at = slice(len(out.items), len(out.items) + len(batch))
                encoded = retriever.encode_items(cache, batch, header.auto_tags)
                if encoded.shape != (len(batch), header.dim):
                    raise AmrError(
                        f"{_describe(retriever.spec)}: encode_items returned {encoded.shape}, expected {(len(batch), header.dim)}"
                    )
                _require_valid(encoded, [cache.items[i] for i in batch], cache.path)
                out.vectors[at] = encoded
                top = np.argsort(-cache.tags[batch], axis=1, kind="stable")[:, :TAGS_STORED]
                out.tags[at] = top
                out.probs[at] = np.take_along_axis(cache.tags[batch], top, axis=1)
                out.items.extend(cache.items[i] for i in batch)
                bar.advance(task, len(batch))
    return out


def _require_valid(vectors: np.ndarray, items: list[Item], cache: Path) -> None:
    """Every item must get a finite, non-zero vector (a retriever bug otherwise)."""
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        item = items[bad[0]]
        raise AmrError(f"{cache}: item {item.id!r} got a zero or non-finite vector ({len(bad)} items in this batch)")


def _previous(output: Path, header: IndexHeader, retriever: Retriever, auto_tags: int | None) -> Index:
    """The index to append to, after checking it was built by the same model,
    from the same audio model, with the same auto tags (when given)."""
    if not output.exists():
        raise AmrError(f"{output}: no index to append to; build it first (without --append)")
    previous = Index(output)
    previous.header.require_retriever(retriever, output)
    previous.header.audio.require_compatible(header.audio, ", ".join(header.sources))
    if auto_tags is not None and auto_tags != previous.header.auto_tags:
        raise AmrError(f"{output}: was built with auto tags {previous.header.auto_tags}, not {auto_tags}; append with the same")
    return previous


def _merged(old: list[str], new: list[str]) -> list[str]:
    return old + [s for s in new if s not in old]


def _write_attrs(f: h5py.File, header: IndexHeader, ann: str) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["version"] = VERSION
    f.attrs["amr_version"] = __version__
    f.attrs["fingerprint"] = header.fingerprint
    f.attrs["fusion"] = header.fusion
    f.attrs["segments"] = json.dumps(header.segments)
    f.attrs["retriever"] = json.dumps(header.retriever)
    f.attrs["audio"] = json.dumps(asdict(header.audio))
    f.attrs["sources"] = json.dumps(header.sources)
    f.attrs["auto_tags"] = header.auto_tags
    f.attrs["ann"] = ann


def _open(path: Path) -> h5py.File:
    return open_versioned(path, FORMAT, VERSION, "index")


_DATASETS = ("vectors", "ids", "items", "item_offsets", "segment_norms", "tags", "tag_probs")
_HEADER_ATTRS = ("fingerprint", "fusion", "segments", "retriever", "audio", "sources", "auto_tags", "ann")


def _header_from_attrs(path: Path, f: h5py.File) -> IndexHeader:
    missing = [name for name in _HEADER_ATTRS if name not in f.attrs]
    if missing:
        raise AmrError(f"{path}: index attribute(s) {', '.join(missing)} missing; rebuild the index")
    return IndexHeader(
        fingerprint=str(f.attrs["fingerprint"]),
        fusion=str(f.attrs["fusion"]),
        segments=[(str(name), int(dim)) for name, dim in json.loads(f.attrs["segments"])],
        retriever=json.loads(f.attrs["retriever"]),
        audio=CacheInfo(**json.loads(f.attrs["audio"])),
        sources=json.loads(f.attrs["sources"]),
        auto_tags=int(f.attrs["auto_tags"]),
    )


def _memmap(path: Path, dataset: h5py.Dataset) -> np.ndarray:
    """A read-only memory map of a contiguous, uncompressed dataset."""
    offset = dataset.id.get_offset()
    if offset is None or dataset.chunks is not None:
        raise AmrError(f"{path}: dataset {dataset.name} is not stored contiguously; rebuild the index")
    # A plain ndarray view (the map stays alive as its base): indexing skips np.memmap's per-call overhead.
    return np.memmap(path, dtype=dataset.dtype, mode="r", offset=offset, shape=dataset.shape).view(np.ndarray)


def _read_sidecar(path: Path, info: AnnInfo, n: int) -> faiss.IndexIVF:
    sidecar = sidecar_path(path, info)
    if not sidecar.exists():
        raise AmrError(f"{sidecar}: the approximate index of {path} is missing; run `amr index --ann` again")
    # Loaded, not memory-mapped: FAISS searches mapped lists some 30 times slower (measured, faiss 1.15).
    ivf = faiss.read_index(str(sidecar))
    if ivf.ntotal != n:
        raise AmrError(f"{sidecar}: holds {ivf.ntotal} vectors, the index {n}; run `amr index --ann` again")
    ivf.nprobe = info.nprobe
    return ivf


def _sidecars(path: Path) -> list[Path]:
    """The sidecar files of the index at ``path`` (of any build)."""
    pattern = re.compile(re.escape(path.stem) + r"\.[0-9a-f]{8}\.faiss")
    return sorted(p for p in path.parent.glob(f"{path.stem}.*.faiss") if pattern.fullmatch(p.name))


def _describe(spec: dict[str, Any]) -> str:
    if spec.get("kind") == "checkpoint":
        return f"checkpoint {spec.get('path')}"
    return " ".join(f"{k}={v}" for k, v in spec.items())


def _status(show: bool, message: str):
    """A spinner with a message on stderr while a long step runs."""
    return console.status(message) if show else nullcontext()
