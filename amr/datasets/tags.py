"""The text embedded in audio files: titles, descriptions and keywords.

mutagen reads ID3 (MP3, and the ID3 chunk of WAV and AIFF files) and Vorbis
comments (Ogg Vorbis, Opus, FLAC, Ogg FLAC). The chunks WAV and AIFF carry
natively, which mutagen does not read, are read here by walking the file's
chunks (the audio data itself is skipped, never read):

- RIFF WAVE (and RF64/BW64): the ``LIST``/``INFO`` list — INAM title, ICMT
  comment, ISBJ subject, IKEY keywords, IGNR genre — and the Broadcast Wave
  ``bext`` description (its first 256 bytes, NUL-padded);
- AIFF/AIFC: the ``NAME`` and ``ANNO`` (annotation) chunks.

Those chunks declare no character set: they are read as UTF-8 if they are,
else as Windows-1252 or Latin-1 (`amr.datasets.common.decode_guess`).

Where several tags give a title or description, the first in this order wins:

- title: INAM, NAME, ID3 TIT2, Vorbis TITLE;
- description: bext description, ICMT, ISBJ, ANNO, ID3 COMM (not iTunes'
  ``iTun*`` bookkeeping), Vorbis DESCRIPTION, COMMENT, COMMENTS;

and keywords collect IKEY, IGNR, ID3 TCON and TXXX:KEYWORDS, Vorbis KEYWORDS
and GENRE, split at ``;`` and ``,`` (ID3 genres also at ``/``, ID3v2.3's
separator).

Real files carry much that is not a description of the sound, and it is
dropped: values without a letter (titles like ``16.8.17`` or ``1889``, the
numeric genre codes of ID3v1 such as ``(12)`` or ``148``), a bare URL, a bare
Creative Commons licence name (``CC0``, ``cc-by-sa``), and the ``key=value``
lines field recorders write into the bext description (``sTAKE=01``).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import mutagen
from mutagen.aiff import AIFF
from mutagen.id3 import ID3
from mutagen.mp3 import MP3
from mutagen.wave import WAVE

from .common import decode_guess, encodable

RIFF_SUFFIXES = (".wav", ".wave", ".bwf")
AIFF_SUFFIXES = (".aif", ".aiff", ".aifc")
BEXT_DESCRIPTION_BYTES = 256
_RF64_UNKNOWN_SIZE = 0xFFFFFFFF

_KEYWORD_SEPARATORS = re.compile(r"[;,]")
_NUMERIC_GENRE = re.compile(r"\(\d+\)")  # ID3v2.3 "(17)Rock": the code adds nothing to the word
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|www\.)\S*$", re.IGNORECASE)
_LICENCE = re.compile(r"^(?:cc[\s-]*0|cc[\s-]*by(?:[\s-]*(?:sa|nc|nd))*(?:[\s-]*\d\.\d)?|public domain)$", re.IGNORECASE)
_RECORDER_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*=")


class TagError(Exception):
    """The file's tags (not its audio) are unreadable."""


@dataclass
class Tags:
    """Candidate values in order of preference (see the module docstring)."""

    titles: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)

    def add(self, other: Tags) -> None:
        self.titles += other.titles
        self.descriptions += other.descriptions
        self.keywords += other.keywords

    @property
    def title(self) -> str | None:
        return next(iter(usable(self.titles)), None)

    @property
    def description(self) -> str | None:
        return next(iter(usable(self.descriptions)), None)


def usable(values: list[str]) -> list[str]:
    """The values that say something about a sound: whitespace collapsed, and
    without those that have no letter, are a bare URL or licence name, or
    cannot be stored as UTF-8."""
    kept = []
    for value in values:
        text = " ".join(value.split())
        if any(c.isalpha() for c in text) and not _URL.match(text) and not _LICENCE.match(text) and encodable(text):
            kept.append(text)
    return kept


def read_tags(path: Path) -> Tags:
    """Every tag of ``path`` that amr uses; TagError if they cannot be read."""
    suffix = path.suffix.lower()
    tags, form = Tags(), None
    try:
        if suffix in RIFF_SUFFIXES:
            tags, form = _chunk_tags(path, riff=True)
        elif suffix in AIFF_SUFFIXES:
            tags, form = _chunk_tags(path, riff=False)
    except OSError as e:
        raise TagError(e.strerror or str(e)) from None
    if form not in (b"RF64", b"BW64"):  # mutagen reads the ID3 chunk of plain RIFF files only
        tags.add(_mutagen_tags(path, suffix))
    return tags


# ---------------------------------------------------------------- mutagen

# Formats whose tags are ID3: opened by their class so that the ID3 frames come
# untranslated (mutagen's translation turns the genre code "(12)" into "Other").
_ID3_FORMATS = {**dict.fromkeys(RIFF_SUFFIXES, WAVE), **dict.fromkeys(AIFF_SUFFIXES, AIFF), ".mp3": MP3}


def _mutagen_tags(path: Path, suffix: str) -> Tags:
    try:
        return _read_with_mutagen(path, suffix)
    # mutagen parses arbitrary bytes and does not wrap every failure in its own
    # MutagenError (fuzzed Ogg files raise IndexError, for one): a file's tags
    # must never stop a whole folder from being read.
    except Exception as e:
        raise TagError(str(e) or type(e).__name__) from None


def _read_with_mutagen(path: Path, suffix: str) -> Tags:
    kind = _ID3_FORMATS.get(suffix)
    audio = kind(path, translate=False) if kind else mutagen.File(path)
    found = audio.tags if audio is not None else None
    if isinstance(found, ID3):
        return _id3_tags(found)
    if found is not None and hasattr(found, "as_dict"):  # Vorbis comments: mutagen's class for them is private
        return _vorbis_tags(found.as_dict())
    return Tags()


