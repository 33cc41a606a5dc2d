"""Embedded tags: RIFF INFO and bext chunks written here byte by byte, INFO and
AIFF NAME/ANNO chunks written by libsndfile, ID3 and Vorbis comments written by
mutagen, and the tags the real files of the shared data carry."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mutagen.id3 import COMM, ID3, TCON, TIT2, TXXX
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from amr.datasets.tags import TagError, Tags, read_tags, usable

# ---------------------------------------------------------------- a RIFF writer of our own


def chunk(chunk_id: bytes, body: bytes) -> bytes:
    """One RIFF chunk: id, little-endian size, body, a pad byte after an odd body."""
    return chunk_id + struct.pack("<I", len(body)) + body + b"\0" * (len(body) % 2)


def info_list(*fields: tuple[bytes, bytes]) -> bytes:
    """A LIST/INFO chunk of NUL-terminated values."""
    return chunk(b"LIST", b"INFO" + b"".join(chunk(name, value + b"\0") for name, value in fields))


def bext(description: bytes) -> bytes:
    """A version-1 Broadcast Wave bext chunk (602 bytes): the description
    NUL-padded to 256 bytes, everything after it zero."""
    return chunk(b"bext", description.ljust(256, b"\0") + bytes(602 - 256))


def insert_chunks(path: Path, before_data: bytes = b"", after_data: bytes = b"") -> Path:
    """Put chunks before and after the data chunk of a WAV (or RF64) file and fix its sizes."""
    data = path.read_bytes()
    position = 12
    while data[position : position + 4] != b"data":
        position += 8 + struct.unpack("<I", data[position + 4 : position + 8])[0]
    out = bytearray(data[:position] + before_data + data[position:] + after_data)
    if out[:4] == b"RIFF":
        out[4:8] = struct.pack("<I", len(out) - 8)
    else:  # RF64: the 32-bit size is 0xFFFFFFFF and the real one is in ds64
        out[20:28] = struct.pack("<Q", len(out) - 8)
    path.write_bytes(bytes(out))
    return path


@pytest.fixture(scope="module")
def signal(shared: Path) -> tuple[np.ndarray, int]:
    """One second of a real ESC-50 clip (wind in a vent)."""
    audio, rate = sf.read(shared / "data" / "sounds" / "audio" / "esc50-2-104952-A-16.wav", frames=44100, dtype="float32")
    return audio, rate


def wav(path: Path, signal: tuple[np.ndarray, int], format: str = "WAV") -> Path:
    sf.write(path, *signal, format=format, subtype="PCM_16")
    return path


# ---------------------------------------------------------------- RIFF INFO and bext


def test_info_and_bext(tmp_path: Path, signal: tuple[np.ndarray, int]) -> None:
    path = insert_chunks(
        wav(tmp_path / "a.wav", signal),
        before_data=bext(b"Wind through a vent,\r\nrecorded close"),
        after_data=info_list(
            (b"INAM", "Caf\u00e9 vent".encode("cp1252")),  # a Windows tool's INFO: cp1252, not UTF-8
            (b"ICMT", b"A comment"),
            (b"ISBJ", b"A subject"),
            (b"IKEY", b"wind; vent;air"),
            (b"IGNR", "Ambi\u00e9nce".encode()),  # UTF-8, as newer tools write
            (b"IART", b"someone"),
        ),
    )
    tags = read_tags(path)
    assert tags.titles == ["Caf\u00e9 vent"]
    assert tags.descriptions == ["Wind through a vent, recorded close", "A comment", "A subject"]
    assert tags.title == "Caf\u00e9 vent" and tags.description == "Wind through a vent, recorded close"
    assert usable(tags.keywords) == ["wind", "vent", "air", "Ambi\u00e9nce"]
    assert sf.info(str(path)).frames == 44100  # the file is still a valid WAV


def full_bext(description: bytes, originator: bytes, date: bytes, time: bytes, history: bytes) -> bytes:
    """A version-1 bext chunk with its text fields (EBU Tech 3285): description,
    originator, originator reference, date, time, time reference, version,
    UMID, loudness, reserved, then the coding history."""
    body = struct.pack("<256s32s32s10s8sQH64s5h180s", description, originator, b"REF123", date, time, 48000, 1, b"", 0, 0, 0, 0, 0, b"")
    return chunk(b"bext", body + history)


IXML = """<?xml version="1.0" encoding="UTF-8"?>
<BWFXML><IXML_VERSION>1.61</IXML_VERSION><PROJECT>Harbour Doc</PROJECT><SCENE>12A</SCENE><TAKE>3</TAKE><TAPE>DAY02</TAPE>
<NOTE>Gulls over the pier, boat idling</NOTE><USER>mic=MKH416
position=pier end</USER></BWFXML>"""


def test_bext_and_ixml_fields(tmp_path: Path, signal: tuple[np.ndarray, int]) -> None:
    path = insert_chunks(
        wav(tmp_path / "a.wav", signal),
        before_data=full_bext(
            b"Harbour ambience", "Jos\u00e9".encode("cp1252"), b"2024-05-17", b"06:12:00", b"A=PCM,F=48000,W=24,M=stereo\r\n"
        ),
        after_data=chunk(b"iXML", IXML.encode()) + info_list((b"IART", b"Field team"), (b"ICRD", b"2024-05-17")),
    )
    tags = read_tags(path)
    assert tags.descriptions == ["Harbour ambience", "Gulls over the pier, boat idling"]
    assert tags.fields == {
        "bext_originator": "Jos\u00e9",
        "bext_origination_date": "2024-05-17 06:12:00",
        "bext_coding_history": "A=PCM,F=48000,W=24,M=stereo",
        "ixml_project": "Harbour Doc",
        "ixml_scene": "12A",
        "ixml_take": "3",
        "ixml_tape": "DAY02",
        "ixml_note": "Gulls over the pier, boat idling",
        "ixml_user": "mic=MKH416 position=pier end",
        "info_artist": "Field team",
        "info_created": "2024-05-17",
    }
    assert sf.info(str(path)).frames == 44100


def test_ixml_note_is_the_description_without_bext(tmp_path: Path, signal: tuple[np.ndarray, int]) -> None:
    path = insert_chunks(wav(tmp_path / "a.wav", signal, "RF64"), after_data=chunk(b"iXML", IXML.encode()))
    tags = read_tags(path)
    assert tags.description == "Gulls over the pier, boat idling" and tags.fields["ixml_scene"] == "12A"


def test_bext_recorder_fields_are_not_a_description(tmp_path: Path, signal: tuple[np.ndarray, int]) -> None:
    described = insert_chunks(wav(tmp_path / "a.wav", signal), before_data=bext(b"sSPEED=023.976-ND\r\nsTAKE=01\r\nTruck passing\r\n"))
    assert read_tags(described).descriptions == ["Truck passing"]
    only_fields = insert_chunks(wav(tmp_path / "b.wav", signal), before_data=bext(b"sSPEED=023.976-ND\r\nsTAKE=01\r\n"))
    assert read_tags(only_fields).description is None


def test_info_written_by_libsndfile(tmp_path: Path, signal: tuple[np.ndarray, int]) -> None:
    """An independent writer: libsndfile's own LIST/INFO chunk (before the data, odd sizes padded)."""
    path = tmp_path / "a.wav"
    with sf.SoundFile(path, "w", signal[1], 1, subtype="PCM_16") as f:
        f.title, f.comment, f.genre, f.artist = "Vent wind", "Close to the grille", "Ambience", "me"
        f.write(signal[0])
    tags = read_tags(path)
    assert (tags.title, tags.description, tags.keywords) == ("Vent wind", "Close to the grille", ["Ambience"])


