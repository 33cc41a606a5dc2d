"""Dataset readers: one small module per layout on disk, all returning an
`amr.items.Dataset` named after its folder.

Layouts, detected in this order:

- ``generic``: ``items.jsonl`` or ``items.csv`` (see `amr.datasets.generic`);
- ``clotho``: ``clotho_captions_*.csv`` (see `amr.datasets.clotho`);
- ``audiocaps``: ``train.csv``/``val.csv``/``test.csv`` with an audiocap_id
  column (see `amr.datasets.audiocaps`).

A ``queries.jsonl`` beside any of them adds explicit queries (`Dataset.queries`).

Validation is strict: the first bad row raises AmrError("<file>:<line>: <problem>").
With ``lenient=True`` each bad row (or query) is dropped and its message, the
same text, goes to ``on_skip`` (by default a line on stderr). Splits are
train/val/test; the synonyms training/development → train,
valid/validation/dev → val and eval/evaluation → test are accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from amr.errors import AmrError
from amr.items import Dataset, Item, Query

from . import audiocaps, clotho, generic
from .common import Problems, SkipHandler


@dataclass(frozen=True)
class Layout:
    detect: Callable[[Path], bool]
    read_items: Callable[[Path, Problems], list[Item]]


LAYOUTS: dict[str, Layout] = {
    "generic": Layout(generic.detect, generic.read_items),
    "clotho": Layout(clotho.detect, clotho.read_items),
    "audiocaps": Layout(audiocaps.detect, audiocaps.read_items),
}


def detect_layout(root: Path) -> str:
    """The first layout whose files are in ``root``."""
    for name, layout in LAYOUTS.items():
        if layout.detect(root):
            return name
    raise AmrError(
        f"{root}: no known dataset layout (looked for items.jsonl or items.csv, "
        "clotho_captions_*.csv, AudioCaps train.csv/val.csv/test.csv)"
    )


def load_dataset(
    root: Path,
    layout: str | None = None,
    lenient: bool = False,
    on_skip: SkipHandler | None = None,
) -> Dataset:
    """Read the dataset in ``root``, detecting its layout unless one is named."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise AmrError(f"{root}: not a directory")
    name = layout or detect_layout(root)
    if name not in LAYOUTS:
        raise AmrError(f"unknown dataset layout {name!r} (known: {', '.join(LAYOUTS)})")
    problems = Problems(lenient, on_skip)
    items = LAYOUTS[name].read_items(root, problems)
    if not items:
        raise AmrError(f"{root}: no items ({name} layout)")
    queries_path = root / generic.QUERIES_JSONL
    queries = generic.read_queries(queries_path, {item.id for item in items}, problems) if queries_path.is_file() else []
    return Dataset(root.name, root, items, queries)


def load_queries(
    path: Path,
    known_ids: set[str] | None = None,
    lenient: bool = False,
    on_skip: SkipHandler | None = None,
) -> list[Query]:
    """Queries from a standalone queries.jsonl; with ``known_ids`` every relevant id must be one."""
    path = Path(path)
    if not path.is_file():
        raise AmrError(f"{path}: no such file")
    return generic.read_queries(path, known_ids, Problems(lenient, on_skip))


__all__ = ["LAYOUTS", "Layout", "SkipHandler", "detect_layout", "load_dataset", "load_queries"]
