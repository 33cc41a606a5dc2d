"""WavCaps as distributed (XinhaoMei/WavCaps, its Hugging Face copy): the
caption files ``json_files/<source>/<name>.json`` and the audio per source.

A caption file is ``{"num_captions_per_audio": 1, "data": [entry, ...]}`` or,
as the repository's own copy of SoundBible is, the bare list of entries. An
entry has an ``id`` and a ``caption``, and per source some of ``title``,
``description``, ``tags`` (FreeSound's keywords), ``author``, ``href``,
``download_link``, ``duration`` and an ``audio`` placeholder. A file with
several captions per audio gives ``caption_1`` ... ``caption_N`` (or a list in
``caption``); each caption is a query.

Sources are the folders under ``json_files/`` (AudioSet_SL, BBC_Sound_Effects,
FreeSound, SoundBible), or a file's stem for a file directly in it;
``json_files/blacklist/`` (lists of ids to exclude, not captions) is not read.
An entry's audio is the file named by its id without extension (AudioSet's
ids end in ``.wav``; the audio is FLAC) with extension .flac, .wav, .mp3 or
.ogg, in ``<source>_flac/``, ``<source>/``, ``audio/<source>/`` or
``waveforms/<source>/`` under the root, in that order: the folders WavCaps'
archives and its retrieval code use.

Items: id ``<source>/<id>``, split ``train`` (WavCaps is training data), the
caption(s) as captions, and as metadata ``title``, ``description`` and
``tags`` → keywords, where present, as written. Note that WavCaps' captions
were written by ChatGPT from those descriptions, so description and caption
often say the same thing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from amr.audio.formats import DATASET_SUFFIXES
from amr.errors import AmrError
from amr.items import Item

from .common import FolderListings, ReadOptions, RowError, json_type, read_text, text_list, text_value

JSON_FOLDER = "json_files"
EXCLUDED = "blacklist"
AUDIO_EXTENSIONS = (".flac", *(s for s in DATASET_SUFFIXES if s != ".flac"))  # its audio is FLAC: looked for first
AUDIO_FOLDERS = ("{source}_flac", "{source}", "audio/{source}", "waveforms/{source}")


def detect(root: Path) -> bool:
    return any(_caption_files(root))


def _caption_files(root: Path) -> list[tuple[str, Path]]:
    """(source, caption file) for each caption file, sorted."""
    folder = root / JSON_FOLDER
    if not folder.is_dir():
        return []
    files = [(path.stem, path) for path in sorted(folder.glob("*.json"))]
    files += [(path.parent.name, path) for path in sorted(folder.glob("*/*.json")) if path.parent.name != EXCLUDED]
    return files


def read_items(root: Path, options: ReadOptions) -> list[Item]:
    problems = options.problems
    files = _caption_files(root)
    if not files:
        raise AmrError(f"{root}: no WavCaps caption files ({JSON_FOLDER}/<source>/*.json)")
    items: list[Item] = []
    seen: dict[str, str] = {}
    listings = FolderListings()
    for source, path in files:
        finder = _AudioFinder(root, source, listings)
        for position, entry in _entries(path):
            where = f"{path}: entry {position}"
            parsed = problems.attempt(where, _parse_entry, entry)
            if parsed is None:
                continue
            entry_id, captions, metadata = parsed
            item_id = f"{source}/{entry_id}"
            if item_id in seen:
                problems.report(where, f"duplicate id {entry_id!r} (first at {seen[item_id]})")
                continue
            audio = finder.find(entry_id)
            if audio is None:
                names = f"{_stem(entry_id)}{{{','.join(AUDIO_EXTENSIONS)}}}"
                problems.report(where, f"no audio for id {entry_id!r} (looked for {names} in {finder.describe()})")
                continue
            seen[item_id] = where
            items.append(Item(item_id, str(audio), "train", metadata, captions))
    return items


def _entries(path: Path) -> list[tuple[int, Any]]:
    """(1-based position, entry) of a caption file; a file not in the format is an error naming it."""
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise AmrError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if isinstance(value, dict):
        data = value.get("data")
        if not isinstance(data, list):
            raise AmrError(f"{path}: not a WavCaps caption file (no 'data' list; found keys {', '.join(map(repr, list(value)[:5]))})")
    elif isinstance(value, list):
        data = value
    else:
        raise AmrError(f"{path}: not a WavCaps caption file (a JSON {json_type(value)})")
    return list(enumerate(data, 1))


def _parse_entry(entry: Any) -> tuple[str, list[str], dict[str, str | list[str]]]:
    if not isinstance(entry, dict):
        raise RowError(f"an entry must be an object, found {json_type(entry)}")
    entry_id = entry.get("id")
    if isinstance(entry_id, int) and not isinstance(entry_id, bool):
        entry_id = str(entry_id)
    if not isinstance(entry_id, str) or not entry_id.strip() or "/" in entry_id:
        raise RowError(f"'id' must be a non-empty string without '/', found {entry_id!r}")
    captions = _captions(entry)
    if not captions:
        raise RowError(f"id {entry_id!r}: no caption")
    metadata: dict[str, str | list[str]] = {}
    for name in ("title", "description"):
        if entry.get(name) is not None and text_value(entry[name], name):
            metadata[name] = text_value(entry[name], name)
    if entry.get("tags") is not None and text_list(entry["tags"], "tags"):
        metadata["keywords"] = text_list(entry["tags"], "tags")
    return entry_id.strip(), captions, metadata


def _captions(entry: dict[str, Any]) -> list[str]:
    """``caption`` (a string or a list of strings), else ``caption_1``, ``caption_2``, ... in order."""
    value = entry.get("caption")
    if value is None:
        numbered = sorted((int(key[8:]), key) for key in entry if key.startswith("caption_") and key[8:].isdigit())
        value = [entry[key] for _, key in numbered]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RowError(f"'caption' must be a string or a list of strings, found {json_type(value)}")
    return [v.strip() for v in values if v.strip()]


def _stem(entry_id: str) -> str:
    stem, extension = os.path.splitext(entry_id)
    return stem if extension.lower() in AUDIO_EXTENSIONS else entry_id


class _AudioFinder:
    """A source's audio, by listing each candidate folder once (AudioSet_SL has ~100k files)."""

    def __init__(self, root: Path, source: str, listings: FolderListings) -> None:
        self.root = root
        self.folders = [root / pattern.format(source=source) for pattern in AUDIO_FOLDERS]
        self._listings = listings

    def describe(self) -> str:
        return ", ".join(f"{folder.relative_to(self.root)}/" for folder in self.folders)

    def find(self, entry_id: str) -> Path | None:
        stem = _stem(entry_id)
        for folder in self.folders:
            names = self._listings.names(folder)
            for extension in AUDIO_EXTENSIONS:
                if stem + extension in names:
                    return folder / (stem + extension)
        return None
