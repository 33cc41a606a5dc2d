"""What `amr evaluate` scores (see amr.evaluate): the evaluated items (a
`Collection`, read from caches or an index) and the *scorers* that turn them
and the query texts into a (queries, items) score matrix: a retriever
(`RetrieverScorer`: item and query vectors, inner product), an existing
index (`IndexScorer`), or a baseline (amr.evaluate.baselines).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from amr.cache import EmbeddingCache, open_caches
from amr.console import console, progress
from amr.errors import AmrError
from amr.index.build import ENCODE_BATCH
from amr.index.reader import Index
from amr.index.search import best_per_item
from amr.items import ALL_SPLITS as ALL
from amr.items import SPLITS, Item
from amr.model.fusion import Fusion
from amr.model.retrievers import Retriever, load_retriever


@dataclass
class Collection:
    """The evaluated items in ranking order, and for each cache the rows of
    its items that are evaluated (empty when the items come from an index)."""

    items: list[Item]
    split: str
    source: str  # what the items were read from, for messages
    parts: list[tuple[EmbeddingCache, list[int]]] = field(default_factory=list)


class Scorer(Protocol):
    name: str  # the row of the table
    kind: str  # "trained", "zero-shot", "bm25"
    fusion: Fusion | None  # None for a baseline
    fingerprint: str | None  # identifies the model: one model is one run, however often it is evaluated
    configuration: str | None  # runs sharing it are averaged; None never

    def score(self, collection: Collection, texts: list[str]) -> np.ndarray:
        """(len(texts), len(collection.items)) scores, higher is better."""
        ...


@contextmanager
def open_collection(cache_paths: Sequence[Path], split: str = "test") -> Iterator[Collection]:
    """The items of ``split`` (or ``all``) in the caches, which stay open meanwhile."""
    _check_split(split)
    caches = open_caches(cache_paths)
    try:
        parts = [(c, [i for i, item in enumerate(c.items) if split in (ALL, item.split)]) for c in caches]
        items = [cache.items[i] for cache, rows in parts for i in rows]
        yield _checked(Collection(items, split, ", ".join(str(p) for p in cache_paths), parts))
    finally:
        for cache in caches:
            cache.close()


def index_collection(index: Index, split: str = "test") -> Collection:
    """The items of ``split`` (or ``all``) in an index, for evaluating indexes without their caches."""
    _check_split(split)
    items = [item for item in map(index.item, range(index.items_count)) if split in (ALL, item.split)]
    return _checked(Collection(items, split, str(index.path)))


def _check_split(split: str) -> None:
    if split != ALL and split not in SPLITS:
        raise AmrError(f"unknown split {split!r}: use {', '.join(SPLITS)} or {ALL}")


def _checked(collection: Collection) -> Collection:
    if not collection.items:
        raise AmrError(f"{collection.source}: no items in split {collection.split}")
    seen: set[str] = set()
    for item in collection.items:
        if item.id in seen:
            raise AmrError(f"{collection.source}: item id {item.id!r} occurs more than once; evaluate the caches separately")
        seen.add(item.id)
    return collection


class RetrieverScorer:
    """A model that encodes items and queries (a checkpoint, zero-shot): score = inner product."""

    def __init__(self, name: str, retriever: Retriever):
        self.name, self.kind, self.retriever = name, retriever.kind, retriever
        self.fusion: Fusion | None = retriever.fusion
        self.fingerprint: str | None = retriever.fingerprint
        self.configuration: str | None = retriever.configuration

    def score(self, collection: Collection, texts: list[str]) -> np.ndarray:
        if not collection.parts:
            raise AmrError(f"{self.name}: a model needs the embedding caches of the items (--cache), not {collection.source}")
        total = sum(len(rows) for _, rows in collection.parts)
        blocks = []
        with progress(show=console.is_terminal, transient=True) as bar:
            task = bar.add_task(f"{self.name}: items", total=total)
            for cache, rows in collection.parts:
                for start in range(0, len(rows), ENCODE_BATCH):
                    blocks.append(self.retriever.encode_items(cache, rows[start : start + ENCODE_BATCH]))
                    bar.advance(task, len(blocks[-1]))
        queries = self.retriever.encode_queries(texts)
        scores = queries @ np.concatenate(blocks).T
        position = 0
        for cache, rows in collection.parts:  # a long recording scores by its best segment, as in an index
            for row in rows:
                if len(cache.segments(row)) > 1:
                    scores[:, position] = (queries @ self.retriever.encode_segments(cache, row).T).max(axis=1)
                position += 1
        if self.retriever.captions_as_metadata:
            _unleak_captions(self.retriever, collection, texts, queries, scores)
        return scores


def _unleak_captions(retriever: Retriever, collection: Collection, texts: list[str], queries: np.ndarray, scores: np.ndarray) -> None:
    """A model whose metadata are captions (Clotho's full-sentence setting) took
    each item's first caption as its metadata; where that caption is the query
    itself, score the item with its first caption that is not (none when it has
    no other): no query ever sees its own sentence as metadata."""
    where = [(cache, row) for cache, rows in collection.parts for row in rows]
    first: dict[str, list[int]] = {}
    for position, item in enumerate(collection.items):
        if item.captions:
            first.setdefault(item.captions[0], []).append(position)
    for q, text in enumerate(texts):
        for position in first.get(text, []):
            cache, row = where[position]
            other = next((c for c in collection.items[position].captions if c != text), None)
            scores[q, position] = queries[q] @ retriever.encode_items_with_metadata(cache, [row], [other])[0]


class IndexScorer:
    """An existing index: its stored item vectors, queries encoded by the model
    that built it (exact inner products; an approximate sidecar is not used)."""

    def __init__(self, name: str, index: Index, device: torch.device | str = "cpu"):
        self.name, self.index = name, index
        self.retriever = load_retriever(index.header.retriever, device)
        index.header.require_retriever(self.retriever, index.path)
        self.kind = index.header.kind
        self.fusion: Fusion | None = index.header.fusion
        self.fingerprint: str | None = index.header.fingerprint
        self.configuration: str | None = index.header.configuration

    def score(self, collection: Collection, texts: list[str]) -> np.ndarray:
        """A long recording indexed as segments scores by its best segment."""
        if self.retriever.captions_as_metadata:
            raise AmrError(
                f"{self.index.path}: its model takes captions as metadata, so each indexed item holds one of its captions, "
                "which are also the queries; evaluate the checkpoint on the caches instead (amr evaluate CHECKPOINT --cache ...)"
            )
        wanted = self.index.find([item.id for item in collection.items])
        missing = [item.id for item, number in zip(collection.items, wanted) if number < 0]
        if missing:
            raise AmrError(
                f"{self.index.path}: lacks {len(missing)} of the {len(collection.items)} evaluated items "
                f"({_some(missing)}); index them (amr index --append) or evaluate without --cache"
            )
        rows = np.flatnonzero(np.isin(self.index.row_item, wanted))
        scores = self.retriever.encode_queries(texts) @ np.asarray(self.index.vectors[rows], np.float32).T
        owners = self.index.row_item[rows]
        best, firsts = best_per_item(scores, owners)  # (queries, items in index order)
        return best[:, np.searchsorted(owners[firsts], wanted)]


def _some(ids: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(map(repr, ids[:shown])) + more
