"""Training data (see amr.training): the caches in memory with their validation
items (the val split, a fixed tenth of train, or held-out concepts), every
(caption, clip) pair, and everything random about an epoch, drawn from
(seed, epoch).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from amr.cache import EmbeddingCache
from amr.config import CAPTIONS, ModelConfig, TrainConfig, Validation
from amr.console import console
from amr.errors import AmrError
from amr.model.model import item_metadata
from amr.model.text_input import normalize_text

HOLDOUT_MODULUS = 10  # a cache without a val split validates on 1 in 10 train items
BUCKET_BATCHES = 16  # batches per length bucket (see _bucketed_batches)


@dataclass
class _Source:
    """One cache in memory: its frames (clean and augmented) and its splits."""

    cache: EmbeddingCache
    frames: np.ndarray  # (F, C) float16
    augmented: np.ndarray | None  # (F, K, C) float16
    train: list[int]
    val: list[int]

    def sequence(self, i: int, view: int = -1) -> np.ndarray:
        start, n = int(self.cache.offsets[i]), int(self.cache.lengths[i])
        if view < 0:
            return self.frames[start : start + n]
        return self.augmented[start : start + n, view]


def _load_source(cache: EmbeddingCache, validation: Validation = Validation.split) -> _Source:
    splits = [item.split for item in cache.items]
    train = [i for i, s in enumerate(splits) if s == "train"]
    val = [i for i, s in enumerate(splits) if s == "val"]
    if not train:
        raise AmrError(f"{cache.path}: no train-split items to train on (splits: {', '.join(sorted(set(splits)))})")
    if validation is Validation.concepts:
        held = set(concept_holdout([cache.items[i].captions for i in train]))
        val = [i for k, i in enumerate(train) if k in held]
        train = [i for k, i in enumerate(train) if k not in held]
        console.print(
            f"{cache.path}: validating on {len(val)} train items of held-out concepts (their caption words never occur in training)"
        )
    elif not val:
        held = {i for i in train if zlib.crc32(cache.items[i].id.encode()) % HOLDOUT_MODULUS == 0}
        val = sorted(held)
        train = [i for i in train if i not in held]
        console.print(f"{cache.path}: no val split; validating on {len(val)} held-out train items (1 in {HOLDOUT_MODULUS} by id hash)")
    augmented = cache.all_frames(augmented=True) if cache.info.augment_views else None
    return _Source(cache, cache.all_frames(), augmented, train, val)


# Words that name no concept, left out when captions are compared by their words.
STOPWORDS = frozenset(
    "a an the of and or in on at to with from by for is are was were be being been it its this that these those "
    "as into onto over under while near then than there here some someone something someones sound sounds noise".split()
)
CONCEPT_HOLDOUT = 0.1  # the share of train items concept validation holds out


def concept_holdout(captions: Sequence[Sequence[str]], share: float = CONCEPT_HOLDOUT) -> list[int]:
    """Positions of items to hold out so that each of them has a word that
    occurs in no kept item's captions: whole words (concepts) leave training.

    Words are drawn in a fixed pseudo-random order (by their crc32); each
    takes out every item whose captions contain it, unless that would exceed
    ``share`` of the items; drawing stops there. Deterministic, so every run
    and every seed validates on the same items."""
    words = [{w for c in item for w in normalize_text(c).split() if w not in STOPWORDS} for item in captions]
    holders: dict[str, list[int]] = {}
    for position, item_words in enumerate(words):
        for word in item_words:
            holders.setdefault(word, []).append(position)
    budget = int(share * len(captions))
    held: set[int] = set()
    for word in sorted(holders, key=lambda w: (zlib.crc32(w.encode()), w)):
        if len(held | set(holders[word])) <= budget:
            held |= set(holders[word])
        if len(held) >= budget:
            break
    return sorted(held)


@dataclass
class _Pairs:
    """Every (caption, clip) training pair, as flat arrays."""

    clip_source: np.ndarray  # (n_clips,) which source
    clip_item: np.ndarray  # (n_clips,) item index in its cache
    clip_views: np.ndarray  # (n_clips,) augmented views available
    clip_length: np.ndarray  # (n_clips,) frames
    clip_metadata: list[str | None]  # per clip (unused for captions-as-metadata)
    clip_captions: list[list[str]]
    pair_clip: np.ndarray  # (n_pairs,)
    pair_caption: np.ndarray  # (n_pairs,)

    def __len__(self) -> int:
        return len(self.pair_clip)


def _training_pairs(sources: Sequence[_Source], fields_: Sequence[str]) -> _Pairs:
    clips = [(s, i) for s, source in enumerate(sources) for i in source.train if source.cache.items[i].captions]
    if not clips:
        raise AmrError("no train-split item has a caption: nothing to train on")
    captions = [sources[s].cache.items[i].captions for s, i in clips]
    counts = np.array([len(c) for c in captions])
    return _Pairs(
        clip_source=np.array([s for s, _ in clips]),
        clip_item=np.array([i for _, i in clips]),
        clip_views=np.array([sources[s].cache.info.augment_views for s, _ in clips]),
        clip_length=np.array([sources[s].cache.lengths[i] for s, i in clips]),
        clip_metadata=[item_metadata(sources[s].cache.items[i], fields_) for s, i in clips],
        clip_captions=captions,
        pair_clip=np.repeat(np.arange(len(clips)), counts),
        pair_caption=np.concatenate([np.arange(n) for n in counts]),
    )


@dataclass
class _Epoch:
    """Everything random about one epoch, drawn from (seed, epoch)."""

    batches: list[np.ndarray]  # pair indices
    views: np.ndarray  # per clip: augmented view, -1 for the clean sequence
    metadata: list[str | None]  # per pair
    torch_seed: int  # dropout


def _plan_epoch(pairs: _Pairs, model: ModelConfig, training: TrainConfig, epoch: int) -> _Epoch:
    rng = np.random.default_rng([training.seed, epoch])
    torch_seed = int(rng.integers(2**62))
    batches = _bucketed_batches(rng.permutation(len(pairs)), pairs.clip_length[pairs.pair_clip], training.batch_size, rng)
    views = np.where(pairs.clip_views > 0, (rng.random(len(pairs.clip_views)) * pairs.clip_views).astype(int), -1)
    other = rng.integers(2**31, size=len(pairs))
    dropped = rng.random(len(pairs)) < training.metadata_dropout
    metadata: list[str | None] = []
    for p in range(len(pairs)):
        clip, caption = int(pairs.pair_clip[p]), int(pairs.pair_caption[p])
        if model.metadata == (CAPTIONS,):
            text = _other_caption(pairs.clip_captions[clip], caption, int(other[p]))
        else:
            text = pairs.clip_metadata[clip]
        metadata.append(None if dropped[p] else text)
    return _Epoch(batches, views, metadata, torch_seed)


def _bucketed_batches(order: np.ndarray, lengths: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar-length sequences (less padding, less compute): the
    shuffled pairs are cut into buckets of BUCKET_BATCHES batches, each bucket
    sorted by length (ties stay in random order) and cut into batches, and
    the batches shuffled. A bucket is a small random sample of all pairs, so
    a batch rarely holds two captions of one clip, as with plain shuffling."""
    batches = []
    for start in range(0, len(order), size * BUCKET_BATCHES):
        bucket = order[start : start + size * BUCKET_BATCHES]
        bucket = bucket[np.argsort(lengths[bucket], kind="stable")]
        batches += [bucket[i : i + size] for i in range(0, len(bucket), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _other_caption(captions: list[str], own: int, draw: int) -> str | None:
    """A caption of the clip other than caption ``own`` (None when it has one)."""
    n = len(captions)
    return captions[(own + 1 + draw % (n - 1)) % n] if n > 1 else None


def _all_texts(sources: Sequence[_Source], pairs: _Pairs, fields_: Sequence[str]) -> list[str]:
    """Every text a frozen encoder will see: captions and metadata of train and validation items."""
    texts = [c for captions in pairs.clip_captions for c in captions]
    texts += [m for m in pairs.clip_metadata if m is not None]
    for source in sources:
        for i in source.val:
            item = source.cache.items[i]
            texts += item.captions
            metadata = item_metadata(item, fields_)
            if metadata is not None:
                texts.append(metadata)
    return texts
