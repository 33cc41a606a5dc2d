"""The folder layout: a sound library built here from copies of the shared
clips (nested folders, real original file names, take numbers, hidden files,
link loops, files that are not audio) with tags written into the copies."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mutagen.flac import FLAC
from mutagen.id3 import COMM, ID3, TCON, TXXX
from mutagen.oggopus import OggOpus
from typer.testing import CliRunner

from amr.cli import app
from amr.datasets import detect_layout, load_dataset
from amr.datasets.folder import clean_name
from amr.errors import AmrError
from amr.extraction import failures_path

DUCK_COMMENT = (
    "XC62258 \u00a9 Jonathon Jongsma // Powderhorn Park, Minneapolis, MN (44.942, -93.259), United States // 250m // "
    "13:53h, 2010-09-14 // call // / / bird-seen:yes / / playback-used:no"
)


def copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def riff_chunk(chunk_id: bytes, body: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(body)) + body + b"\0" * (len(body) % 2)


def with_riff_tags(path: Path, title: bytes, keywords: bytes, bext_description: bytes) -> Path:
    """A bext chunk before the data and a LIST/INFO chunk after it, the RIFF size fixed."""
    data = path.read_bytes()
    position = 12
    while data[position : position + 4] != b"data":
        position += 8 + struct.unpack("<I", data[position + 4 : position + 8])[0]
    bext = riff_chunk(b"bext", bext_description.ljust(256, b"\0") + bytes(346))
    info = riff_chunk(b"LIST", b"INFO" + riff_chunk(b"INAM", title + b"\0") + riff_chunk(b"IKEY", keywords + b"\0"))
    out = bytearray(data[:position] + bext + data[position:] + info)
    out[4:8] = struct.pack("<I", len(out) - 8)
    path.write_bytes(bytes(out))
    return path


@pytest.fixture
def library(tmp_path: Path, shared: Path) -> Path:
    sounds, sfx = shared / "data" / "sounds" / "audio", shared / "data" / "sfx-dev" / "audio"
    esc_wind, esc_rain, esc_cow = (sounds / f"esc50-{name}.wav" for name in ("2-104952-A-16", "3-132852-A-10", "2-103426-A-3"))
    root = tmp_path / "library"

    with_riff_tags(
        copy(esc_cow, root / "Animals" / "Dogs" / "dog_bark_01.wav"), b"Terrier barking", b"dog; bark", b"Small dog, two barks\r\nsTAKE=01"
    )
    copy(sfx / "antum_mod_sounds" / "sounds_duck_quack_01.ogg", root / "Animals" / "Birds" / "sounds_duck_quack_01.ogg")  # real tags
    loon = root / "Animals" / "Birds" / "loon take 2.flac"
    sf.write(loon, *sf.read(sfx / "antum_mod_sounds" / "sounds_loon_01.ogg"))
    tags = FLAC(loon)
    tags["TITLE"], tags["DESCRIPTION"], tags["GENRE"], tags["KEYWORDS"] = "Loon", "A loon calls over the lake", "Birds", "lake, birds"
    tags.save()

    copy(esc_wind, root / "Ambience" / "Wind" / "Vent - wind (1).wav")  # the uploader's real file name
    copy(esc_wind, root / "Ambience" / "Wind" / "Vent - wind (2).wav")
    copy(esc_rain, root / "Ambience" / "rain from a car.WAV")
    rain, rate = sf.read(esc_rain, frames=44100 * 2)
    sf.write(root / "Ambience" / "rain.opus", rain, 48000, format="OGG", subtype="OPUS")
    opus = OggOpus(root / "Ambience" / "rain.opus")
    opus["TITLE"] = "Light rain"
    opus.save()

    door = copy(sounds / "bigsoundbank-dog.mp3", root / "Foley" / "Doors" / "door_take 3.mp3")
    ID3(door).delete()
    id3 = ID3()
    id3.add(COMM(encoding=3, lang="eng", desc="", text=["A wooden door slams"]))
    id3.add(TCON(encoding=3, text=["(12)"]))  # an ID3v1 genre code ("Other"): no keyword
    id3.add(TXXX(encoding=3, desc="KEYWORDS", text=["door; slam"]))
    id3.save(door, v2_version=3)
    with sf.SoundFile(root / "Foley" / "Footsteps-002.aiff", "w", rate, 1, format="AIFF", subtype="PCM_16") as f:
        f.title, f.comment = "Gravel footsteps", "Walking on wet gravel"
        f.write(rain[:rate])

    copy(esc_cow, root / "001.wav")
    copy(esc_cow, root / "caf\u00e9_\u00fc.wav")
    corrupt = copy(esc_wind, root / "Field_Recordings_2019" / "ZOOM0001.WAV")
    with open(corrupt, "r+b") as f:  # a LIST chunk that claims more bytes than the file has
        size = f.seek(0, os.SEEK_END) + 8 + 5000 - 8  # the RIFF size counts the whole body the LIST claims
        f.write(b"LIST" + struct.pack("<I", 5000) + b"INFO")
        f.seek(4)
        f.write(struct.pack("<I", size))
    copy(esc_cow, tmp_path / "elsewhere" / "hum.wav")
    os.symlink(tmp_path / "elsewhere", root / "Linked")  # a link to a folder outside the root: followed when asked
    os.symlink(tmp_path / "elsewhere" / "hum.wav", root / "Ambience" / "hum link.wav")  # a file outside: likewise
    os.symlink(root / "001.wav", root / "Animals" / "first.wav")  # a link inside the library: followed

    # left out without a word
    copy(esc_cow, root / ".hidden" / "secret.wav")
    copy(esc_cow, root / "Animals" / "._dog_bark_01.wav")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "notes.txt").write_text("recorded in 2019\n")
    os.symlink(".", root / "loop")
    os.symlink("..", root / "Animals" / "up")
    os.symlink("..", root / "above")  # the folder above the root: it holds the root (and stray.wav)
    copy(esc_cow, tmp_path / "stray.wav")
    # left out and reported
    (root / "Foley" / "readme.wav").write_text("not a sound\n")
    (root / "Foley" / "interview.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + bytes(200))
    (root / "empty.flac").write_bytes(b"")
    os.symlink(root / "gone.wav", root / "broken.wav")
    copy(esc_cow, Path(os.fsdecode(bytes(root) + b"/caf\xe9.wav")))  # a Latin-1 name: not UTF-8
    return root


EXPECTED = {
    "001.wav": {},
    "Ambience/Wind/Vent - wind (1).wav": {"keywords": ["Ambience", "Wind"], "title": "Vent wind"},
    "Ambience/Wind/Vent - wind (2).wav": {"keywords": ["Ambience", "Wind"], "title": "Vent wind"},
    "Ambience/rain from a car.WAV": {"keywords": ["Ambience"], "title": "rain from a car"},
    "Ambience/rain.opus": {"keywords": ["Ambience"], "title": "Light rain"},
    "Animals/Birds/loon take 2.flac": {
        "keywords": ["Animals", "Birds", "lake"],  # the genre "Birds" is the folder's keyword already
        "title": "Loon",
        "description": "A loon calls over the lake",
    },
    "Animals/Birds/sounds_duck_quack_01.ogg": {
        "keywords": ["Animals", "Birds", "Anatidae"],
        "title": "Mallard (Anas platyrhynchos)",
        "description": DUCK_COMMENT,
    },
    "Animals/Dogs/dog_bark_01.wav": {
        "keywords": ["Animals", "Dogs", "dog", "bark"],
        "title": "Terrier barking",
        "description": "Small dog, two barks",
    },
    "Field_Recordings_2019/ZOOM0001.WAV": {"keywords": ["Field Recordings"], "title": "ZOOM0001"},
    "Foley/Doors/door_take 3.mp3": {"keywords": ["Foley", "Doors", "door", "slam"], "title": "door", "description": "A wooden door slams"},
    "Foley/Footsteps-002.aiff": {"keywords": ["Foley"], "title": "Gravel footsteps", "description": "Walking on wet gravel"},
    "Linked/hum.wav": {"keywords": ["Linked"], "title": "hum"},
    "Ambience/hum link.wav": {"keywords": ["Ambience"], "title": "hum link"},
    "Animals/first.wav": {"keywords": ["Animals"], "title": "first"},
    "caf\u00e9_\u00fc.wav": {"title": "caf\u00e9 \u00fc"},
}


def test_a_sound_library(library: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert detect_layout(library) == "folder"
    skipped: list[str] = []
    dataset = load_dataset(library, on_skip=skipped.append, follow_outside_links=True)  # strict: nothing here is an error
    assert dataset.name == "library"
    assert [item.id for item in dataset.items] == sorted(EXPECTED)
    assert {item.id: item.metadata for item in dataset.items} == EXPECTED
    assert {item.split for item in dataset.items} == {"train"}
    assert all(item.captions == [] for item in dataset.items)
    by_id = {item.id: item for item in dataset.items}
    assert by_id["Linked/hum.wav"].audio == str(library.resolve() / "Linked" / "hum.wav")
    door = Path(by_id["Foley/Doors/door_take 3.mp3"].audio)
    assert (by_id["Foley/Doors/door_take 3.mp3"].audio_size, by_id["Foley/Doors/door_take 3.mp3"].audio_mtime_ns) == (
        door.stat().st_size,
        door.stat().st_mtime_ns,
    )

    assert skipped == []  # what could not become an item is in dataset.unreadable, for the failures report
    shown = {failure.id: failure for failure in dataset.unreadable}
    assert sorted(shown) == ["Foley/interview.m4a", "Foley/readme.wav", "broken.wav", "caf\\xe9.wav", "empty.flac"]
    assert {failure_id: failure.kind for failure_id, failure in shown.items()} == {
        "Foley/interview.m4a": "not-audio",
        "Foley/readme.wav": "not-audio",
        "broken.wav": "missing",
        "caf\\xe9.wav": "unreadable",
        "empty.flac": "empty",
    }
    assert all(failure.reason.startswith(f"{failure.audio}: ") for failure in dataset.unreadable)
    assert ".m4a cannot be decoded" in shown["Foley/interview.m4a"].reason
    assert "not audio the decoder can read" in shown["Foley/readme.wav"].reason
    assert "empty file (0 bytes)" in shown["empty.flac"].reason
    assert "not a regular file" in shown["broken.wav"].reason
    assert "not valid UTF-8" in shown["caf\\xe9.wav"].reason and shown["caf\\xe9.wav"].audio == str(library.resolve()) + "/caf\\xe9.wav"
    err = capsys.readouterr().err.replace("\n", "")
    assert (
        "ZOOM0001.WAV: its tags cannot be read (the file ends inside a chunk (at byte" in err and "using the file and folder names" in err
    )


def test_links_leading_outside_the_library_are_left_out_unless_followed(library: Path) -> None:
    """They were indexed, hence served by `amr serve`: a link could publish any folder."""
    skipped: list[str] = []
    dataset = load_dataset(library, on_skip=skipped.append)
    outside = {"Linked/hum.wav", "Ambience/hum link.wav"}
    assert [item.id for item in dataset.items] == sorted(set(EXPECTED) - outside)
    links = sorted(str(library.resolve() / link) for link in ("Linked", "Ambience/hum link.wav"))
    assert sorted(message.split(": ", 1)[0] for message in skipped) == links
    assert all("outside the library; left out (--follow-outside-links follows it)" in message for message in skipped)


def test_unreadable_files_of_a_folder_are_in_the_failures_report_with_exit_3(tmp_path: Path, shared: Path, mn04_weights: Path) -> None:
    """They were a line on stderr with exit 0 and "failed": 0, where the generic layout reports them, exit 3."""
    root = tmp_path / "library"
    copy(shared / "data" / "sounds" / "audio" / "esc50-2-104952-A-16.wav", root / "wind.wav")
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.wav").write_text("not a sound\n" * 50)
    (root / "garbage.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    copy(shared / "data" / "sounds" / "audio" / "esc50-2-104952-A-16.wav", Path(os.fsdecode(bytes(root) + b"/caf\xe9.wav")))
    out = tmp_path / "library.h5"
    command = ["extract", str(root), "-o", str(out), "--audio-weights", str(mn04_weights), "--workers", "1"]
    for run in range(2):  # reported again by a rerun, as clips that fail to decode are
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 3, result.output
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert (summary["items"], summary["failed"], summary["computed"]) == (1, 4, 1 - run)
        records = {record["id"]: record for record in map(json.loads, failures_path(out).read_text(encoding="utf-8").splitlines())}
        assert sorted(records) == ["caf\\xe9.wav", "empty.wav", "garbage.mp3", "notes.wav"]
        assert records["empty.wav"]["kind"] == "empty" and records["notes.wav"]["kind"] == "not-audio"
        assert records["garbage.mp3"]["kind"] in ("not-audio", "corrupt") and records["caf\\xe9.wav"]["kind"] == "unreadable"
        assert all(record["reason"].startswith(str(root.resolve())) for record in records.values())


def test_split_folders(tmp_path: Path, shared: Path) -> None:
    clip = shared / "data" / "sounds" / "audio" / "esc50-2-104952-A-16.wav"
    for relative in ("train/wind/gust_01.wav", "train/rain.wav", "Evaluation/rain.wav"):
        copy(clip, tmp_path / "splits" / relative)
    dataset = load_dataset(tmp_path / "splits", layout="folder")
    assert [(item.id, item.split, item.metadata) for item in dataset.items] == [
        ("Evaluation/rain.wav", "test", {"title": "rain"}),
        ("train/rain.wav", "train", {"title": "rain"}),
        ("train/wind/gust_01.wav", "train", {"keywords": ["wind"], "title": "gust"}),
    ]
    # one split-named folder alone, or a file beside the split folders: no split convention
    copy(clip, tmp_path / "one" / "test" / "tone.wav")
    only_test = load_dataset(tmp_path / "one").items
    assert [(item.split, item.metadata) for item in only_test] == [("train", {"keywords": ["test"], "title": "tone"})]
    copy(clip, tmp_path / "splits" / "loose.wav")
    assert {item.split for item in load_dataset(tmp_path / "splits").items} == {"train"}


def test_a_folder_without_audio(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no sounds here")
    with pytest.raises(AmrError, match="no known dataset layout"):
        load_dataset(tmp_path)
    (tmp_path / "docs" / "fake.wav").write_text("not a sound")
    with pytest.raises(AmrError, match=r"no items \(folder layout\); 1 unreadable file\(s\), the first: .*fake.wav: not audio"):
        load_dataset(tmp_path)


def test_a_manifest_folder_read_as_a_plain_folder(shared: Path) -> None:
    """The real sfx-dev set, its items.jsonl ignored: every file decodes, each gets a title."""
    skipped: list[str] = []
    dataset = load_dataset(shared / "data" / "sfx-dev", layout="folder", on_skip=skipped.append)
    assert len(dataset.items) == 856 and skipped == [] and dataset.unreadable == []
    lava = next(item for item in dataset.items if item.id == "audio/debian_game_sfx/minetest__default_cool_lava.1.ogg")
    assert lava.metadata == {"keywords": ["audio", "debian game sfx"], "title": "Water vaporizing on hot Stones"}
    footsteps = next(item for item in dataset.items if item.id == "audio/scratch_sounds/human__Footsteps-2.mp3")
    assert footsteps.metadata["title"] == "Sewing Machine - Inexperienced"  # a real, wrong, embedded title wins


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("dog_bark_01", "dog bark"),
        ("Dog-Bark-002", "Dog Bark"),
        ("Vent - wind (1)", "Vent wind"),
        ("door take 3", "door"),
        ("door_Take02_01", "door"),
        ("Tk1", "Tk1"),
        ("minetest__default_cool_lava.1", "minetest default cool lava"),
        ("rain [3]", "rain"),
        ("Boeing 747", "Boeing 747"),
        ("bull 4 (C)", "bull 4 (C)"),
        ("Take 3", "Take 3"),
        ("001", None),
        ("2019-05-01", None),
        ("__", None),
    ],
)
def test_clean_name(name: str, cleaned: str | None) -> None:
    assert clean_name(name) == cleaned
