"""A fake retriever with hand-made vectors, so that evaluation rankings can be
worked out by hand: an item of ``slot`` j has the vector e_j, and the query
"2 0" the vector 2·e_2 + 1·e_0 (earlier numbers weigh more). Audio only.
Unlike support.words it has no text tower, and its spec holds a shift and a fusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amr.cache import CacheInfo, ClipEmbedding, EmbeddingCache, write_cache
from amr.items import Item
from amr.model.fusion import Fusion

SLOTS = 8


class SlotRetriever:
    """Items: the mean of their frames (one-hot slots). Queries: numbers → slots (+ shift).
    Fakes of one fusion (and kind "trained") share a configuration: the shift plays the seed."""

    parts = [("audio", SLOTS)]
    captions_as_metadata = False

    def __init__(self, shift: int = 0, fusion: str = "none", kind: str = "trained"):
        self.shift, self.fusion, self.kind = shift, Fusion(fusion), kind
        self.fingerprint = f"fake-{shift}-{fusion}-{kind}"
        self.configuration = f"fake-{fusion}" if kind == "trained" else self.fingerprint
        self.spec = {"kind": "fake", "shift": shift, "fusion": fusion}

    def encode_items(self, cache: EmbeddingCache, indices, auto_tags: int = 0) -> np.ndarray:
        return np.stack([cache.sequence(i).mean(0) for i in indices])

    def encode_items_with_metadata(self, cache: EmbeddingCache, indices, metadata) -> np.ndarray:
        return self.encode_items(cache, indices)  # audio only: no metadata to replace

    def encode_segments(self, cache: EmbeddingCache, index: int, auto_tags: int = 0) -> np.ndarray:
        return self.encode_spans(cache, index, cache.segments(index), auto_tags)

    def encode_spans(self, cache: EmbeddingCache, index: int, segments, auto_tags: int = 0) -> np.ndarray:
        return self.encode_examples([cache.sequence(index)[s.start : s.end] for s in segments], None)

    def encode_examples(self, sequences: list[np.ndarray], tags) -> np.ndarray:
        return np.stack([s.mean(0) for s in sequences])

    def query_side(self) -> None:
        return None  # its queries are encoded by itself: no query encoder

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), SLOTS), np.float32)
        for q, text in enumerate(texts):
            numbers = text.split()
            for position, number in enumerate(numbers):
                out[q, (int(number) + self.shift) % SLOTS] = len(numbers) - position
        return out


def make_cache(path: Path, entries: list[tuple[Item, int]]) -> Path:
    info = CacheInfo("mn04_as", "a" * 64, SLOTS, 527, 32000, 3.125, 10.0, 0)
    clips = [
        ClipEmbedding(item, np.tile(np.eye(SLOTS, dtype=np.float32)[slot], (3, 1)), np.zeros(527, np.float32)) for item, slot in entries
    ]
    write_cache(path, info, clips)
    return path
