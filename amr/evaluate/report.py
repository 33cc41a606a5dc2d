"""The result of an evaluation (see amr.evaluate): per model its metrics,
ranks and best items, and the summary the table, the JSON and the plot show:
means per metric, per breakdown value, and mean ± std over the runs of one
configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from amr.evaluate.scorers import Collection
from amr.items import Query
from amr.metrics import DEFAULT_AP_KS, DEFAULT_KS, APNorm, Metrics, QueryResult
from amr.model.fusion import Fusion

CURVE_KS = tuple(range(1, 51))  # recall@K of the plot
TIES = "an item ranks above every item with the same score that comes after it in the item order"


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