def test_rf64_with_tags_after_the_data(tmp_path: Path, signal: tuple[np.ndarray, int]) -> None:
    """RF64's data chunk says 0xFFFFFFFF; its real size is in ds64, and the tags after it are found."""
    path = insert_chunks(wav(tmp_path / "a.wav", signal, "RF64"), after_data=info_list((b"INAM", b"Long take")))
    assert path.read_bytes()[:4] == b"RF64"
    assert read_tags(path).title == "Long take"
    assert sf.info(str(path)).frames == 44100


def test_aiff_name_and_annotation_written_by_libsndfile(tmp_path: Path, signal: tuple[np.ndarray, int]) -> None:
    path = tmp_path / "a.aiff"
    with sf.SoundFile(path, "w", signal[1], 1, subtype="PCM_16", format="AIFF") as f:
        f.title, f.comment = "Gravel steps", "Walking slowly on wet gravel"
        f.write(signal[0])
    assert (read_tags(path).title, read_tags(path).description) == ("Gravel steps", "Walking slowly on wet gravel")


def test_id3_chunk_in_a_wav(tmp_path: Path, signal: tuple[np.ndarray, int]) -> None:
    path = insert_chunks(wav(tmp_path / "a.wav", signal), after_data=info_list((b"ICMT", b"From INFO")))
    audio = WAVE(path)
    audio.add_tags()
    audio.tags.add(TIT2(encoding=3, text=["From ID3"]))
    audio.tags.add(COMM(encoding=3, lang="eng", desc="", text=["ID3 comment"]))
    audio.save()
    tags = read_tags(path)
    assert tags.titles == ["From ID3"]
    assert tags.descriptions == ["From INFO", "ID3 comment"]


