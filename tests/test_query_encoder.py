"""The torch-free query path: the ONNX query encoder every index gets, the CLI's
light start-up, and `amr query --server`.

The ONNX graph must give the torch model's query vectors for every kind of
model (zero-shot; trained with each fusion, from zero-shot and from random,
with a frozen and a fine-tuned text encoder), and the same rankings on the
shared sets. sounds is searched with its real extracted cache; sfx-dev and
clotho-mini with their real items (metadata and captions: the text both
sides of a score are made of) over synthetic audio, which spares extracting
900 clips and leaves the queries, their tokens and the metadata real.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from support.serving import running
from support.training import configs, synthetic_cache
from support.words import make_cache
from typer.testing import CliRunner

from amr.cli import app
from amr.datasets import load_dataset
from amr.errors import AmrError
from amr.index.build import build_index
from amr.index.format import query_folder
from amr.index.reader import open_index
from amr.index.search import search
from amr.model.checkpoint import load_checkpoint
from amr.model.query_encoder import GRAPH, QueryEncoder, export_query_encoder
from amr.model.text_input import MAX_TOKENS
from amr.model.zeroshot import ZeroShotConfig, ZeroShotRetriever
from amr.query import open_searcher
from amr.training import train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()

QUERIES = [
    "dog barking",
    "a heavy rain falling on a tin roof while thunder rolls in the distance",
    "Cat meowing!!",
    "footsteps",
    # far past MAX_TOKENS: the tail must be cut exactly as the torch tokenizer cuts it
    "a very long query " + " ".join(f"word{i} and sound{i}" for i in range(40)),
    "ÉCLAIR — un orage qui gronde, sirène au loin",
]
LONG = QUERIES[4]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def encoder_of(retriever, path: Path) -> QueryEncoder:
    record = export_query_encoder(retriever, path)
    return QueryEncoder(query_folder(path, record["token"]), record)


def assert_same_vectors(retriever, path: Path) -> None:
    """One batch (padded to its longest query) and each query alone: cosine >= 0.9999 and the same length."""
    onnx = encoder_of(retriever, path)
    expected = retriever.encode_queries(QUERIES)
    for got in (onnx.encode_queries(QUERIES), np.concatenate([onnx.encode_queries([q]) for q in QUERIES])):
        assert got.shape == expected.shape and got.dtype == np.float32
        assert cosines(got, expected).min() >= 0.9999
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(expected, axis=1), rtol=1e-4)


def test_zero_shot_query_vectors_are_the_torch_models(text_encoder, tmp_path: Path) -> None:
    for config in (ZeroShotConfig(), ZeroShotConfig(audio_weight=0.0), ZeroShotConfig(metadata_weight=0.0)):
        assert_same_vectors(ZeroShotRetriever(config, text_encoder), tmp_path / f"{config.fusion.value}.h5")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny trained models of every fusion from zero-shot, mid and late from random, late with a fine-tuned text encoder."""
    root = tmp_path_factory.mktemp("trained")
    cache = synthetic_cache(root / "sounds.h5", n=24, views=0)
    kinds = {
        **{fusion: {"fusion": fusion} for fusion in ("none", "metadata", "late", "mid")},
        "mid-random": {"fusion": "mid", "init": "random"},
        "late-random": {"fusion": "late", "init": "random"},
        "late-fine-tuned": {"fusion": "late", "freeze_text": False},
    }
    for name, options in kinds.items():
        model, training = configs(cache, epochs=1, **options)
        train(root / name, model, training, progress=False)
    return {name: root / name for name in kinds}


@pytest.mark.parametrize("kind", ["none", "metadata", "late", "mid", "mid-random", "late-random", "late-fine-tuned"])
def test_trained_query_vectors_are_the_torch_models(kind: str, checkpoints: dict[str, Path], text_encoder, tmp_path: Path) -> None:
    retriever = load_checkpoint(checkpoints[kind], text=text_encoder)
    if kind == "late-fine-tuned":  # its stored text weights, not the pretrained ones, are in the graph
        assert not np.allclose(
            retriever.encode_queries(QUERIES), load_checkpoint(checkpoints["late"], text=text_encoder).encode_queries(QUERIES)
        )
    assert_same_vectors(retriever, tmp_path / "index.h5")


