"""Retrieval metrics against hand-computed rankings and a brute-force version."""

from __future__ import annotations

import numpy as np
import pytest

from amr import metrics
from amr.metrics import query_metrics, rank_items, retrieval_metrics


def scores_ranking(order: list[int]) -> np.ndarray:
    """One row of scores that ranks the items in ``order`` (best first)."""
    row = np.empty(len(order))
    row[order] = np.arange(len(order), 0, -1)
    return row[None, :]


def brute_force(row: np.ndarray, relevant: set[int], ks=(1, 5, 10)) -> tuple[dict[int, float], float]:
    """The textbook definitions, one item at a time."""
    ranking = sorted(range(len(row)), key=lambda i: (-row[i], i))
    recall = {k: sum(i in relevant for i in ranking[:k]) / len(relevant) for k in ks}
    hits, total = 0, 0.0
    for k, item in enumerate(ranking[:10], start=1):
        if item in relevant:
            hits += 1
            total += hits / k
    return recall, total / min(len(relevant), 10)


def test_rank_items_orders_by_score_and_breaks_ties_by_lower_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.5]])
    assert rank_items(scores).tolist() == [[1, 3, 2, 4, 0]]
    assert rank_items(scores, k=1).tolist() == [[1]]
    assert rank_items(scores, k=3).tolist() == [[1, 3, 2]]  # tie at the cut: item 2 before item 4


def test_rank_items_k_larger_than_collection_returns_all():
    assert rank_items(np.array([[0.2, 0.3]]), k=10).tolist() == [[1, 0]]


def test_rank_items_top_k_equals_full_stable_sort_with_many_ties(monkeypatch):
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 100)  # several blocks of queries
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 40)).astype(np.float32)  # heavy ties
    full = rank_items(scores)
    assert np.array_equal(full, np.argsort(-scores, axis=1, kind="stable"))
    for k in (1, 2, 7, 10, 39, 40, 100):
        assert np.array_equal(rank_items(scores, k=k), full[:, :k]), k


def test_single_relevant_hand_computed():
    # Item 0 ranked 1st, 3rd, 10th and 12th in four queries over 12 items.
    order = [5, 6, 7, 8, 9, 10, 1, 2, 3, 4, 11]
    rows = [
        scores_ranking([0] + order),
        scores_ranking(order[:2] + [0] + order[2:]),
        scores_ranking(order[:9] + [0] + order[9:]),
        scores_ranking(order + [0]),
    ]
    m = retrieval_metrics(np.concatenate(rows), [[0]] * 4)
    assert [r.first_rank for r in m.per_query] == [1, 3, 10, 12]
    assert [r.recall[1] for r in m.per_query] == [1, 0, 0, 0]
    assert [r.recall[5] for r in m.per_query] == [1, 1, 0, 0]
    assert [r.recall[10] for r in m.per_query] == [1, 1, 1, 0]
    assert [r.ap10 for r in m.per_query] == pytest.approx([1, 1 / 3, 1 / 10, 0])
    assert m.recall == pytest.approx({1: 0.25, 5: 0.5, 10: 0.75})
    assert m.map10 == pytest.approx((1 + 1 / 3 + 1 / 10) / 4)
    assert m.as_dict() == pytest.approx({"R@1": 0.25, "R@5": 0.5, "R@10": 0.75, "mAP@10": m.map10})


def test_several_relevant_hand_computed():
    # Relevant {0, 1, 2, 3} at ranks 1, 3, 6 and 15 of 20 items.
    order = [0, 10, 1, 11, 12, 2, 13, 14, 15, 16, 17, 18, 19, 4, 3, 5, 6, 7, 8, 9]
    result = retrieval_metrics(scores_ranking(order), [[3, 2, 1, 0]]).per_query[0]
    assert result.recall == {1: 0.25, 5: 0.5, 10: 0.75}
    assert result.ap10 == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 4)
    assert result.first_rank == 1


def test_more_than_ten_relevant_all_on_top_gives_ap_one():
    result = retrieval_metrics(scores_ranking(list(range(30))), [list(range(12))]).per_query[0]
    assert result.ap10 == pytest.approx(1.0)
    assert result.recall[10] == pytest.approx(10 / 12)


def test_tie_ranks_the_lower_index_first():
    scores = np.array([[0.5, 0.5, 0.1]])
    assert retrieval_metrics(scores, [[1]]).per_query[0].first_rank == 2
    assert retrieval_metrics(scores, [[0]]).per_query[0].first_rank == 1


def test_k_larger_than_collection():
    m = retrieval_metrics(np.array([[0.1, 0.3, 0.2]]), [[0]], ks=(1, 5, 10, 50))
    assert m.recall == {1: 0.0, 5: 1.0, 10: 1.0, 50: 1.0}
    assert m.map10 == pytest.approx(1 / 3)


def test_query_metrics_from_a_top_k_ranking():
    ranking = [4, 7, 1, 0, 2, 3, 5, 6, 8, 9]  # top 10 of a larger collection
    result = query_metrics(ranking, {1, 42})
    assert result.recall == {1: 0.0, 5: 0.5, 10: 0.5}
    assert result.ap10 == pytest.approx((1 / 3) / 2)
    assert result.first_rank == 3
    assert query_metrics(ranking, [42]).first_rank is None


