"""Where models run: --device auto|cpu|cuda. The CUDA tests run where torch sees a GPU
(skipped elsewhere, CI included); the refusal of cuda without one runs everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.training import configs, synthetic_cache

from amr.devices import resolve_device
from amr.errors import AmrError
from amr.model.checkpoint import load_checkpoint
from amr.training import train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_is_cuda_only_where_there_is_one() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(AmrError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(AmrError, match="unknown device"):
        resolve_device("tpu")


@cuda
@pytest.mark.parametrize("fusion", ["late", "mid"])
def test_training_on_the_gpu_matches_the_cpu(fusion: str, tmp_path: Path, text_encoder) -> None:
    cache = synthetic_cache(tmp_path / "sounds.h5", n=48, views=2)
    model, training = configs(cache, fusion=fusion, epochs=2)
    results = {}
    for device in ("cpu", "cuda"):
        result = train(tmp_path / device, model, training, progress=False, text=text_encoder, device=device)
        retriever = load_checkpoint(tmp_path / device, text=text_encoder, device=device)
        from amr.cache import EmbeddingCache

        with EmbeddingCache(cache) as c:
            vectors = retriever.encode_items(c, range(len(c)))
            queries = retriever.encode_queries([c.items[0].captions[0]])
        results[device] = (result.best_map10, queries @ vectors.T)
    # different kernels: the same model up to float32 rounding, compounded over a few hundred steps
    assert abs(results["cpu"][0] - results["cuda"][0]) < 0.05
    np.testing.assert_allclose(results["cpu"][1], results["cuda"][1], atol=0.05)