def test_long_queries_are_cut_as_the_torch_tokenizer_cuts_them(text_encoder, tmp_path: Path) -> None:
    onnx = encoder_of(ZeroShotRetriever(text=text_encoder), tmp_path / "index.h5")
    torch_ids = text_encoder.tokenize([LONG])["input_ids"][0].tolist()
    assert len(torch_ids) == MAX_TOKENS
    assert onnx.tokenizer.encode(LONG.lower()).ids == torch_ids
    # what lies past the limit changes nothing
    cut = onnx.encode_queries([LONG, LONG + " thunder thunder thunder"])
    assert cosines(cut[:1], cut[1:]).item() == pytest.approx(1.0, abs=1e-6)


def test_a_query_without_words_is_refused_not_encoded_as_padding(text_encoder, tmp_path: Path) -> None:
    onnx = encoder_of(ZeroShotRetriever(text=text_encoder), tmp_path / "index.h5")
    for text in ("", "   ", "!!! ...", "—"):
        with pytest.raises(AmrError, match="has no words"):
            onnx.encode_queries(["dog", text])


# --- rankings on the shared sets ------------------------------------------------------------


def shared_set(name: str, shared: Path, sounds_cache: Path, folder: Path) -> tuple[Path, list[str]]:
    """A cache of the set and its queries: every caption and title of its items."""
    if name == "sounds":
        cache = sounds_cache
        items = load_dataset(shared / "data" / "sounds").items
    else:
        items = load_dataset(shared / "data" / name).items
        cache = make_cache(folder / f"{name}.h5", items)
    texts = [t for item in items for t in (*item.captions, str(item.metadata.get("title", "")))]
    return cache, sorted({t for t in texts if t.strip()})


@pytest.mark.parametrize("name", ["sounds", "sfx-dev", "clotho-mini"])
def test_rankings_are_the_torch_models_on_the_shared_sets(
    name: str, shared: Path, sounds_cache: Path, text_encoder, tmp_path: Path
) -> None:
    cache, texts = shared_set(name, shared, sounds_cache, tmp_path)
    retriever = ZeroShotRetriever(text=text_encoder)
    build_index(retriever, [cache], tmp_path / "index.h5", show_progress=False)
    searcher = open_searcher(tmp_path / "index.h5")
    assert searcher.query_encoder is not None and searcher.retriever is None  # text queries never load the torch model
    index = searcher.index
    onnx, torch_vectors = searcher.query_encoder.encode_queries(texts), retriever.encode_queries(texts)
    assert cosines(onnx, torch_vectors).min() >= 0.9999
    k = min(10, index.live_items)
    (onnx_rows, _), (torch_rows, _) = search(index, onnx, k), search(index, torch_vectors, k)
    # Two items can only trade places if their torch scores differ by less than what the
    # query vectors' difference can change a score by (Cauchy-Schwarz), plus float32 rounding
    # of the two inner products (D products and sums of terms of at most |q||x|, each rounding
    # by 2^-24 of it).
    vectors = np.asarray(index.vectors, np.float32)
    largest = float(np.linalg.norm(vectors, axis=1).max())
    bound = np.linalg.norm(onnx - torch_vectors, axis=1) * 2 * largest
    bound += 2 * 2 * vectors.shape[1] * 2.0**-24 * np.linalg.norm(torch_vectors, axis=1) * largest
    scores = torch_vectors @ vectors.T
    for q in range(len(texts)):
        for position in np.flatnonzero(onnx_rows[q] != torch_rows[q]):
            gap = abs(float(scores[q, torch_rows[q, position]]) - float(scores[q, onnx_rows[q, position]]))
            assert gap <= bound[q], (texts[q], position, gap, bound[q])
    assert (onnx_rows == torch_rows).mean() > 0.99  # a near-tie is rare: the rankings are the same


# --- the index's record, refusals, an index of an older amr ---------------------------------


