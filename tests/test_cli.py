"""The `amr` command through its real entry point: exit codes, and one line on
stderr (never a traceback) for every kind of bad input a user can give it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.commands import amr, one_error_line
from support.training import TINY, configs, synthetic_cache
from support.words import LIBRARY, WordsRetriever
from support.words import make_cache as make_library

from amr import __version__
from amr.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_version_and_help() -> None:
    assert amr("--version").stdout.decode().strip() == __version__
    shown = amr("train", "--help", env={"COLUMNS": "250"})
    assert shown.returncode == 0
    text = shown.stdout.decode()
    assert "none|metadata|late|mid" in text and "zero-shot|random" in text and "[default: 25]" in text
    assert "--interpolation" in text and "--text-pooling" in text


@pytest.mark.parametrize(
    "args",
    [
        ["query", "dog", "--format", "xml"],
        ["train", "--fusion", "bogus"],
        ["evaluate", "--split", "bogus"],
        ["index", "--split", "everything"],
        ["train", "--epochs", "0"],
        ["query", "--no-such-option"],
        ["query", "--top", "0", "dog"],
        ["extract"],
        ["bogus"],
    ],
)
def test_invalid_option_values_are_usage_errors(args: list[str]) -> None:
    """Exit 2 and one line on stderr, not a framed box."""
    done = amr(*args)
    lines = [line for line in done.stderr.decode().splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr.decode()


def test_a_missing_input_is_one_line_naming_what_to_do(tmp_path: Path) -> None:
    one_error_line(amr("query", "dog", "-w", str(tmp_path)), "no index in workspace", "run `amr index` first")
    one_error_line(amr("extract", str(tmp_path / "nowhere")), "nowhere", "not a directory")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny trained checkpoint (late fusion) and its cache."""
    root = tmp_path_factory.mktemp("cli")
    cache = synthetic_cache(root / "sounds.h5", n=24, views=0)
    model, training = configs(cache, fusion="late", epochs=1)
    train(root / "ck", model, training, progress=False)
    return root / "ck", cache


def damaged(checkpoint: Path, tmp_path: Path, change) -> Path:
    """A copy of the checkpoint with ``change(config, tensors)`` applied."""
    copy = tmp_path / "ck"
    copy.mkdir()
    config = json.loads((checkpoint / "config.json").read_text())
    tensors = load_file(checkpoint / "model.safetensors")
    change(config, tensors)
    (copy / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "amr-checkpoint", "version": "1"})
    return copy


def widen(config: dict, tensors: dict) -> None:
    config["model"]["width"] = 2 * TINY["width"]


def other_shapes(config: dict, tensors: dict) -> None:
    name = next(k for k in tensors if k.endswith("query.linear.weight"))
    tensors[name] = torch.zeros(3, 3)


