"""AudioSet's class names as the tagger's 527 outputs name them, and a clip's most probable classes."""

from __future__ import annotations

import numpy as np

from amr.mobilenet import audioset_class_names


def top_tags(probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable AudioSet classes of one clip, best first (ties:
    the lower class index first), with their probabilities."""
    names = audioset_class_names()
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return [(names[c], float(probabilities[c])) for c in top_classes(probabilities[None], k)[0]]


def top_classes(probabilities: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's ``k`` most probable classes, best first (ties: lower index first)."""
    return np.argsort(-np.asarray(probabilities), axis=1, kind="stable")[:, :k]
