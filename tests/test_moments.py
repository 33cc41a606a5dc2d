"""Moments: refinement on score profiles worked out by hand, the moment
retrieval metrics against hand-computed values, the Clotho-Moment and
CASTELLA annotation formats, and the whole path on long recordings built from
the shared real clips (the benchmark's construction, at a small size)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from amr.errors import AmrError
from amr.moments import (
    IOU_THRESHOLDS,
    Moment,
    RefineConfig,
    average_precision,
    fine_spans,
    grid_moments,
    iou,
    moment_metrics,
    read_moments,
    refine,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def overlap_profile(events: list[tuple[float, float, float]], length: float, window: float = 2.0, hop: float = 0.5):
    """Fine windows over ``length`` s and, as scores, each window's overlapping share of each (start, end, height) event."""
    spans = [(a, a + window) for a in np.arange(0, length - window + 1e-9, hop)]
    scores = np.zeros(len(spans))
    for start, end, height in events:
        scores += height * np.array([max(0.0, min(b, end) - max(a, start)) / window for a, b in spans])
    return scores, spans


def test_refine_finds_each_event_to_half_a_hop_best_first() -> None:
    scores, spans = overlap_profile([(10, 20, 1.0), (40, 43, 0.6)], 60)
    moments = refine(scores, spans, RefineConfig(window=2.0, hop=0.5, threshold=0.3, moments=3))
    assert (moments[0].start, moments[0].end) == pytest.approx((9.75, 20.25))  # centres 10..20, half a hop either side
    assert moments[0].score == pytest.approx(1.0)
    assert abs(moments[1].start - 40) <= 0.25 and abs(moments[1].end - 43) <= 0.25 and moments[1].score == pytest.approx(0.6)
    assert len(moments) == 2  # the first event's flanks are no third moment; the flat background is one flank


def test_refine_is_clipped_to_the_recording_and_the_grid_is_ranked() -> None:
    scores, spans = overlap_profile([(0, 5, 1.0)], 20)
    assert refine(scores, spans, RefineConfig(moments=1))[0].start == 0.0
    ranked = grid_moments(np.array([0.1, 0.7, 0.7, 0.2]), [(0, 10), (5, 15), (10, 20), (15, 25)])
    assert [(m.start, m.score) for m in ranked] == [(5, 0.7), (10, 0.7), (15, 0.2), (0, 0.1)]  # ties: earlier first
    with pytest.raises(AmrError, match="hop <= window"):
        RefineConfig(window=1.0, hop=2.0)


def test_fine_spans_cover_the_sequence() -> None:
    assert fine_spans(20, 3.2, RefineConfig(window=2.0, hop=0.5)) == [(a, a + 6) for a in range(0, 15, 2)]  # 6 frames every 2
    assert fine_spans(21, 3.2, RefineConfig(window=2.0, hop=0.5))[-2:] == [(14, 20), (15, 21)]  # the last one ends with it
    assert fine_spans(4, 3.2, RefineConfig()) == [(0, 4)]  # shorter than one window: the whole sequence


def test_iou_and_average_precision_by_hand() -> None:
    assert iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert iou((0, 1), (2, 3)) == 0.0
    truth = [(0.0, 10.0), (20.0, 30.0)]
    # ranked: a hit, a miss, a second hit on the same window (no credit), a hit on the other window
    ranked = [Moment(0, 10, 0.9), Moment(40, 50, 0.8), Moment(1, 10, 0.7), Moment(21, 30, 0.6)]
    # precision at the two hits: 1/1 and 2/4, each worth half the recall
    assert average_precision(ranked, truth, 0.5) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert average_precision(ranked, truth, 0.95) == pytest.approx(0.5)  # (21, 30) has IoU 0.9
    assert average_precision([], truth, 0.5) == 0.0