def _riff_size_fixed(data: bytes) -> bytes:
    return data[:4] + struct.pack("<I", len(data) - 8) + data[8:]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        # the RIFF size counts the LIST whole, but the file ends inside it
        (
            lambda data: _riff_size_fixed(data + chunk(b"LIST", b"INFOINAM\x04\0\0\0abc\0"))[:-6],
            r"the file ends inside a chunk \(at byte \d+\)",
        ),
        (lambda data: b"RIFX" + data[4:], "not a RIFF WAVE file"),
        (lambda data: _riff_size_fixed(data.replace(b"fmt ", b"fmx ", 1)), "its chunks cannot be parsed"),
    ],
)
def test_corrupt_chunks(tmp_path: Path, signal: tuple[np.ndarray, int], damage, problem: str) -> None:
    path = wav(tmp_path / "a.wav", signal)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(TagError, match=problem):
        read_tags(path)


# ---------------------------------------------------------------- ID3 and Vorbis comments written by mutagen


def test_id3_on_mp3(tmp_path: Path, shared: Path) -> None:
    path = tmp_path / "a.mp3"
    shutil.copyfile(shared / "data" / "sounds" / "audio" / "bigsoundbank-dog.mp3", path)
    ID3(path).delete()
    tags = ID3()
    tags.add(TIT2(encoding=3, text=["Door slam"]))
    tags.add(TCON(encoding=3, text=["(12)", "Foley"]))  # an ID3v1 genre code, and a word
    tags.add(COMM(encoding=3, lang="eng", desc="iTunNORM", text=[" 000013A8 0000120A"]))
    tags.add(COMM(encoding=3, lang="eng", desc="", text=["A wooden door, slammed twice"]))
    tags.add(TXXX(encoding=3, desc="KEYWORDS", text=["door; slam,wood"]))
    tags.add(TXXX(encoding=3, desc="ENCODER", text=["Lavf58"]))
    tags.save(path, v2_version=3)
    found = read_tags(path)
    assert (found.title, found.description) == ("Door slam", "A wooden door, slammed twice")
    assert usable(found.keywords) == ["Foley", "door", "slam", "wood"]


def test_vorbis_comments_on_ogg(tmp_path: Path, shared: Path) -> None:
    path = tmp_path / "a.ogg"
    shutil.copyfile(shared / "data" / "sfx-dev" / "audio" / "antum_mod_sounds" / "sounds_bee.ogg", path)
    audio = OggVorbis(path)
    audio["TITLE"], audio["COMMENT"], audio["GENRE"], audio["KEYWORDS"] = "Bee", "A bee buzzing past", ["Insects"], "bee, buzz"
    audio.save()
    tags = read_tags(path)
    assert (tags.title, tags.description, usable(tags.keywords)) == ("Bee", "A bee buzzing past", ["bee", "buzz", "Insects"])


# ---------------------------------------------------------------- the tags real files carry


