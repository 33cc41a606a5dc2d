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
  `amr.evaluate.dcase`), averaged over queries.
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
model that built it; always searched exactly), or a baseline (`amr.evaluate.baselines`).

Modules: amr.evaluate.scorers (the evaluated items and what scores them),
amr.evaluate.run (`evaluate_models`, `evaluate`: queries, relevance, rankings),
amr.evaluate.report (metrics per model, breakdowns and run aggregates),
amr.evaluate.render (table, plot, per-query JSON).
"""

from amr.evaluate.render import check_per_query_output, plot_recall, render_table, write_per_query
from amr.evaluate.report import CURVE_KS, EvaluationReport, ModelResult
from amr.evaluate.run import evaluate, evaluate_models, group_of, make_scorers, model_names, relevant_indices
from amr.evaluate.scorers import ALL, Collection, IndexScorer, RetrieverScorer, Scorer, index_collection, open_collection

__all__ = [
    "ALL",
    "CURVE_KS",
    "Collection",
    "EvaluationReport",
    "IndexScorer",
    "ModelResult",
    "RetrieverScorer",
    "Scorer",
    "check_per_query_output",
    "evaluate",
    "evaluate_models",
    "group_of",
    "index_collection",
    "make_scorers",
    "model_names",
    "open_collection",
    "plot_recall",
    "relevant_indices",
    "render_table",
    "write_per_query",
]
