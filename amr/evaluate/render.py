"""What `amr evaluate` writes (see amr.evaluate): the table, the recall plot
and the per-query JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from amr.errors import AmrError
from amr.evaluate.report import CURVE_KS, EvaluationReport
from amr.files import atomic_write, refuse_overwrite


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