@pytest.mark.parametrize(
    ("relative", "title", "description", "keywords"),
    [
        # ID3 in a WAV: a real title
        ("sounds/audio/freesound-crowd_cheering.wav", "Crowd Cheering", None, []),
        # a date as title (no letter), in an ID3 chunk of a WAV
        ("sounds/audio/freesound-thunder.wav", None, None, []),
        # a number as title and the ID3v1 genre code 148 ("Abstract"): neither says anything
        ("sounds/audio/bigsoundbank-cat.mp3", None, None, []),
        # a literal genre "Blues" on a cow is kept: it cannot be told from a real one
        ("sounds/audio/bigsoundbank-cow.mp3", None, None, ["Blues"]),
        # iTunes' COMM bookkeeping frames are not a description
        ("sounds/audio/bigsoundbank-rooster.mp3", "coq07", None, []),
        # Vorbis comments: a licence name as the comment is dropped
        ("sfx-dev/audio/tuxpaint_stamps/household__Washing-machine.ogg", "washing machine", None, []),
        (
            "sfx-dev/audio/tuxpaint_stamps/household__kettle.ogg",
            "electric kettle",
            "electric kettle on the boil. CC-BY-SA",
            ["found sounds"],
        ),
        # DESCRIPTION before COMMENT; a bare URL is not a description
        ("sfx-dev/audio/antum_mod_sounds/sounds_horse_neigh_02.ogg", "Horse Whinny", "IDK, Just a horse", []),
        ("sfx-dev/audio/antum_mod_sounds/sounds_bees.ogg", None, None, []),
    ],
)
def test_real_files(shared: Path, relative: str, title: str | None, description: str | None, keywords: list[str]) -> None:
    tags = read_tags(shared / "data" / relative)
    assert (tags.title, tags.description, usable(tags.keywords)) == (title, description, keywords)


def test_usable_values() -> None:
    values = [
        "  Dog \n barking ",
        "16.8.17",
        "(12)",
        "https://freesound.org/s/1/",
        "www.example.org",
        "CC0",
        "cc-by-sa",
        "CC BY 3.0",
        "public domain",
        "Licensed rain",
        "\ud800 lone",
        "",
    ]
    assert usable(values) == ["Dog barking", "Licensed rain"]
    assert Tags(titles=["123", "Rain"]).title == "Rain"


def test_a_parser_crash_in_mutagen_is_a_tag_error(tmp_path: Path, shared: Path) -> None:
    """One byte of a real Ogg's headers zeroed makes mutagen raise IndexError, not its own error."""
    data = bytearray((shared / "data" / "sfx-dev" / "audio" / "antum_mod_sounds" / "sounds_duck_quack_01.ogg").read_bytes())
    data[84] = 0
    path = tmp_path / "a.ogg"
    path.write_bytes(bytes(data))
    with pytest.raises(TagError, match="index out of range"):
        read_tags(path)


def test_a_ucs_named_broadcast_wave_in_a_folder(tmp_path: Path, signal: tuple[np.ndarray, int]) -> None:
    """The name's UCS fields and the chunks' fields together in the item's metadata."""
    from amr.datasets import load_dataset

    (tmp_path / "lib").mkdir()
    path = wav(tmp_path / "lib" / "AMBSea_Harbour Gulls_JD_PIER.wav", signal)
    insert_chunks(
        path, before_data=full_bext(b"Harbour ambience", b"JD", b"2024-05-17", b"", b""), after_data=chunk(b"iXML", IXML.encode())
    )
    (item,) = load_dataset(tmp_path / "lib").items
    metadata = item.metadata
    assert (metadata["ucs_catid"], metadata["category_full"], metadata["title"], metadata["creator"], metadata["source"]) == (
        "AMBSea",
        "AMBIENCE-SEASIDE",
        "Harbour Gulls",
        "JD",
        "PIER",
    )
    assert metadata["description"] == "Harbour ambience"
    assert (metadata["bext_originator"], metadata["bext_origination_date"], metadata["ixml_scene"], metadata["ixml_take"]) == (
        "JD",
        "2024-05-17",
        "12A",
        "3",
    )
    assert "seaside" in [word.lower() for word in metadata["keywords"]]
