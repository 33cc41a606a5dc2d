"""An approximate index built and its settings chosen by measured recall.

The recall measured is recall@10 after exact re-ranking (as amr.index.search
ranks), against exact search, on perturbed item vectors: RECALL_QUERIES items
moved until their cosine to the item is QUERY_COSINE, about what a text query
has to its clip. Each kind (amr.index.kinds) has its recall target.

ivf-sq8: nlist ≈ 2·√N lists; nprobe the smallest of NPROBES whose recall
reaches the target. Measured on a million clustered 512-dim vectors, two
cores: 2·√N lists (2000) build in 46 s and answer in 1.7 ms at nprobe 64;
4·√N lists (4000) take 171 s and 2.0 ms at nprobe 128, for the same recall
(0.98). FAISS HNSW (M 32) needed efSearch 512 for recall 0.975 and 30 s to
build 1e5 items, so a million would take many minutes.

ivf-pq: the smallest of NPROBES, and at it the fewest candidates per result
of PQ_RERANKS, whose recall reaches the target (the largest tried when none does).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from amr.index.ann import ann_candidates, new_ivf, new_ivfpq, search_parameters, write_ann
from amr.index.kinds import AnnKind
from amr.index.search import TINY, exact_search, rerank
from amr.index.store import bits

if TYPE_CHECKING:
    import faiss

# Candidates per result an ivf-sq8 index proposes for exact re-ranking: 2
# recovers what 8-bit quantisation mis-ranks (recall@10 0.98 at 1e6 items,
# as with 4; 1 gives 0.96), and each candidate row read from the memory map
# can cost a page fault.
RERANK = 2
NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)  # tried in order
RECALL_QUERIES = 500  # perturbed item vectors the recall check uses
QUERY_COSINE = 0.5  # how close those probes are to their item, like a text query to its clip
# Candidates per result an ivf-pq index may propose, tried in order at each
# nprobe. How many are needed grows with N (more rows fall within the codes'
# error of the 10th best): at 1e6 clustered 768-dim vectors with 8-dim
# sub-quantizers, the tuning probes needed 400 candidates for recall@10 0.966
# after re-ranking (100 gave 0.87); with 4-dim ones 100 gave 0.987.
PQ_RERANKS = (10, 20, 40, 80)


def build_ann(
    kind: AnnKind, vectors: np.ndarray, dead: np.ndarray | None, sidecar: Path, progress: bool = True
) -> tuple[faiss.IndexIVF, int, float]:
    """An approximate index of ``kind`` over all rows of ``vectors`` (ids =
    rows, the ``dead`` ones included: searches skip them), written to
    ``sidecar``, with its nprobe set: (it, candidates per result, recall@10 after re-ranking)."""
    rng = np.random.default_rng(0)
    if kind.on_disk:
        ann = new_ivfpq(vectors, sidecar, rng, progress)
        return (ann, *tune_pq(ann, vectors, dead, rng))
    ivf = new_ivf(vectors, rng, progress)
    recall = tune_ivf(ivf, vectors, dead, rng)
    write_ann(ivf, sidecar)
    return ivf, RERANK, recall


def tune_ivf(ivf: faiss.IndexIVF, vectors: np.ndarray, dead: np.ndarray | None, rng: np.random.Generator) -> float:
    """Set the nprobe of an ivf-sq8 index (RERANK candidates per result); its recall@10."""
    probes, truth = recall_probes(vectors, dead, rng)
    k = truth.shape[1]
    recall = 0.0
    for nprobe in _nprobes(ivf.nlist):
        ivf.nprobe = nprobe
        found, _ = rerank(vectors, probes, ann_candidates(ivf, probes, RERANK * k, search_parameters(ivf, dead)), k)
        recall = recall_at(found, truth)
        if recall >= AnnKind.ivf_sq8.recall_target:
            break
    return recall


def tune_pq(ann: faiss.IndexIVF, vectors: np.ndarray, dead: np.ndarray | None, rng: np.random.Generator) -> tuple[int, float]:
    """Set the nprobe of an ivf-pq index; its candidates per result and recall@10."""
    probes, truth = recall_probes(vectors, dead, rng)
    k = truth.shape[1]
    recall = 0.0
    for nprobe in _nprobes(ann.nlist):
        ann.nprobe = nprobe
        candidates = ann_candidates(ann, probes, PQ_RERANKS[-1] * k, search_parameters(ann, dead))
        for factor in PQ_RERANKS:
            recall = recall_at(rerank(vectors, probes, candidates[:, : factor * k], k)[0], truth)
            if recall >= AnnKind.ivf_pq.recall_target:
                return factor, recall
    return PQ_RERANKS[-1], recall


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
    base /= np.maximum(np.linalg.norm(base, axis=1, keepdims=True), TINY)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    sine = math.sqrt(1 - QUERY_COSINE**2)
    return np.ascontiguousarray(QUERY_COSINE * base + sine * noise)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k rows that were found."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def _nprobes(nlist: int) -> list[int]:
    """The nprobes tuning tries: NPROBES below nlist, then all lists when
    that is within NPROBES (a small index); never more than NPROBES[-1]
    lists, which at 1e7 rows would scan an eighth of them per query."""
    return [p for p in NPROBES if p < nlist] + ([nlist] if nlist <= NPROBES[-1] else [])
