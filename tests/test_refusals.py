"""Damaged inputs, full disks, interruptions and outputs of another kind: each
is one line naming the file (an AmrError), and nothing already written is lost.

A full disk is a real failed write: RLIMIT_FSIZE makes every write that would
grow a file past the limit fail (EFBIG; Python ignores SIGXFSZ), with no root
and no special file system needed."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from support.commands import AMR, amr, one_error_line
from support.training import configs, synthetic_cache
from support.words import LIBRARY, D, WordsRetriever
from support.words import make_cache as make_library
from typer.testing import CliRunner

from amr.cli import app
from amr.config import TrainConfig
from amr.errors import AmrError
from amr.files import exclusive
from amr.index.build import build_index
from amr.index.reader import Index, open_index
from amr.index.search import search
from amr.model.checkpoint import load_checkpoint
from amr.model.text import TextEncoder
from amr.training import loop as train_module
from amr.training import train
from amr.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUERY = np.ones((1, 2 * D), np.float32)  # a query of the fake retriever
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Writes that would grow a file past ``size`` bytes fail inside the block (as on a full disk)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def names_a_file_of(error: AmrError, folder: Path) -> Path:
    """The file an error's message starts with, which must lie in ``folder`` and not be a temporary file."""
    named = Path(str(error).split(": ")[0])
    assert named.parent == folder or named.parent.parent == folder, str(error)
    assert not named.name.endswith(".tmp"), str(error)
    return named


# --- text models (cases 1 and 4) -------------------------------------------------------------


def text_model_folder(tmp_path: Path, text_encoder) -> Path:
    folder = tmp_path / "text-model"
    folder.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(Path(text_encoder.source) / name, folder / name)
    return folder


def test_pickled_weights_of_tensors_only_are_refused_too(tmp_path: Path, text_encoder) -> None:
    folder = text_model_folder(tmp_path, text_encoder)
    torch.save(text_encoder.model.state_dict(), folder / "pytorch_model.bin")  # loadable with weights_only
    with pytest.raises(AmrError, match="pytorch_model.bin: pickled weights, which amr never loads"):
        TextEncoder(str(folder))


def test_random_bytes_as_safetensors_weights_name_the_file(tmp_path: Path, text_encoder) -> None:
    folder = text_model_folder(tmp_path, text_encoder)
    (folder / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AmrError, match="model.safetensors: not a readable safetensors file"):
        TextEncoder(str(folder))


# --- checkpoints (cases 2, 3, the wrong dtype) -----------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, text_encoder) -> Path:
    root = tmp_path_factory.mktemp("ck")
    cache = synthetic_cache(root / "sounds.h5", n=24, views=0)
    model, training = configs(cache, fusion="late", epochs=1)
    train(root / "ck", model, training, progress=False, text=text_encoder)
    return root / "ck"


def edited(checkpoint: Path, tmp_path: Path, change_config=None, change_tensors=None) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    if change_config:
        change_config(config)
    (copy / "config.json").write_text(json.dumps(config))
    if change_tensors:
        tensors = load_file(copy / "model.safetensors")
        change_tensors(tensors)
        save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "amr-checkpoint", "version": "1"})
    return copy


@pytest.mark.parametrize("section", ["", "audio", "training", "text", "best"])
def test_unknown_keys_anywhere_in_a_checkpoint_config_are_refused(section: str, checkpoint_dir: Path, tmp_path: Path, text_encoder) -> None:
    def change(config: dict) -> None:
        (config[section] if section else config)["colour"] = "blue"

    copy = edited(checkpoint_dir, tmp_path, change)
    with pytest.raises(AmrError, match=r"config.json: unknown key\(s\) colour"):
        load_checkpoint(copy, text=text_encoder)


@pytest.mark.parametrize(("section", "value"), [("text", None), ("training", []), ("audio", "x"), ("text", {"name": 1})])
def test_a_config_section_of_the_wrong_type_is_one_line_naming_config_json(
    section: str, value: object, checkpoint_dir: Path, tmp_path: Path, text_encoder
) -> None:
    def change(config: dict) -> None:
        config[section] = value if not isinstance(value, dict) else {**config[section], **value}

    copy = edited(checkpoint_dir, tmp_path, change)
    with pytest.raises(AmrError, match=f"{copy / 'config.json'}: '{section}'"):
        load_checkpoint(copy, text=text_encoder)


def test_checkpoint_tensors_of_another_dtype_are_refused(checkpoint_dir: Path, tmp_path: Path, text_encoder) -> None:
    name = next(k for k, v in load_file(checkpoint_dir / "model.safetensors").items() if v.is_floating_point())

    def to_int(tensors: dict) -> None:
        tensors[name] = (tensors[name] * 1000).to(torch.int64)

    copy = edited(checkpoint_dir, tmp_path, change_tensors=to_int)
    with pytest.raises(AmrError, match=f"tensor {name} is torch.int64, the model's is torch.float32"):
        load_checkpoint(copy, text=text_encoder)


