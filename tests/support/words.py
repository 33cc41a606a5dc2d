"""A fake late-fusion retriever over synthetic caches: a fixed random audio
projection and a hashed bag-of-words text tower, so tests of the index, query,
serve and CLI need no model. Also the small library it indexes, and vectors
for approximate indexes of any size. (The other fake, support.slots.SlotRetriever,
is audio-only with one-hot vectors, for evaluation rankings worked out by hand.)"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from amr.audio.mobilenet import audioset_class_names
from amr.cache import CacheInfo, ClipEmbedding, EmbeddingCache, write_cache
from amr.items import Item, metadata_text
from amr.model.checkpoint import checkpoint_spec
from amr.model.fusion import Fusion
from amr.model.text import normalize_text

C = 16  # frame embedding size of the fake caches
D = 32  # size of each segment of the fake retriever


def words(text: str) -> np.ndarray:
    """Hashed bag of words, unit length (zero for no words)."""
    v = np.zeros(D, np.float32)
    for word in normalize_text(text).split():
        h = zlib.crc32(word.encode())
        v[h % D] += 1.0 if (h >> 16) & 1 else -1.0
    n = np.linalg.norm(v)
    return v / n if n else v


class WordsRetriever:
    """Late fusion exactly as the Retriever protocol defines it: item
    [a; m] / |a + m|, query [q; q], example [a; 0]."""

    kind = "fake"
    fusion = Fusion.late
    parts = [("audio", D), ("metadata", D)]
    captions_as_metadata = False

    def __init__(self, fingerprint: str = "fake-1", spec: dict | None = None):
        self.fingerprint = fingerprint
        self.configuration = fingerprint
        self.spec = spec or {"kind": "fake", "fingerprint": fingerprint}
        self.projection = np.random.default_rng(0).standard_normal((C, D)).astype(np.float32)
        self.encoded: list[str] = []  # item ids, in the order encode_items saw them

    def audio(self, sequence: np.ndarray) -> np.ndarray:
        a = sequence.mean(0) @ self.projection
        return a / np.linalg.norm(a)

    def item(self, sequence: np.ndarray, text: str | None) -> np.ndarray:
        a = self.audio(sequence)
        m = words(text) if text else np.zeros(D, np.float32)
        return np.concatenate([a, m]) / np.linalg.norm(a + m)

    def metadata(self, cache: EmbeddingCache, i: int, auto_tags: int) -> str | None:
        text = metadata_text(cache.items[i])
        if text is None and auto_tags:
            text = " ".join(audioset_class_names()[c] for c in np.argsort(-cache.tags[i])[:auto_tags])
        return text

    def encode_items(self, cache: EmbeddingCache, indices, auto_tags: int = 0) -> np.ndarray:
        out = []
        for i in indices:
            out.append(self.item(cache.sequence(i), self.metadata(cache, i, auto_tags)))
            self.encoded.append(cache.items[i].id)
        return np.stack(out)

    def encode_items_with_metadata(self, cache: EmbeddingCache, indices, metadata) -> np.ndarray:
        texts = metadata if metadata is not None else [None] * len(indices)
        return np.stack([self.item(cache.sequence(i), text) for i, text in zip(indices, texts)])

    def encode_segments(self, cache: EmbeddingCache, index: int, auto_tags: int = 0) -> np.ndarray:
        return self.encode_spans(cache, index, cache.segments(index), auto_tags)

    def encode_spans(self, cache: EmbeddingCache, index: int, segments, auto_tags: int = 0) -> np.ndarray:
        sequence, text = cache.sequence(index), self.metadata(cache, index, auto_tags)
        return np.stack([self.item(sequence[s.start : s.end], text) for s in segments])

    def query_side(self) -> None:
        return None  # its queries are encoded by itself: no query encoder

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        q = np.stack([words(t) for t in texts])
        return np.concatenate([q, q], axis=1)

    def encode_examples(self, sequences: list[np.ndarray], tags: np.ndarray) -> np.ndarray:
        a = np.stack([self.audio(s) for s in sequences])
        return np.concatenate([a, np.zeros_like(a)], axis=1)


LIBRARY = [
    Item("dog", "/sounds/dog.wav", "train", {"title": "dog barking in the rain"}),
    Item("cat", "/sounds/cat.wav", "train", {"tags": ["cat", "meowing"]}),
    Item("rain", "/sounds/rain.wav", "test", {"description": "heavy rain on a tin roof"}),
    Item("engine", "/sounds/engine.wav", "test", {}),  # no metadata
    Item("birds", "/sounds/birds.wav", "val", {"keywords": ["birds", "singing", "morning"]}),
]
MORE = [
    Item("thunder", "/more/thunder.wav", "test", {"title": "thunder storm"}),
    Item("dog", "/more/dog2.wav", "test", {"title": "small dog yapping"}),  # replaces "dog"
]


def make_cache(path: Path, items: list[Item], seed: int = 0, weights_sha256: str = "a" * 64) -> Path:
    """A cache of random sequences (3 to 8 frames) and random tag probabilities."""
    info = CacheInfo("mn04_as", weights_sha256, C, 527, 32000, 3.125, 10.0, 0)
    rng = np.random.default_rng(seed)
    clips = [
        ClipEmbedding(item, rng.standard_normal((int(rng.integers(3, 9)), C)).astype(np.float32), rng.random(527).astype(np.float32))
        for item in items
    ]
    write_cache(path, info, clips)
    return path


def checkpoint_retriever(path: Path) -> WordsRetriever:
    """The fake a fake checkpoint (a file holding its fingerprint) stands for."""
    return WordsRetriever(path.read_text().strip(), checkpoint_spec(path))


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 50 random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    x = centres[rng.integers(0, 50, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class VectorRetriever(WordsRetriever):
    """Items get given vectors (by the number in their id): an index of any size without a model."""

    def __init__(self, vectors: np.ndarray):
        super().__init__()
        self.vectors = vectors

    def encode_items(self, cache: EmbeddingCache, indices, auto_tags: int = 0) -> np.ndarray:
        return self.vectors[[int(cache.items[i].id) for i in indices]]
