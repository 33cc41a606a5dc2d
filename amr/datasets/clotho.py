"""Clotho (v2) as distributed: per split ``clotho_captions_{split}.csv``
(file_name, caption_1..caption_5), the audio in ``clotho_audio_{split}/`` or
``{split}/``, and optionally ``clotho_metadata_{split}.csv`` whose ``keywords``
column (``;``-separated) becomes the item's metadata. Splits: development →
train, validation → val, evaluation → test. The item id is the file name.
"""

from __future__ import annotations

from pathlib import Path

from amr.errors import AmrError
from amr.items import SPLITS, Item

from .common import Problems, ReadOptions, RowError, existing_file, normalise_split, read_csv, text_list

CAPTIONS_PREFIX = "clotho_captions_"
METADATA_PREFIX = "clotho_metadata_"


def detect(root: Path) -> bool:
    return any(root.glob(f"{CAPTIONS_PREFIX}*.csv"))


def read_items(root: Path, options: ReadOptions) -> list[Item]:
    problems = options.problems
    files = _captions_files(root)
    items: list[Item] = []
    first_seen: dict[str, str] = {}
    for name, split, captions_path in files:
        rows, listed = _caption_rows(captions_path, problems, options.encoding)
        metadata_path = root / f"{METADATA_PREFIX}{name}.csv"
        keywords = _keywords(metadata_path, captions_path, listed, problems, options.encoding)
        folder = _audio_folder(root, name)
        if folder is None:
            problems.report(
                str(captions_path),
                f"no audio folder for its {len(rows)} clips (looked for clotho_audio_{name}/ and {name}/ in {root})",
            )
            continue
        for line, file_name, captions in rows:
            where = f"{captions_path}:{line}"
            if file_name in first_seen:
                problems.report(where, f"duplicate file_name {file_name!r} (first at {first_seen[file_name]})")
                continue
            audio = problems.attempt(where, existing_file, root, f"{folder.name}/{file_name}", options.allow_outside_root)
            if audio is None:
                continue
            first_seen[file_name] = where
            metadata: dict[str, str | list[str]] = {"keywords": keywords[file_name]} if keywords.get(file_name) else {}
            items.append(Item(file_name, audio, split, metadata, captions))
    return items


def _captions_files(root: Path) -> list[tuple[str, str, Path]]:
    """(Clotho split name, amr split, path) per captions file, train first."""
    files = []
    for path in root.glob(f"{CAPTIONS_PREFIX}*.csv"):
        name = path.stem.removeprefix(CAPTIONS_PREFIX)
        try:
            split = normalise_split(name)
        except RowError as e:
            raise AmrError(f"{path}: {e}") from None
        files.append((name, split, path))
    if not files:
        raise AmrError(f"{root}: no {CAPTIONS_PREFIX}*.csv")
    return sorted(files, key=lambda file: (SPLITS.index(file[1]), file[0]))


def _caption_rows(path: Path, problems: Problems, encoding: str | None) -> tuple[list[tuple[int, str, list[str]]], set[str]]:
    """(line, file_name, captions) per valid row, and every file name listed."""
    rows, listed = [], set()
    for line, row in read_csv(path, ("file_name", "caption_1"), problems, encoding):
        file_name = row["file_name"]
        listed.add(file_name)
        captions = [value for column, value in row.items() if column.startswith("caption_") and value]
        if not file_name:
            problems.report(f"{path}:{line}", "empty file_name")
        elif not captions:
            problems.report(f"{path}:{line}", f"no caption for {file_name!r}")
        else:
            rows.append((line, file_name, captions))
    return rows, listed


def _keywords(path: Path, captions_path: Path, listed: set[str], problems: Problems, encoding: str | None) -> dict[str, list[str]]:
    """file_name → keywords from a metadata CSV, if there is one; every file it
    names must be in the captions file (a mismatch means the two disagree)."""
    if not path.is_file():
        return {}
    keywords: dict[str, list[str]] = {}
    for line, row in read_csv(path, ("file_name", "keywords"), problems, encoding):
        where, file_name = f"{path}:{line}", row["file_name"]
        if not file_name:
            problems.report(where, "empty file_name")
        elif file_name not in listed:
            problems.report(where, f"file_name {file_name!r} is not in {captions_path.name}")
        elif file_name in keywords:
            problems.report(where, f"duplicate file_name {file_name!r}")
        else:
            keywords[file_name] = text_list(row["keywords"], "keywords")
    return keywords


def _audio_folder(root: Path, name: str) -> Path | None:
    for folder in (root / f"clotho_audio_{name}", root / name):
        if folder.is_dir():
            return folder
    return None
