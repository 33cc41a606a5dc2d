"""`amr evaluate --submission FILE --submission-queries CSV`: a DCASE
submission for queries without relevance, one model's scores of them against
the evaluated items (the file format is amr.evaluate.dcase's; the models and items are
amr.evaluate's, as an evaluation opens them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amr.errors import AmrError
from amr.evaluate import index_collection, make_scorers, open_collection
from amr.evaluate.dcase import read_submission_queries, write_model_scores

if TYPE_CHECKING:
    import torch


def predict_submission(
    path: Path,
    captions_csv: Path,
    checkpoints: Sequence[Path],
    index_paths: Sequence[Path],
    cache_paths: Sequence[Path],
    split: str = "test",
    *,
    zero_shot: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """A DCASE submission for queries without relevance (the captions of
    ``captions_csv``, the baseline's retrieval_captions.csv): one model's scores
    of them against the items, as in `evaluate_models`, written to ``path``."""
    texts = read_submission_queries(captions_csv)
    scorers, indexes = make_scorers(checkpoints, index_paths, zero_shot, False, False, device)
    if len(scorers) != 1:
        raise AmrError(f"a submission holds one model's scores; {len(scorers)} models are given")
    if cache_paths:
        with open_collection(list(cache_paths), split) as collection:
            rows = write_model_scores(path, collection.items, texts, scorers[0].score(collection, texts))
    else:
        collection = index_collection(indexes[0], split)
        rows = write_model_scores(path, collection.items, texts, scorers[0].score(collection, texts))
    return {"submission": str(path), "model": scorers[0].name, "queries": rows, "files": len(collection.items)}
