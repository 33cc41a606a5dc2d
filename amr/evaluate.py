"""`amr evaluate`: text-to-audio retrieval metrics of models on a dataset split,
as the Clotho and AudioCaps benchmarks (DCASE task 6b / 8) define them.

The protocol:

* **Items**: the items of one split (or all) of the caches given, in cache
  order (the caches in the order given, each in storage order), or the items
  of an index (its row order). Every query ranks all of them.
* **Queries**: by default one per caption of those items, relevant to exactly
  its clip (`amr.items.caption_queries`: all five captions of a Clotho clip are
  queries); or explicit queries with lists of relevant ids (``queries.jsonl``),
  of which those whose ``split`` names another split are left out. A query
  whose relevant items are not all among the evaluated items is an error that
  names it: a relevant item that cannot be ranked is never a silent zero.
* **Metrics**: R@1, R@5, R@10 and mAP@10 of `amr.metrics` by default, or R@K and
  mAP@K at the cut-offs asked for (one relevant item: R@K = [rank <= K], AP@K =
  1/rank if rank <= K; several: R@K = share of the relevant items in the top K,
  AP@K = sum of precision@k at their ranks k <= K over min(|relevant|, K), or
  over |relevant| with the ``total`` normalisation of DCASE 2025, see
  `amr.dcase`), averaged over queries.
* **Ties**: an item ranks above every item with the same score that comes
  after it in the item order above, for every model alike.
* **Several models**: models that share their whole configuration except the
  seed (the retrievers' ``configuration``) are runs of one configuration;
  each such group of two or more distinct models (by fingerprint: a
  checkpoint and an index built with it count once) gets a mean and a sample
  standard deviation (n - 1) per metric. Zero-shot models (no seed) and
  baselines are never averaged.
* **Breakdown** (``by``): each query gets a value, and every metric is also
  averaged over the queries of each value (each still ranks all items).
  ``split`` is the query's split (else its relevant items'); ``has_metadata``
  and ``has_<field>`` (keywords, tags, title, description) say whether its
  relevant items have any metadata / that field: ``yes``, ``no``, or ``mixed``
  when a query's relevant items differ.

Models are *scorers*: anything that turns the items and the query texts into
a (queries, items) score matrix: a retriever (item and query vectors, inner
product), an existing index (its stored vectors and the query encoder of the
model that built it; always searched exactly), or a baseline (`amr.baselines`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.table import Table

from amr.baselines import BM25
from amr.cache import EmbeddingCache, open_caches
from amr.checkpoint import checkpoint_spec
from amr.config import BY_FIELDS
from amr.console import console, progress
from amr.datasets import load_queries
from amr.dcase import read_relevance, write_model_scores
from amr.errors import AmrError
from amr.files import atomic_write, refuse_overwrite
from amr.fusion import Fusion
from amr.index import Index
from amr.indexing import ENCODE_BATCH
from amr.items import ALL_SPLITS as ALL
from amr.items import SPLITS, Item, Query, caption_queries
from amr.metrics import DEFAULT_AP_KS, DEFAULT_KS, APNorm, Metrics, QueryResult, rank_items, retrieval_metrics
from amr.retrievers import Retriever, load_retriever
from amr.workspace import Workspace
from amr.zeroshot import zero_shot_variants

CURVE_KS = tuple(range(1, 51))  # recall@K of the plot
TOP_STORED = 10  # best items per query kept for the per-query JSON
TIES = "an item ranks above every item with the same score that comes after it in the item order"
_RANK_BLOCK = 1 << 22  # scores ranked at once, bounding the temporaries


@dataclass
class Collection:
    """The evaluated items in ranking order, and for each cache the rows of
    its items that are evaluated (empty when the items come from an index)."""

    items: list[Item]
    split: str
    source: str  # what the items were read from, for messages
    parts: list[tuple[EmbeddingCache, list[int]]] = field(default_factory=list)


class Scorer(Protocol):
    name: str  # the row of the table
    kind: str  # "trained", "zero-shot", "bm25"
    fusion: Fusion | None  # None for a baseline
    fingerprint: str | None  # identifies the model: one model is one run, however often it is evaluated
    configuration: str | None  # runs sharing it are averaged; None never

    def score(self, collection: Collection, texts: list[str]) -> np.ndarray:
        """(len(texts), len(collection.items)) scores, higher is better."""
        ...


@contextmanager
def open_collection(cache_paths: Sequence[Path], split: str = "test") -> Iterator[Collection]:
    """The items of ``split`` (or ``all``) in the caches, which stay open meanwhile."""
    _check_split(split)
    caches = open_caches(cache_paths)
    try:
        parts = [(c, [i for i, item in enumerate(c.items) if split in (ALL, item.split)]) for c in caches]
        items = [cache.items[i] for cache, rows in parts for i in rows]
        yield _checked(Collection(items, split, ", ".join(str(p) for p in cache_paths), parts))
    finally:
        for cache in caches:
            cache.close()


def index_collection(index: Index, split: str = "test") -> Collection:
    """The items of ``split`` (or ``all``) in an index, for evaluating indexes without their caches."""
    _check_split(split)
    items = [item for item in map(index.item, range(index.items_count)) if split in (ALL, item.split)]
    return _checked(Collection(items, split, str(index.path)))


def _check_split(split: str) -> None:
    if split != ALL and split not in SPLITS:
        raise AmrError(f"unknown split {split!r}: use {', '.join(SPLITS)} or {ALL}")


def _checked(collection: Collection) -> Collection:
    if not collection.items:
        raise AmrError(f"{collection.source}: no items in split {collection.split}")
    seen: set[str] = set()
    for item in collection.items:
        if item.id in seen:
            raise AmrError(f"{collection.source}: item id {item.id!r} occurs more than once; evaluate the caches separately")
        seen.add(item.id)
    return collection


class RetrieverScorer:
    """A model that encodes items and queries (a checkpoint, zero-shot): score = inner product."""

    def __init__(self, name: str, retriever: Retriever):
        self.name, self.kind, self.retriever = name, retriever.kind, retriever
        self.fusion: Fusion | None = retriever.fusion
        self.fingerprint: str | None = retriever.fingerprint
        self.configuration: str | None = retriever.configuration

    def score(self, collection: Collection, texts: list[str]) -> np.ndarray:
        if not collection.parts:
            raise AmrError(f"{self.name}: a model needs the embedding caches of the items (--cache), not {collection.source}")
        total = sum(len(rows) for _, rows in collection.parts)
        blocks = []
        with progress(show=console.is_terminal, transient=True) as bar:
            task = bar.add_task(f"{self.name}: items", total=total)
            for cache, rows in collection.parts:
                for start in range(0, len(rows), ENCODE_BATCH):
                    blocks.append(self.retriever.encode_items(cache, rows[start : start + ENCODE_BATCH]))
                    bar.advance(task, len(blocks[-1]))
        queries = self.retriever.encode_queries(texts)
        scores = queries @ np.concatenate(blocks).T
        position = 0
        for cache, rows in collection.parts:  # a long recording scores by its best segment, as in an index
            for row in rows:
                if len(cache.segments(row)) > 1:
                    scores[:, position] = (queries @ self.retriever.encode_segments(cache, row).T).max(axis=1)
                position += 1
        if getattr(self.retriever, "captions_as_metadata", False):
            _unleak_captions(self.retriever, collection, texts, queries, scores)
        return scores


def _unleak_captions(retriever: Any, collection: Collection, texts: list[str], queries: np.ndarray, scores: np.ndarray) -> None:
    """A model whose metadata are captions (Clotho's full-sentence setting) took
    each item's first caption as its metadata; where that caption is the query
    itself, score the item with its first caption that is not (none when it has
    no other): no query ever sees its own sentence as metadata."""
    where = [(cache, row) for cache, rows in collection.parts for row in rows]
    first: dict[str, list[int]] = {}
    for position, item in enumerate(collection.items):
        if item.captions:
            first.setdefault(item.captions[0], []).append(position)
    for q, text in enumerate(texts):
        for position in first.get(text, []):
            cache, row = where[position]
            other = next((c for c in collection.items[position].captions if c != text), None)
            scores[q, position] = queries[q] @ retriever.encode_items_with_metadata(cache, [row], [other])[0]


class IndexScorer:
    """An existing index: its stored item vectors, queries encoded by the model
    that built it (exact inner products; an approximate sidecar is not used)."""

    def __init__(self, name: str, index: Index, device: torch.device | str = "cpu"):
        self.name, self.index = name, index
        self.retriever = load_retriever(index.header.retriever, device)
        index.header.require_retriever(self.retriever, index.path)
        self.kind = index.header.kind
        self.fusion: Fusion | None = index.header.fusion
        self.fingerprint: str | None = index.header.fingerprint
        self.configuration: str | None = index.header.configuration

    def score(self, collection: Collection, texts: list[str]) -> np.ndarray:
        """A long recording indexed as segments scores by its best segment."""
        if getattr(self.retriever, "captions_as_metadata", False):
            raise AmrError(
                f"{self.index.path}: its model takes captions as metadata, so each indexed item holds one of its captions, "
                "which are also the queries; evaluate the checkpoint on the caches instead (amr evaluate CHECKPOINT --cache ...)"
            )
        row_of = {item_id: i for i, item_id in enumerate(self.index.ids())}
        missing = [item.id for item in collection.items if item.id not in row_of]
        if missing:
            raise AmrError(
                f"{self.index.path}: lacks {len(missing)} of the {len(collection.items)} evaluated items "
                f"({_some(missing)}); index them (amr index --append) or evaluate without --cache"
            )
        wanted = np.array([row_of[item.id] for item in collection.items])
        rows = np.flatnonzero(np.isin(self.index.row_item, wanted))
        scores = self.retriever.encode_queries(texts) @ np.asarray(self.index.vectors[rows], np.float32).T
        owners = self.index.row_item[rows]
        firsts = np.flatnonzero(np.r_[True, np.diff(owners) != 0])
        best = np.maximum.reduceat(scores, firsts, axis=1)  # (queries, items in index order)
        column = {int(item): c for c, item in enumerate(owners[firsts])}
        return best[:, [column[int(i)] for i in wanted]]


@dataclass
class ModelResult:
    name: str
    kind: str
    fusion: Fusion | None
    fingerprint: str | None
    configuration: str | None
    metrics: Metrics
    ranks: list[list[int]]  # per query: the 1-based ranks of its relevant items, ascending
    top: np.ndarray  # (queries, <= TOP_STORED) item positions, best first


@dataclass
class EvaluationReport:
    collection: Collection
    queries: list[Query]
    results: list[ModelResult]
    by: str | None = None
    groups: list[str] | None = None  # per query: its value of ``by``
    ks: tuple[int, ...] = DEFAULT_KS  # the recall cut-offs shown
    ap_ks: tuple[int, ...] = DEFAULT_AP_KS  # the mAP cut-offs shown
    ap_norm: APNorm = APNorm.clipped

    def summary(self) -> dict[str, Any]:
        """Everything the table shows, as JSON-able data; metrics are fractions in [0, 1]."""
        values = sorted(set(self.groups)) if self.groups is not None else []
        subsets = {v: [q for q, g in enumerate(self.groups or []) if g == v] for v in values}
        models = []
        for r in self.results:
            entry: dict[str, Any] = {
                "name": r.name,
                "kind": r.kind,
                "fusion": r.fusion.value if r.fusion else None,
                "fingerprint": r.fingerprint,
                "configuration": r.configuration,
                "metrics": self._means(r.metrics.per_query),
            }
            if self.by is not None:
                entry["groups"] = {v: self._means([r.metrics.per_query[q] for q in rows]) for v, rows in subsets.items()}
            if set(CURVE_KS) <= set(r.metrics.recall):
                entry["recall_curve"] = [r.metrics.recall[k] for k in CURVE_KS]
            models.append(entry)
        return {
            "source": self.collection.source,
            "split": self.collection.split,
            "items": len(self.collection.items),
            "queries": len(self.queries),
            "ties": TIES,
            "ap_normalisation": self.ap_norm.value,
            "by": self.by,
            "group_queries": {v: len(rows) for v, rows in subsets.items()} if self.by is not None else None,
            "models": models,
            "aggregates": _aggregates(models, values if self.by is not None else None),
        }

    def per_query(self) -> list[dict[str, Any]]:
        """One record per (model, query): its relevant ids, their ranks, its metrics and the best items."""
        ids = [item.id for item in self.collection.items]
        records = []
        for r in self.results:
            for q, query in enumerate(self.queries):
                result = r.metrics.per_query[q]
                record: dict[str, Any] = {
                    "model": r.name,
                    "query": query.id,
                    "text": query.text,
                    "split": query.split,
                    "relevant": query.relevant,
                    "ranks": r.ranks[q],
                }
                if self.by is not None and self.groups is not None:
                    record[self.by] = self.groups[q]
                record.update({f"R@{k}": result.recall[k] for k in self.ks})
                record.update({f"AP@{k}": result.ap[k] for k in self.ap_ks})
                record["top"] = [ids[i] for i in r.top[q]]
                records.append(record)
        return records

    def _means(self, results: Sequence[QueryResult]) -> dict[str, float]:
        """The shown R@K and mAP@K averaged over some queries' results."""
        means = {f"R@{k}": float(np.mean([r.recall[k] for r in results])) for k in self.ks}
        means.update({f"mAP@{k}": float(np.mean([r.ap[k] for r in results])) for k in self.ap_ks})
        return means


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
    ``relevance`` a DCASE 2025 metadata_eval.csv (`amr.dcase.read_relevance`;
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
    one scorer's score matrix there as a DCASE submission (`amr.dcase`)."""
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


def _aggregates(models: list[dict[str, Any]], values: list[str] | None) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of every configuration with two or more distinct models."""
    by_configuration: dict[str, dict[str, dict[str, Any]]] = {}
    for model in models:
        if model["configuration"] is not None:
            by_configuration.setdefault(model["configuration"], {}).setdefault(model["fingerprint"] or model["name"], model)
    aggregates = []
    for configuration, distinct in by_configuration.items():
        runs = list(distinct.values())
        if len(runs) < 2:
            continue
        entry: dict[str, Any] = {
            "fusion": runs[0]["fusion"],
            "kind": runs[0]["kind"],
            "configuration": configuration,
            "models": [m["name"] for m in runs],
            **_spread([m["metrics"] for m in runs]),
        }
        if values is not None:
            entry["groups"] = {v: _spread([m["groups"][v] for m in runs]) for v in values}
        aggregates.append(entry)
    return aggregates


def _spread(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        "mean": {name: float(np.mean([r[name] for r in runs])) for name in runs[0]},
        "std": {name: float(np.std([r[name] for r in runs], ddof=1)) for name in runs[0]},
    }


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _some(ids: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(map(repr, ids[:shown])) + more


# --- output -------------------------------------------------------------------------------


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


def render_table(summary: dict[str, Any]) -> Table:
    """The summary as the paper reports it: percent, two decimals; runs as mean ± std."""
    by = summary["by"]
    table = Table(
        title=f"text-to-audio retrieval, split {summary['split']}: {summary['items']} items, {summary['queries']} queries (%)",
        title_justify="left",
    )
    metric_names = list(summary["models"][0]["metrics"]) if summary["models"] else []
    for column in ("model", "fusion", *([by] if by else []), "queries", *metric_names):
        table.add_column(column, justify="left" if column in ("model", "fusion", by) else "right")
    values = list(summary["group_queries"] or {})

    def rows(name: str, fusion: str, overall: Any, groups: dict[str, Any] | None, cell) -> None:
        lead = [name, fusion] + (["all"] if by else [])
        table.add_row(*lead, str(summary["queries"]), *cell(overall))
        for v in values if groups is not None else []:
            table.add_row("", "", v, str(summary["group_queries"][v]), *cell(groups[v]))

    def plain(metrics: dict[str, float]) -> list[str]:
        return [f"{100 * x:.2f}" for x in metrics.values()]

    def spread(s: dict[str, dict[str, float]]) -> list[str]:
        return [f"{100 * m:.2f} ± {100 * s['std'][k]:.2f}" for k, m in s["mean"].items()]

    for model in summary["models"]:
        rows(model["name"], model["fusion"] or model["kind"], model["metrics"], model.get("groups"), plain)
    for i, agg in enumerate(summary["aggregates"]):
        if i == 0:
            table.add_section()
        rows(f"mean ± std ({len(agg['models'])} runs)", agg["fusion"], agg, agg.get("groups"), spread)
    return table


def plot_recall(report: EvaluationReport, path: Path) -> None:
    """Recall@K for K = 1..50 (up to the number of items), one curve per model, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = [k for k in CURVE_KS if k <= len(report.collection.items)]
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for r in report.results:
        if not set(ks) <= set(r.metrics.recall):
            raise ValueError("evaluate with ks=CURVE_KS to plot recall curves")
        axes.plot(ks, [100 * r.metrics.recall[k] for k in ks], label=r.name)
    axes.set(
        xlabel="K",
        ylabel="recall@K (%)",
        ylim=(0, 100),
        xlim=(1, ks[-1]),
        title=f"text-to-audio, split {report.collection.split}: {len(report.collection.items)} items, {len(report.queries)} queries",
    )
    axes.grid(alpha=0.3)
    axes.legend()
    try:
        figure.savefig(path, dpi=120)
    except OSError as e:
        raise AmrError(f"{path}: cannot write the plot ({e.strerror or e})") from e


_PER_QUERY_START = b'{"summary": '  # how every per-query results file begins


def check_per_query_output(path: Path, force: bool = False) -> None:
    """Refuse a --per-query path that is a directory, or a file of another kind
    (not per-query results: an embedding cache, say) unless ``force``."""

    def is_per_query(existing: Path) -> bool:
        with open(existing, "rb") as f:
            return f.read(len(_PER_QUERY_START)) == _PER_QUERY_START

    refuse_overwrite(path, "per-query results", is_per_query, force)


def write_per_query(report: EvaluationReport, path: Path) -> None:
    """``{"summary": ..., "per_query": [...]}`` as JSON, written atomically (a
    failure, a full disk say, leaves what was at ``path`` as it was)."""
    document = json.dumps({"summary": report.summary(), "per_query": report.per_query()}, ensure_ascii=False) + "\n"
    atomic_write(path, document)
