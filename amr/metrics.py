"""Text-to-audio retrieval metrics as DCASE task 6b / task 8, Clotho and
AudioCaps define them: recall at K and mean average precision at K.

Each query ranks every item of the evaluated collection by score. With the
relevant items R of a query at ranks r_1 < r_2 < ... (1-based):

- R@K  = |{i : r_i <= K}| / |R|
- AP@K = (1 / n) * sum over r_i <= K of precision@r_i, where precision@r_i = i / r_i,
  and the normalisation n is one of (`APNorm`):

  * ``clipped`` (the default): n = min(|R|, K). AP@K is 1 when the top K are
    all relevant, also for a query with more than K relevant items. This is
    amr's 2024 protocol (one relevant item: AP@10 = 1/r if r <= 10 else 0).
  * ``total``: n = |R|, the total number of relevant items, as the DCASE 2025
    task 6 baseline computes its multi-positive mAP@16 (``ap += i / (rank + 1)``
    over its 0-based ranks below K, then ``/ len(relevant)``). A query with
    more than K relevant items cannot reach 1.

  With one relevant item both are the same. All are averaged over queries and
  lie in [0, 1].

Ties: among items with equal scores, the one with the lower collection index
ranks first (a stable sort on -score), so results never depend on the sort
algorithm or on how many items are asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

DEFAULT_KS = (1, 5, 10)  # recall cut-offs of the 2024 protocol
DEFAULT_AP_KS = (10,)  # its mAP cut-off
_BLOCK_ELEMENTS = 1 << 22  # scores ranked per block of queries, bounding the temporaries


class APNorm(StrEnum):
    """What the sum of precisions of AP@K is divided by (see the module docstring)."""

    clipped = "clipped"  # min(|relevant|, K)
    total = "total"  # |relevant|: DCASE 2025


@dataclass
class QueryResult:
    """One query: recall and AP at each cut-off, and the rank (1-based) of its
    best relevant item, None when that item is not in the ranking given."""

    recall: dict[int, float]
    ap: dict[int, float]
    first_rank: int | None

    @property
    def ap10(self) -> float:
        return self.ap[10]


@dataclass
class Metrics:
    """Means over queries, in [0, 1], and the per-query results (query order)."""

    recall: dict[int, float]
    map: dict[int, float]
    per_query: list[QueryResult]
    ap_norm: APNorm = APNorm.clipped

    @property
    def map10(self) -> float:
        return self.map[10]

    def as_dict(self) -> dict[str, float]:
        """{'R@1': ..., 'R@5': ..., 'R@10': ..., 'mAP@10': ...}: every cut-off measured."""
        return {**{f"R@{k}": v for k, v in self.recall.items()}, **{f"mAP@{k}": v for k, v in self.map.items()}}


def rank_items(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Item indices best first, (Q, min(k, N)) for scores (Q, N); all N when k is None.

    Equal scores rank the lower index first. For k < N only the top k of each
    row are sorted (after np.partition), with ties at the cut resolved by the same rule.
    """
    scores = _check_scores(scores)
    n_queries, n_items = scores.shape
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = n_items if k is None else min(k, n_items)
    out = np.empty((n_queries, k), dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(n_items, 1))
    for start in range(0, n_queries, block):
        neg = -scores[start : start + block]
        out[start : start + block] = _top_k(neg, k) if k < n_items else np.argsort(neg, axis=1, kind="stable")
    return out