def _id3_tags(id3: ID3) -> Tags:
    # ID3v2.3 joins several genres with "/" and writes ID3v1 genre codes as "(12)"
    genre_frames = id3.getall("TCON") + id3.getall("TCO")
    genres = [_NUMERIC_GENRE.sub("", part) for frame in genre_frames for text in frame.text for part in text.split("/")]
    id3.update_to_v24()  # ID3v2.2's three-letter frames (TT2, COM, TXX) become TIT2, COMM, TXXX
    return Tags(
        titles=[str(text) for frame in id3.getall("TIT2") for text in frame.text],
        descriptions=[text for frame in id3.getall("COMM") if not frame.desc.startswith("iTun") for text in frame.text],
        keywords=_split(genres + [text for frame in id3.getall("TXXX") if frame.desc.lower() == "keywords" for text in frame.text]),
    )


def _vorbis_tags(comments: dict[str, list[str]]) -> Tags:
    fields = {key.lower(): values for key, values in comments.items()}
    return Tags(
        titles=fields.get("title", []),
        descriptions=fields.get("description", []) + fields.get("comment", []) + fields.get("comments", []),
        keywords=_split(fields.get("keywords", []) + fields.get("genre", [])),
    )


def _split(values: list[str]) -> list[str]:
    return [part for value in values for part in _KEYWORD_SEPARATORS.split(value)]


# ---------------------------------------------------------------- RIFF and AIFF chunks


def _chunk_tags(path: Path, riff: bool) -> tuple[Tags, bytes]:
    """The tags of a WAV or AIFF file's own chunks, and its form (RIFF, RF64, BW64 or FORM)."""
    info, bext, names, annotations = Tags(), [], [], []
    with open(path, "rb") as f:
        form = f.read(4)
        f.seek(0)
        for chunk_id, body in _text_chunks(f, riff):
            if chunk_id == b"LIST" and body[:4] == b"INFO":
                _add_info(info, body[4:])
            elif chunk_id == b"bext":
                bext.append(_bext_description(body))
            elif chunk_id == b"NAME":
                names.append(_text(body))
            elif chunk_id == b"ANNO":
                annotations.append(_text(body))
    return Tags(info.titles + names, bext + info.descriptions + annotations, info.keywords), form


def _text_chunks(f: BinaryIO, riff: bool) -> list[tuple[bytes, bytes]]:
    """(id, body) of the chunks that can hold text (LIST, bext, NAME, ANNO),
    in file order; the others, audio data included, are skipped by seeking."""
    end = os.fstat(f.fileno()).st_size
    header = f.read(12)
    form = (b"RIFF", b"RF64", b"BW64") if riff else (b"FORM",)
    kinds = (b"WAVE",) if riff else (b"AIFF", b"AIFC")
    if len(header) < 12 or header[:4] not in form or header[8:12] not in kinds:
        raise TagError(f"not a {'RIFF WAVE' if riff else 'AIFF'} file (its header is {header[:12]!r})")
    layout = "<4sI" if riff else ">4sI"
    position, data_size, found = 12, None, []
    while position + 8 <= end:
        f.seek(position)
        chunk_id, size = struct.unpack(layout, f.read(8))
        if chunk_id == b"ds64":  # RF64: the real sizes, as 64-bit numbers (RIFF, then data)
            sizes = f.read(16)
            if len(sizes) < 16:
                raise TagError("the ds64 chunk is truncated")
            data_size = struct.unpack("<QQ", sizes)[1]
        if size == _RF64_UNKNOWN_SIZE and chunk_id == b"data" and header[:4] != b"RIFF":
            if data_size is None:
                break  # an RF64 file without ds64: nothing after the audio can be found
            size = data_size
        body_end = position + 8 + size
        if body_end > end:
            if chunk_id in (b"data", b"SSND"):
                break  # truncated audio: no tags can follow it
            raise TagError(f"chunk {chunk_id.decode('latin-1')!r} at byte {position} runs past the end of the file")
        if chunk_id in (b"LIST", b"bext", b"NAME", b"ANNO"):
            found.append((chunk_id, f.read(size)))
        position = body_end + (size & 1)  # chunks are padded to an even length
    return found


def _add_info(tags: Tags, body: bytes) -> None:
    """The subchunks of a LIST/INFO body: 4-byte id, 32-bit little-endian size, NUL-terminated text."""
    position = 0
    while position + 8 <= len(body):
        info_id, size = struct.unpack("<4sI", body[position : position + 8])
        value = body[position + 8 : position + 8 + size]
        if len(value) < size:
            raise TagError(f"INFO field {info_id.decode('latin-1')!r} runs past the end of its list")
        text = _text(value)
        if info_id == b"INAM":
            tags.titles.append(text)
        elif info_id in (b"ICMT", b"ISBJ"):
            tags.descriptions.append(text)
        elif info_id in (b"IKEY", b"IGNR"):
            tags.keywords += _KEYWORD_SEPARATORS.split(text)
        position += 8 + size + (size & 1)


def _bext_description(body: bytes) -> str:
    """The bext description without the ``key=value`` lines recorders put there."""
    lines = _text(body[:BEXT_DESCRIPTION_BYTES]).splitlines()
    return " ".join(line for line in lines if not _RECORDER_FIELD.match(line.strip()))


def _text(data: bytes) -> str:
    return decode_guess(data.split(b"\0", 1)[0])[0]
