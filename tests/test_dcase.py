"""The DCASE 2025 setting: its relevance CSV as distributed, the submission
file, and `amr evaluate --protocol dcase2025` end to end on the fake retriever
of tests/support/slots.py (whose rankings can be worked out by hand)."""

from __future__ import annotations

import csv
import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from support.slots import SLOTS, SlotRetriever, make_cache
from typer.testing import CliRunner

from amr.cli import app
from amr.errors import AmrError
from amr.evaluate import RetrieverScorer, evaluate, open_collection
from amr.evaluate.dcase import read_relevance, write_model_scores, write_submission
from amr.items import Item
from amr.metrics import APNorm

# Clotho names as the relevance file writes them: one with an HTML entity, one with an accent.
ENTITY = "Dog barking &#39;woof&#39;.wav"
ACCENT = "Caf\u00e9 ambience.wav"  # NFC
ITEMS = [
    (Item(ENTITY, f"/c/{ENTITY}", "test", {}, ["0", "0 3"]), 0),
    (Item(ACCENT, f"/c/{ACCENT}", "test", {}, ["1"]), 1),
    (Item("rain.wav", "/c/rain.wav", "test", {}, ["2"]), 2),
    (Item("Dog barking 'woof'.wav", "/d/Dog barking 'woof'.wav", "test", {}, ["3"]), 3),
]


def write_relevance(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "audio_filenames"])
        writer.writerows(rows)
    return path


def items() -> list[Item]:
    return [item for item, _ in ITEMS]


def test_relevance_is_read_as_distributed(tmp_path: Path) -> None:
    path = write_relevance(
        tmp_path / "metadata_eval.csv",
        [
            ("0 3", str([ENTITY, "rain.wav"])),  # the entity as written matches the item named so
            ("1", f"['{unicodedata.normalize('NFD', ACCENT)}']"),  # NFD in the file, NFC on disk: matched after normalising
            ("2", '["rain.wav", "rain.wav"]'),  # a file listed twice counts once
        ],
    )
    queries = read_relevance(path, items())
    assert [q.id for q in queries] == ["metadata_eval.csv:2", "metadata_eval.csv:3", "metadata_eval.csv:4"]
    assert queries[0].text == "0 3"
    assert queries[0].relevant == [ENTITY, "rain.wav"]  # not the item whose name has a real apostrophe
    assert queries[1].relevant == [ACCENT]
    assert queries[2].relevant == ["rain.wav"]


def test_an_entity_matches_the_decoded_name_only_when_no_item_has_it_as_written(tmp_path: Path) -> None:
    path = write_relevance(tmp_path / "m.csv", [("2", "['Caf&#233; ambience.wav']")])
    assert read_relevance(path, items())[0].relevant == [ACCENT]
    ambiguous = [Item("a&amp;b.wav", "/x/1", "test", {}, ["2"]), Item("a&#38;b.wav", "/x/2", "test", {}, [])]
    path = write_relevance(tmp_path / "amb.csv", [("2", "['a&b.wav']")])
    with pytest.raises(AmrError, match=r"amb.csv:2: audio file 'a&b.wav' matches several items"):
        read_relevance(path, ambiguous)


def test_unmatched_rows_are_reported_by_line_or_skipped_when_lenient(tmp_path: Path) -> None:
    rows = [
        ("0 3", "['rain.wav']"),
        ("no such caption", "['rain.wav']"),
        ("2", "['missing.wav']"),
        ("2", "__import__('os').system('touch pwned')"),
        ("2", "'rain.wav'"),
        ("2", "[]"),
    ]
    path = write_relevance(tmp_path / "m.csv", rows)
    with pytest.raises(AmrError, match=r"m.csv:3: query 'no such caption' matches nothing among the captions"):
        read_relevance(path, items())
    skipped: list[str] = []
    queries = read_relevance(path, items(), lenient=True, on_skip=skipped.append)
    assert [q.id for q in queries] == ["m.csv:2"]
    assert [message.split(": ", 1)[0] for message in skipped] == [f"{path}:{line}" for line in (3, 4, 5, 6, 7)]
    assert "audio file 'missing.wav' matches nothing" in skipped[1]
    assert all("not a non-empty list literal" in message for message in skipped[2:])
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_a_file_that_is_not_the_relevance_csv_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "other.csv").write_text("caption,file\nx,y\n", encoding="utf-8")
    with pytest.raises(AmrError, match="needs the columns query,audio_filenames"):
        read_relevance(tmp_path / "other.csv", items())
    with pytest.raises(AmrError, match="no such file"):
        read_relevance(tmp_path / "absent.csv", items())
    (tmp_path / "latin.csv").write_bytes("query,audio_filenames\n\xe9,['x']\n".encode("latin-1"))
    with pytest.raises(AmrError, match="not UTF-8"):
        read_relevance(tmp_path / "latin.csv", items())