# --- the workspace's pointers (case 17) ------------------------------------------------------


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(64), b"[]", b'{"index": 3}'], ids=["random", "list", "number"])
def test_a_damaged_latest_json_is_one_line_naming_it(content: bytes, tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_bytes(content)
    with pytest.raises(AmrError, match="latest.json: not"):
        Workspace(tmp_path).latest("index")
    (tmp_path / "i.h5").touch()
    Workspace(tmp_path).set_latest("index", tmp_path / "i.h5")  # a stage that just wrote its output records it anew
    assert Workspace(tmp_path).latest("index") == (tmp_path / "i.h5").resolve()


# --- index outputs (cases 5, 12, 18) ---------------------------------------------------------


@pytest.fixture
def library(tmp_path: Path) -> Path:
    return make_library(tmp_path / "library.h5", LIBRARY)


def leftovers(folder: Path, stem: str) -> list[str]:
    return sorted(p.name for p in folder.glob(f"{stem}.*"))


def test_a_directory_as_index_output_is_one_line_and_leaves_nothing(library: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(AmrError, match=f"{tmp_path / 'out'}: a directory"):
        build_index(WordsRetriever(), [library], tmp_path / "out", show_progress=False)
    assert leftovers(tmp_path, "out") == []


def test_an_index_never_overwrites_a_file_of_another_kind_unless_forced(library: Path, tmp_path: Path) -> None:
    cache = make_library(tmp_path / "other.h5", LIBRARY)
    before = cache.read_bytes()
    with pytest.raises(AmrError, match="other.h5: exists and is not an amr index.*--force"):
        build_index(WordsRetriever(), [library], cache, show_progress=False)
    assert cache.read_bytes() == before
    build_index(WordsRetriever(), [library], tmp_path / "index.h5", show_progress=False)
    build_index(WordsRetriever(), [library], tmp_path / "index.h5", show_progress=False)  # an index is rebuilt in place
    build_index(WordsRetriever(), [library], cache, force=True, show_progress=False)
    assert len(Index(cache).ids()) == len(LIBRARY)


@pytest.mark.parametrize("limit", [100, 1000, 3000, 6000, 9000, 12000])
def test_a_full_disk_during_index_or_append_names_the_file_and_keeps_the_index(limit: int, library: Path, tmp_path: Path) -> None:
    index = tmp_path / "index.h5"
    build_index(WordsRetriever(), [library], index, show_progress=False)
    kept = search(open_index(index), QUERY, 3, exact=True)
    folders = leftovers(tmp_path, "index")
    more = make_library(tmp_path / "more.h5", LIBRARY, seed=1)  # every id again: replaced, compacted
    for output, append in ((tmp_path / "new.h5", False), (index, True)):
        try:
            with file_size_limit(limit):
                build_index(WordsRetriever(), [more], output, append=append, show_progress=False)
            continue  # all it writes fits under the limit
        except AmrError as e:
            names_a_file_of(e, tmp_path)
            assert "cannot write it" in str(e)
        assert leftovers(tmp_path, "index") == folders and leftovers(tmp_path, "new") == []
        assert all(np.array_equal(a, b) for a, b in zip(search(open_index(index), QUERY, 3, exact=True), kept))


# --- damaged index columns and lookup (cases 19, 20) -----------------------------------------


@pytest.mark.parametrize("column", ["items", "row_item", "vectors", "item_ends"])
def test_random_bytes_in_an_index_column_are_one_line_naming_it(column: str, library: Path, tmp_path: Path) -> None:
    index = tmp_path / "index.h5"
    build_index(WordsRetriever(), [library], index, show_progress=False)
    file = next(tmp_path.glob(f"index.*.data/{column}"))
    rng = np.random.default_rng(3)
    raw = bytearray(rng.bytes(file.stat().st_size))
    if column == "vectors":
        raw[:4] = np.float32(np.nan).tobytes()  # random bytes, sure to hold a NaN
    file.write_bytes(bytes(raw))
    opened = open_index(index)
    with pytest.raises(AmrError, match=r"index\.[0-9a-f]{8}\.data/(items|row_item|vectors)"):
        rows, _ = search(opened, QUERY, 5, exact=True)
        [opened.item_of_row(int(r)) for r in rows[0]]


@pytest.mark.parametrize("parts", ['[["audio", 1e400]]', '[["audio", -8], ["metadata", 24]]', "[1, 2]", '[["audio", 8], ["audio", 8]]'])
def test_a_bad_parts_attribute_is_one_line(parts: str, library: Path, tmp_path: Path) -> None:
    index = tmp_path / "index.h5"
    build_index(WordsRetriever(), [library], index, show_progress=False)
    with h5py.File(index, "a") as f:
        f.attrs["parts"] = parts
    with pytest.raises(AmrError, match="index.h5: damaged index attributes"):
        open_index(index)


def test_a_damaged_lookup_is_refused_before_an_append_duplicates_every_item(library: Path, tmp_path: Path) -> None:
    index = tmp_path / "index.h5"
    build_index(WordsRetriever(), [library], index, show_progress=False)
    lookup = next(tmp_path.glob("index.*.data/lookup.*"))
    lookup.write_bytes(np.random.default_rng(4).bytes(lookup.stat().st_size))
    with pytest.raises(AmrError, match=f"{lookup}: damaged"):
        build_index(WordsRetriever(), [library], index, append=True, show_progress=False)
    assert len(Index(index).ids()) == len(LIBRARY)


# --- training (cases 8, 13, 15, 16) ----------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_cache(tmp_path_factory.mktemp("caches") / "sounds.h5", n=24, views=0)


@pytest.mark.parametrize("name", ["lr", "text_lr", "weight_decay", "temperature"])
def test_non_finite_training_options_are_refused(name: str, cache: Path) -> None:
    for value in (float("inf"), float("nan")):
        with pytest.raises(AmrError, match=f"training option {name} must be a finite number"):
            TrainConfig(caches=(str(cache),), **{name: value})


def test_train_with_an_infinite_learning_rate_is_one_line_and_leaves_no_checkpoint(cache: Path, tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["train", "--cache", str(cache), "--lr", "inf", "--epochs", "1", "-o", str(tmp_path / "ck")])
    assert done.exit_code == 1 and "training option lr must be a finite number" in done.output, done.output
    assert not (tmp_path / "ck").exists()


def test_a_diverging_run_is_an_error_naming_its_cause(cache: Path, tmp_path: Path, text_encoder) -> None:
    model, training = configs(cache, fusion="late", epochs=2, lr=1e30)
    with pytest.raises(AmrError, match="training diverged: the (loss|weights) became"):
        train(tmp_path / "ck", model, training, progress=False, text=text_encoder)


@pytest.mark.parametrize("limit", [200, 3000, 20000])
def test_a_full_disk_during_training_names_the_file(limit: int, cache: Path, tmp_path: Path, text_encoder) -> None:
    model, training = configs(cache, fusion="late", epochs=1)
    with pytest.raises(AmrError) as caught, file_size_limit(limit):
        train(tmp_path / "ck", model, training, progress=False, text=text_encoder)
    assert "cannot write it" in str(caught.value)
    names_a_file_of(caught.value, tmp_path / "ck")
    assert not list((tmp_path / "ck").glob(".*.tmp"))


def test_ctrl_c_during_training_exits_130_and_the_run_resumes(cache: Path, tmp_path: Path, text_encoder, monkeypatch) -> None:
    from amr.model import checkpoint

    monkeypatch.setattr(checkpoint, "TextEncoder", lambda name: text_encoder)
    run_epoch = train_module._run_epoch

    def interrupted(*args, **kwargs):
        if args[7] == 1:  # Ctrl-C during the second epoch
            raise KeyboardInterrupt
        return run_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_run_epoch", interrupted)
    args = ["train", "--cache", str(cache), "--fusion", "late", "--freeze-text", "--epochs", "2", "--width", "16", "--heads", "2"]
    done = CliRunner().invoke(app, [*args, "--depth", "1", "--ff", "32", "-o", str(tmp_path / "ck"), "-w", str(tmp_path)])
    assert done.exit_code == 130 and "continue with `amr train --resume" in done.output, done.output
    monkeypatch.setattr(train_module, "_run_epoch", run_epoch)
    again = CliRunner().invoke(app, ["train", "--resume", "-o", str(tmp_path / "ck"), "-w", str(tmp_path)])
    assert again.exit_code == 0 and json.loads(again.stdout.strip().splitlines()[-1])["epochs"] == 2, again.output


def test_a_second_run_on_one_checkpoint_is_refused_at_once(cache: Path, tmp_path: Path, text_encoder) -> None:
    model, training = configs(cache, fusion="late", epochs=1)
    with exclusive(tmp_path / "ck", "checkpoint"), pytest.raises(AmrError, match="another amr run is writing this checkpoint"):
        train(tmp_path / "ck", model, training, progress=False, text=text_encoder)
    assert not (tmp_path / "ck").exists()


# --- evaluate --per-query (cases 14, 18) -----------------------------------------------------


def test_per_query_results_are_atomic_and_never_overwrite_a_cache(tmp_path: Path) -> None:
    cache = synthetic_cache(tmp_path / "sounds.h5", n=12, views=0)
    ranks = tmp_path / "ranks.json"
    args = ["evaluate", "--zero-shot", "--cache", str(cache), "--split", "all", "--json", "-w", str(tmp_path)]
    assert amr(*args, "--per-query", str(ranks)).returncode == 0
    before = ranks.read_bytes()
    limit = len(before) // 2

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    command = [str(AMR)] if AMR.exists() else [sys.executable, "-m", "amr"]
    full = subprocess.run([*command, *args, "--per-query", str(ranks)], capture_output=True, timeout=600, preexec_fn=small_files)
    one_error_line(full, f"{ranks}: cannot write it")
    assert ranks.read_bytes() == before and not list(tmp_path.glob(".ranks.json.*"))
    cache_bytes = cache.read_bytes()
    one_error_line(amr(*args, "--per-query", str(cache)), "sounds.h5: exists and is not per-query results", "--force")
    assert cache.read_bytes() == cache_bytes
