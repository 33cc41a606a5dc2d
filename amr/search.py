"""Top-k by inner product: exact, and approximate (FAISS) with exact re-ranking.

Both return (rows, scores), best first, and break ties the same way: equal
scores rank the lower row first (amr.metrics' rule), so results never depend
on the block size, the number asked for or the sort algorithm. Rows marked
dead (replaced by a later append, see amr.index) are never returned.

Two kinds of approximate index propose candidates; their exact scores, from
the stored vectors, decide the top k, so what is found scores as exact search:

``ivf-sq8``  IVF over 8-bit scalar-quantised vectors (D bytes a row), loaded
             into RAM: for up to LARGE_LIMIT rows (768 MB at D = 768).
``ivf-pq``   IVF over product-quantised vectors (D/4 bytes a row) whose
             inverted lists stay on disk (FAISS OnDiskInvertedLists, memory-
             mapped): what it holds in RAM is the coarse quantiser (nlist x D
             float32) and the product quantiser's codebooks, whatever N is.
             More candidates per result (chosen by measured recall) make up
             for the coarser codes.

Only this module imports FAISS: it first points FAISS's bundled OpenBLAS at
kernels for this CPU (`_pick_openblas_kernels`), and imports it only
when an approximate index is built or searched.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from amr.console import status
from amr.errors import AmrError
from amr.files import temporary_path
from amr.metrics import rank_items

if TYPE_CHECKING:
    import faiss


def _pick_openblas_kernels() -> None:
    """FAISS's wheel bundles OpenBLAS 0.3.15, which does not recognise recent
    Xeons (Sapphire Rapids) and falls back to generic kernels: its matrix
    products ran at 15 GFLOP/s on the development machine against 115 with its
    Skylake-X kernels (k-means and adding vectors to an IVF are 7x slower).
    On a CPU with AVX-512 ask for those kernels, unless the user chose; the
    variable is read when the library loads, so this runs before FAISS is imported."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return
    if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= set(flags):
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"


def load_faiss() -> ModuleType:
    """FAISS, imported when first needed (an exact search never needs it: a
    one-shot `amr query` on an exact index skips its 50 ms import), after
    the OpenBLAS choice above."""
    _pick_openblas_kernels()
    import faiss

    return faiss


_TINY = 1e-12  # floor of a norm that divides
EXACT_BLOCK = 1 << 16  # rows scored at once by exact search
# Candidates per result an ivf-sq8 index proposes for exact re-ranking: 2
# recovers what 8-bit quantisation mis-ranks (recall@10 0.98 at 1e6 items,
# as with 4; 1 gives 0.96), and each candidate row read from the memory map
# can cost a page fault.
RERANK = 2
# A search within one part (query by example: audio cosine) takes its
# candidates from the full inner product, which ranks differently: a larger pool.
PART_RERANK = 10
RERANK_FLOATS = 1 << 23  # candidate vector entries gathered at once for re-ranking (32 MB as float32)
RECALL_TARGET = 0.97  # recall@10 the nprobe of an ivf-sq8 index is chosen for
NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)  # tried in order
RECALL_QUERIES = 500  # perturbed item vectors the recall check uses
QUERY_COSINE = 0.5  # how close those probes are to their item, like a text query to its clip

# Above this many rows `amr index` builds an ivf-pq index (inverted lists on
# disk) instead of an ivf-sq8 one (in RAM): the RAM an index may take stays
# below LARGE_LIMIT x D bytes (768 MB at 768 dims) for any collection.
LARGE_LIMIT = 1_000_000
PQ_RECALL_TARGET = 0.95  # recall@10 after re-ranking the nprobe and candidates of an ivf-pq index are chosen for
# Candidates per result an ivf-pq index may propose, tried in order at each
# nprobe. How many are needed grows with N (more rows fall within the codes'
# error of the 10th best): at 1e6 clustered 768-dim vectors with 8-dim
# sub-quantizers, the tuning probes needed 400 candidates for recall@10 0.966
# after re-ranking (100 gave 0.87); with 4-dim ones 100 gave 0.987.
PQ_RERANKS = (10, 20, 40, 80)
# Dimensions per sub-quantizer: 4, i.e. D/4 one-byte codes a row (192 bytes at
# 768 dims, 64 at 256). Measured at 1e6 (above): 8-dim sub-quantizers (D/8
# bytes) lose too much for 1e7 rows to be re-ranked from a few hundred
# candidates; 4-dim ones encode nearly as fast (36 against 29 s a million,
# with the coarse assignment) and cost twice the scan (4.6 against 2.2 ms at nprobe 64).
PQ_SUB_DIMS = 4
PQ_TRAIN_PER_LIST = 32  # k-means training vectors per list: 32 x nlist x D float32 in RAM while training
SHARD_ROWS = 1 << 20  # rows whose codes an ivf-pq build holds in RAM at once (D/4 + 8 bytes each)


