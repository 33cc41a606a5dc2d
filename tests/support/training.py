"""Synthetic caches whose frames carry their sound class, and tiny model and training configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amr.cache import CacheInfo, ClipEmbedding, write_cache
from amr.config import TrainConfig
from amr.items import Item
from amr.model.model import ModelConfig

WORDS = ["dog", "rain", "car", "bird", "door", "water", "engine", "bell"]
DIM = 12
TINY = dict(width=16, depth=1, heads=2, ff=32)


def synthetic_cache(path: Path, n: int = 48, views: int = 2, splits: tuple[str, ...] = ("train", "val"), model: str = "synthetic") -> Path:
    """Clips whose frames carry their sound class, captions and keywords naming it;
    every third clip has no metadata; every fifth is in the last split."""
    rng = np.random.default_rng(0)
    prototypes = np.random.default_rng(1).normal(size=(len(WORDS), DIM))
    info = CacheInfo(model, "0" * 64, DIM, 527, 32000, 3.125, 10.0, views)
    clips = []
    for i in range(n):
        c, t = i % len(WORDS), int(rng.integers(3, 12))
        frames = prototypes[c] + rng.normal(size=(t, DIM))
        augmented = frames[:, None] + 0.1 * rng.normal(size=(t, views, DIM)) if views else None
        metadata = {"keywords": [WORDS[c], "sound"]} if i % 3 else {}
        captions = [f"a {WORDS[c]} sound {k}" for k in range(3)]
        item = Item(f"{path.stem}-{i}", f"/audio/{i}.wav", splits[-1] if i % 5 == 0 else splits[0], metadata, captions)
        clips.append(ClipEmbedding(item, frames, rng.random(527), augmented))
    write_cache(path, info, clips)
    return path


def configs(cache: Path, **given) -> tuple[ModelConfig, TrainConfig]:
    """A tiny frozen-text model and two epochs on ``cache``, with ``given`` options of either config."""
    names = set(ModelConfig.__dataclass_fields__)
    model = ModelConfig(**{"freeze_text": True, **TINY, **{k: v for k, v in given.items() if k in names}})
    training = TrainConfig(**{"epochs": 2, "caches": (str(cache),), **{k: v for k, v in given.items() if k not in names}})
    return model, training
