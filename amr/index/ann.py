"""FAISS: the approximate index's structures, built, written, read and asked for candidates.

Two kinds (amr.index.kinds) propose candidates whose exact scores, from the
stored vectors, decide the top k (amr.index.search), so what is found scores
as exact search; their settings are chosen by measured recall (amr.index.tune):

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
from amr.files import atomic_output, temporary_path
from amr.index.format import lists_path
from amr.index.kinds import AnnKind

if TYPE_CHECKING:
    import faiss

ADD_BLOCK = 1 << 16  # rows added to an index at once
# Dimensions per sub-quantizer: 4, i.e. D/4 one-byte codes a row (192 bytes at
# 768 dims, 64 at 256). Measured at 1e6 (amr.index.tune, PQ_RERANKS): 8-dim sub-quantizers (D/8
# bytes) lose too much for 1e7 rows to be re-ranked from a few hundred
# candidates; 4-dim ones encode nearly as fast (36 against 29 s a million,
# with the coarse assignment) and cost twice the scan (4.6 against 2.2 ms at nprobe 64).
PQ_SUB_DIMS = 4
PQ_TRAIN_PER_LIST = 32  # k-means training vectors per list: 32 x nlist x D float32 in RAM while training
SHARD_ROWS = 1 << 20  # rows whose codes an ivf-pq build holds in RAM at once (D/4 + 8 bytes each)


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


# --- searching ------------------------------------------------------------------------------------


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


# --- building -----------------------------------------------------------------------------------


def new_ivf(vectors: np.ndarray, rng: np.random.Generator, progress: bool = True) -> faiss.IndexIVF:
    """An ivf-sq8 index over all rows of ``vectors`` (inner product; row r
    has id r, dead rows included: searches skip them), its nprobe not yet chosen:
    nlist ≈ 2·√N lists trained by k-means on 40 vectors per list (10 iterations)."""
    faiss = load_faiss()
    n, dim = vectors.shape
    nlist = max(1, min(round(2 * math.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
    train = _sample(vectors, 40 * nlist, rng)
    ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    with status(f"training {nlist} lists on {len(train)} vectors", progress):
        ivf.train(train)
    del train
    with status(f"adding {n} vectors", progress):
        add_rows(ivf, vectors, 0)
    return ivf


def add_rows(ivf: faiss.IndexIVF, vectors: np.ndarray, start: int) -> None:
    """Add rows ``start`` … of ``vectors`` to an in-RAM IVF whose ids are row numbers (it holds rows 0 … start-1)."""
    if ivf.ntotal != start:
        raise ValueError(f"the approximate index holds {ivf.ntotal} rows, not {start}")
    for first in range(start, len(vectors), ADD_BLOCK):
        ivf.add(np.ascontiguousarray(vectors[first : first + ADD_BLOCK], np.float32))


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


def new_ivfpq(vectors: np.ndarray, sidecar: Path, rng: np.random.Generator, progress: bool = True) -> faiss.IndexIVF:
    """An ivf-pq index over all rows of ``vectors`` (ids = rows, dead ones
    included), written to ``sidecar`` and its lists file (`lists_path`), and
    opened from there, its nprobe not yet chosen.

    Memory: the training sample (PQ_TRAIN_PER_LIST x nlist x D float32),
    then one shard of SHARD_ROWS rows' codes at a time; the shards go to
    temporary files that FAISS merges list by list into the lists file."""
    faiss = load_faiss()
    n, dim = vectors.shape
    nlist = pq_lists(n)
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
    return read_ann(sidecar, on_disk=True)


def write_on_disk(trained: faiss.IndexIVF, vectors: np.ndarray, start: int, existing: Sequence[faiss.InvertedLists], sidecar: Path) -> None:
    """Write an ivf-pq index of the ``existing`` inverted lists plus rows
    ``start`` … of ``vectors``: the lists to `lists_path(sidecar)`, the rest
    (quantisers, list offsets) to ``sidecar``. ``trained`` is an empty trained index."""
    faiss = load_faiss()
    shards: list[Path] = []
    try:
        for first in range(start, len(vectors), SHARD_ROWS):
            shard = faiss.clone_index(trained)
            for block in range(first, min(first + SHARD_ROWS, len(vectors)), ADD_BLOCK):
                rows = np.ascontiguousarray(vectors[block : min(block + ADD_BLOCK, first + SHARD_ROWS)], np.float32)
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


def extend_ann(kind: AnnKind, previous: Path, vectors: np.ndarray, start: int, sidecar: Path) -> None:
    """Write to ``sidecar`` the approximate index of ``kind`` at ``previous``
    (trained, holding rows 0 … start-1) with rows ``start`` … of ``vectors`` added."""
    if kind.on_disk:
        lists = read_ann(previous, on_disk=True)
        write_on_disk(empty_copy(previous), vectors, start, [lists.invlists], sidecar)
    else:
        ivf = read_ann(previous, on_disk=False)
        add_rows(ivf, vectors, start)
        write_ann(ivf, sidecar)


# --- files --------------------------------------------------------------------------------------


def write_ann(ann: faiss.Index, sidecar: Path) -> None:
    """Write an approximate index atomically (of an ivf-pq one, the part that is not its lists file)."""
    faiss = load_faiss()
    with atomic_output(sidecar) as tmp:
        faiss.write_index(ann, str(tmp))


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
