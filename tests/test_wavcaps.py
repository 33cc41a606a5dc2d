"""The WavCaps layout on caption files in WavCaps' own format (the shapes of
its four sources' json files) with real clips from the shared data as audio,
extracted like any other dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from amr.cache import EmbeddingCache
from amr.cli import app
from amr.datasets import detect_layout, load_dataset
from amr.errors import AmrError

SOUNDBIBLE = [  # a bare list, as the repository's sb_final.json
    {
        "title": "Labrador Barking Dog",
        "description": "Large dog, breed labrador retriever, barking for 20 seconds.",
        "author": "Daniel Simion",
        "href": "2215-Labrador-Barking-Dog.html",
        "caption": "A dog is barking.",
        "id": "2215",
        "duration": 21.4625625,
    }
]
FREESOUND = {  # {"num_captions_per_audio": 1, "data": [...]}, with FreeSound's tags
    "num_captions_per_audio": 1,
    "data": [
        {
            "id": "180913",
            "file_name": "heavy rain.wav",
            "href": "https://freesound.org/people/someone/sounds/180913/",
            "tags": ["rain", "storm", "weather"],
            "description": "Heavy rain on a tin roof.",
            "author": "someone",
            "duration": 5.0,
            "download_link": "https://freesound.org/people/someone/sounds/180913/download/",
            "caption": "Rain falls heavily on a roof.",
            "audio": "wav_path",
        }
    ],
}
AUDIOSET = {  # ids carry AudioSet's .wav, the audio is FLAC
    "num_captions_per_audio": 1,
    "data": [{"id": "Y-0aBcDeFgHi.wav", "caption": "A train horn blows as a train passes.", "audio": "wav_path", "duration": 10.0}],
}
BLACKLIST = {"FreeSound": ["1"], "AudioSet": ["Y-0aBcDeFgHi.wav"]}  # not captions: never read


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


@pytest.fixture
def wavcaps(tmp_path: Path, shared: Path) -> Path:
    root = tmp_path / "WavCaps"
    audio = shared / "data" / "sounds" / "audio"
    write_json(root / "json_files" / "SoundBible" / "sb_final.json", SOUNDBIBLE)
    write_json(root / "json_files" / "FreeSound" / "fsd_final.json", FREESOUND)
    write_json(root / "json_files" / "AudioSet_SL" / "as_final.json", AUDIOSET)
    write_json(root / "json_files" / "blacklist" / "blacklist_exclude_all_ac.json", BLACKLIST)
    (root / "SoundBible").mkdir()
    shutil.copy(audio / "bigsoundbank-dog.mp3", root / "SoundBible" / "2215.mp3")
    (root / "FreeSound_flac").mkdir()
    shutil.copy(audio / "freesound-rain.wav", root / "FreeSound_flac" / "180913.wav")
    (root / "AudioSet_SL_flac").mkdir()
    samples, rate = sf.read(audio / "freesound-train.wav")
    sf.write(root / "AudioSet_SL_flac" / "Y-0aBcDeFgHi.flac", samples, rate, format="FLAC")
    return root


def test_caption_files_of_every_source_are_read(wavcaps: Path) -> None:
    assert detect_layout(wavcaps) == "wavcaps"
    items = {item.id: item for item in load_dataset(wavcaps).items}
    assert sorted(items) == ["AudioSet_SL/Y-0aBcDeFgHi.wav", "FreeSound/180913", "SoundBible/2215"]
    dog = items["SoundBible/2215"]
    assert dog.captions == ["A dog is barking."] and dog.split == "train"
    assert dog.metadata == {"title": "Labrador Barking Dog", "description": SOUNDBIBLE[0]["description"]}
    assert Path(dog.audio) == wavcaps / "SoundBible" / "2215.mp3"
    rain = items["FreeSound/180913"]
    assert rain.metadata == {"description": "Heavy rain on a tin roof.", "keywords": ["rain", "storm", "weather"]}
    assert Path(items["AudioSet_SL/Y-0aBcDeFgHi.wav"].audio).name == "Y-0aBcDeFgHi.flac"
    assert items["AudioSet_SL/Y-0aBcDeFgHi.wav"].metadata == {}


def test_several_captions_per_audio_and_bad_entries(wavcaps: Path) -> None:
    numbered = {"num_captions_per_audio": 2, "data": [{"id": "2215", "caption_2": "second", "caption_1": "first"}]}
    write_json(wavcaps / "json_files" / "SoundBible" / "sb_final.json", numbered)
    items = {item.id: item for item in load_dataset(wavcaps).items}
    assert items["SoundBible/2215"].captions == ["first", "second"]
    bad = {"data": [{"id": "404", "caption": "gone"}, {"id": "2215"}, {"caption": "no id"}, {"id": "2215", "caption": "ok"}]}
    write_json(wavcaps / "json_files" / "SoundBible" / "sb_final.json", bad)
    looked = r"looked for 404\{.flac,.wav,.mp3,.ogg\} in SoundBible_flac/"
    with pytest.raises(AmrError, match=rf"sb_final.json: entry 1: no audio for id '404' \({looked}"):
        load_dataset(wavcaps)
    skipped: list[str] = []
    items = {item.id: item for item in load_dataset(wavcaps, lenient=True, on_skip=skipped.append).items}
    assert items["SoundBible/2215"].captions == ["ok"]
    assert [message.split(": ")[1] for message in skipped] == ["entry 1", "entry 2", "entry 3"]
    assert "no caption" in skipped[1] and "'id' must be" in skipped[2]
    write_json(wavcaps / "json_files" / "SoundBible" / "sb_final.json", {"FreeSound": []})
    with pytest.raises(AmrError, match="sb_final.json: not a WavCaps caption file"):
        load_dataset(wavcaps)


def test_extract_makes_a_cache_of_it(wavcaps: Path, tmp_path: Path, mn04_weights: Path) -> None:
    out = tmp_path / "wavcaps.h5"
    args = ["extract", str(wavcaps), "-o", str(out), "--audio-weights", str(mn04_weights), "--workers", "1", "-w", str(tmp_path / "ws")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with EmbeddingCache(out) as cache:
        assert sorted(item.id for item in cache.items) == ["AudioSet_SL/Y-0aBcDeFgHi.wav", "FreeSound/180913", "SoundBible/2215"]
        assert all(cache.lengths > 0)
