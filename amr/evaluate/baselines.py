"""Baselines that `amr evaluate` scores next to the trained models.

Hybrid retrieval is only worth its cost if it beats both of its sources
alone; the audio-only source is a model with fusion ``none``, the
metadata-only source is the lexical baseline here: BM25 over each item's
metadata text, computed by ``bm25s`` (maintained, sparse and fast).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import bm25s
import numpy as np

from amr.console import warn
from amr.items import Item, metadata_text
from amr.model.text import normalize_text


class Collection(Protocol):
    """What a baseline scores: the evaluated items (amr.evaluate.Collection)."""

    items: Sequence[Item]


K1 = 1.5
B = 0.75


def tokenize(text: str) -> list[str]:
    """The text encoder's normalisation (lowercase, no punctuation), split on whitespace."""
    return normalize_text(text).split()


class BM25:
    """Metadata-only lexical retrieval: Lucene's BM25, Σ idf · tf / (tf + k1
    (1 − b + b·dl/avgdl)) with idf = log(1 + (N − df + 0.5) / (df + 0.5)),
    k1 1.5, b 0.75, over the metadata text of the evaluated items. (Robertson's
    original idf turns negative for a word in more than half of a small
    corpus, which then counts against an item; Okapi's constant factor k1 + 1
    changes no ranking.)

    Only items with metadata form the BM25 corpus (document frequencies and
    the average length are theirs); items without metadata score 0."""

    name = "bm25"
    kind = "bm25"
    fusion = None
    fingerprint = None
    configuration = None  # a baseline is never averaged with the models

    def score(self, collection: Collection, texts: list[str]) -> np.ndarray:
        """(len(texts), len(items)) BM25 scores."""
        documents = [tokenize(metadata_text(item) or "") for item in collection.items]
        described = [i for i, tokens in enumerate(documents) if tokens]
        scores = np.zeros((len(texts), len(documents)))
        if not described:
            warn(f"bm25: none of the {len(documents)} items has metadata; every score is 0, so the ranking is the item order")
            return scores
        bm25 = bm25s.BM25(k1=K1, b=B, method="lucene")
        bm25.index([documents[i] for i in described], show_progress=False)
        # A query's score is a sum over its tokens (with repetition), so each
        # distinct token is scored against the corpus once and added to the
        # rows of the queries that contain it.
        rows_of = defaultdict(list)
        for row, text in enumerate(texts):
            for token in tokenize(text):
                rows_of[token].append(row)
        partial = np.zeros((len(texts), len(described)))
        for token, rows in rows_of.items():
            np.add.at(partial, rows, bm25.get_scores([token]))
        scores[:, described] = partial
        return scores