# --- exact search -----------------------------------------------------------------------------


def exact_search(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    norms: np.ndarray | None = None,
    block: int = EXACT_BLOCK,
    dead: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive top-k by inner product (divided by the rows' ``norms`` when
    given), in blocks of rows so memory stays bounded for any number of rows
    and queries; ties go to the lower row, also at the cut-off. ``dead``: a
    bitmap of rows never to return (amr.index's, little-endian bit order);
    k must not exceed the rows alive."""
    n = vectors.shape[0]
    best_rows = np.empty((queries.shape[0], 0), np.int64)
    best_scores = np.empty((queries.shape[0], 0), np.float32)
    for start in range(0, n, block):
        scores = queries @ np.asarray(vectors[start : start + block], np.float32).T
        if norms is not None:
            scores /= np.maximum(norms[start : start + block], _TINY)
        if dead is not None:
            scores[:, bits(dead, start, start + scores.shape[1])] = -np.inf
        top = rank_items(scores, k)  # the block's best k, ties to the lower row
        best_rows = np.concatenate([best_rows, top + start], axis=1)
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        order = np.lexsort((best_rows, -best_scores), axis=1)[:, :k]
        best_rows = np.take_along_axis(best_rows, order, axis=1)
        best_scores = np.take_along_axis(best_scores, order, axis=1)
    return best_rows, best_scores


def bits(bitmap: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Entries start … stop-1 of a packed bitmap (little-endian bit order), as booleans."""
    first = start // 8
    unpacked = np.unpackbits(bitmap[first : (stop + 7) // 8], bitorder="little").astype(bool)
    return unpacked[start - 8 * first : stop - 8 * first]


# --- approximate search -------------------------------------------------------------------------


def search_parameters(ann: faiss.Index, dead: np.ndarray | None) -> faiss.SearchParametersIVF:
    """FAISS search parameters at the index's nprobe that skip the rows of the
    ``dead`` bitmap. Keep the returned object (it holds the bitmap's pointer)."""
    faiss = load_faiss()
    ivf = faiss.extract_index_ivf(ann)
    params = faiss.SearchParametersIVF(nprobe=ivf.nprobe)
    if dead is not None:
        dead = np.ascontiguousarray(dead, np.uint8)
        members = faiss.IDSelectorBitmap(ann.ntotal, faiss.swig_ptr(dead))
        params.sel = faiss.IDSelectorNot(members)
        params.keep = (dead, members)  # alive as long as the parameters are
    return params


def ann_candidates(ann: faiss.Index, queries: np.ndarray, pool: int, params: faiss.SearchParametersIVF | None = None) -> np.ndarray:
    """``pool`` candidate rows per query from the approximate index (-1: none), best first by its scores.

    FAISS shares out queries among its threads; a single query would use one
    of them, so its lists are shared out instead (parallel mode 1)."""
    faiss = load_faiss()
    faiss.extract_index_ivf(ann).parallel_mode = 1 if len(queries) == 1 else 0
    _, candidates = ann.search(queries, min(pool, ann.ntotal), params=params)
    return candidates


def rerank(
    vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int, columns: slice | None = None, norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The best k ``candidates`` of each query by their exact scores over
    ``columns`` (divided by the rows' ``norms`` when given); ties by row,
    missing candidates are row -1."""
    columns = columns or slice(None)
    found = candidates >= 0
    rows = np.where(found, candidates, 0)
    exact = np.empty(rows.shape, np.float32)
    chunk = max(1, RERANK_FLOATS // max(1, rows.shape[1] * vectors.shape[1]))  # queries whose candidates are gathered at once
    for q in range(0, len(rows), chunk):
        parts = np.asarray(vectors[rows[q : q + chunk].ravel()][:, columns], np.float32).reshape(*rows[q : q + chunk].shape, -1)
        exact[q : q + chunk] = np.einsum("qd,qcd->qc", queries[q : q + chunk, columns], parts)
    if norms is not None:
        exact /= np.maximum(norms[rows], _TINY)
    scores = np.where(found, exact, -np.inf).astype(np.float32)
    order = np.lexsort((candidates, -scores), axis=1)[:, :k]
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(scores, order, axis=1)


def ann_search(
    ann: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    pool: int,
    columns: slice | None = None,
    norms: np.ndarray | None = None,
    params: faiss.SearchParametersIVF | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``pool`` candidates from the approximate index, the best k of them by
    their exact scores (`rerank`)."""
    return rerank(vectors, queries, ann_candidates(ann, queries, pool, params), k, columns, norms)


# --- building -----------------------------------------------------------------------------------


def build_ivf(vectors: np.ndarray, dead: np.ndarray | None = None, progress: bool = True) -> tuple[faiss.IndexIVF, float]:
    """An ivf-sq8 index over all rows of ``vectors`` (inner product; row r
    has id r, dead rows included: searches skip them) with its nprobe set,
    and its measured recall@10 after re-ranking.

    nlist ≈ 2·√N lists trained by k-means on 40 vectors per list (10
    iterations); nprobe the smallest of NPROBES whose recall@10 against exact
    search (after re-ranking, as `ann_search` does) reaches RECALL_TARGET on
    perturbed item vectors. Measured on a million clustered 512-dim vectors,
    two cores: 2·√N lists (2000) build in 46 s and answer in 1.7 ms at nprobe
    64; 4·√N lists (4000) take 171 s and 2.0 ms at nprobe 128, for the same
    recall (0.98). FAISS HNSW (M 32) needed efSearch 512 for recall 0.975 and
    30 s to build 1e5 items, so a million would take many minutes."""
    faiss = load_faiss()
    n, dim = vectors.shape
    nlist = max(1, min(round(2 * math.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
    rng = np.random.default_rng(0)
    train = _sample(vectors, 40 * nlist, rng)
    ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    with status(f"training {nlist} lists on {len(train)} vectors", progress):
        ivf.train(train)
    del train
    with status(f"adding {n} vectors", progress):
        add_rows(ivf, vectors, 0)
    probes, truth = recall_probes(vectors, dead, rng)
    recall = 0.0
    for nprobe in _nprobes(nlist):
        ivf.nprobe = nprobe
        found, _ = ann_search(ivf, vectors, probes, truth.shape[1], RERANK * truth.shape[1], params=search_parameters(ivf, dead))
        recall = recall_at(found, truth)
        if recall >= RECALL_TARGET:
            break
    return ivf, recall


def add_rows(ivf: faiss.IndexIVF, vectors: np.ndarray, start: int) -> None:
    """Add rows ``start`` … of ``vectors`` to an in-RAM IVF whose ids are row numbers (it holds rows 0 … start-1)."""
    if ivf.ntotal != start:
        raise ValueError(f"the approximate index holds {ivf.ntotal} rows, not {start}")
    for first in range(start, len(vectors), EXACT_BLOCK):
        ivf.add(np.ascontiguousarray(vectors[first : first + EXACT_BLOCK], np.float32))


def pq_lists(n: int) -> int:
    """nlist of an ivf-pq index of n rows: the largest power of two <= 4·√n
    (2048 at 1e6, 8192 at 1e7, 32768 at 1e8), at most n / 39 (training points).
    Finer lists than ivf-sq8's 2·√N: at 1e6 clustered 768-dim vectors 4096
    lists reached recall@10 0.97 at nprobe 16 scanning 2 % of the codes, 1024
    lists 0.95 at nprobe 32 scanning 3 %; the cost is the coarse assignment
    (N x nlist x D multiply-adds), which bounds how fine lists can be on a CPU."""
    target = max(1, min(4 * math.sqrt(n), n / 39))
    return 1 << int(math.floor(math.log2(target)))


def pq_sub_quantizers(dim: int) -> int:
    """Sub-quantizers (one-byte codes) of an ivf-pq index of ``dim`` dimensions: dim / PQ_SUB_DIMS."""
    sub = PQ_SUB_DIMS
    while dim % sub:  # a dimension not a multiple of PQ_SUB_DIMS: the largest divisor below it
        sub -= 1
    return dim // sub


def build_ivfpq(vectors: np.ndarray, dead: np.ndarray | None, sidecar: Path, progress: bool = True) -> tuple[faiss.IndexIVF, int, float]:
    """An ivf-pq index over all rows of ``vectors`` (ids = rows, dead ones
    included), written to ``sidecar`` and its lists file (`lists_path`), and
    opened from there; its nprobe set, and the candidates per result and
    recall@10 after re-ranking chosen with it (`tune_pq`).

    Memory: the training sample (PQ_TRAIN_PER_LIST x nlist x D float32),
    then one shard of SHARD_ROWS rows' codes at a time; the shards go to
    temporary files that FAISS merges list by list into the lists file."""
    faiss = load_faiss()
    n, dim = vectors.shape
    nlist = pq_lists(n)
    rng = np.random.default_rng(0)
    train = _sample(vectors, PQ_TRAIN_PER_LIST * nlist, rng)
    # One-byte codes (256 centroids a sub-quantizer) need 256 training vectors; an index of fewer
    # rows (only when asked for by --ann-kind) gets as many centroids as it has vectors, in fewer bits.
    code_bits = min(8, int(math.log2(len(train))))
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, pq_sub_quantizers(dim), code_bits, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.cp.min_points_per_centroid = min(PQ_TRAIN_PER_LIST, 39)  # the sample is PQ_TRAIN_PER_LIST a list by choice
    ivf.pq.cp.min_points_per_centroid = 1  # a small index trains its codebooks on what it has
    with status(f"training {nlist} lists and {ivf.pq.M} sub-quantizers on {len(train)} vectors", progress):
        ivf.train(train)
    del train
    with status(f"adding {n} vectors", progress):
        write_on_disk(ivf, vectors, 0, [], sidecar)
    ann = read_ann(sidecar, on_disk=True)
    nprobe, rerank_factor, recall = tune_pq(ann, vectors, dead, rng)
    return ann, rerank_factor, recall


def write_on_disk(trained: faiss.IndexIVF, vectors: np.ndarray, start: int, existing: Sequence[faiss.InvertedLists], sidecar: Path) -> None:
    """Write an ivf-pq index of the ``existing`` inverted lists plus rows
    ``start`` … of ``vectors``: the lists to `lists_path(sidecar)`, the rest
    (quantisers, list offsets) to ``sidecar``. ``trained`` is an empty trained index."""
    faiss = load_faiss()
    shards: list[Path] = []
    try:
        for first in range(start, len(vectors), SHARD_ROWS):
            shard = faiss.clone_index(trained)
            for block in range(first, min(first + SHARD_ROWS, len(vectors)), EXACT_BLOCK):
                rows = np.ascontiguousarray(vectors[block : min(block + EXACT_BLOCK, first + SHARD_ROWS)], np.float32)
                shard.add_with_ids(rows, np.arange(block, block + len(rows), dtype=np.int64))
            shards.append(temporary_path(sidecar))
            faiss.write_index(shard, str(shards[-1]))
            del shard
        opened = [faiss.read_index(str(path), faiss.IO_FLAG_MMAP) for path in shards]
        sources = faiss.InvertedListsPtrVector()
        for lists in [*existing, *(faiss.extract_index_ivf(shard).invlists for shard in opened)]:
            sources.push_back(lists)
        merged = faiss.OnDiskInvertedLists(trained.nlist, trained.code_size, str(lists_path(sidecar)))
        with _quiet_stdout():  # FAISS prints "resizing ..." on stdout, which carries amr's results
            total = merged.merge_from_multiple(sources.data(), sources.size(), False, False)
        index = faiss.clone_index(trained)
        index.replace_invlists(merged, True)
        merged.this.disown()  # the index owns it now
        index.ntotal = total
        write_ann(index, sidecar)
        del index, opened
    finally:
        for path in shards:
            path.unlink(missing_ok=True)


def empty_copy(sidecar: Path) -> faiss.IndexIVF:
    """The trained quantisers of the ivf-pq index at ``sidecar``, with empty in-RAM lists."""
    faiss = load_faiss()
    with _quiet_stdout():
        trained = faiss.read_index(str(sidecar), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_ONDISK_SAME_DIR)
    lists = faiss.ArrayInvertedLists(trained.nlist, trained.code_size)
    trained.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now
    trained.ntotal = 0
    return trained


def tune_pq(ann: faiss.IndexIVF, vectors: np.ndarray, dead: np.ndarray | None, rng: np.random.Generator) -> tuple[int, int, float]:
    """(nprobe, candidates per result, recall@10) of an ivf-pq index: the
    smallest of NPROBES, and at it the fewest of PQ_RERANKS, whose recall@10
    after re-ranking reaches PQ_RECALL_TARGET on perturbed item vectors (the
    largest tried when none does); nprobe is set on ``ann``."""
    probes, truth = recall_probes(vectors, dead, rng)
    k = truth.shape[1]
    recall = 0.0
    for nprobe in _nprobes(ann.nlist):
        ann.nprobe = nprobe
        candidates = ann_candidates(ann, probes, PQ_RERANKS[-1] * k, search_parameters(ann, dead))
        for factor in PQ_RERANKS:
            recall = recall_at(rerank(vectors, probes, candidates[:, : factor * k], k)[0], truth)
            if recall >= PQ_RECALL_TARGET:
                return nprobe, factor, recall
    return ann.nprobe, PQ_RERANKS[-1], recall


def recall_probes(vectors: np.ndarray, dead: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RECALL_QUERIES perturbed item vectors and their exact top 10 rows."""
    probes = perturbed_queries(vectors, RECALL_QUERIES, rng, dead)
    alive = len(vectors) - (int(np.unpackbits(dead).sum()) if dead is not None else 0)
    truth, _ = exact_search(vectors, probes, min(10, alive), dead=dead)
    return probes, truth


def perturbed_queries(vectors: np.ndarray, count: int, rng: np.random.Generator, dead: np.ndarray | None = None) -> np.ndarray:
    """Probe queries near the collection: random items (not dead ones) moved
    in a random direction until their cosine to the item is QUERY_COSINE
    (about what a text query has to its clip), unit length."""
    rows = np.sort(rng.choice(len(vectors), min(2 * count, len(vectors)), replace=False))
    if dead is not None:
        rows = rows[~bits(dead, 0, len(vectors))[rows]]
    rows = np.sort(rng.permutation(rows)[:count])
    base = np.asarray(vectors[rows], dtype=np.float32)
    base /= np.maximum(np.linalg.norm(base, axis=1, keepdims=True), _TINY)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    sine = math.sqrt(1 - QUERY_COSINE**2)
    return np.ascontiguousarray(QUERY_COSINE * base + sine * noise)


def recall_target(kind: str) -> float:
    """The recall@10 an approximate index of ``kind`` ("ivf-sq8" or "ivf-pq") is tuned for."""
    return RECALL_TARGET if kind == "ivf-sq8" else PQ_RECALL_TARGET


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k rows that were found."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


# --- files --------------------------------------------------------------------------------------


def lists_path(sidecar: Path) -> Path:
    """The inverted lists file of an ivf-pq sidecar: ``<sidecar stem>.ivfdata`` beside it."""
    return sidecar.with_suffix(".ivfdata")


def write_ann(ann: faiss.Index, sidecar: Path) -> None:
    """Write an approximate index atomically (of an ivf-pq one, the part that is not its lists file)."""
    faiss = load_faiss()
    tmp = temporary_path(sidecar)
    try:
        faiss.write_index(ann, str(tmp))
        os.replace(tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)


def read_ann(sidecar: Path, on_disk: bool) -> faiss.IndexIVF:
    """An approximate index: loaded into RAM (ivf-sq8), or with its inverted
    lists memory-mapped from `lists_path` (``on_disk``: ivf-pq). A missing,
    truncated or unreadable file is an AmrError naming it."""
    faiss = load_faiss()
    if not sidecar.exists():
        raise AmrError(f"{sidecar}: the approximate index file is missing; run `amr index --ann` again")
    # ivf-sq8 is loaded, not memory-mapped: FAISS searches mapped lists some 30 times slower (measured, faiss 1.15).
    try:
        with _quiet_stdout():  # "IO_FLAG_ONDISK_SAME_DIR: updating ondisk filename ..." goes to stdout
            ann = faiss.read_index(str(sidecar), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY if on_disk else 0)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise AmrError(f"{sidecar}: not a readable FAISS index ({reason}); run `amr index --ann` again") from None
    ivf = faiss.try_extract_index_ivf(ann)
    if ivf is None:
        raise AmrError(f"{sidecar}: not an IVF index; run `amr index --ann` again")
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if on_disk != isinstance(lists, faiss.OnDiskInvertedLists):
        where = "in RAM" if on_disk else "on disk"
        raise AmrError(f"{sidecar}: its inverted lists are {where}, unlike its kind's; run `amr index --ann` again")
    if on_disk:
        data = lists_path(sidecar)
        size = data.stat().st_size if data.exists() else -1
        if size < lists.totsize:  # reading past the end of a mapped file would crash the process (SIGBUS)
            found = "missing" if size < 0 else f"{size} bytes, its index expects {lists.totsize}"
            raise AmrError(f"{data}: {found}; run `amr index --ann` again")
    return ann  # (the extracted IVF is a view that dies with it)


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send what C code prints on file descriptor 1 to /dev/null meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _sample(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random rows (all when fewer), in row order, as float32."""
    n = len(vectors)
    return np.ascontiguousarray(vectors[np.sort(rng.choice(n, min(n, count), replace=False))], np.float32)


def _nprobes(nlist: int) -> list[int]:
    """The nprobes tuning tries: NPROBES below nlist, then all lists when
    that is within NPROBES (a small index); never more than NPROBES[-1]
    lists, which at 1e7 rows would scan an eighth of them per query."""
    return [p for p in NPROBES if p < nlist] + ([nlist] if nlist <= NPROBES[-1] else [])
