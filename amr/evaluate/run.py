"""`amr evaluate` itself (see amr.evaluate): the scorers asked for, the
queries and their relevant items, and every scorer's rankings measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amr.config import BY_FIELDS
from amr.console import console
from amr.datasets import load_queries
from amr.errors import AmrError
from amr.evaluate.baselines import BM25
from amr.evaluate.dcase import read_relevance, write_model_scores
from amr.evaluate.report import CURVE_KS, EvaluationReport, ModelResult
from amr.evaluate.scorers import ALL, Collection, IndexScorer, RetrieverScorer, Scorer, _some, index_collection, open_collection
from amr.index.reader import Index
from amr.items import Item, Query, caption_queries
from amr.metrics import DEFAULT_AP_KS, DEFAULT_KS, APNorm, rank_items, retrieval_metrics
from amr.model.checkpoint import checkpoint_spec
from amr.model.retrievers import load_retriever
from amr.model.zeroshot import zero_shot_variants
from amr.workspace import Workspace

TOP_STORED = 10  # best items per query kept for the per-query JSON
_RANK_BLOCK = 1 << 22  # scores ranked at once, bounding the temporaries


def evaluate_models(
    checkpoints: Sequence[Path],
    index_paths: Sequence[Path],
    cache_paths: Sequence[Path],
    split: str = "test",
    *,
    queries: Path | None = None,
    zero_shot: bool = False,
    ablate: bool = False,
    bm25: bool = False,
    by: str | None = None,
    curves: bool = False,
    ks: Sequence[int] = DEFAULT_KS,
    ap_ks: Sequence[int] = DEFAULT_AP_KS,
    ap_norm: APNorm = APNorm.clipped,
    relevance: Path | None = None,
    lenient: bool = False,
    submission: Path | None = None,
    workspace: Workspace | None = None,
    device: torch.device | str = "cpu",
) -> EvaluationReport:
    """`amr evaluate`: score checkpoints, indexes, the zero-shot model and BM25 side by side.

    The items are those of ``cache_paths``, or, with none, the first index's.
    ``workspace``, when given, fills in the checkpoints and caches not given
    as `amr evaluate` does (`Workspace.evaluated`: its latest ones).
    ``queries`` is a queries.jsonl (default: the items' captions), or
    ``relevance`` a DCASE 2025 metadata_eval.csv (`amr.evaluate.dcase.read_relevance`;
    ``lenient`` skips and reports its rows that match nothing); ``curves``
    adds recall@1..50 for a plot; ``ks``, ``ap_ks``, ``ap_norm`` and ``submission`` as in `evaluate`."""
    if workspace is not None:
        checkpoints, cache_paths = workspace.evaluated(checkpoints, index_paths, cache_paths, zero_shot, bm25)
    if not cache_paths and not index_paths:
        raise AmrError("nothing to evaluate on: give caches or an index")
    scorers, indexes = make_scorers(checkpoints, index_paths, zero_shot, ablate, bm25, device)
    if queries is not None and relevance is not None:
        raise AmrError("give --queries or --relevance, not both")
    explicit = load_queries(queries) if queries is not None else None
    options: dict[str, Any] = {"ap_ks": ap_ks, "ap_norm": ap_norm, "curves": curves, "submission": submission}
    if cache_paths:
        with open_collection(list(cache_paths), split) as collection:
            if relevance is not None:
                explicit = read_relevance(relevance, collection.items, lenient)
            return evaluate(scorers, collection, explicit, by, ks, **options)
    collection = index_collection(indexes[0], split)
    if relevance is not None:
        explicit = read_relevance(relevance, collection.items, lenient)
    return evaluate(scorers, collection, explicit, by, ks, **options)


def make_scorers(
    checkpoints: Sequence[Path],
    index_paths: Sequence[Path],
    zero_shot: bool,
    ablate: bool,
    bm25: bool,
    device: torch.device | str,
) -> tuple[list[Scorer], list[Index]]:
    """The scorers of `evaluate_models` and the indexes opened."""
    names = model_names([*checkpoints, *index_paths])
    indexes = [Index(path) for path in index_paths]
    scorers: list[Scorer] = [RetrieverScorer(name, load_retriever(checkpoint_spec(path), device)) for name, path in zip(names, checkpoints)]
    scorers += [IndexScorer(name, ix, device) for name, ix in zip(names[len(checkpoints) :], indexes)]
    if zero_shot:
        scorers += [RetrieverScorer(name, retriever) for name, retriever in zero_shot_variants(ablate, device)]
    if bm25:
        scorers.append(BM25())
    return scorers, indexes


def evaluate(
    scorers: Sequence[Scorer],
    collection: Collection,
    queries: Sequence[Query] | None = None,
    by: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    ap_ks: Sequence[int] = DEFAULT_AP_KS,
    ap_norm: APNorm = APNorm.clipped,
    curves: bool = False,
    submission: Path | None = None,
) -> EvaluationReport:
    """Score every query against every item with each scorer and measure.

    ``queries`` default to the captions of the items; explicit ones whose split
    is another than the collection's are left out. ``ks`` are the recall and
    ``ap_ks`` the mAP cut-offs reported, AP normalised by ``ap_norm``;
    ``curves`` adds recall at CURVE_KS for a plot; ``submission`` writes the
    one scorer's score matrix there as a DCASE submission (`amr.evaluate.dcase`)."""
    if by is not None and by not in BY_FIELDS:
        raise AmrError(f"--by {by}: expected one of {', '.join(BY_FIELDS)}")
    names = [s.name for s in scorers]
    if submission is not None and len(scorers) != 1:
        raise AmrError(f"a submission holds one model's scores; {len(scorers)} models are evaluated ({', '.join(names)})")
    if len(set(names)) < len(names):
        raise AmrError(f"two models are named alike ({', '.join(names)}); give each once")
    if queries is None:
        queries = caption_queries(collection.items)
    else:
        queries = _in_split(queries, collection.split)
    if not queries:
        raise AmrError(f"{collection.source}: no queries for split {collection.split} (no captions; give a queries.jsonl)")
    relevant = relevant_indices(collection, queries)
    groups = [group_of(by, q, [collection.items[i] for i in rel]) for q, rel in zip(queries, relevant)] if by else None
    shown, ap_shown = tuple(sorted(set(ks))), tuple(sorted(set(ap_ks)))
    recall_ks = sorted(set(shown) | (set(CURVE_KS) if curves else set()))
    texts = [q.text for q in queries]
    results = []
    for scorer in scorers:
        scores = scorer.score(collection, texts)
        if scores.shape != (len(texts), len(collection.items)):
            raise ValueError(f"{scorer.name}: scores of shape {scores.shape}, expected {(len(texts), len(collection.items))}")
        if submission is not None:
            write_model_scores(submission, collection.items, texts, scores)
        ranks, top = _rankings(scores, relevant)
        metrics = retrieval_metrics(scores, relevant, recall_ks, ap_shown, ap_norm)
        results.append(ModelResult(scorer.name, scorer.kind, scorer.fusion, scorer.fingerprint, scorer.configuration, metrics, ranks, top))
    return EvaluationReport(collection, list(queries), results, by, groups, shown, ap_shown, APNorm(ap_norm))


def _in_split(queries: Sequence[Query], split: str) -> list[Query]:
    kept = [q for q in queries if split == ALL or q.split in (None, split)]
    if len(kept) < len(queries):
        console.print(f"left out {_count(len(queries) - len(kept), 'query', 'queries')} of other splits than {split}", highlight=False)
    return kept


def relevant_indices(collection: Collection, queries: Sequence[Query]) -> list[list[int]]:
    """Each query's relevant ids as item positions; a query with a relevant id
    that is not among the evaluated items is an AmrError naming it."""
    position = {item.id: i for i, item in enumerate(collection.items)}
    absent = [(q, [r for r in q.relevant if r not in position]) for q in queries]
    absent = [(q, ids) for q, ids in absent if ids]
    if absent:
        named = "; ".join(f"{q.id!r} ({_some(ids, 3)})" for q, ids in absent[:5])
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise AmrError(
            f"{_count(len(absent), 'query has', 'queries have')} relevant items that are not among the {len(collection.items)} items of "
            f"split "
            f"{collection.split} in {collection.source}: {named}{more}"
        )
    return [[position[r] for r in q.relevant] for q in queries]


def group_of(by: str, query: Query, relevant: Sequence[Item]) -> str:
    """The breakdown value of a query (see the module docstring)."""
    if by == "split":
        return query.split or _agree({item.split for item in relevant})
    field_name = by.removeprefix("has_")
    present = {bool(item.metadata) if by == "has_metadata" else field_name in item.metadata for item in relevant}
    return _agree({"yes" if p else "no" for p in present})


def _agree(values: set[str]) -> str:
    return values.pop() if len(values) == 1 else "mixed"


def _rankings(scores: np.ndarray, relevant: list[list[int]]) -> tuple[list[list[int]], np.ndarray]:
    """Ranks of the relevant items and the best items of each query, by
    `amr.metrics.rank_items` (the same tie rule as the metrics)."""
    ranks, tops = [], []
    block = max(1, _RANK_BLOCK // scores.shape[1])
    for start in range(0, len(scores), block):
        order = rank_items(scores[start : start + block])
        tops.append(order[:, :TOP_STORED])
        for row, rel in zip(order, relevant[start : start + block]):
            ranks.append((np.flatnonzero(np.isin(row, rel)) + 1).tolist())
    return ranks, np.concatenate(tops)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def model_names(paths: Sequence[Path]) -> list[str]:
    """Short distinct names for checkpoints and indexes: the directory name or
    the file stem, with as many parent folders as it takes to tell them apart."""
    parts = [Path(p).resolve().with_suffix("").parts if Path(p).is_file() else Path(p).resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            return names
        grown = [d + 1 if n in clashes and d < len(p) else d for n, p, d in zip(names, parts, depth)]
        if grown == depth:
            raise AmrError(f"{', '.join(sorted(clashes))}: given more than once")
        depth = grown
