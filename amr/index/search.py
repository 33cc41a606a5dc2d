"""Search: the top rows of an index for query vectors (what `amr query` and `amr serve` call), and its primitives.

Scores are inner products (or, within one part, cosines); exact search and
the approximate index's candidates re-ranked exactly return (rows, scores),
best first, and break ties the same way: equal scores rank the lower row
first (amr.metrics' rule), so results never depend on the block size, the
number asked for or the sort algorithm. Rows marked dead (replaced by a later
append, see amr.index.format) are never returned. An item of several rows (a
long recording's segments) counts by its best one (`best_per_item`).
"""

from __future__ import annotations

import numpy as np

from amr.audio.audioset import audioset_class_names
from amr.errors import AmrError
from amr.index.format import sidecar_path
from amr.index.reader import Index
from amr.index.store import bits
from amr.metrics import rank_items

TINY = 1e-12  # floor of a norm that divides
EXACT_BLOCK = 1 << 16  # rows scored at once by exact search
# A search within one part (query by example: audio cosine) takes its
# candidates from the full inner product, which ranks differently: a larger pool.
PART_RERANK = 10
RERANK_FLOATS = 1 << 23  # candidate vector entries gathered at once for re-ranking (32 MB as float32)
# An index of a few rows per item asks the approximate index for this many
# more candidates, so that k distinct items survive keeping each item's best row.
DUPLICATE_ALLOWANCE = 4


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
        candidates = index.candidates(queries, pool)
        if candidates.size and candidates.max() >= len(index):  # lists of random bytes
            sidecar = sidecar_path(index.path, index.ann_info)
            raise AmrError(f"{sidecar}: proposed row {candidates.max()} of {len(index)}: damaged; run `amr index --ann` again")
        if index.ann_info.kind.on_disk:
            rows, scores = _rerank_from_disk(index, queries, candidates, pool if grouped else k, columns, norms)
        else:
            rows, scores = rerank(index.vectors, queries, candidates, pool if grouped else k, columns, norms)
        return _first_per_item(rows, scores, index.row_item, k) if grouped else (rows, scores)
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
    if (np.diff(index.row_item) < 0).any():
        raise AmrError(f"{index.store.folder / 'row_item'}: not in item order; the index is damaged, rebuild it")
    out_rows = np.empty((len(queries), k), np.int64)
    out_scores = np.empty((len(queries), k), np.float32)
    block = max(1, (1 << 24) // max(1, len(index)))  # queries scored at once: at most 16 M scores
    for q0 in range(0, len(queries), block):
        scores = queries[q0 : q0 + block] @ np.asarray(index.vectors[:, columns], np.float32).T
        if norms is not None:
            scores /= np.maximum(norms, TINY)
        if dead is not None:
            scores[:, bits(dead, 0, len(index))] = -np.inf
        item_scores, firsts = best_per_item(scores, index.row_item)
        best_items = rank_items(item_scores, k)
        for r, items in enumerate(best_items):
            for c, item in enumerate(items):
                start = firsts[item]
                end = firsts[item + 1] if item + 1 < len(firsts) else len(index)
                out_rows[q0 + r, c] = start + int(np.argmax(scores[r, start:end]))
            out_scores[q0 + r] = item_scores[r, items]
    return out_rows, out_scores


def best_per_item(scores: np.ndarray, row_item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each item scored by its best row (a long recording by its best segment):
    ``scores`` (Q, R) of rows whose items ``row_item`` (R,) come in runs (an
    item's rows consecutive) → the (Q, items) scores, items in the order of
    their runs, and the position of each run's first row."""
    firsts = np.flatnonzero(np.r_[True, np.diff(row_item) != 0])
    return np.maximum.reduceat(scores, firsts, axis=1), firsts


def _first_per_item(rows: np.ndarray, scores: np.ndarray, row_item: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`best_per_item` of rows ranked best first (-1: none): each item's first, the first k (padded with -1)."""
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
        return {part: float(query[columns] @ vector[columns] / max(float(norms[row]), TINY))}
    contributions, start = {}, 0
    for name, dim in index.header.parts:
        contributions[name] = float(query[start : start + dim] @ vector[start : start + dim])
        start += dim
    return contributions


def machine_tags(index: Index, row: int) -> list[tuple[str, float]]:
    """The row's most probable AudioSet classes, as the index stores them."""
    classes = audioset_class_names()
    return [(classes[c], round(float(p), 3)) for c, p in zip(index.tags[row], index.tag_probs[row])]


# --- primitives -------------------------------------------------------------------------------


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
    bitmap of rows never to return (an index's dead rows, little-endian bit order);
    k must not exceed the rows alive."""
    n = vectors.shape[0]
    best_rows = np.empty((queries.shape[0], 0), np.int64)
    best_scores = np.empty((queries.shape[0], 0), np.float32)
    for start in range(0, n, block):
        scores = queries @ np.asarray(vectors[start : start + block], np.float32).T
        if norms is not None:
            scores /= np.maximum(norms[start : start + block], TINY)
        if dead is not None:
            scores[:, bits(dead, start, start + scores.shape[1])] = -np.inf
        top = rank_items(scores, k)  # the block's best k, ties to the lower row
        best_rows = np.concatenate([best_rows, top + start], axis=1)
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        order = np.lexsort((best_rows, -best_scores), axis=1)[:, :k]
        best_rows = np.take_along_axis(best_rows, order, axis=1)
        best_scores = np.take_along_axis(best_scores, order, axis=1)
    return best_rows, best_scores


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
        exact /= np.maximum(norms[rows], TINY)
    scores = np.where(found, exact, -np.inf).astype(np.float32)
    order = np.lexsort((candidates, -scores), axis=1)[:, :k]
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(scores, order, axis=1)
