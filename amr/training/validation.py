"""Validation: the metrics model selection keeps the best epoch by.

Each validation item's captions are queries ranked against the validation
items of its cache; for captions-as-metadata an item's metadata is the
caption after the query's own, so that a query never meets its own sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from amr.config import CAPTIONS, ModelConfig
from amr.items import Item
from amr.metrics import retrieval_metrics
from amr.model.model import RetrievalModel, item_metadata
from amr.training.data import _other_caption, _Source


def validate(model: RetrievalModel, source: _Source) -> dict[str, float] | None:
    """R@1/5/10 and mAP@10 of the validation items' captions ranked against
    those items, or None when no validation item has a caption."""
    items = source.val
    queries = [(row, j, c) for row, i in enumerate(items) for j, c in enumerate(source.cache.items[i].captions)]
    if not queries:
        return None
    config = model.config
    q_vectors = model.encode_queries([c for _, _, c in queries])
    sequences = [source.sequence(i) for i in items] if config.uses_audio else None
    tags = source.cache.tags[items]
    scores = np.empty((len(queries), len(items)), dtype=np.float32)
    captions_metadata = config.metadata == (CAPTIONS,) and config.uses_metadata
    variant = np.array([j for _, j, _ in queries]) if captions_metadata else np.zeros(len(queries), int)
    for v in np.unique(variant):
        metadata = None
        if config.uses_metadata:
            metadata = [_validation_metadata(source.cache.items[i], config, int(v)) for i in items]
        rows = np.flatnonzero(variant == v)
        scores[rows] = q_vectors[rows] @ model.encode_items(sequences, tags, metadata).T
    return retrieval_metrics(scores, [[row] for row, _, _ in queries]).as_dict()


def _validation_metadata(item: Item, config: ModelConfig, caption: int) -> str | None:
    """The item's metadata; for captions-as-metadata the caption after the
    query's own (``caption``), so that a query never meets its own sentence."""
    if config.metadata == (CAPTIONS,):
        return _other_caption(item.captions, caption, 0)
    return item_metadata(item, config.metadata)


def _validate_all(model: RetrievalModel, sources: Sequence[_Source]) -> tuple[float, dict[str, dict[str, float]]]:
    """Per cache metrics and their mean mAP@10 (the selection criterion)."""
    results = {}
    for source in sources:
        metrics = validate(model, source)
        if metrics is not None:
            results[str(source.cache.path)] = metrics
    return float(np.mean([m["mAP@10"] for m in results.values()])), results
