"""What the index, query and evaluate stages consume: a *retriever*.

A retriever maps items (clips with metadata, read from an embedding cache)
and queries (texts, or clips for query by example) to vectors whose inner
product is the retrieval score. Every kind of model is one:

=========  =====================================  ============================
kind       what it is                             rebuilt from its spec by
=========  =====================================  ============================
trained    a checkpoint of ``amr train``          amr.model.checkpoint.load_checkpoint
zero-shot  the untrained hybrid (amr.model.zeroshot)    amr.model.zeroshot.load_zero_shot
=========  =====================================  ============================

The vectors are concatenations of named *parts* (audio, metadata), so that a
score splits into what each part contributed (``amr query --explain``).
``spec`` is a JSON-able description that `load_retriever` turns back into an
equivalent retriever; an index records it, so ``amr query`` encodes queries
with the model that built the index, and ``fingerprint`` refuses any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from amr.errors import AmrError
from amr.model.fusion import Fusion

if TYPE_CHECKING:  # the retrievers' own modules import torch; this one does not (amr query's text path never loads it)
    import numpy as np
    import torch

    from amr.cache import EmbeddingCache, Segment
    from amr.model.text import TextEncoder


class Retriever(Protocol):
    kind: str  # a key of RETRIEVER_KINDS
    fusion: Fusion
    fingerprint: str  # identifies the model: its options and weights
    configuration: str  # identifies its options except the seed: runs of one configuration share it
    parts: list[tuple[str, int]]  # (name, dim) of each part of the vectors
    spec: dict[str, Any]
    # An item's metadata is one of its captions (Clotho's full-sentence setting): its
    # own caption must not be its metadata when that caption is the query (amr.evaluate).
    captions_as_metadata: bool

    def encode_items(self, cache: EmbeddingCache, indices: Sequence[int], auto_tags: int = 0) -> np.ndarray:
        """(n, dim) float32 item vectors; items without metadata get valid (audio-only) vectors.
        ``auto_tags`` K > 0: an item without metadata gets its clip's K most probable AudioSet
        classes as keywords instead."""
        ...

    def encode_items_with_metadata(self, cache: EmbeddingCache, indices: Sequence[int], metadata: list[str | None] | None) -> np.ndarray:
        """(n, dim) float32 vectors of the cache's items ``indices`` with the metadata
        texts given instead of their own (None: no metadata; the list None: a model
        that uses none)."""
        ...

    def encode_segments(self, cache: EmbeddingCache, index: int, auto_tags: int = 0) -> np.ndarray:
        """(S, dim) float32 vectors of the segments of the cache's item ``index``
        (``cache.segments(index)``, amr.segments): each segment's frames and tags
        with the item's metadata."""
        ...

    def encode_spans(self, cache: EmbeddingCache, index: int, segments: Sequence[Segment], auto_tags: int = 0) -> np.ndarray:
        """(len(segments), dim) float32 vectors of any spans of the item's frames
        with their tags (amr.moments' finer windows), as `encode_segments` encodes its grid's."""
        ...

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """(q, dim) float32 query vectors."""
        ...

    def encode_examples(self, sequences: list[np.ndarray], tags: np.ndarray) -> np.ndarray:
        """(q, dim) float32 from clips' frame sequences and (q, 527) tag probabilities:
        each clip's audio vector in the audio part, zeros elsewhere."""
        ...

    def query_side(self) -> tuple[TextEncoder, str, Callable[[torch.Tensor], torch.Tensor]] | None:
        """What `encode_queries` is made of, for the query encoder (amr.model.query_encoder) to
        export: the text encoder, its pooling and the function from pooled embeddings to query
        vectors; None for a model whose queries only it can encode (there is then no query encoder)."""
        ...


def _trained(spec: dict[str, Any], device: torch.device) -> Retriever:
    from amr.model.checkpoint import load_checkpoint

    return load_checkpoint(Path(spec["path"]), device=device)


def _zero_shot(spec: dict[str, Any], device: torch.device) -> Retriever:
    from amr.model.zeroshot import load_zero_shot

    return load_zero_shot(spec, device)


# kind → loader of a spec of that kind; another model adds its kind here (loaders import lazily).
RETRIEVER_KINDS: dict[str, Callable[[dict[str, Any], torch.device], Retriever]] = {
    "trained": _trained,
    "zero-shot": _zero_shot,
}


def load_retriever(spec: dict[str, Any], device: torch.device | str = "cpu") -> Retriever:
    """The one factory from a recorded spec back to a retriever, its models on ``device``."""
    loader = RETRIEVER_KINDS.get(spec.get("kind", ""))
    if loader is None:
        raise AmrError(f"unknown retriever kind {spec.get('kind')!r} in {spec}; this amr knows {', '.join(RETRIEVER_KINDS)}")
    import torch

    return loader(spec, torch.device(device))


def describe(spec: dict[str, Any]) -> str:
    """A retriever spec in a few words, for messages."""
    if spec.get("kind") == "trained":
        return f"checkpoint {spec.get('path')}"
    return " ".join(f"{k}={v}" for k, v in spec.items())