def test_moment_metrics_by_hand() -> None:
    truths = [[(10.0, 20.0)], [(0.0, 4.0)]]
    predicted = [
        [Moment(10, 18, 0.9), Moment(30, 40, 0.5)],  # IoU 0.8 at rank 1
        [Moment(20, 30, 0.9), Moment(0, 3.5, 0.8)],  # IoU 0.875 at rank 2
    ]
    m = moment_metrics(predicted, truths)
    assert m["R1@0.5"] == 0.5 and m["R1@0.7"] == 0.5 and m["R5@0.5"] == 1.0 and m["R5@0.7"] == 1.0
    first = np.mean([1.0 if t <= 0.8 + 1e-12 else 0.0 for t in IOU_THRESHOLDS])
    second = np.mean([0.5 if t <= 0.875 + 1e-12 else 0.0 for t in IOU_THRESHOLDS])
    assert m["mAP"] == pytest.approx((first + second) / 2)
    assert m["mAP@0.5"] == pytest.approx(0.75)


def test_clotho_moment_and_castella_files(tmp_path: Path) -> None:
    lighthouse = tmp_path / "clotho_moment_val_release.jsonl"
    lines = [
        {"qid": "32694", "query": "A toilet flushes.", "duration": 60, "vid": "Singapore_0.0_60.0", "relevant_windows": [[41.1, 48.1]]},
        {"qid": "32695", "query": "People shout.", "duration": 60, "vid": "Singapore_1.0_61.0", "relevant_windows": [[26.6, 51.6], [1, 2]]},
    ]
    lighthouse.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    queries = read_moments(lighthouse)
    assert [(q.id, q.recording, q.windows) for q in queries] == [
        ("32694", "Singapore_0.0_60.0", ((41.1, 48.1),)),
        ("32695", "Singapore_1.0_61.0", ((26.6, 51.6), (1.0, 2.0))),
    ]
    castella = tmp_path / "test.json"
    record = {
        "yid": "-0awng26xQ8",
        "global_caption": "A man is talking while driving",
        "duration": 299,
        "num_moments": 2,
        "moments": [
            {"local_caption": "A man starts the car engine", "timestamps": [[70, 76]]},
            {"local_caption": "A man signals and drives", "timestamps": [[177, 190], [52, 66]]},
        ],
    }
    castella.write_text(json.dumps([record], indent=2), encoding="utf-8")
    queries = read_moments(castella)
    assert [(q.id, q.text, q.windows) for q in queries] == [
        ("-0awng26xQ8#0", "A man starts the car engine", ((70.0, 76.0),)),
        ("-0awng26xQ8#1", "A man signals and drives", ((177.0, 190.0), (52.0, 66.0))),
    ]
    lighthouse.write_text(json.dumps(lines[0]) + "\n" + json.dumps({**lines[1], "relevant_windows": [[5, 2]]}) + "\n", encoding="utf-8")
    with pytest.raises(AmrError, match=r"clotho_moment_val_release.jsonl:2: a window must be \[start, end\]"):
        read_moments(lighthouse)
    castella.write_text(json.dumps([{"yid": "x", "moments": [{"local_caption": "y"}]}]), encoding="utf-8")
    with pytest.raises(AmrError, match="test.json: entry 1: moment 1 needs local_caption and timestamps"):
        read_moments(castella)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, shared: Path, mn04_weights: Path):
    """Eight long recordings with real events, extracted with mn04."""
    from moments import build

    from amr.audio.weights import resolve_weights
    from amr.datasets import load_dataset
    from amr.extraction import extract

    work = tmp_path_factory.mktemp("moments")
    queries = build(work, 8, 0)
    report = extract(load_dataset(work).items, work / "m.h5", resolve_weights("mn04_as", mn04_weights), workers=1, progress=False)
    assert not report.failures
    return work, queries


def test_refined_spans_beat_the_grid_at_iou_0_7(recordings, mn04_weights: Path, text_encoder) -> None:
    from amr.audio.encoder import ClipEmbedder
    from amr.cache import EmbeddingCache
    from amr.model.zeroshot import ZeroShotRetriever
    from amr.moments import retrieve_moments

    work, queries = recordings
    with EmbeddingCache(work / "m.h5") as cache:
        tagger = ClipEmbedder.for_collection(cache.info, cache.path, mn04_weights).encoder
        grid, refined = retrieve_moments(ZeroShotRetriever(text=text_encoder), queries, [cache], tagger)
    truths = [q.windows for q in queries]
    assert all(m.end - m.start == pytest.approx(10.0, abs=0.1) for ranked in grid for m in ranked)  # the grid's windows
    assert all(0 <= m.start < m.end for ranked in refined for m in ranked)
    g, r = moment_metrics(grid, truths), moment_metrics(refined, truths)
    assert r["R1@0.7"] > g["R1@0.7"] and r["mAP"] > g["mAP"]


