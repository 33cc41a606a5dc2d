"""`amr evaluate`: the plumbing around amr.metrics (items, queries, relevant ids,
several models, breakdowns, per-query JSON, the plot), the BM25 baseline and
the command. The metrics themselves are tested in tests/test_metrics.py.

A fake retriever with hand-made vectors (tests/support/slots.py) gives rankings that can be worked out
by hand: item ``slot`` j has the vector e_j, and the query "2 0" the vector
2·e_2 + 1·e_0 (earlier numbers weigh more), so it ranks slot 2, then slot 0,
then everything else in collection order (ties go to the earlier item).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.slots import SlotRetriever, make_cache
from typer.testing import CliRunner

from amr.cli import app
from amr.errors import AmrError
from amr.evaluate import (
    Collection,
    IndexScorer,
    RetrieverScorer,
    evaluate,
    index_collection,
    model_names,
    open_collection,
    plot_recall,
    render_table,
    write_per_query,
)
from amr.evaluate.baselines import BM25, tokenize
from amr.index.build import build_index
from amr.index.reader import open_index
from amr.items import Item, Query
from amr.metrics import retrieval_metrics

# (item, slot). Test split: t0..t3; the train item is never evaluated on the test split.
ITEMS = [
    (Item("t0", "/a/t0.wav", "test", {"title": "dog barking"}, ["0", "0 1"]), 0),
    (Item("t1", "/a/t1.wav", "test", {}, ["2 1"]), 1),
    (Item("t2", "/a/t2.wav", "test", {"keywords": ["rain", "roof"]}, ["3"]), 2),
    (Item("t3", "/a/t3.wav", "test", {"title": "thunder storm"}, ["3"]), 3),
    (Item("r0", "/a/r0.wav", "train", {"title": "train horn"}, ["4"]), 4),
]
# Ranks of the caption queries t0#0, t0#1, t1#0, t2#0, t3#0 under SlotRetriever():
# "0" → t0 first; "0 1" → t0 first; "2 1" → t2, then t1 (2nd); "3" → t3, then t0, t1, t2 (4th); "3" → t3 first.
RANKS = [[1], [1], [2], [4], [1]]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return make_cache(tmp_path / "set.h5", ITEMS)


def test_caption_queries_of_the_split_rank_all_its_items(cache: Path) -> None:
    with open_collection([cache], "test") as collection:
        report = evaluate([RetrieverScorer("fake", SlotRetriever())], collection)
    assert [item.id for item in report.collection.items] == ["t0", "t1", "t2", "t3"]
    assert [q.id for q in report.queries] == ["t0#0", "t0#1", "t1#0", "t2#0", "t3#0"]
    result = report.results[0]
    assert result.ranks == RANKS
    assert result.metrics.recall[1] == pytest.approx(3 / 5)
    assert result.metrics.map10 == pytest.approx((1 + 1 + 1 / 2 + 1 / 4 + 1) / 5)
    assert report.summary()["models"][0]["metrics"]["R@5"] == 1.0  # 4 items: every clip is in the top 5
    # Ties go to the earlier item: for "3", t3 scores 1 and t0, t1, t2 tie at 0.
    assert result.top[3].tolist() == [3, 0, 1, 2]


def test_all_splits_and_unknown_splits(cache: Path) -> None:
    with open_collection([cache], "all") as collection:
        assert len(collection.items) == 5
    with pytest.raises(AmrError, match="unknown split 'dev'"):
        with open_collection([cache], "dev"):
            pass
    with pytest.raises(AmrError, match="no items in split val"):
        with open_collection([cache], "val"):
            pass


def test_explicit_queries_map_relevant_ids_to_positions_and_skip_other_splits(cache: Path) -> None:
    queries = [
        Query("both", "3 0", ["t3", "t0"], "test"),  # t3 1st, t0 2nd: R@1 = 1/2, AP@10 = (1/1 + 2/2) / 2
        Query("other", "4", ["r0"], "train"),  # another split: left out
        Query("any", "1", ["t1"]),  # no split: kept
    ]
    with open_collection([cache], "test") as collection:
        report = evaluate([RetrieverScorer("fake", SlotRetriever())], collection, queries)
    assert [q.id for q in report.queries] == ["both", "any"]
    result = report.results[0]
    assert result.ranks == [[1, 2], [1]]
    assert result.metrics.per_query[0].recall[1] == 0.5
    assert result.metrics.per_query[0].ap10 == 1.0


def test_queries_with_relevant_items_outside_the_evaluated_ones_are_named(cache: Path) -> None:
    queries = [Query("fine", "0", ["t0"]), Query("lost", "4", ["r0"]), Query("half", "0", ["t0", "nowhere"])]
    with open_collection([cache], "test") as collection:
        with pytest.raises(AmrError) as error:
            evaluate([RetrieverScorer("fake", SlotRetriever())], collection, queries)
    message = str(error.value)
    assert "2 queries" in message and "'lost' ('r0')" in message and "'half' ('nowhere')" in message
    assert "'fine'" not in message


def test_runs_of_one_configuration_get_mean_and_sample_std(cache: Path) -> None:
    scorers = [
        RetrieverScorer("seed0", SlotRetriever(0, "late")),
        RetrieverScorer("seed1", SlotRetriever(1, "late")),
        RetrieverScorer("seed2", SlotRetriever(2, "late")),
        RetrieverScorer("audio", SlotRetriever(0, "none")),  # alone in its configuration: no aggregate
        RetrieverScorer("zs1", SlotRetriever(0, "late", "zero-shot")),
        RetrieverScorer("zs2", SlotRetriever(1, "late", "zero-shot")),  # zero-shot models are never averaged
        BM25(),
    ]
    with open_collection([cache], "test") as collection:
        summary = evaluate(scorers, collection).summary()
    [aggregate] = summary["aggregates"]
    assert aggregate["fusion"] == "late" and aggregate["models"] == ["seed0", "seed1", "seed2"]
    for name in ("R@1", "R@5", "R@10", "mAP@10"):
        runs = [m["metrics"][name] for m in summary["models"][:3]]
        assert aggregate["mean"][name] == pytest.approx(sum(runs) / 3)
        assert aggregate["std"][name] == pytest.approx(np.std(runs, ddof=1))
    assert aggregate["std"]["mAP@10"] > 0
    assert [m["name"] for m in summary["models"]] == ["seed0", "seed1", "seed2", "audio", "zs1", "zs2", "bm25"]
    assert "mean ± std (3 runs)" in _text(render_table(summary))


def test_breakdown_by_metadata_averages_over_each_groups_queries(cache: Path) -> None:
    with open_collection([cache], "test") as collection:
        report = evaluate([RetrieverScorer("fake", SlotRetriever())], collection, by="has_metadata")
    assert report.groups == ["yes", "yes", "no", "yes", "yes"]  # t1 has no metadata
    summary = report.summary()
    assert summary["group_queries"] == {"no": 1, "yes": 4}
    groups = summary["models"][0]["groups"]
    assert groups["no"] == {"R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "mAP@10": 0.5}
    assert groups["yes"]["R@1"] == pytest.approx(3 / 4)
    assert groups["yes"]["mAP@10"] == pytest.approx((1 + 1 + 1 / 4 + 1) / 4)


def test_breakdown_of_several_relevant_items_and_by_field_and_split(cache: Path) -> None:
    queries = [Query("mixed", "3 0", ["t3", "t1"]), Query("kw", "2", ["t2"])]
    with open_collection([cache], "all") as collection:
        assert evaluate([BM25()], collection, queries, by="has_title").groups == ["mixed", "no"]
        assert evaluate([BM25()], collection, by="split").groups == ["test"] * 5 + ["train"]
        with pytest.raises(AmrError, match="--by colour: expected one of split, has_metadata"):
            evaluate([BM25()], collection, by="colour")


def test_per_query_json_has_the_summary_ranks_and_best_items(cache: Path, tmp_path: Path) -> None:
    with open_collection([cache], "test") as collection:
        report = evaluate([RetrieverScorer("fake", SlotRetriever()), BM25()], collection, by="has_metadata")
    write_per_query(report, tmp_path / "per-query.json")
    written = json.loads((tmp_path / "per-query.json").read_text())
    assert written["summary"] == json.loads(json.dumps(report.summary()))
    records = written["per_query"]
    assert len(records) == 2 * 5
    record = records[3]
    assert record == {
        "model": "fake",
        "query": "t2#0",
        "text": "3",
        "split": "test",
        "relevant": ["t2"],
        "ranks": [4],
        "has_metadata": "yes",
        "R@1": 0.0,
        "R@5": 1.0,
        "R@10": 1.0,
        "AP@10": 0.25,
        "top": ["t3", "t0", "t1", "t2"],
    }
    assert [r["ranks"] for r in records[:5]] == RANKS


def test_recall_curve_plot_is_written(cache: Path, tmp_path: Path) -> None:
    with open_collection([cache], "test") as collection:
        report = evaluate([RetrieverScorer("a", SlotRetriever(0)), RetrieverScorer("b", SlotRetriever(1))], collection, curves=True)
    curve = report.summary()["models"][0]["recall_curve"]
    assert len(curve) == 50 and curve[:4] == pytest.approx([3 / 5, 4 / 5, 4 / 5, 1.0])
    plot_recall(report, tmp_path / "recall.png")
    assert (tmp_path / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_index_scores_like_the_model_that_built_it(cache: Path, tmp_path: Path, slot_kinds: None) -> None:
    build_index(SlotRetriever(), [cache], tmp_path / "index.h5", splits=["test"], show_progress=False)
    index = open_index(tmp_path / "index.h5")
    with open_collection([cache], "test") as collection:
        report = evaluate([RetrieverScorer("model", SlotRetriever()), IndexScorer("index", index)], collection)
    assert report.results[0].ranks == report.results[1].ranks == RANKS
    assert report.summary()["aggregates"] == []  # one model (one fingerprint) is one run, not two
    # Without caches the index's own items are evaluated.
    alone = evaluate([IndexScorer("index", index)], index_collection(index, "test"))
    assert alone.results[0].ranks == RANKS
    with open_collection([cache], "all") as collection:
        with pytest.raises(AmrError, match="lacks 1 of the 5 evaluated items \\('r0'\\)"):
            evaluate([IndexScorer("index", index)], collection)
    with pytest.raises(AmrError, match="needs the embedding caches"):
        evaluate([RetrieverScorer("model", SlotRetriever())], index_collection(index, "test"))


def test_bm25_ranks_the_item_whose_metadata_matches_first(cache: Path) -> None:
    with open_collection([cache], "test") as collection:
        scores = BM25().score(collection, ["thunder", "a barking dog!", "roof", "nothing matches"])
    assert scores.argmax(axis=1)[:3].tolist() == [3, 0, 2]
    assert scores[:, 1].tolist() == [0.0] * 4  # t1 has no metadata
    assert scores[3].tolist() == [0.0] * 4
    assert (scores[:3].max(axis=1) > 0).all()


def bm25_by_hand(documents: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Lucene's BM25, term by term from the formula: idf · tf / (tf + k1 (1 - b + b dl / avgdl))
    (without Okapi's constant factor k1 + 1, which changes no ranking)."""
    n, average = len(documents), np.mean([len(d) for d in documents])
    scores = np.zeros(n)
    for term in query:
        df = sum(term in d for d in documents)
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(documents):
            tf = d.count(term)
            scores[i] += idf * tf / (tf + k1 * (1 - b + b * len(d) / average))
    return scores