@pytest.fixture(scope="module")
def sounds_index(sounds_cache: Path, text_encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sounds") / "index.h5"
    build_index(ZeroShotRetriever(text=text_encoder), [sounds_cache], path, show_progress=False)
    return path


def test_the_manifest_records_the_encoder_and_refuses_another_models(sounds_index: Path, text_encoder, tmp_path: Path) -> None:
    record = open_index(sounds_index).header.query_encoder
    assert record["format"] == "amr-query-encoder" and record["version"] == 1
    assert record["fingerprint"] == open_index(sounds_index).header.fingerprint
    assert record["text_model"] == "all-MiniLM-L6-v2" and record["text_fingerprint"] == text_encoder.fingerprint
    # the folder of another model's encoder put in its place
    other = tmp_path / "other.h5"
    other_record = export_query_encoder(ZeroShotRetriever(ZeroShotConfig(audio_weight=0.5), text_encoder), other)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(sounds_index.parent), str(copy)], check=True)
    folder = query_folder(copy / "index.h5", record["token"])
    for name in (GRAPH, GRAPH + ".data", "tokenizer.json"):
        (folder / name).write_bytes((query_folder(other, other_record["token"]) / name).read_bytes())
    refused = runner.invoke(app, ["query", "dog", "-i", str(copy / "index.h5")])
    assert refused.exit_code == 1 and "the query encoder of another model" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def assert_same_records(one: str, other: str, index_path: Path, texts: list[str]) -> None:
    """jsonl of the two paths: the same records but for scores and their explained parts,
    which move by at most |Δq|·max|x| between the paths (a part's sub-vectors are no longer
    than the whole) before each is rounded to 6 places."""
    searcher = open_searcher(index_path)
    delta = np.linalg.norm(searcher.query_encoder.encode_queries(texts) - searcher.model().encode_queries(texts), axis=1).max()
    bound = delta * np.linalg.norm(np.asarray(searcher.index.vectors), axis=1).max() + 1e-6
    first, second = ([json.loads(line) for line in text.splitlines()] for text in (one, other))
    assert [{**r, "score": None, "explain": None} for r in first] == [{**r, "score": None, "explain": None} for r in second]
    moved = [abs(a["score"] - b["score"]) for a, b in zip(first, second)]
    moved += [abs(a["explain"][part] - b["explain"][part]) for a, b in zip(first, second) if a.get("explain") for part in a["explain"]]
    assert max(moved) <= bound


