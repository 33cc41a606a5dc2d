"""Dataset readers: one small module per layout on disk, all returning an
`amr.items.Dataset` named after its folder.

Layouts, detected in this order:

- ``generic``: ``items.jsonl`` or ``items.csv`` (see `amr.datasets.generic`);
- ``clotho``: ``clotho_captions_*.csv`` (see `amr.datasets.clotho`);
- ``audiocaps``: ``train.csv``/``val.csv``/``test.csv`` with an audiocap_id
  column (see `amr.datasets.audiocaps`);
- ``wavcaps``: ``json_files/<source>/*.json`` caption files (see `amr.datasets.wavcaps`);
- ``folder``: no manifest, any audio files under the root; metadata from file
  and folder names and embedded tags (see `amr.datasets.folder`).

A ``queries.jsonl`` beside any of them adds explicit queries (`Dataset.queries`).

Validation is strict: the first bad row raises AmrError("<file>:<line>: <problem>").
With ``lenient=True`` each bad row (or query) is dropped and its message, the
same text, goes to ``on_skip`` (by default a line on stderr). Splits are
train/val/test; the synonyms training/development → train,
valid/validation/dev → val and eval/evaluation → test are accepted.

Text manifests are read as UTF-8 where they are, else in ``encoding`` (the
encoding of those that are not); without one, a CSV that is not UTF-8 is read
as Windows-1252 (else Latin-1) with a warning naming the file. Manifest
audio paths must stay inside the dataset folder unless ``allow_outside_root``
(see `amr.datasets.common.existing_file`). Every item records its audio file's
size and modification time (`Item.audio_size`, `Item.audio_mtime_ns`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from amr.config import LAYOUT_NAMES
from amr.errors import AmrError
from amr.items import Dataset, Item, Query

from . import audiocaps, clotho, folder, generic, wavcaps
from .common import Problems, ReadOptions, SkipHandler, check_encoding


@dataclass(frozen=True)
class Layout:
    detect: Callable[[Path], bool]
    read_items: Callable[[Path, ReadOptions], list[Item]]


# In detection order (amr.config names them, for the CLI): a manifest wins over the plain folder of audio it describes.
_READERS = {"generic": generic, "clotho": clotho, "audiocaps": audiocaps, "wavcaps": wavcaps, "folder": folder}
LAYOUTS: dict[str, Layout] = {name: Layout(_READERS[name].detect, _READERS[name].read_items) for name in LAYOUT_NAMES}


def detect_layout(root: Path) -> str:
    """The first layout whose files are in ``root``."""
    for name, layout in LAYOUTS.items():
        if layout.detect(root):
            return name
    raise AmrError(
        f"{root}: no known dataset layout (looked for items.jsonl or items.csv, "
        "clotho_captions_*.csv, AudioCaps train.csv/val.csv/test.csv, WavCaps json_files/, and audio files)"
    )


def load_dataset(
    root: Path,
    layout: str | None = None,
    lenient: bool = False,
    on_skip: SkipHandler | None = None,
    encoding: str | None = None,
    allow_outside_root: bool = False,
    follow_outside_links: bool = False,
) -> Dataset:
    """Read the dataset in ``root``, detecting its layout unless one is named.

    ``encoding`` is that of its manifest files that are not UTF-8 (default:
    a guess, with a warning); ``allow_outside_root`` accepts manifest audio
    paths outside ``root`` (absolute, or climbing out with ``..``);
    ``follow_outside_links`` follows a plain folder's symbolic links that
    lead outside ``root`` (by default they are left out, with a line each)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise AmrError(f"{root}: not a directory")
    check_encoding(encoding)
    name = layout or detect_layout(root)
    if name not in LAYOUTS:
        raise AmrError(f"unknown dataset layout {name!r} (known: {', '.join(LAYOUTS)})")
    problems = Problems(lenient, on_skip)
    items = _stamped(LAYOUTS[name].read_items(root, ReadOptions(problems, encoding, allow_outside_root, follow_outside_links)), problems)
    if not items:
        unreadable = problems.unreadable
        why = f"; {len(unreadable)} unreadable file(s), the first: {unreadable[0].reason}" if unreadable else ""
        raise AmrError(f"{root}: no items ({name} layout){why}")
    queries_path = root / generic.QUERIES_JSONL
    known = {item.id for item in items}
    queries = generic.read_queries(queries_path, known, problems, encoding) if queries_path.is_file() else []
    return Dataset(root.name, root, items, queries, problems.unreadable)


def _stamped(items: list[Item], problems: Problems) -> list[Item]:
    """The items with their audio file's size and modification time filled in
    (one stat each); a file gone since it was listed is reported."""
    kept = []
    for item in items:
        try:
            stat = os.stat(item.audio)
        except OSError as e:
            problems.report(item.audio, f"audio file cannot be read ({e.strerror})")
            continue
        item.audio_size, item.audio_mtime_ns = stat.st_size, stat.st_mtime_ns
        kept.append(item)
    return kept


def load_queries(
    path: Path,
    known_ids: set[str] | None = None,
    lenient: bool = False,
    on_skip: SkipHandler | None = None,
    encoding: str | None = None,
) -> list[Query]:
    """Queries from a standalone queries.jsonl; with ``known_ids`` every relevant id must be one."""
    path = Path(path)
    if not path.is_file():
        raise AmrError(f"{path}: no such file")
    check_encoding(encoding)
    return generic.read_queries(path, known_ids, Problems(lenient, on_skip), encoding)


__all__ = ["LAYOUTS", "Layout", "SkipHandler", "detect_layout", "load_dataset", "load_queries"]
