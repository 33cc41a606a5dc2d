"""The text embedded in audio files: titles, descriptions and keywords, and
the recording's own fields (originator, date, scene, take, ...).

- WAV, BWF and RF64/BW64: ``wavinfo`` reads the ``LIST``/``INFO`` list, the
  Broadcast Wave ``bext`` chunk and the ``iXML`` chunk (it seeks past the
  audio data, never reads it);
- ID3 (MP3, and the ID3 chunk of plain RIFF WAV and AIFF files) and Vorbis
  comments (Ogg Vorbis, Opus, FLAC): mutagen;
- AIFF/AIFC's own ``NAME`` and ``ANNO`` (annotation) chunks, which neither
  library reads: walked here, the audio skipped.

INFO, bext and AIFF chunks declare no character set: they are read as UTF-8
if they are, else as Windows-1252 or Latin-1
(`amr.datasets.common.decode_guess`); iXML is XML and says its own.

What becomes text the encoders see, where several tags give a title or
description the first in this order winning:

- title: INFO INAM, AIFF NAME, ID3 TIT2, Vorbis TITLE;
- description: bext description, iXML NOTE, INFO ICMT, ISBJ, AIFF ANNO, ID3
  COMM (not iTunes' ``iTun*`` bookkeeping), Vorbis DESCRIPTION, COMMENT,
  COMMENTS;
- keywords: INFO IKEY and IGNR, ID3 TCON and TXXX:KEYWORDS, Vorbis KEYWORDS
  and GENRE, split at ``;`` and ``,`` (ID3 genres also at ``/``, ID3v2.3's
  separator).

What describes the recording rather than the sound is kept as item metadata
under its own name (`Tags.fields`, never encoded): ``bext_originator``,
``bext_origination_date`` (date and time), ``bext_coding_history``,
``ixml_project``, ``ixml_scene``, ``ixml_take``, ``ixml_tape``,
``ixml_note``, ``ixml_user`` (the USER element's text), ``info_artist``,
``info_copyright``, ``info_created``, ``info_software``, ``info_source``.

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
import wavinfo
from mutagen.aiff import AIFF
from mutagen.id3 import ID3
from mutagen.mp3 import MP3
from mutagen.wave import WAVE

from amr.audio.formats import AIFF_SUFFIXES, RIFF_SUFFIXES

from .common import decode_guess, encodable

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
    fields: dict[str, str] = field(default_factory=dict)

    def add(self, other: Tags) -> None:
        self.titles += other.titles
        self.descriptions += other.descriptions
        self.keywords += other.keywords
        self.fields = {**other.fields, **self.fields}

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
            tags, form = _riff_tags(path)
        elif suffix in AIFF_SUFFIXES:
            tags, form = _aiff_tags(path)
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


# ---------------------------------------------------------------- RIFF: wavinfo


def _riff_tags(path: Path) -> tuple[Tags, bytes]:
    """The INFO, bext and iXML tags of a WAV file, and its form (RIFF, RF64 or BW64)."""
    with open(path, "rb") as f:
        form = f.read(4)
    if form not in (b"RIFF", b"RF64", b"BW64"):
        raise TagError(f"not a RIFF WAVE file (it starts with {form!r})")
    try:
        # Latin-1 maps every byte to one character, so the bytes come back for decode_guess
        reader = wavinfo.WavInfoReader(str(path), info_encoding="latin-1", bext_encoding="latin-1")
    except OSError:
        raise
    # wavinfo asserts on what it does not expect and does not wrap the
    # struct, EOF and XML errors of a damaged file: any of them is a TagError.
    except Exception as e:
        raise TagError(_wavinfo_problem(e)) from None
    tags = Tags()
    bext, ixml, info = reader.bext, reader.ixml, reader.info
    if bext is not None:
        tags.descriptions.append(_bext_description(_redecode(bext.description)))
        date = " ".join(part for part in (_redecode(bext.originator_date), _redecode(bext.originator_time)) if part.strip())
        _put(
            tags, bext_originator=_redecode(bext.originator), bext_origination_date=date, bext_coding_history=_redecode(bext.coding_history)
        )
    if ixml is not None:
        note = ixml.raw_xml.find("./NOTE")
        user = ixml.raw_xml.find("./USER")
        note_text = " ".join(note.itertext()) if note is not None else ""
        tags.descriptions.append(note_text)
        _put(
            tags,
            ixml_project=ixml.project,
            ixml_scene=ixml.scene,
            ixml_take=ixml.take,
            ixml_tape=ixml.tape,
            ixml_note=note_text,
            ixml_user=" ".join(user.itertext()) if user is not None else "",
        )
    if info is not None:
        tags.titles += _present(info.title)
        tags.descriptions += _present(info.comment) + _present(info.subject)
        tags.keywords += [part for value in _present(info.keywords) + _present(info.genre) for part in _KEYWORD_SEPARATORS.split(value)]
        _put(
            tags,
            info_artist=_redecode(info.artist),
            info_copyright=_redecode(info.copyright),
            info_created=_redecode(info.created_date),
            info_software=_redecode(info.software),
            info_source=_redecode(info.source),
        )
    return tags, form


def _wavinfo_problem(e: Exception) -> str:
    if isinstance(e, wavinfo.riff_parser.WavInfoEOFError):
        return f"the file ends inside a chunk (at byte {e.chunk_start})"
    return f"its chunks cannot be parsed ({str(e) or type(e).__name__})"


def _redecode(value: str | None) -> str:
    """A field wavinfo read as Latin-1, decoded as its bytes really are (up to the first NUL)."""
    return _text(value.encode("latin-1")) if value else ""


def _present(value: str | None) -> list[str]:
    text = _redecode(value)
    return [text] if text else []


def _put(tags: Tags, **values: str | None) -> None:
    """The fields that hold text after whitespace is collapsed."""
    for name, value in values.items():
        text = " ".join((value or "").split())
        if text and encodable(text):
            tags.fields[name] = text


def _bext_description(text: str) -> str:
    """The bext description without the ``key=value`` lines recorders put there."""
    return " ".join(line for line in text.splitlines() if not _RECORDER_FIELD.match(line.strip()))


# ---------------------------------------------------------------- AIFF chunks


def _aiff_tags(path: Path) -> tuple[Tags, bytes]:
    """The tags of an AIFF file's NAME and ANNO chunks, and its form (FORM)."""
    names, annotations = [], []
    with open(path, "rb") as f:
        for chunk_id, body in _aiff_text_chunks(f):
            (names if chunk_id == b"NAME" else annotations).append(_text(body))
    return Tags(titles=names, descriptions=annotations), b"FORM"


def _aiff_text_chunks(f: BinaryIO) -> list[tuple[bytes, bytes]]:
    """(id, body) of the NAME and ANNO chunks, in file order; the others,
    audio data included, are skipped by seeking."""
    end = os.fstat(f.fileno()).st_size
    header = f.read(12)
    if len(header) < 12 or header[:4] != b"FORM" or header[8:12] not in (b"AIFF", b"AIFC"):
        raise TagError(f"not an AIFF file (its header is {header[:12]!r})")
    position, found = 12, []
    while position + 8 <= end:
        f.seek(position)
        chunk_id, size = struct.unpack(">4sI", f.read(8))
        body_end = position + 8 + size
        if body_end > end:
            if chunk_id == b"SSND":
                break  # truncated audio: no tags can follow it
            raise TagError(f"chunk {chunk_id.decode('latin-1')!r} at byte {position} runs past the end of the file")
        if chunk_id in (b"NAME", b"ANNO"):
            found.append((chunk_id, f.read(size)))
        position = body_end + (size & 1)  # chunks are padded to an even length
    return found


def _text(data: bytes) -> str:
    return decode_guess(data.split(b"\0", 1)[0])[0]