def test_bm25_scores_are_the_formulas(cache: Path) -> None:
    with open_collection([cache], "test") as collection:
        texts = ["rain rain on the roof", "Dog, storm?"]
        scores = BM25().score(collection, texts)
    documents = [["dog", "barking"], ["rain", "roof"], ["thunder", "storm"]]  # t0, t2, t3
    for row, text in zip(scores, texts):
        np.testing.assert_allclose(row[[0, 2, 3]], bm25_by_hand(documents, tokenize(text)), rtol=1e-5)  # bm25s scores in float32


def test_bm25_without_any_metadata_scores_zero_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    items = [Item(f"x{i}", f"/x{i}.wav", "test", {}, ["a dog"]) for i in range(3)]
    items.append(Item("punct", "/p.wav", "test", {"title": "?!"}, ["a dog"]))  # nothing left after normalising
    scores = BM25().score(Collection(items, "test", "memory"), ["a dog"])
    assert scores.tolist() == [[0.0] * 4]
    assert "none of the 4 items has metadata" in capsys.readouterr().err


def test_model_names_are_short_and_distinct(tmp_path: Path) -> None:
    for folder in ("runs/a/seed0", "runs/b/seed0", "runs/seed1"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "late.h5").touch()
    names = model_names([tmp_path / "runs/a/seed0", tmp_path / "runs/b/seed0", tmp_path / "runs/seed1", tmp_path / "late.h5"])
    assert names == ["a/seed0", "b/seed0", "seed1", "late"]
    with pytest.raises(AmrError, match="given more than once"):
        model_names([tmp_path / "late.h5", tmp_path / "late.h5"])