def set_option(name: str, value: object):
    def change(config: dict, tensors: dict) -> None:
        config["model"][name] = value

    return change


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (other_shapes, ("model.safetensors", "weights do not match", "size mismatch")),
        (widen, ("model.safetensors", "weights do not match")),
        (set_option("depth", "two"), ("config.json", "depth must be int")),
        (set_option("heads", 0), ("config.json", "heads must be at least 1")),
        (set_option("colour", "blue"), ("config.json", "unknown model option(s) colour")),
    ],
)
def test_a_damaged_checkpoint_is_one_line(change, fragments: tuple[str, ...], trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, cache = trained
    copy = damaged(checkpoint, tmp_path, change)
    one_error_line(amr("index", str(cache), "-c", str(copy), "-o", str(tmp_path / "index.h5"), "-w", str(tmp_path)), *fragments)


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, os.urandom(4096)], ids=["empty", "zeros", "random"])
def test_a_damaged_faiss_sidecar_is_one_line(content: bytes, tmp_path: Path) -> None:
    from amr.index.build import build_index
    from amr.index.reader import open_index

    library = make_library(tmp_path / "library.h5", LIBRARY)
    index = tmp_path / "index.h5"
    build_index(WordsRetriever(), [library], index, ann=True, show_progress=False)
    sidecar = next(tmp_path.glob("index.*.faiss"))
    sidecar.write_bytes(content if content else sidecar.read_bytes()[: len(sidecar.read_bytes()) // 2])
    with pytest.raises(Exception) as caught:
        open_index(index)
    assert type(caught.value).__name__ == "AmrError" and sidecar.name in str(caught.value)


def test_index_builds_the_approximate_index_kind_asked_for(sounds_cache: Path, tmp_path: Path) -> None:
    """`--ann-kind ivf-pq` gives the on-disk tier at any size (its lists in a second file), and
    the query through it finds what exact search finds first; `--no-ann` with a kind is a usage error."""
    index = tmp_path / "index.h5"
    done = amr("index", str(sounds_cache), "--zero-shot", "--ann-kind", "ivf-pq", "-o", str(index), "-w", str(tmp_path))
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["ann"]["kind"] == "ivf-pq" and list(tmp_path.glob("index.*.ivfdata"))
    approximate = amr("query", "a dog barking", "-i", str(index), "--format", "jsonl", "--top", "1")
    exact = amr("query", "a dog barking", "-i", str(index), "--format", "jsonl", "--top", "1", "--exact")
    assert json.loads(approximate.stdout)["id"] == json.loads(exact.stdout)["id"] == "bigsoundbank-dog"
    one_error_line(amr("index", str(sounds_cache), "--zero-shot", "--no-ann", "--ann-kind", "ivf-sq8", "-o", str(index)), "exclude")


def test_a_pickled_text_model_is_refused_in_one_line(tmp_path: Path, text_encoder) -> None:
    folder = tmp_path / "text-model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).write_bytes((Path(text_encoder.source) / name).read_bytes())
    script = (
        "import torch\n"
        "class Run:\n"
        "    def __reduce__(self):\n"
        f"        return (open, ({str(tmp_path / 'was-run')!r}, 'w'))\n"
        f"torch.save({{'x': Run()}}, {str(folder / 'pytorch_model.bin')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    cache = synthetic_cache(tmp_path / "sounds.h5", n=6, views=0)
    done = amr("index", str(cache), "--zero-shot", "--text-model", str(folder), "-o", str(tmp_path / "i.h5"), "-w", str(tmp_path))
    one_error_line(done, "pytorch_model.bin", "never loads")
    assert not (tmp_path / "was-run").exists()  # nothing in the pickle ran


def test_evaluate_an_index_alone(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, cache = trained
    index = tmp_path / "index.h5"
    assert amr("index", str(cache), "-c", str(checkpoint), "-o", str(index), "-w", str(tmp_path)).returncode == 0
    done = amr("evaluate", "--index", str(index), "--split", "all", "--json", "-w", str(tmp_path / "fresh"))
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert [m["name"] for m in summary["models"]] == ["index"] and summary["items"] == 24


def test_stdin_lines_that_are_not_text_fail_alone_and_the_output_stays_utf8(sounds_cache: Path, tmp_path: Path) -> None:
    index = tmp_path / "index.h5"
    assert amr("index", str(sounds_cache), "--zero-shot", "-o", str(index), "-w", str(tmp_path)).returncode == 0
    stdin = b'dog barking\n\xff\xfe broken bytes\n{"text": "lone \\ud800 surrogate"}\ncaf\xc3\xa9 with a rooster\n'
    for locale in ("C.UTF-8", "C"):
        done = amr("query", "-", "-i", str(index), "-k", "1", "--format", "jsonl", stdin=stdin, env={"LC_ALL": locale, "LANG": locale})
        assert done.returncode == 3, done.stderr.decode()  # some queries failed, the others answered
        records = [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]  # valid UTF-8 throughout
        assert [r["query_id"] for r in records] == ["1", "4"] and records[1]["query"] == "café with a rooster"
        errors = done.stderr.decode("utf-8").splitlines()
        assert len(errors) == 2 and "not UTF-8" in errors[0] and "lone surrogate" in errors[1]
        assert "Traceback" not in done.stderr.decode()


def test_an_unexpected_error_is_one_line_too(sounds_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug (here a ValueError planted in the indexer) or an OSError still ends in one line and exit 1."""
    from typer.testing import CliRunner

    import amr.index.build
    from amr.cli import app

    def broken(*args, **kwargs):
        raise ValueError("planted\nsecond line")

    monkeypatch.setattr(amr.index.build, "build_index", broken)
    monkeypatch.delenv("AMR_DEBUG", raising=False)
    done = CliRunner().invoke(app, ["index", str(sounds_cache), "--zero-shot", "-o", str(tmp_path / "i.h5"), "-w", str(tmp_path)])
    assert done.exit_code == 1 and "internal error, ValueError: planted (a bug of amr" in done.output, done.output
    assert "second line" not in done.output and "Traceback" not in done.output

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "i.h5"))

    monkeypatch.setattr(amr.index.build, "build_index", full_disk)
    done = CliRunner().invoke(app, ["index", str(sounds_cache), "--zero-shot", "-o", str(tmp_path / "i.h5"), "-w", str(tmp_path)])
    assert done.exit_code == 1 and f"{tmp_path / 'i.h5'}: No space left on device" in done.output, done.output


def test_a_directory_or_a_non_hdf5_file_given_as_an_index_is_one_line(tmp_path: Path) -> None:
    """HDF5's error for a directory spans several lines; what the user sees is one."""
    one_error_line(amr("query", "dog", "-i", str(tmp_path)), str(tmp_path), "a directory")
    garbage = tmp_path / "bad.h5"
    garbage.write_bytes(b"not hdf5 at all")
    one_error_line(amr("query", "dog", "-i", str(garbage)), "bad.h5", "not a readable HDF5 file")