def _top_k(neg: np.ndarray, k: int) -> np.ndarray:
    """The k smallest of each row of ``neg`` in stable order, without a full sort."""
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1 : k]
    better = neg < kth
    tied = neg == kth
    # Of the items tied with the k-th value, keep the lowest indices that still fit.
    room = k - better.sum(axis=1, keepdims=True)
    chosen = better | (tied & (np.cumsum(tied, axis=1) <= room))
    idx = np.nonzero(chosen)[1].reshape(len(neg), k)  # ascending index within each row
    order = np.argsort(np.take_along_axis(neg, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def query_metrics(
    ranking: Sequence[int] | np.ndarray,
    relevant: Sequence[int] | set[int],
    ks: Sequence[int] = DEFAULT_KS,
    ap_ks: Sequence[int] = DEFAULT_AP_KS,
    ap_norm: APNorm = APNorm.clipped,
) -> QueryResult:
    """Metrics of one query from its ranking (item indices, best first).

    The ranking may be cut short (e.g. a search's top k): a relevant item not in
    it counts as ranked below it. It must then hold at least max(ks, ap_ks)
    items, or every item of the collection.
    """
    _check_ks(ks)
    _check_ks(ap_ks)
    relevant = _check_relevant(relevant)
    ranking = np.asarray(ranking)
    ranks = np.flatnonzero(np.isin(ranking, list(relevant))) + 1
    needed = max(*ks, *ap_ks)
    if len(ranks) < len(relevant) and len(ranking) < needed:
        raise ValueError(f"a ranking of {len(ranking)} items misses relevant items; give at least {needed} items or the whole collection")
    return _from_ranks(ranks, len(relevant), ks, ap_ks, APNorm(ap_norm))


def retrieval_metrics(
    scores: np.ndarray,
    relevant: Sequence[Sequence[int]],
    ks: Sequence[int] = DEFAULT_KS,
    ap_ks: Sequence[int] = DEFAULT_AP_KS,
    ap_norm: APNorm = APNorm.clipped,
) -> Metrics:
    """Mean R@K (K in ``ks``) and mAP@K (K in ``ap_ks``, normalised by
    ``ap_norm``) of scores (Q queries, N items) against the relevant item
    indices of each query. K may exceed N. A query without relevant items
    is a ValueError naming its position (the caller reports it by name)."""
    scores = _check_scores(scores)
    if len(relevant) != len(scores):
        raise ValueError(f"{len(scores)} score rows but {len(relevant)} relevant lists")
    _check_ks(ks)
    _check_ks(ap_ks)
    ap_norm = APNorm(ap_norm)
    per_query = []
    for q, (row, rel) in enumerate(zip(scores, relevant)):
        try:
            items = np.array(sorted(_check_relevant(rel, len(row))))
        except ValueError as e:
            raise ValueError(f"query {q}: {e}") from None
        per_query.append(_from_ranks(_ranks_of(row, items), len(items), ks, ap_ks, ap_norm))
    if not per_query:
        raise ValueError("no queries to evaluate")
    return Metrics(
        recall={k: float(np.mean([r.recall[k] for r in per_query])) for k in ks},
        map={k: float(np.mean([r.ap[k] for r in per_query])) for k in ap_ks},
        per_query=per_query,
        ap_norm=ap_norm,
    )


def _ranks_of(row: np.ndarray, items: np.ndarray) -> np.ndarray:
    """1-based ranks of ``items`` (ascending indices) within ``row``, sorted:
    the items scored higher, plus the lower-indexed items scored the same, plus one."""
    s = row[items][:, None]
    positions = np.arange(len(row))
    ahead = (row > s) | ((row == s) & (positions < items[:, None]))
    return np.sort(ahead.sum(axis=1) + 1)


def _from_ranks(ranks: np.ndarray, n_relevant: int, ks: Sequence[int], ap_ks: Sequence[int], ap_norm: APNorm) -> QueryResult:
    """QueryResult from the sorted 1-based ranks of the relevant items found."""
    recall = {k: float(np.count_nonzero(ranks <= k)) / n_relevant for k in ks}
    precisions = np.arange(1, len(ranks) + 1) / ranks  # precision at each relevant item's rank
    ap = {}
    for k in ap_ks:
        total = float(precisions[ranks <= k].sum())
        ap[k] = total / (min(n_relevant, k) if ap_norm is APNorm.clipped else n_relevant)
    return QueryResult(recall=recall, ap=ap, first_rank=int(ranks[0]) if len(ranks) else None)


def _check_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (queries, items), got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)  # so that -scores cannot wrap around
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"each K must be a positive integer, got {tuple(ks)}")


def _check_relevant(relevant: Sequence[int] | set[int], n_items: int | None = None) -> set[int]:
    items = {int(i) for i in relevant}
    if not items:
        raise ValueError("no relevant items")
    if n_items is not None and not all(0 <= i < n_items for i in items):
        raise ValueError(f"relevant item index out of range 0..{n_items - 1}: {sorted(items)}")
    return items