def test_the_command_prints_json_in_a_pipe_and_writes_the_files(cache: Path, tmp_path: Path, slot_kinds: None) -> None:
    runs = [tmp_path / "shift-0", tmp_path / "shift-1"]
    for run in runs:
        run.mkdir()
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            *map(str, runs),
            "--cache",
            str(cache),
            "--bm25",
            "--by",
            "has_metadata",
            "--per-query",
            str(tmp_path / "q.json"),
            "--plot",
            str(tmp_path / "r.png"),
            "-w",
            str(tmp_path / "ws"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [m["name"] for m in summary["models"]] == ["shift-0", "shift-1", "bm25"]
    assert summary["models"][0]["metrics"]["R@1"] == pytest.approx(3 / 5)
    assert summary["aggregates"][0]["models"] == ["shift-0", "shift-1"]
    assert "R@1" in result.stderr and "mean ± std (2 runs)" in result.stderr  # the table, beside the JSON
    assert len(json.loads((tmp_path / "q.json").read_text())["per_query"]) == 15
    assert (tmp_path / "r.png").stat().st_size > 0


def test_the_command_fails_cleanly(cache: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--bm25", "--cache", str(cache), "--split", "val", "-w", str(tmp_path)])
    assert result.exit_code == 1 and "no items in split val" in result.stderr
    result = CliRunner().invoke(app, ["evaluate", "-w", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no checkpoint in workspace" in result.stderr


def _text(table) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text()


def test_metrics_agree_with_amr_metrics(cache: Path) -> None:
    """The report's numbers are amr.metrics' on the same score matrix."""
    retriever = SlotRetriever(1)
    with open_collection([cache], "test") as collection:
        report = evaluate([RetrieverScorer("fake", retriever)], collection)
        vectors = retriever.encode_items(collection.parts[0][0], collection.parts[0][1])
    scores = retriever.encode_queries([q.text for q in report.queries]) @ vectors.T
    expected = retrieval_metrics(scores, [[0], [0], [1], [2], [3]])
    assert report.summary()["models"][0]["metrics"] == expected.as_dict()
    assert [r[0] for r in report.results[0].ranks] == [r.first_rank for r in expected.per_query]