def test_the_command_evaluates_moments(recordings, tmp_path: Path, mn04_weights: Path) -> None:
    from amr.cli import app

    work, queries = recordings
    path = tmp_path / "moments.jsonl"
    lines = [{"qid": q.id, "query": q.text, "vid": q.recording, "relevant_windows": [list(w) for w in q.windows]} for q in queries]
    path.write_text("\n".join(map(json.dumps, lines)) + "\n", encoding="utf-8")
    args = ["evaluate", "--zero-shot", "--cache", str(work / "m.h5"), "--moments", str(path), "--audio-weights", str(mn04_weights)]
    result = CliRunner().invoke(app, [*args, "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["queries"] == len(queries) and summary["recordings"] == 8 and summary["refine"]["threshold"] == 0.3
    model = summary["models"][0]
    assert model["name"] == "zero-shot" and set(model["refined"]) == {"R1@0.5", "R1@0.7", "R5@0.5", "R5@0.7", "mAP@0.5", "mAP@0.75", "mAP"}
    path.write_text(json.dumps({**lines[0], "vid": "nowhere"}) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, [*args, "-w", str(tmp_path)])
    assert result.exit_code == 1 and "recording 'nowhere' is no evaluated item" in result.stderr


def test_query_results_carry_refined_spans(recordings, tmp_path: Path, mn04_weights: Path, text_encoder) -> None:
    from amr.index.build import build_index
    from amr.index.reader import open_index
    from amr.model.zeroshot import ZeroShotRetriever
    from amr.query import QueryInput, Searcher, run_queries

    work, queries = recordings
    retriever = ZeroShotRetriever(text=text_encoder)
    build_index(retriever, [work / "m.h5"], tmp_path / "index.h5", show_progress=False)
    searcher = Searcher(open_index(tmp_path / "index.h5"), retriever, mn04_weights)
    inputs = [QueryInput(q.id, q.text) for q in queries]
    grid = [r for r in run_queries(searcher, inputs, 1) if r.id == r.query_id.split("#")[0]]
    refined = {r.query_id: r for r in run_queries(searcher, inputs, 1, moments=True)}
    truth = {q.id: q.windows[0] for q in queries}
    assert grid and all(r.end - r.start == pytest.approx(10.0, abs=0.1) for r in grid)
    spans = {q: (r.start, r.end) for q, r in refined.items()}
    pairs = [(iou((r.start, r.end), truth[r.query_id]), iou(spans[r.query_id], truth[r.query_id])) for r in grid]
    assert all(refined[r.query_id].id == r.id and refined[r.query_id].score == r.score for r in grid)  # same ranking, other spans
    assert np.mean([b for _, b in pairs]) > np.mean([a for a, _ in pairs])
    searcher.moments().close()


def test_the_page_api_serves_refined_spans(recordings, tmp_path: Path, mn04_weights: Path, text_encoder) -> None:
    from fastapi.testclient import TestClient

    from amr.index.build import build_index
    from amr.index.reader import open_index
    from amr.model.zeroshot import ZeroShotRetriever
    from amr.query import Searcher
    from amr.server.app import create_app

    work, queries = recordings
    retriever = ZeroShotRetriever(text=text_encoder)
    build_index(retriever, [work / "m.h5"], tmp_path / "index.h5", show_progress=False)
    searcher = Searcher(open_index(tmp_path / "index.h5"), retriever, mn04_weights)
    plain = TestClient(create_app(searcher)).get("/api/search", params={"q": queries[0].text, "limit": 3}).json()["results"]
    refined = TestClient(create_app(searcher, moments=True)).get("/api/search", params={"q": queries[0].text, "limit": 3}).json()["results"]
    assert [r["id"] for r in refined] == [r["id"] for r in plain]
    assert all(r["end"] - r["start"] == pytest.approx(10.0, abs=0.1) for r in plain)
    assert any(r["end"] - r["start"] != pytest.approx(10.0, abs=0.1) for r in refined)
    searcher.moments().close()
