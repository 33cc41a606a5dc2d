"""Zero-shot hybrid retrieval: audio and metadata fused without any training.

The audio tagger hears 527 AudioSet classes; the text encoder embeds their
names. A clip's *audio vector* is the text embedding of what the tagger hears:
the class-name embeddings weighted by the clip's tag probabilities (the
label–text bridge), so it lives in the text encoder's space, where queries
and metadata live. The *metadata vector* is the same encoder on the item's
metadata text. Items are ranked by cos(q, α·a + β·m), with a, m and q unit
vectors (the text model pooled as it was trained, `TextEncoder.resolve_pooling`:
mean for sentence-transformers models such as the default all-MiniLM-L6-v2);
items without metadata fall back to their audio vector alone.

As for every retriever, the item vector is a concatenation of an audio and a
metadata segment, [α·a; β·m] / |α·a + β·m|, and the query vector is [q; q],
so one inner product gives exactly the fused cosine, and ``--explain`` splits
it into the two contributions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amr.audio.audioset import audioset_class_names, with_machine_tags
from amr.cache import EmbeddingCache, Segment
from amr.config import ZeroShotConfig
from amr.errors import AmrError
from amr.items import Item, metadata_text
from amr.model.text import TextEncoder


class ZeroShotRetriever:
    """A Retriever (see amr.model.retrievers) that needs no checkpoint."""

    kind = "zero-shot"
    captions_as_metadata = False  # its metadata are the items' metadata fields

    def __init__(self, config: ZeroShotConfig | None = None, text: TextEncoder | None = None):
        self.config = config or ZeroShotConfig()
        self.text = text or TextEncoder(self.config.text_model)
        self.pooling = self.text.resolve_pooling(self.config.text_pooling)
        self.fusion = self.config.fusion
        self.parts = [("audio", self.text.dim), ("metadata", self.text.dim)]

    @property
    def spec(self) -> dict[str, Any]:
        """What an index records and `load_zero_shot` (through amr.model.retrievers.load_retriever) rebuilds it from."""
        return {"kind": self.kind, **asdict(self.config), "metadata_fields": list(self.config.metadata_fields)}

    @cached_property
    def fingerprint(self) -> str:
        described = {**asdict(self.config), "text_pooling": self.pooling, "text_fingerprint": self.text.fingerprint}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    @property
    def configuration(self) -> str:
        """A zero-shot model has no seed: its configuration is all of it."""
        return self.fingerprint

    @cached_property
    def class_embeddings(self) -> np.ndarray:
        """(527, dim) unit text embeddings of the AudioSet class names (and descriptions)."""
        names = audioset_class_names()
        texts = names
        if self.config.descriptions:
            described = _read_descriptions(Path(self.config.descriptions))
            texts = [f"{name}. {described[name]}" if described.get(name) else name for name in names]
        return self.text.encode(texts, pooling=self.pooling, normalize=True)

    def audio_vectors(self, tag_probabilities: np.ndarray) -> np.ndarray:
        """The label–text bridge: (n, 527) tag probabilities → (n, dim) unit vectors."""
        return _unit(np.asarray(tag_probabilities, dtype=np.float32) @ self.class_embeddings)

    def metadata_vectors(self, items: Sequence[Item]) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) unit metadata vectors (zero rows for items without metadata) and the has-metadata mask."""
        return self.text_vectors([metadata_text(item, self.config.metadata_fields) for item in items])

    def text_vectors(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) unit vectors of metadata texts (zero rows for None) and the mask of the texts present."""
        present = np.array([t is not None for t in texts])
        vectors = np.zeros((len(texts), self.text.dim), np.float32)
        if present.any():
            vectors[present] = self.text.encode([t for t in texts if t is not None], pooling=self.pooling, normalize=True)
        return vectors, present

    def fuse(self, audio: np.ndarray, metadata: np.ndarray) -> np.ndarray:
        """[α·a; β·m] / |α·a + β·m| (a zero m leaves the audio vector alone)."""
        a = self.config.audio_weight * audio
        m = self.config.metadata_weight * metadata
        norm = np.linalg.norm(a + m, axis=1, keepdims=True)
        return np.concatenate([a, m], axis=1) / np.maximum(norm, 1e-12)

    def encode_items(self, cache: EmbeddingCache, indices: Sequence[int], auto_tags: int = 0) -> np.ndarray:
        fields = self.config.metadata_fields
        texts = [metadata_text(with_machine_tags(cache.items[i], cache.tags[i], auto_tags), fields) for i in indices]
        return self.encode_items_with_metadata(cache, indices, texts)

    def encode_items_with_metadata(self, cache: EmbeddingCache, indices: Sequence[int], metadata: list[str | None] | None) -> np.ndarray:
        """Vectors of the cache's items ``indices`` with the metadata texts given (None: no metadata)."""
        vectors, _ = self.text_vectors(metadata if metadata is not None else [None] * len(indices))
        return self.fuse(self.audio_vectors(cache.tags[list(indices)]), vectors)

    def encode_segments(self, cache: EmbeddingCache, index: int, auto_tags: int = 0) -> np.ndarray:
        return self.encode_spans(cache, index, cache.segments(index), auto_tags)

    def encode_spans(self, cache: EmbeddingCache, index: int, segments: Sequence[Segment], auto_tags: int = 0) -> np.ndarray:
        """Each segment's bridge vector (from its own tags) fused with the item's metadata vector."""
        metadata, _ = self.metadata_vectors([with_machine_tags(cache.items[index], cache.tags[index], auto_tags)])
        tags = np.stack([segment.tags for segment in segments])
        return self.fuse(self.audio_vectors(tags), np.repeat(metadata, len(segments), axis=0))

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.query_vectors(torch.from_numpy(self.text.encode(texts, pooling=self.pooling))).numpy()

    @staticmethod
    def query_vectors(pooled: torch.Tensor) -> torch.Tensor:
        """[q̂; q̂] of pooled text embeddings (B, dim)."""
        q = torch.nn.functional.normalize(pooled, dim=-1)
        return torch.cat([q, q], 1)

    def query_side(self) -> tuple[TextEncoder, str, Callable[[torch.Tensor], torch.Tensor]]:
        """The text encoder, its pooling and the map from pooled embeddings to
        query vectors that encode_queries runs (for amr.model.query_encoder)."""
        return self.text, self.pooling, self.query_vectors

    def encode_examples(self, sequences: list[np.ndarray], tags: np.ndarray) -> np.ndarray:
        """Clips as queries: each clip's bridge vector (from its tag
        probabilities) in the audio segment, zeros in the metadata segment."""
        audio = self.audio_vectors(tags)
        return np.concatenate([audio, np.zeros_like(audio)], axis=1)


