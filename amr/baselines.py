"""Baselines that `amr evaluate` scores next to the trained models.

Hybrid retrieval is only worth its cost if it beats both of its sources
alone; the audio-only source is a trained model with fusion ``none``, the
metadata-only source is the lexical baseline here: BM25 (Okapi, from
``rank_bm25``) over each item's metadata text.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
from rank_bm25 import BM25Okapi
from rich.console import Console

from amr.items import metadata_text
from amr.text import normalize_text

if TYPE_CHECKING:
    from amr.evaluate import Collection

console = Console(stderr=True)


def tokenize(text: str) -> list[str]:
    """The text encoder's normalisation (lowercase, no punctuation), split on whitespace."""
    return normalize_text(text).split()


class BM25:
    """Metadata-only lexical retrieval: BM25Okapi (k1 1.5, b 0.75, the
    library's defaults) over the metadata text of the evaluated items.

    Only items with metadata form the BM25 corpus (document frequencies and
    the average length are theirs); items without metadata score 0."""

    name = "bm25"
    kind = "bm25"
    fusion = None  # a baseline is never averaged with the models
    fingerprint = None

    def score(self, collection: Collection, texts: list[str]) -> np.ndarray:
        """(len(texts), len(items)) float64 BM25 scores."""
        documents = [tokenize(metadata_text(item) or "") for item in collection.items]
        described = [i for i, tokens in enumerate(documents) if tokens]
        scores = np.zeros((len(texts), len(documents)))
        if not described:
            console.print(
                f"[yellow]warning:[/] bm25: none of the {len(documents)} items has metadata; "
                "every score is 0, so the ranking is the item order",
                highlight=False,
            )
            return scores
        bm25 = BM25Okapi([documents[i] for i in described])
        # A query's score is a sum over its tokens (with repetition), so each
        # distinct token is scored against the corpus once and added to the
        # rows of the queries that contain it.
        rows_of = defaultdict(list)
        for row, text in enumerate(texts):
            for token in tokenize(text):
                rows_of[token].append(row)
        partial = np.zeros((len(texts), len(described)))
        for token, rows in rows_of.items():
            if token in bm25.idf:
                np.add.at(partial, rows, bm25.get_scores([token]))
        scores[:, described] = partial
        return scores
