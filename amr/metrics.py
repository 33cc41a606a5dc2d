"""Text-to-audio retrieval metrics as DCASE task 6b / task 8, Clotho and
AudioCaps define them: recall at K and mean average precision at 10.

Each query ranks every item of the evaluated collection by score. With the
relevant items of a query at ranks r_1 < r_2 < ... (1-based):

- R@K   = |{i : r_i <= K}| / |relevant|
- AP@10 = (1 / min(|relevant|, 10)) * sum over r_i <= 10 of precision@r_i,
  where precision@r_i = i / r_i

With one relevant item at rank r these are the usual R@K = [r <= K] and
AP@10 = 1/r if r <= 10 else 0. Both are averaged over queries and lie in [0, 1].

Ties: among items with equal scores, the one with the lower collection index
ranks first (a stable sort on -score), so results never depend on the sort
algorithm or on how many items are asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

AP_DEPTH = 10
DEFAULT_KS = (1, 5, 10)
_BLOCK_ELEMENTS = 1 << 22  # scores ranked per block of queries, bounding the temporaries


@dataclass
class QueryResult:
    """One query: recall at each K, AP@10, and the rank (1-based) of its best
    relevant item, None when that item is not in the ranking given."""

    recall: dict[int, float]
    ap10: float
    first_rank: int | None


@dataclass
class Metrics:
    """Means over queries, in [0, 1], and the per-query results (query order)."""

    recall: dict[int, float]
    map10: float
    per_query: list[QueryResult]

    def as_dict(self) -> dict[str, float]:
        """{'R@1': ..., 'R@5': ..., 'R@10': ..., 'mAP@10': ...}"""
        return {**{f"R@{k}": v for k, v in self.recall.items()}, "mAP@10": self.map10}


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


def query_metrics(ranking: Sequence[int] | np.ndarray, relevant: Sequence[int] | set[int], ks: Sequence[int] = DEFAULT_KS) -> QueryResult:
    """Metrics of one query from its ranking (item indices, best first).

    The ranking may be cut short (e.g. a search's top k): a relevant item not in
    it counts as ranked below it. It must then hold at least max(ks) and 10
    items, or every item of the collection.
    """
    _check_ks(ks)
    relevant = _check_relevant(relevant)
    ranking = np.asarray(ranking)
    ranks = np.flatnonzero(np.isin(ranking, list(relevant))) + 1
    needed = max(max(ks), AP_DEPTH)
    if len(ranks) < len(relevant) and len(ranking) < needed:
        raise ValueError(f"a ranking of {len(ranking)} items misses relevant items; give at least {needed} items or the whole collection")
    return _from_ranks(ranks, len(relevant), ks)


def retrieval_metrics(scores: np.ndarray, relevant: Sequence[Sequence[int]], ks: Sequence[int] = DEFAULT_KS) -> Metrics:
    """Mean R@K and mAP@10 of scores (Q queries, N items) against the relevant
    item indices of each query. K may exceed N. A query without relevant items
    is a ValueError naming its position (the caller reports it by name)."""
    scores = _check_scores(scores)
    if len(relevant) != len(scores):
        raise ValueError(f"{len(scores)} score rows but {len(relevant)} relevant lists")
    _check_ks(ks)
    per_query = []
    for q, (row, rel) in enumerate(zip(scores, relevant)):
        try:
            items = np.array(sorted(_check_relevant(rel, len(row))))
        except ValueError as e:
            raise ValueError(f"query {q}: {e}") from None
        per_query.append(_from_ranks(_ranks_of(row, items), len(items), ks))
    if not per_query:
        raise ValueError("no queries to evaluate")
    return Metrics(
        recall={k: float(np.mean([r.recall[k] for r in per_query])) for k in ks},
        map10=float(np.mean([r.ap10 for r in per_query])),
        per_query=per_query,
    )


def _ranks_of(row: np.ndarray, items: np.ndarray) -> np.ndarray:
    """1-based ranks of ``items`` (ascending indices) within ``row``, sorted:
    the items scored higher, plus the lower-indexed items scored the same, plus one."""
    s = row[items][:, None]
    positions = np.arange(len(row))
    ahead = (row > s) | ((row == s) & (positions < items[:, None]))
    return np.sort(ahead.sum(axis=1) + 1)


def _from_ranks(ranks: np.ndarray, n_relevant: int, ks: Sequence[int]) -> QueryResult:
    """QueryResult from the sorted 1-based ranks of the relevant items found."""
    recall = {k: float(np.count_nonzero(ranks <= k)) / n_relevant for k in ks}
    top = ranks[ranks <= AP_DEPTH]
    precisions = np.arange(1, len(top) + 1) / top
    ap10 = float(precisions.sum()) / min(n_relevant, AP_DEPTH)
    return QueryResult(recall=recall, ap10=ap10, first_rank=int(ranks[0]) if len(ranks) else None)


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
