"""The data contract every stage shares: items (clips) and queries.

An *item* is one audio clip with its metadata and (optional) human captions;
a *query* is a text with the ids of the items relevant to it. Dataset readers
produce them, the embedding cache stores them, the index and evaluation read
them back. Both serialise to one JSON object per line (jsonl).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

SPLITS = ("train", "val", "test")
ALL_SPLITS = "all"  # the split value that evaluates every item (`amr evaluate --split all`)
Split = StrEnum("Split", {name: name for name in SPLITS})
EvaluatedSplit = StrEnum("EvaluatedSplit", {name: name for name in (*SPLITS, ALL_SPLITS)})
METADATA_FIELDS = ("keywords", "tags", "title", "description")


@dataclass
class Item:
    """One clip. ``audio`` is an absolute path; ``metadata`` maps a field of
    METADATA_FIELDS to a string (title, description) or a list of strings
    (keywords, tags); an empty dict means the clip has no metadata.

    ``audio_size`` and ``audio_mtime_ns`` are the audio file's size in bytes
    and modification time when the dataset was read (None where unknown): a
    rerun can tell a changed file from an unchanged one without reading it."""

    id: str
    audio: str
    split: str = "train"
    metadata: dict[str, str | list[str]] = field(default_factory=dict)
    captions: list[str] = field(default_factory=list)
    audio_size: int | None = None
    audio_mtime_ns: int | None = None

    def to_json(self) -> str:
        # vars, not asdict: the fields are plain JSON values, and asdict's deep copy cost 6x more per item
        return json.dumps(vars(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Item:
        return cls(**json.loads(line))


@dataclass
class Query:
    """A text query and the ids of the items relevant to it."""

    id: str
    text: str
    relevant: list[str]
    split: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Query:
        return cls(**json.loads(line))


@dataclass
class ClipFailure:
    """A clip that could not be embedded, as `amr extract` reports it in
    ``<cache>.failures.jsonl``: ``kind`` is an amr.audio.frontend.AudioError kind, or
    ``unreadable`` (a file or folder that cannot be read, a name that cannot be stored)."""

    id: str
    audio: str
    kind: str
    reason: str


@dataclass
class Dataset:
    """What a reader returns: the items, and the queries the dataset defines
    explicitly (``queries.jsonl``). Caption queries are derived on demand.
    ``unreadable``: files of a plain folder (the folder layout) that could not
    become items; `amr extract` reports them with the clips that fail to decode."""

    name: str
    root: Path
    items: list[Item]
    queries: list[Query] = field(default_factory=list)
    unreadable: list[ClipFailure] = field(default_factory=list)


def changed_on_disk(items: Iterable[Item]) -> tuple[int, int]:
    """(changed, vanished): how many of ``items`` have an audio file whose size or
    modification time differs from what was recorded when the dataset was read,
    and how many have no file any more (items that recorded neither are not counted)."""
    changed = vanished = 0
    for item in items:
        if item.audio_size is None and item.audio_mtime_ns is None:
            continue
        try:
            stat = os.stat(item.audio)
        except OSError:
            vanished += 1
            continue
        changed += (stat.st_size, stat.st_mtime_ns) != (item.audio_size, item.audio_mtime_ns)
    return changed, vanished


def caption_queries(items: Iterable[Item]) -> list[Query]:
    """One query per caption, relevant to exactly the item it describes
    (the Clotho and AudioCaps protocol). Ids are ``<item id>#<caption index>``."""
    return [
        Query(id=f"{item.id}#{k}", text=caption, relevant=[item.id], split=item.split)
        for item in items
        for k, caption in enumerate(item.captions)
    ]


def write_jsonl(path: Path, records: Iterable[Item | Query]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(record.to_json() + "\n")


def metadata_text(item: Item, fields: Sequence[str] = METADATA_FIELDS) -> str | None:
    """An item's metadata as one text for the text encoder, or None if it has none.

    Open- and closed-set tags (keywords, tags) become a whitespace-separated
    keyword list; a title or description is used as is; the chosen fields are
    joined in the order given (punctuation is dropped by the text encoder's
    normalisation anyway)."""
    parts = []
    for name in fields:
        value = item.metadata.get(name)
        if value:
            parts.append(" ".join(value) if isinstance(value, list) else value)
    return " ".join(parts) or None