def test_an_index_of_an_older_amr_says_how_to_add_the_encoder_and_still_answers(sounds_index: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    subprocess.run(["cp", "-r", str(sounds_index.parent), str(old)], check=True)
    path = old / "index.h5"
    expected = runner.invoke(app, ["query", "dog barking", "rain", "-i", str(sounds_index)])
    with h5py.File(path, "a") as f:
        del f.attrs["query_encoder"]
    warned = runner.invoke(app, ["query", "dog barking", "rain", "-i", str(path)])
    assert warned.exit_code == 0
    assert_same_records(warned.stdout, expected.stdout, sounds_index, ["dog barking", "rain"])
    assert f"amr index --refresh-query-encoder -o {path}" in warned.stderr and len(warned.stderr.strip().splitlines()) == 1
    refreshed = runner.invoke(app, ["index", "--refresh-query-encoder", "-o", str(path)])
    assert refreshed.exit_code == 0, refreshed.output
    assert json.loads(refreshed.stdout)["query_encoder"]["fingerprint"] == open_index(path).header.fingerprint
    again = runner.invoke(app, ["query", "dog barking", "rain", "-i", str(path)])
    assert again.exit_code == 0 and again.stdout == expected.stdout and again.stderr == ""
    assert open_searcher(path).query_encoder is not None


def test_an_empty_or_punctuation_only_query_is_a_usage_error(sounds_index: Path) -> None:
    for text in ("", "   ", "?!"):
        done = runner.invoke(app, ["query", "dog", text, "-i", str(sounds_index)])
        assert done.exit_code == 2 and "has no words" in done.output and done.stdout == ""


def test_the_forced_torch_path_gives_the_same_records(sounds_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["query", "-", "-k", "5", "--explain", "-i", str(sounds_index)]
    stdin = "dog barking\nq2\train on a roof\ncat\n"
    onnx = runner.invoke(app, args, input=stdin)
    with monkeypatch.context() as patch:
        patch.setenv("AMR_QUERY_ENCODER", "torch")
        assert open_searcher(sounds_index).query_encoder is None
        torch_path = runner.invoke(app, args, input=stdin)
    assert onnx.exit_code == torch_path.exit_code == 0 and torch_path.stderr == ""
    assert_same_records(onnx.stdout, torch_path.stdout, sounds_index, ["dog barking", "rain on a roof", "cat"])


# --- start-up -------------------------------------------------------------------------------

HEAVY = ("numpy", "torch", "faiss", "h5py", "transformers", "onnxruntime", "tokenizers", "fastapi", "uvicorn", "soundfile", "rich")


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=environment)


def test_importing_the_cli_imports_nothing_heavy() -> None:
    done = python(f"import sys, amr.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("args", [["query", "--help"], ["query", "--top", "0", "dog"], ["index", "--help"]])
def test_a_command_help_or_usage_error_imports_nothing_heavy(args: list[str]) -> None:
    """Parsing a command's options imports no validation layer either (typer 0.29's pydantic cost
    every command 0.1-0.2 s): nothing heavy, but rich, in which typer writes help and errors."""
    code = f"""import sys
sys.argv = ["amr", *{args!r}]
from amr.cli import main
try:
    main()
finally:
    sys.stderr.write("loaded: " + " ".join(m for m in {(*(m for m in HEAVY if m != "rich"), "pydantic")!r} if m in sys.modules) + "\\n")
"""
    done = python(code)
    assert done.returncode in (0, 2), done.stderr
    assert done.stderr.splitlines()[-1] == "loaded: "


def test_a_text_query_never_imports_torch_and_threads_are_set_before_numpy_loads(sounds_index: Path) -> None:
    """Nor FAISS, on an exact index (amr.index.ann imports it for an approximate one). numpy's import
    is watched: OPENBLAS_NUM_THREADS and OMP_NUM_THREADS must hold --threads by then."""
    code = f"""
import os, sys
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            threads = os.environ.get("OPENBLAS_NUM_THREADS", "-") + os.environ.get("OMP_NUM_THREADS", "-")
            sys.stderr.write("numpy loads with " + threads + "\\n")
        return None
sys.meta_path.insert(0, Watch())
sys.argv = ["amr", "query", "dog barking", "-k", "2", "--threads", "3", "-i", {str(sounds_index)!r}]
from amr.cli import main
try:
    main()
finally:
    sys.stderr.write("loaded: " + " ".join(m for m in ("torch", "transformers", "faiss") if m in sys.modules) + "\\n")
"""
    done = python(code, OPENBLAS_NUM_THREADS="7", OMP_NUM_THREADS="7")
    assert done.returncode == 0, done.stderr
    assert "numpy loads with 33" in done.stderr and "loaded: \n" in done.stderr
    assert json.loads(done.stdout.splitlines()[0])["id"] == "bigsoundbank-dog"


# --- amr query --server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(sounds_index: Path):
    with running(open_searcher(sounds_index)) as url:
        yield url


@pytest.mark.parametrize(
    "args",
    [
        ["dog barking", "rain on a roof", "-k", "3"],
        ["dog barking", "-k", "150"],  # more than a page
        ["cat", "-k", "4", "--format", "tsv", "--explain"],
        ["typing", "-k", "2", "--format", "table", "--exact", "--all-segments"],
    ],
)
def test_a_server_answers_with_the_records_of_a_local_search(args: list[str], server: str, sounds_index: Path) -> None:
    local = runner.invoke(app, ["query", *args, "-i", str(sounds_index)])
    remote = runner.invoke(app, ["query", *args, "--server", server])
    assert local.exit_code == remote.exit_code == 0, remote.output
    assert remote.stdout == local.stdout and remote.stderr == ""


def test_stdin_lines_and_failures_through_a_server_as_locally(server: str, sounds_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = 'dog barking\nq-rain\train on a tin roof\n!!!\n{"id": "j", "text": "a cat"}\n\xff\n'.encode("latin-1")
    local = runner.invoke(app, ["query", "-", "-k", "2", "-i", str(sounds_index)], input=stdin)
    monkeypatch.setenv("AMR_SERVER", server)
    remote = runner.invoke(app, ["query", "-", "-k", "2"], input=stdin)
    assert local.exit_code == remote.exit_code == 3
    assert remote.stdout == local.stdout and remote.stderr == local.stderr
    assert "the query has no words" in remote.stderr


@pytest.mark.parametrize(("args", "stdin"), [(["dog"], ""), (["-"], ""), (["-"], "!!!\n")])  # nothing to send: still checked
def test_an_unreachable_server_is_one_line(args: list[str], stdin: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    done = runner.invoke(app, ["query", *args, "--server", f"http://127.0.0.1:{port}"], input=stdin)
    assert done.exit_code == 1 and done.stdout == ""
    assert done.stderr.startswith("error: ") and "cannot reach an amr server" in done.stderr and len(done.stderr.splitlines()) == 1


def launched(args: list[str], stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    """``amr ARGS`` through the entry point (amr.launch), reporting on its last stderr line what it imported."""
    code = f"""import sys
sys.argv = ["amr", *{args!r}]
from amr.launch import main
try:
    main()
finally:
    sys.stderr.write("loaded: " + " ".join(m for m in ("typer", "numpy", "http.client", "amr.cli") if m in sys.modules) + "\\n")
"""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, timeout=300, env=environment)


@pytest.mark.parametrize(
    "args",
    [
        ["dog barking", "rain on a roof", "-k", "3"],
        ["cat", "--top=4", "--format", "tsv", "--explain"],
        ["-", "-k", "2"],  # stdin, with failures: exit 3
    ],
)
def test_the_entry_point_answers_a_server_query_without_the_cli(args: list[str], server: str) -> None:
    """`amr query --server` runs in amr.launch on the standard library (no typer, numpy, http.client): the CLI's output and exit code."""
    stdin = b'dog barking\n!!!\n{"id": "j", "text": "a cat"}\n'
    through_cli = runner.invoke(app, ["query", *args, "--server", server], input=stdin)
    done = launched(["query", *args], stdin, AMR_SERVER=server)
    *messages, loaded = done.stderr.decode().splitlines()
    assert loaded == "loaded: " and done.returncode == through_cli.exit_code
    assert done.stdout.decode() == through_cli.stdout and "\n".join(messages) == through_cli.stderr.rstrip("\n")


@pytest.mark.parametrize(
    "args",
    [
        ["query", "dog", "--top", "0"],  # a value the CLI refuses: its usage error
        ["query", "!!!"],  # no words
        ["query", "dog", "--threads", "2"],  # an option of the local search
        ["query", "--help"],
        ["--version"],
    ],
)
def test_the_entry_point_leaves_everything_else_to_the_cli(args: list[str], server: str) -> None:
    through_cli = runner.invoke(app, args, env={"AMR_SERVER": server})
    done = launched(args, AMR_SERVER=server)
    assert done.stderr.decode().splitlines()[-1] == "loaded: typer amr.cli" and done.returncode == through_cli.exit_code


@pytest.mark.parametrize("url", ["garbage:99999", "http://127.0.0.1:port", "ftp://127.0.0.1:8000"])
def test_a_server_address_that_is_none_is_one_line(url: str) -> None:
    """Through the entry point and through the CLI alike: exit 1, one line naming the address."""
    done = launched(["query", "dog", f"--server={url}"])
    *messages, _ = done.stderr.decode().splitlines()
    assert done.returncode == 1 and messages == [f"error: --server {url}: not an http://HOST:PORT address of an `amr serve`"]
    through_cli = runner.invoke(app, ["query", "dog", "--server", url])
    assert through_cli.exit_code == 1 and through_cli.stderr.splitlines() == messages