def read_back(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def test_the_submission_is_the_baseline_score_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((5, 3)).astype(np.float32)
    texts = ['a, quoted "query"', "b", 'a, quoted "query"', "c", "d"]
    clips = [Item("x", "/data/x 1.wav"), Item("y", "/data/sub/y.wav"), Item("z", "/z,2.wav")]
    assert write_model_scores(tmp_path / "s.csv", clips, texts, scores, block=2) == 4
    header, queries, values = read_back(tmp_path / "s.csv")
    assert header == ["index", "x 1.wav", "y.wav", "z,2.wav"]
    assert queries == ['a, quoted "query"', "b", "c", "d"]  # a repeated query once, at its first row
    assert np.array_equal(values.astype(np.float32), scores[[0, 1, 3, 4]])  # %.9g round-trips float32
    with pytest.raises(AmrError, match="both named 'x.wav'"):
        write_model_scores(tmp_path / "t.csv", [Item("1", "/a/x.wav"), Item("2", "/b/x.wav")], ["q"], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="shape"):
        write_submission(tmp_path / "u.csv", ["f"], [(["q"], np.zeros((1, 2)))])
    assert not (tmp_path / "u.csv").exists()  # nothing half-written


def test_evaluate_with_the_relevance_file_and_total_normalisation(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "c.h5", ITEMS)
    # "0 2": slot 0 (ENTITY) first, slot 2 (rain) second; the relevant {ENTITY, rain, ACCENT} at ranks 1, 2, 3.
    path = write_relevance(tmp_path / "m.csv", [("0", str([ENTITY, "rain.wav", ACCENT]))])
    queries = read_relevance(path, items())
    queries[0].text = "0 2"
    with open_collection([cache], "test") as collection:
        total = evaluate([RetrieverScorer("fake", SlotRetriever())], collection, queries, ks=(1, 2), ap_ks=(2,), ap_norm=APNorm.total)
        clipped = evaluate([RetrieverScorer("fake", SlotRetriever())], collection, queries, ks=(1, 2), ap_ks=(2,))
    assert total.summary()["models"][0]["metrics"] == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "mAP@2": 2 / 3})
    assert clipped.summary()["models"][0]["metrics"]["mAP@2"] == pytest.approx(1.0)
    assert total.summary()["ap_normalisation"] == "total"
    assert total.per_query()[0]["AP@2"] == pytest.approx(2 / 3)


def test_the_command_with_protocol_dcase2025_and_a_submission(tmp_path: Path, slot_kinds: None) -> None:
    cache = make_cache(tmp_path / "c.h5", ITEMS)
    path = write_relevance(tmp_path / "m.csv", [("0", str([ENTITY, "rain.wav"])), ("1", str([ACCENT])), ("nothing", "['rain.wav']")])
    run = tmp_path / "shift-0"
    run.mkdir()
    args = ["evaluate", str(run), "--cache", str(cache), "--protocol", "dcase2025", "--relevance", str(path), "-w", str(tmp_path / "ws")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "m.csv:4: query 'nothing' matches nothing" in result.stderr
    result = CliRunner().invoke(app, [*args, "--lenient", "--submission", str(tmp_path / "sub.csv")])
    assert result.exit_code == 0, result.output
    assert "m.csv:4: query 'nothing'" in result.stderr  # skipped, and said so
    summary = json.loads(result.stdout)
    # "0": slot 0 (ENTITY) first, rain at rank 3 (ties in collection order): AP@16 = (1 + 2/3) / 2; "1": ACCENT first.
    assert summary["models"][0]["metrics"] == pytest.approx({"R@1": 0.75, "R@5": 1.0, "R@10": 1.0, "mAP@16": ((1 + 2 / 3) / 2 + 1) / 2})
    header, texts, values = read_back(tmp_path / "sub.csv")
    assert header == ["index", ENTITY, ACCENT, "rain.wav", "Dog barking 'woof'.wav"] and texts == ["0", "1"]
    assert values.shape == (2, 4) and values[0, 0] == 1.0 and values[1, 1] == 1.0
    result = CliRunner().invoke(app, ["evaluate", str(run), "--cache", str(cache), "--k", "1,2,16", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["models"][0]["metrics"]) == {"R@1", "R@2", "R@16", "mAP@1", "mAP@2", "mAP@16"}
    for bad in (["--k", "0,5"], ["--k", "a"], ["--protocol", "dcase2030"], ["--ap-norm", "max"]):
        result = CliRunner().invoke(app, ["evaluate", str(run), "--cache", str(cache), *bad, "-w", str(tmp_path / "ws")])
        assert result.exit_code == 2, bad
    result = CliRunner().invoke(app, ["evaluate", str(run), "--cache", str(cache), "--protocol", "dcase2025", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 2 and "--relevance" in result.output


def test_a_submission_for_queries_without_relevance(tmp_path: Path, slot_kinds: None) -> None:
    cache = make_cache(tmp_path / "c.h5", ITEMS)
    (tmp_path / "retrieval_captions.csv").write_text("caption\n3\n0 1\n3\n", encoding="utf-8")
    run = tmp_path / "shift-1"
    run.mkdir()
    args = ["evaluate", str(run), "--cache", str(cache), "--submission", str(tmp_path / "s.csv")]
    result = CliRunner().invoke(app, [*args, "--submission-queries", str(tmp_path / "retrieval_captions.csv"), "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"submission": str(tmp_path / "s.csv"), "model": "shift-1", "queries": 2, "files": 4}
    _, texts, values = read_back(tmp_path / "s.csv")
    assert texts == ["3", "0 1"]
    assert values.shape == (2, 4) and values[1, 1] == 2.0  # shift 1: "0 1" puts weight 2 on slot 1
    assert SLOTS > 4
