"""Shared fixtures: the real data and weights in ../shared, loaded once per session."""

from __future__ import annotations

import os
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
