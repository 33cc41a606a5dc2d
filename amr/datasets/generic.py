"""The generic layout: any folder of audio described by ``items.jsonl`` (or
``items.csv``), with optional explicit queries in ``queries.jsonl``.

items.jsonl, one object per line::

    {"id": "dog-1", "audio": "audio/dog-1.wav", "split": "train",
     "metadata": {"keywords": ["dog"], "tags": [], "title": "", "description": ""},
     "captions": ["a dog barks"]}

``audio`` is relative to the folder (an absolute path, or one that climbs out
with ``..``, is refused unless ``allow_outside_root``; see
`amr.datasets.common.existing_file`); ``split`` defaults to train;
``metadata`` (any subset of its four fields) and ``captions`` are optional;
other keys (e.g. ``source``) are ignored. items.csv has the columns id, audio,
split, keywords, tags, title, description, captions, lists ``;``-separated.

queries.jsonl, one object per line: ``{"id", "text", "relevant": [item ids], "split"?}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from amr.errors import AmrError
from amr.items import METADATA_FIELDS, Item, Query

from .common import (
    LIST_SEPARATOR,
    Problems,
    ReadOptions,
    RowError,
    existing_file,
    json_type,
    normalise_captions,
    normalise_metadata,
    normalise_split,
    read_csv,
    read_jsonl,
    required_text,
)

ITEMS_JSONL = "items.jsonl"
ITEMS_CSV = "items.csv"
QUERIES_JSONL = "queries.jsonl"


def detect(root: Path) -> bool:
    return (root / ITEMS_JSONL).is_file() or (root / ITEMS_CSV).is_file()


def read_items(root: Path, options: ReadOptions) -> list[Item]:
    jsonl, table = root / ITEMS_JSONL, root / ITEMS_CSV
    if jsonl.is_file() and table.is_file():
        raise AmrError(f"{root}: both {ITEMS_JSONL} and {ITEMS_CSV} exist; keep one")
    if jsonl.is_file():
        return _collect(jsonl, read_jsonl(jsonl, options.problems, options.encoding), root, options)
    if table.is_file():
        rows = read_csv(table, ("id", "audio"), options.problems, options.encoding)
        return _collect(table, ((line, _csv_record(row)) for line, row in rows), root, options)
    raise AmrError(f"{root}: neither {ITEMS_JSONL} nor {ITEMS_CSV} exists")


def _csv_record(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row in the shape of a JSONL record; empty cells count as absent."""
    record: dict[str, Any] = {
        "id": row["id"],
        "audio": row["audio"],
        "metadata": {name: row[name] for name in METADATA_FIELDS if row.get(name)},
        "captions": row.get("captions", "").split(LIST_SEPARATOR),
    }
    if row.get("split"):
        record["split"] = row["split"]
    return record


def _collect(path: Path, records: Iterable[tuple[int, dict[str, Any]]], root: Path, options: ReadOptions) -> list[Item]:
    problems = options.problems
    items: list[Item] = []
    first_line: dict[str, int] = {}
    for line, record in records:
        where = f"{path}:{line}"
        item = problems.attempt(where, _item, record, root, options.allow_outside_root)
        if item is None:
            continue
        if item.id in first_line:
            problems.report(where, f"duplicate id {item.id!r} (first on line {first_line[item.id]})")
            continue
        first_line[item.id] = line
        items.append(item)
    return items


def _item(record: dict[str, Any], root: Path, allow_outside_root: bool) -> Item:
    split = record.get("split")
    return Item(
        id=required_text(record, "id"),
        audio=existing_file(root, required_text(record, "audio"), allow_outside_root),
        split="train" if split is None else normalise_split(split),
        metadata=normalise_metadata(record.get("metadata")),
        captions=normalise_captions(record.get("captions")),
    )


def read_queries(path: Path, known_ids: set[str] | None, problems: Problems, encoding: str | None = None) -> list[Query]:
    """Queries from a queries.jsonl; with ``known_ids``, every relevant id must be one."""
    queries: list[Query] = []
    first_line: dict[str, int] = {}
    for line, record in read_jsonl(path, problems, encoding):
        where = f"{path}:{line}"
        query = problems.attempt(where, _query, record, known_ids)
        if query is None:
            continue
        if query.id in first_line:
            problems.report(where, f"duplicate query id {query.id!r} (first on line {first_line[query.id]})")
            continue
        first_line[query.id] = line
        queries.append(query)
    return queries


def _query(record: dict[str, Any], known_ids: set[str] | None) -> Query:
    query_id = required_text(record, "id")
    text = required_text(record, "text").strip()
    if "relevant" not in record:
        raise RowError("missing 'relevant'")
    relevant = record["relevant"]
    if not (isinstance(relevant, list) and all(isinstance(item_id, str) for item_id in relevant)):
        raise RowError(f"'relevant' must be a list of item ids (strings), found {json_type(relevant)}")
    if not relevant:
        raise RowError("'relevant' is empty")
    relevant = list(dict.fromkeys(relevant))
    if known_ids is not None:
        unknown = [item_id for item_id in relevant if item_id not in known_ids]
        if unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise RowError(f"unknown relevant id {shown}")
    split = record.get("split")
    return Query(query_id, text, relevant, None if split is None else normalise_split(split))
