"""Queries: the Python API, the input and output formats, and `amr index` / `amr query` end to end.

Uses the fake retriever and synthetic caches of tests/support/words.py; the
checkpoint kind of retriever is faked by a file holding a fingerprint, so the
CLI's path from index to the checkpoint it records is the real one.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from support.words import LIBRARY, MORE, checkpoint_retriever, make_cache
from typer.testing import CliRunner

from amr.cache import ClipEmbedding, EmbeddingCache, write_cache
from amr.cli import app
from amr.errors import AmrError
from amr.index.build import build_index
from amr.query import Searcher, open_searcher, run_queries
from amr.results import Failure, Format, QueryInput, Result, gather_queries, make_writer


@pytest.fixture
def searcher(tmp_path: Path, checkpoints: Path) -> Searcher:
    library = make_cache(tmp_path / "library.h5", LIBRARY)
    build_index(checkpoint_retriever(checkpoints / "a.ckpt"), [library], tmp_path / "index.h5", show_progress=False)
    return open_searcher(tmp_path / "index.h5")


def texts(*queries: str) -> list[QueryInput]:
    return [QueryInput(str(n), q) for n, q in enumerate(queries, start=1)]


def test_a_query_naming_a_clips_sound_ranks_it_first(searcher: Searcher) -> None:
    results = list(run_queries(searcher, texts("dog barking", "rain on a roof", "cat meowing"), top=3))
    assert all(isinstance(r, Result) for r in results)
    firsts = {r.query: r.id for r in results if r.rank == 1}
    assert firsts == {"dog barking": "dog", "rain on a roof": "rain", "cat meowing": "cat"}
    assert [r.query_id for r in results] == ["1"] * 3 + ["2"] * 3 + ["3"] * 3  # input order kept
    dog = results[0]
    assert (dog.audio, dog.metadata) == ("/sounds/dog.wav", {"title": "dog barking in the rain"})
    assert [r.rank for r in results[:3]] == [1, 2, 3]
    assert dog.score >= results[1].score >= results[2].score


def test_batches_give_the_same_results_as_one_query_at_a_time(searcher: Searcher) -> None:
    queries = texts("dog barking", "birds in the morning", "engine", "heavy rain", "meow")
    together = list(run_queries(searcher, queries, top=5, batch_size=64))
    alone = list(run_queries(searcher, queries, top=5, batch_size=1))
    assert [(r.query_id, r.id, r.score) for r in together] == [(r.query_id, r.id, r.score) for r in alone]


def test_explain_adds_up_to_the_score_and_shows_machine_tags(searcher: Searcher) -> None:
    results = list(run_queries(searcher, texts("dog barking in the rain"), top=5, explain_scores=True))
    for r in results:
        assert set(r.explain) == {"audio", "metadata"}
        assert r.explain["audio"] + r.explain["metadata"] == pytest.approx(r.score, abs=1e-5)
        assert len(r.tags) == 5
    assert results[0].id == "dog" and results[0].explain["metadata"] > results[0].explain["audio"]
    record = results[0].record()
    assert set(record) == {"query", "query_id", "rank", "score", "id", "audio", "metadata", "start", "end", "explain", "tags"}
    assert "explain" not in next(run_queries(searcher, texts("dog"), top=1)).record()


def test_a_bad_query_fails_alone(searcher: Searcher) -> None:
    inputs = [*texts("dog barking", "?!"), Failure("{oops", "3", "not valid JSON"), QueryInput("4", "cat meowing")]
    outcomes = list(run_queries(searcher, inputs, top=1))
    assert [type(o).__name__ for o in outcomes] == ["Result", "Failure", "Failure", "Result"]
    assert outcomes[1].error == "the query has no words" and outcomes[1].query_id == "2"
    assert outcomes[3].id == "cat"


class CacheEmbedder:
    """Stands in for the audio model: a clip's frames as the cache holds them."""

    def __init__(self, cache: Path):
        self.cache = EmbeddingCache(cache)
        self.row = {item.audio: i for i, item in enumerate(self.cache.items)}

    def embed(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if str(path) not in self.row:
            raise AmrError(f"{path}: no such audio file")
        row = self.row[str(path)]
        return self.cache.sequence(row), self.cache.tags[row]


def test_query_by_example_ranks_by_audio_alone(searcher: Searcher, tmp_path: Path) -> None:
    searcher.clip_embedder = CacheEmbedder(tmp_path / "library.h5")
    inputs = [
        QueryInput("1", "engine.wav", example=Path("/sounds/engine.wav")),
        QueryInput("2", "gone.wav", example=Path("/sounds/gone.wav")),
        QueryInput("3", "dog barking"),
        QueryInput("4", "dog.wav", example=Path("/sounds/dog.wav")),
    ]
    outcomes = list(run_queries(searcher, inputs, top=2, explain_scores=True))
    ranks = [(o.query_id, getattr(o, "rank", None)) for o in outcomes]
    assert ranks == [("1", 1), ("1", 2), ("2", None), ("3", 1), ("3", 2), ("4", 1), ("4", 2)]
    engine, dog = outcomes[0], outcomes[5]
    assert (engine.id, dog.id) == ("engine", "dog")  # each clip finds itself: cosine 1 in the audio segment
    assert engine.score == pytest.approx(1.0, abs=1e-5) and dog.score == pytest.approx(1.0, abs=1e-5)
    assert dog.explain == {"audio": pytest.approx(1.0, abs=1e-5)}  # the dog's metadata plays no part
    assert "no such audio file" in outcomes[2].error
    assert outcomes[3].id == "dog"


def test_query_by_example_loads_the_audio_model_on_the_searchers_device(searcher: Searcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """--device reaches the audio model of a query by example (ClipEmbedder.for_index), not only the text side."""
    from amr.audio.encoder import ClipEmbedder

    asked: list[object] = []

    def for_index(cls, index, weights_path, max_seconds=None, device="cpu"):
        asked.append(device)
        return "the embedder"

    monkeypatch.setattr(ClipEmbedder, "for_index", classmethod(for_index))
    searcher.device = "cpu:0"
    assert searcher.embedder() == "the embedder" and asked == ["cpu:0"]


def test_a_searcher_refuses_a_checkpoint_the_index_was_not_built_with(searcher: Searcher, checkpoints: Path) -> None:
    with pytest.raises(AmrError, match=r"built with checkpoint .*a\.ckpt .*not checkpoint .*b\.ckpt"):
        open_searcher(searcher.index.path, checkpoint=checkpoints / "b.ckpt")
    (checkpoints / "a.ckpt").write_text("fake-retrained\n")  # the recorded checkpoint changed since
    with pytest.raises(AmrError, match="fingerprint fake-a"):
        open_searcher(searcher.index.path)


def test_gather_queries_numbers_arguments_and_stdin_lines() -> None:
    stdin = io.BytesIO(b'dog barking\n\nq7\tbirds at dawn\n{"id": "c1", "text": "a cat", "relevant": ["cat"]}\n{broken\n{"id": 3}\n')
    got = list(gather_queries(["first", "-", "last"], [Path("clip.wav")], stdin))
    assert got[:4] == [
        QueryInput("1", "first"),
        QueryInput("2", "dog barking"),
        QueryInput("q7", "birds at dawn"),
        QueryInput("c1", "a cat"),
    ]
    assert isinstance(got[4], Failure) and got[4].query_id == "5" and "not valid JSON" in got[4].error
    assert isinstance(got[5], Failure) and '"text"' in got[5].error
    assert got[6:] == [QueryInput("7", "last"), QueryInput("8", "clip.wav", example=Path("clip.wav"))]


RESULT = Result(
    "a\tb",
    "q1",
    1,
    0.5,
    "x\\y",
    "/a b.wav",
    {"title": "line\nbreak"},
    12.5,
    22.5,
    explain={"audio": 0.2, "metadata": 0.3},
    tags=[("Dog", 0.9)],
)


def test_jsonl_and_tsv_writers_round_trip() -> None:
    out = io.StringIO()
    writer = make_writer(Format.jsonl, out, None)
    writer.write(RESULT)
    writer.close()
    assert json.loads(out.getvalue()) == {**RESULT.record(), "tags": [["Dog", 0.9]]}

    out = io.StringIO()
    writer = make_writer(Format.tsv, out, ["audio", "metadata"])
    writer.write(RESULT)
    header, line = out.getvalue().splitlines()
    assert header.split("\t") == [
        "query_id",
        "query",
        "rank",
        "score",
        "id",
        "audio",
        "metadata",
        "explain_audio",
        "explain_metadata",
        "tags",
        "start",
        "end",
    ]
    fields = line.split("\t")
    assert fields[:6] == ["q1", "a\\tb", "1", "0.500000", "x\\\\y", "/a b.wav"]
    assert fields[6] == '{"title": "line\\\\nbreak"}'  # the JSON's \n, escaped once more
    assert fields[7:9] == ["0.200000", "0.300000"]
    assert fields[10:] == ["12.500", "22.500"]


def test_table_writer_prints_one_table_per_query() -> None:
    out = io.StringIO()
    writer = make_writer(Format.table, out, None)
    writer.write(Result("dog barking", "1", 1, 0.9, "dog", "/d.wav", {"title": "dog"}, 0.0, 4.2))
    writer.write(Result("rain", "2", 1, 0.8, "rain", "/r.wav", {}, 65.0, 75.0))
    writer.close()
    text = out.getvalue()
    assert "[1] dog barking" in text and "[2] rain" in text and "/d.wav" in text
    assert "0:00.0–0:04.2" in text and "1:05.0–1:15.0" in text


# --- the CLI --------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def workspace(tmp_path: Path, checkpoints: Path) -> Path:
    """A workspace with a built index of LIBRARY (through `amr index`)."""
    ws = tmp_path / "ws"
    library = make_cache(tmp_path / "library.h5", LIBRARY)
    result = runner.invoke(app, ["index", str(library), "-c", str(checkpoints / "a.ckpt"), "-w", str(ws)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["items"] == 5 and summary["ann"] is None
    assert Path(summary["index"]) == ws / "indexes" / "library.h5"
    return ws


def jsonl(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_cli_query_prints_jsonl_to_a_pipe_from_the_latest_index(workspace: Path) -> None:
    result = runner.invoke(app, ["query", "dog barking in rain", "--top", "3", "-w", str(workspace)])
    assert result.exit_code == 0, result.stderr
    records = jsonl(result.stdout)
    assert [r["rank"] for r in records] == [1, 2, 3]
    assert records[0] == {
        "query": "dog barking in rain",
        "query_id": "1",
        "rank": 1,
        "score": records[0]["score"],
        "id": "dog",
        "audio": "/sounds/dog.wav",
        "metadata": {"title": "dog barking in the rain"},
        "start": 0.0,
        "end": records[0]["end"],
    }
    assert records[0]["end"] > 0
    assert result.stderr == ""


def test_cli_queries_from_stdin_keep_their_ids_and_a_failure_sets_the_exit_code(workspace: Path) -> None:
    stdin = "dog barking\nq-rain\train on a tin roof\n!!!\ncat meowing\n"
    result = runner.invoke(app, ["query", "-", "--top", "2", "-w", str(workspace)], input=stdin)
    assert result.exit_code == 3
    records = jsonl(result.stdout)
    assert [(r["query_id"], r["rank"]) for r in records] == [("1", 1), ("1", 2), ("q-rain", 1), ("q-rain", 2), ("4", 1), ("4", 2)]
    assert {r["query_id"]: r["id"] for r in records if r["rank"] == 1} == {"1": "dog", "q-rain": "rain", "4": "cat"}
    assert "query 3 ('!!!'): the query has no words" in result.stderr

    # the output feeds a pipeline: its (query_id, query) pairs, fed back in, give the same records
    lines = dict.fromkeys(f"{r['query_id']}\t{r['query']}" for r in records)
    again = runner.invoke(app, ["query", "-", "--top", "2", "-w", str(workspace)], input="\n".join(lines) + "\n")
    assert again.exit_code == 0 and jsonl(again.stdout) == records


def test_cli_tsv_and_explain(workspace: Path) -> None:
    result = runner.invoke(app, ["query", "birds singing", "-k", "1", "--format", "tsv", "--explain", "-w", str(workspace)])
    assert result.exit_code == 0, result.stderr
    header, line = result.stdout.splitlines()
    row = dict(zip(header.split("\t"), line.split("\t")))
    assert row["id"] == "birds" and row["query"] == "birds singing"
    assert float(row["explain_audio"]) + float(row["explain_metadata"]) == pytest.approx(float(row["score"]), abs=1e-5)
    assert len(json.loads(row["tags"])) == 5


def test_cli_index_append_and_refusal(workspace: Path, checkpoints: Path, tmp_path: Path) -> None:
    more = make_cache(tmp_path / "more.h5", MORE, seed=1)
    refused = runner.invoke(app, ["index", str(more), "--append", "-c", str(checkpoints / "b.ckpt"), "-w", str(workspace)])
    assert refused.exit_code == 1 and "fingerprint fake-a" in refused.stderr
    result = runner.invoke(app, ["index", str(more), "--append", "--split", "test", "-w", str(workspace)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) | {"index": None} == {"index": None, "items": 6, "rows": 6, "added": 2, "replaced": 1, "ann": None}
    query = runner.invoke(app, ["query", "small dog yapping", "-k", "1", "-w", str(workspace)])
    assert jsonl(query.stdout)[0]["audio"] == "/more/dog2.wav"


def test_cli_index_ann_builds_an_approximate_index_queries_use(workspace: Path, checkpoints: Path, tmp_path: Path) -> None:
    library, output = tmp_path / "library.h5", tmp_path / "ann.h5"
    args = ["index", str(library), "--ann", "-c", str(checkpoints / "a.ckpt"), "-o", str(output)]
    result = runner.invoke(app, [*args, "-w", str(workspace)])
    assert result.exit_code == 0, result.output
    ann = json.loads(result.stdout)["ann"]
    assert ann["kind"] == "ivf-sq8" and ann["nlist"] == 1 and ann["recall_at_10"] == 1.0
    assert "recall@10 1.000 against exact search" in result.stderr
    approx = runner.invoke(app, ["query", "dog barking", "-k", "5", "-i", str(output)])
    exact = runner.invoke(app, ["query", "dog barking", "-k", "5", "-i", str(output), "--exact"])
    assert approx.exit_code == exact.exit_code == 0 and jsonl(approx.stdout) == jsonl(exact.stdout)


def test_cli_query_without_queries_or_index_says_what_to_do(tmp_path: Path) -> None:
    empty = runner.invoke(app, ["query", "-w", str(tmp_path)])
    assert empty.exit_code == 1 and "no queries" in empty.stderr
    missing = runner.invoke(app, ["query", "dog", "-w", str(tmp_path)])
    assert missing.exit_code == 1 and "run `amr index` first" in missing.stderr


# --- real data: extract → train → index → query ----------------------------------------------

# Ten real clips of shared/data/sounds: animals with their recording titles,
# two ESC-50 recordings cut in two, and a clip without metadata.
REAL = [
    "bigsoundbank-dog",
    "bigsoundbank-cat",
    "bigsoundbank-cow",
    "bigsoundbank-rooster",
    "bigsoundbank-pig",
    "esc50-2-104105-A-19",
    "esc50-2-104105-B-19",  # thunderstorm
    "esc50-2-104952-A-16",
    "esc50-2-104952-B-16",  # wind
    "freesound-typing",  # no metadata
]
TINY_MODEL = "--freeze-text --epochs 20 --lr 1e-3 --width 32 --depth 1 --heads 2 --ff 64 --batch-size 4".split()


def with_validation_copies(cache: Path, output: Path) -> Path:
    """The cache's clips for training, and copies of them (ids ending "~val")
    as the val split. On ten clips no held-out split says anything; validating
    on the training clips keeps the epoch that fits them best."""
    with EmbeddingCache(cache) as source:
        clips = [
            ClipEmbedding(replace(item, id=item.id + suffix, split=split), source.stored(i)[0], source.tags[i])
            for split, suffix in (("train", ""), ("val", "~val"))
            for i, item in enumerate(source.items)
        ]
        write_cache(output, source.info, clips)
    return output


@pytest.fixture(scope="module")
def real(shared: Path, mn04_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace where `amr extract`, `amr train` and `amr index` ran on REAL."""
    root = tmp_path_factory.mktemp("real")
    (root / "sounds").mkdir()
    sounds = shared / "data" / "sounds"
    with open(root / "sounds" / "items.jsonl", "w") as f:
        for line in (sounds / "items.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["id"] in REAL:
                f.write(json.dumps({**row, "audio": str(sounds / row["audio"]), "split": "train"}) + "\n")
    ws = root / "ws"
    extracted = runner.invoke(
        app,
        ["extract", str(root / "sounds"), "--allow-outside-root", "--audio-weights", str(mn04_weights), "--workers", "1", "-w", str(ws)],
    )
    assert extracted.exit_code == 0, extracted.output
    cache = with_validation_copies(Path(json.loads(extracted.stdout)["cache"]), root / "train.h5")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains fastest on one thread, and the same on every machine
    try:
        for command in (["train", "--cache", str(cache), *TINY_MODEL], ["index", str(cache), "--split", "train"]):
            result = runner.invoke(app, [*command, "-w", str(ws)])
            assert result.exit_code == 0, (command, result.output, result.exception)
    finally:
        torch.set_num_threads(threads)
    return ws


def test_real_queries_find_the_clips_they_name(real: Path) -> None:
    queries = {  # query → the id (prefix) of the clip(s) it names
        "cat meowing": "bigsoundbank-cat",
        "typing on a keyboard": "freesound-typing",  # found by its audio: it has no metadata
        "thunderstorm": "esc50-2-104105-",
        "wind": "esc50-2-104952-",
    }
    result = runner.invoke(app, ["query", *queries, "--top", "10", "-w", str(real)])
    assert result.exit_code == 0, result.stderr
    ranking: dict[str, list[str]] = {}
    for r in jsonl(result.stdout):
        ranking.setdefault(r["query"], []).append(r["id"])
    for text, clip in queries.items():
        assert len(ranking[text]) == len(REAL)
        assert ranking[text][0].startswith(clip), (text, ranking[text])


def test_real_query_by_example_finds_the_clip_itself(real: Path, shared: Path, mn04_weights: Path) -> None:
    clips = [shared / "data" / "sounds" / "audio" / name for name in ("bigsoundbank-dog.mp3", "esc50-2-104105-A-19.wav")]
    args = ["query", "--audio", str(clips[0]), "--audio", str(clips[1]), "-k", "1", "--explain", "--audio-weights", str(mn04_weights)]
    result = runner.invoke(app, [*args, "-w", str(real)])
    assert result.exit_code == 0, result.stderr
    dog, thunder = jsonl(result.stdout)
    assert (dog["id"], thunder["id"]) == ("bigsoundbank-dog", "esc50-2-104105-A-19")
    assert dog["score"] == pytest.approx(1.0, abs=1e-3)  # the same frames as `amr extract` computed
    assert set(dog["explain"]) == {"audio"} and "Dog" in [name for name, _ in dog["tags"]]


def test_real_query_by_example_is_limited_by_decoded_duration(real: Path, shared: Path, mn04_weights: Path) -> None:
    sounds = shared / "data" / "sounds" / "audio"
    long, short = sounds / "freesound-train.wav", sounds / "esc50-2-104105-A-19.wav"  # 17.4 s, 5 s
    args = ["query", "--audio", str(long), "--audio", str(short), "-k", "1", "--max-query-seconds", "10"]
    args += ["--audio-weights", str(mn04_weights)]
    result = runner.invoke(app, [*args, "-w", str(real)])
    assert result.exit_code == 3, result.output
    assert f"{long}: 0:17 long, over the limit of 10 s" in result.stderr.replace("\n", "")
    (found,) = jsonl(result.stdout)
    assert found["id"] == "esc50-2-104105-A-19"  # the other example is answered


def test_real_jsonl_round_trips_through_a_shell_pipeline(real: Path, tmp_path: Path) -> None:
    (tmp_path / "queries.txt").write_text("typing on a keyboard\nwind-1\twind\n\ncat meowing\n")
    (tmp_path / "firsts.py").write_text(
        "import json, sys\nfor r in map(json.loads, sys.stdin):\n    if r['rank'] == 1:\n        print(f\"{r['query_id']}:{r['id']}\")\n"
    )
    pipeline = f"{sys.executable} -m amr query - -k 3 < queries.txt | {sys.executable} firsts.py"
    env = {**os.environ, "AMR_WORKSPACE": str(real), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(["sh", "-c", pipeline], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    typing, wind, cat = done.stdout.split()
    assert (typing, cat) == ("1:freesound-typing", "3:bigsoundbank-cat")
    assert wind.startswith("wind-1:esc50-2-104952-")  # either half of the wind recording