def test_query_metrics_refuses_a_ranking_too_short_to_decide():
    with pytest.raises(ValueError, match="at least 10"):
        query_metrics([4, 7, 1], [9])


def test_empty_relevant_names_the_query():
    with pytest.raises(ValueError, match="query 1: no relevant items"):
        retrieval_metrics(np.zeros((2, 3)), [[0], []])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        retrieval_metrics(np.zeros((1, 3)), [[3]])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[0.1, np.nan]]), [[0]])
    with pytest.raises(ValueError, match="relevant lists"):
        retrieval_metrics(np.zeros((2, 3)), [[0]])
    with pytest.raises(ValueError, match="positive integer"):
        retrieval_metrics(np.zeros((1, 3)), [[0]], ks=(0,))


def test_against_brute_force_on_random_scores():
    rng = np.random.default_rng(1)
    n_queries, n_items, ks = 60, 25, (1, 3, 5, 10, 30)
    scores = rng.integers(0, 6, size=(n_queries, n_items)) / 5.0  # ties on purpose
    relevant = [rng.choice(n_items, size=rng.integers(1, 14), replace=False).tolist() for _ in range(n_queries)]
    m = retrieval_metrics(scores, relevant, ks=ks)
    top = rank_items(scores, k=30)
    expected = [brute_force(row, set(rel), ks) for row, rel in zip(scores, relevant)]
    for q, (recall, ap10) in enumerate(expected):
        for result in (m.per_query[q], query_metrics(top[q], relevant[q], ks)):
            assert result.recall == pytest.approx(recall)
            assert result.ap10 == pytest.approx(ap10)
    assert m.map10 == pytest.approx(np.mean([ap for _, ap in expected]))
    assert m.recall == pytest.approx({k: np.mean([r[k] for r, _ in expected]) for k in ks})


def dcase2025_baseline_ap(row: np.ndarray, relevant: list[int], k: int) -> float:
    """The DCASE 2025 task 6 baseline's multi-positive AP, re-typed from its
    description: 0-based ranks of the relevant files (argsort of argsort of
    -scores), sorted; for the i-th of them (1-based) ranked below k add i / (rank + 1);
    divide by the number of relevant files. The baseline's argsort is not stable;
    here it is, which is amr's tie rule (the lower index first)."""
    ranks = np.argsort(np.argsort(-row, kind="stable"), kind="stable")[relevant]
    ap = 0.0
    for i, rank in enumerate(sorted(ranks), start=1):
        if rank >= k:
            break
        ap += i / (rank + 1)
    return ap / len(relevant)


@pytest.mark.parametrize("ties", [False, True])
def test_total_normalisation_equals_the_dcase2025_baseline(ties):
    rng = np.random.default_rng(7 if ties else 3)
    n_queries, n_items = 300, 120
    if ties:
        scores = rng.integers(0, 5, size=(n_queries, n_items)).astype(np.float64)  # many equal scores
    else:
        scores = rng.standard_normal((n_queries, n_items))
    relevant = [rng.choice(n_items, size=rng.integers(1, 13), replace=False).tolist() for _ in range(n_queries)]
    for k in (1, 10, 16):
        m = retrieval_metrics(scores, relevant, ap_ks=(k,), ap_norm=metrics.APNorm.total)
        expected = np.array([dcase2025_baseline_ap(row, rel, k) for row, rel in zip(scores, relevant)])
        got = np.array([r.ap[k] for r in m.per_query])
        assert np.max(np.abs(got - expected)) <= 1e-9, k
        assert abs(m.map[k] - expected.mean()) <= 1e-9
        assert np.count_nonzero(expected) >= 5  # the comparison is not only of zeros


def test_the_two_normalisations_differ_only_past_k_relevant_items():
    order = list(range(40))  # items 0..19 relevant and ranked on top
    row = scores_ranking(order)
    clipped = retrieval_metrics(row, [list(range(20))], ks=(16,), ap_ks=(16,))
    total = retrieval_metrics(row, [list(range(20))], ks=(16,), ap_ks=(16,), ap_norm="total")
    assert clipped.map == {16: 1.0}
    assert total.map[16] == pytest.approx(16 / 20)
    assert total.recall == {16: 16 / 20}
    assert total.as_dict() == pytest.approx({"R@16": 0.8, "mAP@16": 0.8})
    # three relevant items at ranks 1, 3 and 20: both divide by 3
    order = [0, 10, 1] + list(range(11, 27)) + [2] + list(range(3, 10))
    for norm in ("clipped", "total"):
        result = retrieval_metrics(scores_ranking(order), [[0, 1, 2]], ap_ks=(16,), ap_norm=norm).per_query[0]
        assert result.ap[16] == pytest.approx((1 + 2 / 3) / 3)


def test_ap_at_several_cut_offs_from_a_top_k_ranking():
    ranking = list(range(16))  # relevant 3 and 12 at ranks 4 and 13
    result = query_metrics(ranking, {3, 12, 99}, ks=(1, 16), ap_ks=(10, 16), ap_norm="total")
    assert result.ap[10] == pytest.approx((1 / 4) / 3)
    assert result.ap[16] == pytest.approx((1 / 4 + 2 / 13) / 3)
    with pytest.raises(ValueError, match="at least 16"):
        query_metrics(ranking[:10], {99}, ap_ks=(16,))
