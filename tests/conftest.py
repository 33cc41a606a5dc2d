"""Shared fixtures: the real data and weights in ../shared, loaded once per session; the fake
retrievers' kinds and checkpoints; indexes and servers of the real sounds. Plain helpers are in
tests/support/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AMR_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "data").is_dir():
        raise RuntimeError(f"the shared data folder is missing: {SHARED} (set AMR_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def mn04_weights(shared: Path) -> Path:
    return shared / "weights" / "mn04_as_mAP_432.pt"


@pytest.fixture(scope="session")
def text_encoder():
    """The default text encoder (all-MiniLM-L6-v2), loaded once; tests must leave it in eval mode."""
    from amr.model.text import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def mn04_model(mn04_weights: Path):
    """The EfficientAT mn04 tagger in eval mode, loaded once per session; do not modify it."""
    from amr.audio.weights import load_audio_model, resolve_weights

    return load_audio_model(resolve_weights("mn04_as", mn04_weights))


@pytest.fixture(scope="session")
def sounds_cache(tmp_path_factory, shared: Path, mn04_weights: Path) -> Path:
    """The real `sounds` set (39 clips, 15 without metadata) extracted once per session with mn04."""
    from amr.audio.weights import resolve_weights
    from amr.datasets import load_dataset
    from amr.extraction import extract

    out = tmp_path_factory.mktemp("sounds") / "sounds.mn04_as.h5"
    items = load_dataset(shared / "data" / "sounds").items
    report = extract(items, out, resolve_weights("mn04_as", mn04_weights), workers=1, progress=False)
    if report.failures:
        raise RuntimeError(f"extracting the shared sounds set failed: {report.failures}")
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread (tiny models: fastest, and immune to a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- fake retrievers (tests/support/words.py, tests/support/slots.py) ---------------------------


@pytest.fixture
def words_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let load_retriever rebuild WordsRetriever fakes (kind "fake") from their spec."""
    from support.words import WordsRetriever

    from amr.model.retrievers import RETRIEVER_KINDS

    monkeypatch.setitem(RETRIEVER_KINDS, "fake", lambda spec, device: WordsRetriever(spec["fingerprint"]))


@pytest.fixture
def slot_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_retriever builds SlotRetriever fakes (kind "fake") from their spec, and checkpoints named shift-K are fakes."""
    from support.slots import SlotRetriever

    from amr.model.retrievers import RETRIEVER_KINDS

    monkeypatch.setitem(RETRIEVER_KINDS, "fake", lambda spec, device: SlotRetriever(spec["shift"], spec["fusion"]))
    monkeypatch.setitem(RETRIEVER_KINDS, "trained", lambda spec, device: SlotRetriever(int(Path(spec["path"]).name.split("-")[1]), "late"))


@pytest.fixture
def checkpoints(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Fake checkpoints a.ckpt and b.ckpt: a file whose text is the fingerprint of its WordsRetriever."""
    from support.words import WordsRetriever

    from amr.model.retrievers import RETRIEVER_KINDS

    monkeypatch.setitem(RETRIEVER_KINDS, "trained", lambda spec, device: WordsRetriever(Path(spec["path"]).read_text().strip(), spec))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.ckpt").write_text(f"fake-{name}\n")
    return folder


# --- zero-shot indexes and servers of real audio ---------------------------------------------


@pytest.fixture(scope="module")
def real_index(sounds_cache: Path, text_encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zero-shot index of the 39 sounds, freesound-train.wav (17.4 s) as two segments (split_in_two)."""
    from support.serving import split_in_two

    from amr.index.build import build_index
    from amr.model.zeroshot import ZeroShotRetriever

    path = tmp_path_factory.mktemp("real-serve") / "sounds.zero-shot.h5"
    build_index(ZeroShotRetriever(text=text_encoder), [sounds_cache], path, show_progress=False)
    split_in_two(path, "freesound-train", "freesound-piano")
    return path


@pytest.fixture(scope="module")
def real_api(real_index: Path, text_encoder, mn04_weights: Path) -> Iterator[str]:
    from support.serving import running

    from amr.index.reader import open_index
    from amr.model.zeroshot import ZeroShotRetriever
    from amr.query import Searcher

    retriever = ZeroShotRetriever(text=text_encoder)
    with running(Searcher(open_index(real_index), retriever, mn04_weights), upload_limit=64 << 20) as url:
        yield url


@pytest.fixture(scope="module")
def library_index(tmp_path_factory, shared: Path, mn04_weights: Path, text_encoder) -> Path:
    from support.serving import FILES

    from amr.audio.weights import resolve_weights
    from amr.datasets import load_dataset
    from amr.extraction import extract
    from amr.index.build import build_index
    from amr.model.zeroshot import ZeroShotRetriever

    folder = tmp_path_factory.mktemp("library-serve")
    root = folder / "lib"
    for name, clip in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / "data" / "sounds" / "audio" / clip, root / name)
    cache = folder / "lib.h5"
    report = extract(load_dataset(root).items, cache, resolve_weights("mn04_as", mn04_weights), workers=1, progress=False)
    assert not report.failures
    build_index(ZeroShotRetriever(text=text_encoder), [cache], folder / "lib.zero-shot.h5", show_progress=False)
    return folder / "lib.zero-shot.h5"


@pytest.fixture(scope="module")
def library_api(library_index: Path, text_encoder) -> Iterator[str]:
    from support.serving import running

    from amr.index.reader import open_index
    from amr.model.zeroshot import ZeroShotRetriever
    from amr.query import Searcher

    with running(Searcher(open_index(library_index), ZeroShotRetriever(text=text_encoder))) as url:
        yield url
