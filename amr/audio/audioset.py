"""AudioSet's class names as the tagger's 527 outputs name them, a clip's most
probable classes (importing numpy only when ranking them), and those classes
as the keywords of an item without metadata (``--auto-tags``)."""

from __future__ import annotations

import csv
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from amr.items import Item

NUM_CLASSES = 527
CLASSES_CSV = Path(__file__).parents[1] / "resources" / "audioset_classes.csv"  # index,mid,display_name


@cache
def _class_names() -> tuple[str, ...]:
    with CLASSES_CSV.open(encoding="utf-8", newline="") as f:
        return tuple(row["display_name"] for row in csv.DictReader(f))


def audioset_class_names() -> list[str]:
    """The 527 AudioSet class names, indexed like the logits of an EfficientAT `_as` checkpoint."""
    return list(_class_names())


def top_tags(probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable AudioSet classes of one clip, best first (ties:
    the lower class index first), with their probabilities."""
    import numpy as np

    names = audioset_class_names()
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return [(names[c], float(probabilities[c])) for c in top_classes(probabilities[None], k)[0]]


def top_classes(probabilities: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's ``k`` most probable classes, best first (ties: lower index first)."""
    import numpy as np

    return np.argsort(-np.asarray(probabilities), axis=1, kind="stable")[:, :k]


def with_machine_tags(item: Item, tag_probabilities: np.ndarray, k: int) -> Item:
    """The item, with its clip's k most probable AudioSet classes as keywords
    when it has no metadata of its own (documented, off by default): what
    every retriever's ``auto_tags`` K does."""
    if item.metadata or k <= 0:
        return item
    return replace(item, metadata={"keywords": [name for name, _ in top_tags(tag_probabilities, k)]})
