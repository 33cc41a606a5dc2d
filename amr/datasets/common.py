"""What every dataset reader shares: reporting bad rows, reading CSV and JSONL
files, and normalising splits, metadata and captions to the `amr.items` contract.

A reader parses one row at a time; a row-level problem raises RowError, and
`Problems` turns it into ``"<file>:<line>: <problem>"``, raised as AmrError
(strict) or handed to a skip handler (lenient) while the row is dropped.

Text manifests are read as UTF-8 where they are, else in the encoding named
for files that are not. Without one, a CSV that is not UTF-8 is read as
Windows-1252 (else Latin-1) with a warning naming the file, and a JSONL line
that is not UTF-8 is a bad line (JSON is UTF-8 by its RFC: no guessing). Every string a JSON line holds must be storable as UTF-8: a
lone surrogate (``"\\ud800"``) is refused with the line, before any work.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.markup import escape

from amr.console import console, warn
from amr.errors import AmrError
from amr.items import METADATA_FIELDS, SPLITS, ClipFailure

T = TypeVar("T")
SkipHandler = Callable[[str], None]

# Clotho calls its training split "development"; "dev" alone usually means validation.
SPLIT_SYNONYMS = {
    "train": "train",
    "training": "train",
    "development": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "eval": "test",
    "evaluation": "test",
}
LIST_FIELDS = ("keywords", "tags")
LIST_SEPARATOR = ";"


class RowError(Exception):
    """A problem with one row; whoever catches it knows the file and line."""


def warn_skipped(message: str) -> None:
    """The default skip handler: one line on stderr."""
    console.print(f"[yellow]skipped[/] {escape(message)}")


class Problems:
    """Where readers send bad rows. Strict (the default) raises AmrError on the
    first one; lenient hands each message to ``on_skip`` and the row is dropped."""

    def __init__(self, lenient: bool = False, on_skip: SkipHandler | None = None) -> None:
        self.lenient = lenient
        self.on_skip = on_skip or warn_skipped
        self.unreadable: list[ClipFailure] = []  # files that could not become items (Dataset.unreadable)

    def report(self, where: str, what: str) -> None:
        message = f"{where}: {what}"
        if not self.lenient:
            raise AmrError(message)
        self.on_skip(message)

    def unreadable_file(self, item_id: str, path: str, kind: str, problem: str) -> None:
        """A file of a plain folder that cannot become an item (in strict mode
        too): recorded for the failures report of `amr extract`, not raised."""
        self.unreadable.append(ClipFailure(item_id, path, kind, f"{path}: {problem}"))

    def attempt(self, where: str, parse: Callable[..., T], *args: Any) -> T | None:
        """``parse(*args)``, or None after reporting its RowError at ``where``."""
        try:
            return parse(*args)
        except RowError as e:
            self.report(where, str(e))
            return None


@dataclass(frozen=True)
class ReadOptions:
    """What a layout reader is told besides its root: where problems go, the
    encoding of its text manifests (None: UTF-8, else a guess with a warning),
    whether manifest audio paths may point outside the dataset folder and
    whether a plain folder's symbolic links may lead outside it."""

    problems: Problems
    encoding: str | None = None
    allow_outside_root: bool = False
    follow_outside_links: bool = False  # the folder layout: follow symbolic links that lead outside its root


def check_encoding(encoding: str | None) -> None:
    """Refuse an encoding name Python does not know, before anything is read."""
    if encoding is None:
        return
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise AmrError(f"unknown text encoding {encoding!r} (e.g. utf-8, cp1252, latin-1, utf-16)") from None


def decode_guess(data: bytes) -> tuple[str, str]:
    """(text, encoding) of bytes whose encoding nobody declared: UTF-8 (BOM or
    not) if they are, else Windows-1252 (some real Clotho metadata files were
    saved by Windows tools), else Latin-1, which decodes any bytes."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), "latin-1"


def read_text(path: Path, encoding: str | None = None) -> str:
    """A text file as UTF-8 (BOM or not) if it is, else in ``encoding``: the
    encoding of manifests that are not UTF-8, as one dataset can mix them
    (Clotho's captions are UTF-8, some of its metadata files Windows-1252).
    Without one the file is read as Windows-1252, else Latin-1, with a warning
    naming the file and the encoding used."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        if encoding is None:
            text, used = decode_guess(data)
            warn(
                f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}); read the file as {used}. "
                "Name its encoding (--encoding) if that is wrong."
            )
            return text
        if codecs.lookup(encoding).name == "utf-8":
            raise AmrError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].decode(encoding, errors="replace").count("\n") + 1
        raise AmrError(f"{path}:{line}: neither UTF-8 nor {encoding} ({e.reason} at byte {e.start})") from None


