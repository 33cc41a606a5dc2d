"""The folder layout: a plain tree of audio files with no manifest, a sound
library as people keep one. Its metadata comes from the file and folder names
and the tags embedded in the files (`amr.datasets.tags`).

Files: every file under the root, recursively, whose suffix (any case) is one
of amr.audio.formats' DECODABLE_SUFFIXES or UNDECODABLE_SUFFIXES, in order of
id. Names starting with ``.`` (hidden files and folders, macOS ``._``
companions) are left out.
Symbolic links are followed, each folder once by its real path, so a link
loop, or a link to a folder above the root, is not walked again. A link that
leads outside the root (to a file or a folder) is left out, with a line
through ``on_skip``, unless ``follow_outside_links``: what is indexed is
served (`amr serve`), and a library's links should not publish other folders. Each file is
opened with the decoder (header only) before it becomes an item: a file it
cannot read (an ``.m4a``, which libsndfile does not decode; a text file named
``.wav``; an empty file) is left out and recorded in ``Dataset.unreadable``
(`Problems.unreadable_file`), which `amr extract` reports with the clips that
fail to decode (``<cache>.failures.jsonl``, exit code 3), as for a manifest
layout whose audio does not decode — in strict mode too, as a sound library
is not a manifest someone wrote and one odd file should not stop it. So are
names that are not valid UTF-8 (they could not be stored; the report shows
the bytes escaped), broken links and folders that cannot be listed.

An item's id is its path relative to the root, with ``/`` separators.

Split: ``train`` for every file, unless the root holds only folders (no audio
files of its own), each named after a split or a synonym (train, val,
validation, test, eval, ...; see `amr.datasets.common.SPLIT_SYNONYMS`), and
they name at least two different splits: then each file is in its top
folder's split (and that folder is not a keyword).

Metadata, each field only where there is one:

- ``title``: the embedded title, else the FXName of a UCS name, else the
  file name cleaned (`clean_name`);
- ``keywords``: the folders between the root and the file (each cleaned the
  same way), then a UCS name's category, subcategory, CatID synonyms, vendor
  and user category, then the embedded keywords and genres; repeated ones
  (ignoring case) once;
- ``description``: the embedded description or comment;
- a UCS name's fields (`amr.ucs.UCS_FIELDS`: ``ucs_catid``, ``category``,
  ``category_full``, ``creator``, ``source``, ...) and the embedded fields
  that are not text to search (`amr.datasets.tags.Tags.fields`: the bext
  originator and date, iXML scene and take, ...), kept as they are.

A file whose tags cannot be read keeps its name-derived metadata, with a
warning.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import soundfile as sf

from amr.audio.formats import DECODABLE_SUFFIXES, UNDECODABLE_SUFFIXES
from amr.console import warn
from amr.items import Item
from amr.ucs import parse_name

from .common import SPLIT_SYNONYMS, Problems, ReadOptions, encodable
from .tags import TagError, read_tags, usable

# Counters people and tools append to a name, removed from its end one at a time.
_COUNTERS = (
    re.compile(r"\s*[(\[]\d+[)\]]$"),  # "rain (2)", "rain [3]": copies
    re.compile(r"(?:^|[\s_.-]+)(?:take|tk)[\s_.-]*\d+$", re.IGNORECASE),  # "door take 3", "door_Take02"
    re.compile(r"[_.-]+\d+$"),  # "dog_01", "dog-002", "lava.1" (but "Boeing 747" keeps its number)
)


def detect(root: Path) -> bool:
    """Whether any audio file is under ``root`` (stops at the first)."""
    return next(_candidates(root, None, True), None) is not None


def read_items(root: Path, options: ReadOptions) -> list[Item]:
    problems = options.problems
    candidates = _candidates(root, problems, options.follow_outside_links)
    files = [relative for relative in sorted(candidates) if _decodable(root, relative, problems)]
    splits = _split_folders(files)
    return [_item(root, relative, splits) for relative in files]


def clean_name(name: str) -> str | None:
    """A file or folder name as words: trailing counters removed (see
    _COUNTERS; never down to nothing), underscores and dashes made spaces;
    None if no letter is left (``001``, ``2019-05-01``)."""
    text, changed = name, True
    while changed:
        changed = False
        for pattern in _COUNTERS:
            shorter = pattern.sub("", text, count=1)
            if shorter != text and shorter.strip(" _.-"):
                text, changed = shorter, True
                break
    text = " ".join(re.sub(r"[_-]+", " ", text).split())
    return text if any(c.isalpha() for c in text) else None


def _item(root: Path, relative: str, splits: dict[str, str]) -> Item:
    *folders, name = relative.split("/")
    split = splits[folders.pop(0)] if splits else "train"
    keywords = [word for word in map(clean_name, folders) if word]
    path = root / relative
    ucs = parse_name(Path(name).stem)
    metadata: dict[str, str | list[str]] = ucs.metadata() if ucs else {}
    keywords += metadata.pop("keywords", [])
    title = description = None
    try:
        tags = read_tags(path)
    except TagError as e:
        warn(f"{path}: its tags cannot be read ({e}); using the file and folder names")
    else:
        keywords += usable(tags.keywords)
        title, description = tags.title, tags.description
        metadata.update(tags.fields)
    first_spelling: dict[str, str] = {}
    for word in keywords:
        first_spelling.setdefault(word.lower(), word)
    if first_spelling:
        metadata["keywords"] = list(first_spelling.values())
    title = title or metadata.pop("title", None) or (None if ucs else clean_name(Path(name).stem))
    if title:
        metadata["title"] = title
    if description:
        metadata["description"] = description
    return Item(relative, str(path), split, metadata)


def _candidates(root: Path, problems: Problems | None, follow_outside_links: bool) -> Iterator[str]:
    """Relative paths of the files with an audio suffix, depth first in name
    order; what is left out is reported to ``problems`` (if given)."""

    def outside(path: str) -> bool:
        """A link leading outside the root, left out (and said so) unless followed."""
        real = Path(os.path.realpath(root / path))
        if follow_outside_links or real.is_relative_to(root_real):
            return False
        if problems:
            problems.on_skip(f"{root / path}: a link to {real}, outside the library; left out (--follow-outside-links follows it)")
        return True

    suffixes = DECODABLE_SUFFIXES + UNDECODABLE_SUFFIXES
    root_real = Path(os.path.realpath(root))
    visited: set[Path] = set()
    pending = [""]
    while pending:
        relative = pending.pop()
        folder = root / relative
        real = Path(os.path.realpath(folder))
        if real in visited or (relative and root_real.is_relative_to(real)):
            continue  # reached again through a link, or a link to a folder above the root
        visited.add(real)
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as e:
            if problems:
                problems.unreadable_file(relative or ".", str(folder), "unreadable", f"folder cannot be listed ({e.strerror}); left out")
            continue
        subfolders = []
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            if entry.name.startswith("."):
                continue
            if not encodable(entry.name):
                if problems:
                    shown = os.fsencode(path).decode("utf-8", "backslashreplace")
                    message = "name is not valid UTF-8, so it cannot be stored; rename it to include it"
                    problems.unreadable_file(shown, os.fsencode(root / path).decode("utf-8", "backslashreplace"), "unreadable", message)
            elif entry.is_symlink() and entry.is_dir() and not root_real.is_relative_to(os.path.realpath(entry.path)) and outside(path):
                continue
            elif entry.is_dir():
                subfolders.append(path)
            elif entry.name.lower().endswith(suffixes) and entry.is_symlink() and entry.is_file() and outside(path):
                continue
            elif entry.name.lower().endswith(suffixes):
                if entry.is_file():
                    yield path
                elif problems:
                    problems.unreadable_file(path, str(root / path), "missing", "not a regular file (a broken link?); left out")
        pending.extend(reversed(subfolders))


def _decodable(root: Path, relative: str, problems: Problems) -> bool:
    """Whether the decoder opens the file (it reads the header only)."""
    path = root / relative
    try:
        if path.stat().st_size == 0:
            problems.unreadable_file(relative, str(path), "empty", "empty file (0 bytes); left out")
            return False
        sf.info(str(path))
    except sf.SoundFileError as e:
        if path.suffix.lower() in UNDECODABLE_SUFFIXES:
            reason = f"{path.suffix} cannot be decoded (amr reads WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF); convert it, e.g. to FLAC"
        else:
            reason = f"not audio the decoder can read ({getattr(e, 'error_string', None) or e}); left out"
        problems.unreadable_file(relative, str(path), "not-audio", reason)
        return False
    except OSError as e:
        problems.unreadable_file(relative, str(path), "unreadable", f"cannot be read ({e.strerror}); left out")
        return False
    return True


def _split_folders(files: list[str]) -> dict[str, str]:
    """Top folder → split, if the files follow the split-folder convention (see the module docstring), else {}."""
    tops = {relative.split("/", 1)[0] for relative in files}
    if any("/" not in relative for relative in files):
        return {}
    splits = {top: SPLIT_SYNONYMS.get(top.lower()) for top in tops}
    if None in splits.values() or len(set(splits.values())) < 2:
        return {}
    return {top: split for top, split in splits.items() if split}