def zero_shot_variants(ablate: bool, device: torch.device | str = "cpu") -> list[tuple[str, ZeroShotRetriever]]:
    """The fused zero-shot model and, with ``ablate``, its audio-only and
    metadata-only halves (one text encoder shared): the evaluation rows that
    show whether fusion beats both sources."""
    fused = ZeroShotRetriever(text=TextEncoder(ZeroShotConfig.text_model).to(device))
    variants = [("zero-shot", fused)]
    if ablate:
        variants += [
            ("zero-shot audio only", ZeroShotRetriever(ZeroShotConfig(metadata_weight=0.0), fused.text)),
            ("zero-shot metadata only", ZeroShotRetriever(ZeroShotConfig(audio_weight=0.0), fused.text)),
        ]
    return variants


def zero_shot_retriever(config: ZeroShotConfig, device: torch.device | str = "cpu") -> ZeroShotRetriever:
    """The zero-shot model of ``config``, its text encoder on ``device``."""
    return ZeroShotRetriever(config, TextEncoder(config.text_model).to(device))


def load_zero_shot(spec: dict[str, Any], device: torch.device | str = "cpu") -> ZeroShotRetriever:
    """The zero-shot model a recorded ``spec`` (an index header's) describes."""
    fields = {k: v for k, v in spec.items() if k != "kind"}
    try:
        config = ZeroShotConfig(**fields)
    except TypeError as e:
        raise AmrError(f"zero-shot spec {spec} is not one this amr understands ({e})") from e
    return zero_shot_retriever(config, device)


def _read_descriptions(path: Path) -> dict[str, str]:
    """Class descriptions: a JSON object {name: description}, or the AudioSet
    ontology.json list of {"name", "description", ...}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise AmrError(f"{path}: cannot read class descriptions ({e})") from e
    if isinstance(data, list):
        return {str(entry.get("name")): str(entry.get("description", "")) for entry in data if isinstance(entry, dict)}
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    raise AmrError(f"{path}: expected a JSON object of class descriptions or the AudioSet ontology list")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