def read_csv(path: Path, required: Sequence[str], problems: Problems, encoding: str | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """(first line of the record, {column: stripped value}) per non-blank row.
    A missing required column fails the whole file; a row with the wrong number
    of fields is reported and skipped."""
    reader = csv.reader(io.StringIO(read_text(path, encoding), newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in required if name not in header]
        if missing:
            found = ", ".join(header) or "nothing"
            raise AmrError(f"{path}:1: missing column {', '.join(missing)} (the header has {found})")
        next_line = reader.line_num + 1
        for row in reader:
            line, next_line = next_line, reader.line_num + 1
            if not any(field.strip() for field in row):
                continue
            if len(row) != len(header):
                problems.report(f"{path}:{line}", f"expected {len(header)} fields, found {len(row)}")
                continue
            yield line, {name: value.strip() for name, value in zip(header, row)}
    except csv.Error as e:
        raise AmrError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None


def read_jsonl(path: Path, problems: Problems, encoding: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; bad lines are reported.
    Without an encoding each line must be UTF-8 (a line that is not is a bad
    line); with one, the file is read by `read_text`."""
    if encoding is None:
        lines: Iterable[bytes | str] = path.read_bytes().splitlines()
    else:
        lines = read_text(path, encoding).split("\n")  # not splitlines(): JSON strings may hold U+2028
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        record = problems.attempt(f"{path}:{number}", _json_object, raw)
        if record is not None:
            yield number, record


def _json_object(raw: bytes | str) -> dict[str, Any]:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise RowError(f"not UTF-8 ({e.reason} at byte {e.start}; name the file's encoding with --encoding)") from None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RowError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(value, dict):
        raise RowError(f"expected a JSON object, found {json_type(value)}")
    where = _unencodable(value)
    if where is not None:
        raise RowError(f"{where} holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not text")
    return value


def _unencodable(value: object, where: str = "") -> str | None:
    """Where in a parsed JSON value a string or key is not valid Unicode text
    (a lone surrogate), named like 'metadata.title' or 'captions[2]'; else None."""
    if isinstance(value, str):
        return None if encodable(value) else repr(where)
    if isinstance(value, list):
        children = [(f"{where}[{k}]", part) for k, part in enumerate(value)]
    elif isinstance(value, dict):
        children = [(f"{where}.{key}" if where else key, part) for key, part in value.items()]
    else:
        return None
    for name, part in children:
        found = repr(name) if not encodable(name) else _unencodable(part, name)
        if found is not None:
            return found
    return None


def encodable(text: str) -> bool:
    """Whether a string can be written as UTF-8 (has no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def required_text(record: dict[str, Any], key: str) -> str:
    """A required, non-blank string field, as written."""
    if key not in record:
        raise RowError(f"missing {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise RowError(f"{key!r} must be a string, found {json_type(value)}")
    if not value.strip():
        raise RowError(f"{key!r} is empty")
    return value


def normalise_split(value: object) -> str:
    """One of SPLITS, from the name or a common synonym (case-insensitive)."""
    if not isinstance(value, str):
        raise RowError(f"'split' must be a string, found {json_type(value)}")
    split = SPLIT_SYNONYMS.get(value.strip().lower())
    if split is None:
        synonyms = ", ".join(name for name in SPLIT_SYNONYMS if name not in SPLITS)
        raise RowError(f"unknown split {value!r} (use {', '.join(SPLITS)}, or one of {synonyms})")
    return split


def normalise_metadata(raw: object) -> dict[str, str | list[str]]:
    """Metadata with only METADATA_FIELDS: keywords/tags as lists of strings
    (a ``;``-separated string is split), title/description as strings; empty
    values are dropped, so a clip without metadata gets ``{}``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RowError(f"'metadata' must be an object, found {json_type(raw)}")
    unknown = [name for name in raw if name not in METADATA_FIELDS]
    if unknown:
        raise RowError(f"unknown metadata field {', '.join(map(repr, unknown))} (known: {', '.join(METADATA_FIELDS)})")
    metadata: dict[str, str | list[str]] = {}
    for name in METADATA_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        normal = text_list(value, f"metadata.{name}") if name in LIST_FIELDS else text_value(value, f"metadata.{name}")
        if normal:
            metadata[name] = normal
    return metadata


def text_list(value: object, what: str) -> list[str]:
    """Distinct non-blank stripped strings, in order, from a list or a ``;``-separated string."""
    if isinstance(value, str):
        parts: Iterable[str] = value.split(LIST_SEPARATOR)
    elif isinstance(value, list) and all(isinstance(part, str) for part in value):
        parts = value
    else:
        raise RowError(f"'{what}' must be a list of strings or a ';'-separated string, found {json_type(value)}")
    return list(dict.fromkeys(part.strip() for part in parts if part.strip()))


def text_value(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"'{what}' must be a string, found {json_type(value)}")
    return value.strip()


def normalise_captions(value: object) -> list[str]:
    """Non-blank stripped captions, in order (duplicates kept: each is a query)."""
    if value is None:
        return []
    if not (isinstance(value, list) and all(isinstance(caption, str) for caption in value)):
        raise RowError(f"'captions' must be a list of strings, found {json_type(value)}")
    return [caption.strip() for caption in value if caption.strip()]


def existing_file(root: Path, relative: str, allow_outside_root: bool = False) -> str:
    """The absolute, normalised path of an audio file under ``root``.

    A path that is absolute or climbs out with ``..`` must still land inside
    ``root`` unless ``allow_outside_root``: a dataset folder stays
    self-contained (it can be moved or shared), and a manifest cannot make amr
    read, embed or later serve files from anywhere on the machine. Checked on
    the path as written: symbolic links inside ``root`` are followed wherever
    they point."""
    path = Path(os.path.normpath(root / relative))
    if not allow_outside_root and not path.is_relative_to(root):
        raise RowError(
            f"audio path {relative!r} is outside the dataset folder {root} (move the file into it, or allow this with --allow-outside-root)"
        )
    if not path.is_file():
        raise RowError(f"audio file not found: {path}")
    return str(path)


class FolderListings:
    """The file names in folders, each folder listed once (a dataset of ~100k
    clips looks its audio up by name without a stat per candidate)."""

    def __init__(self) -> None:
        self._names: dict[Path, set[str]] = {}

    def names(self, folder: Path) -> set[str]:
        if folder not in self._names:
            names: set[str] = set()
            if folder.is_dir():
                with os.scandir(folder) as entries:
                    names = {entry.name for entry in entries if entry.is_file()}
            self._names[folder] = names
        return self._names[folder]
