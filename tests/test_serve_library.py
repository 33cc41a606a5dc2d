"""`amr serve` over a sound library: filters, facets, UCS suggestions and
waveform overviews, on a real zero-shot index of a folder of real clips, some
UCS-named, in subfolders (also the library tests/test_browser.py uses)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf
from support.serving import FILES

from amr.ucs import categories


def browse(api: str, **params) -> dict:
    response = requests.get(f"{api}/api/browse", params={"limit": 100, **params}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def ids(page: dict) -> list[str]:
    return [r["id"] for r in page["results"]]


def test_facets(library_api: str, shared: Path) -> None:
    facets = requests.get(f"{library_api}/api/facets", timeout=60).json()
    assert facets["folders"] == [
        {"folder": "Animals", "items": 3},
        {"folder": "Animals/Birds", "items": 1},
        {"folder": "Transport", "items": 1},
        {"folder": "Weather", "items": 2},
    ]
    assert facets["categories"] == [{"category": "ANIMALS", "items": 2}, {"category": "WEATHER", "items": 1}]
    durations = [sf.info(shared / "data" / "sounds" / "audio" / clip).duration for clip in FILES.values()]
    frame = 1 / 3.125  # mn04's frame (s): a duration the index knows is the file's, rounded up to whole frames
    for known, true in zip(facets["duration"], (min(durations), max(durations))):
        assert true - 1e-3 <= known < true + frame
    assert len(facets["ucs"]) == len(categories())


def test_filters_keep_the_ranking_of_the_items_they_pass(library_api: str) -> None:
    everything = browse(library_api, q="an animal calling")
    assert everything["total"] == len(FILES) and len(everything["results"]) == len(FILES)
    ranked = ids(everything)
    for filters, expected in [
        (
            {"folder": "Animals"},
            {
                "Animals/ANMLDog_Two Dogs Barking_BSB_FARM.mp3",
                "Animals/ANMLCat_Meowing Cat_BSB_FARM.mp3",
                "Animals/Birds/rooster at dawn.mp3",
            },
        ),
        ({"folder": "Animals/Birds"}, {"Animals/Birds/rooster at dawn.mp3"}),
        ({"cat": "ANIMALS"}, {"Animals/ANMLDog_Two Dogs Barking_BSB_FARM.mp3", "Animals/ANMLCat_Meowing Cat_BSB_FARM.mp3"}),
        ({"cat": "ANMLCat"}, {"Animals/ANMLCat_Meowing Cat_BSB_FARM.mp3"}),
        ({"min_duration": 15}, {"Transport/train passing.wav"}),
        ({"max_duration": 5.4, "folder": "Weather"}, {"Weather/THUN_Rolling Thunder_JD_STORM.wav", "Weather/rain from a car.wav"}),
        ({"has_metadata": "false"}, {"0001.wav"}),
        ({"cat": "WEATHER", "has_metadata": "true"}, {"Weather/THUN_Rolling Thunder_JD_STORM.wav"}),
        ({"folder": "Animals", "cat": "WEATHER"}, set()),
    ]:
        page = browse(library_api, q="an animal calling", **filters)
        assert set(ids(page)) == expected, filters
        assert ids(page) == [i for i in ranked if i in expected]  # the unfiltered order, ranks renumbered
        assert [r["rank"] for r in page["results"]] == list(range(1, len(expected) + 1)) and page["total"] == len(expected)


def test_paging_a_filtered_search_and_browsing_without_a_query(library_api: str) -> None:
    first = browse(library_api, q="an animal calling", folder="Animals", limit=2)
    second = browse(library_api, q="an animal calling", folder="Animals", limit=2, offset=2)
    assert len(ids(first)) == 2 and len(ids(second)) == 1 and not set(ids(first)) & set(ids(second))
    assert [r["rank"] for r in second["results"]] == [3]
    listed = browse(library_api, folder="Weather")
    assert listed["query"] == "" and ids(listed) == sorted(ids(listed)) and len(ids(listed)) == 2
    assert all(r["score"] == 0 and 5.0 - 1e-3 <= r["end"] < 5.0 + 1 / 3.125 for r in listed["results"])  # 5 s ESC-50 clips
    bad = requests.get(f"{library_api}/api/browse", params={"q": "?!", "folder": "Weather"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["detail"] == "the query has no words"


def test_ucs_named_results_carry_their_category_the_others_a_suggestion(library_api: str) -> None:
    results = {r["id"]: r for r in browse(library_api, q="thunder")["results"]}
    thunder = results["Weather/THUN_Rolling Thunder_JD_STORM.wav"]
    assert thunder["metadata"]["category_full"] == "WEATHER-THUNDER" and thunder["suggested"] is None
    rain = results["Weather/rain from a car.wav"]["suggested"]
    assert rain["catid"] in categories() and rain["category_full"] == categories()[rain["catid"]].full
    train = results["Transport/train passing.wav"]["suggested"]
    assert train["catid"].startswith("TRN"), train  # the audio of a passing train, no UCS name


def test_waveform_overviews_are_computed_once_and_kept(library_api: str, library_index: Path) -> None:
    item = "Transport/train passing.wav"
    overview = requests.get(f"{library_api}/api/peaks", params={"id": item}, timeout=120).json()
    path = library_index.parent / "lib" / item
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    assert overview["frames"] == len(audio) and overview["duration"] == pytest.approx(len(audio) / rate)
    peaks = np.array(overview["peaks"])
    assert peaks.shape == (400, 2) and (peaks[:, 0] <= peaks[:, 1]).all()
    bucket = (np.arange(len(audio)) * 400) // len(audio)
    expected_high = np.array([audio[bucket == b].max() for b in (0, 137, 399)])
    assert peaks[[0, 137, 399], 1] == pytest.approx(expected_high, abs=1e-4)  # the stored values are rounded to 4 decimals
    assert audio.min() == pytest.approx(peaks[:, 0].min(), abs=1e-4) and audio.max() == pytest.approx(peaks[:, 1].max(), abs=1e-4)
    (kept,) = list(Path(str(library_index) + ".peaks").glob("*.json"))
    record = json.loads(kept.read_text())
    assert (record["format"], record["version"], record["audio"]) == ("amr-peaks", 1, str(path))
    record["peaks"][0] = [-0.5, 0.5]  # what a kept overview says is what is served, while the file is unchanged
    kept.write_text(json.dumps(record))
    server_memory = requests.get(f"{library_api}/api/peaks", params={"id": item}, timeout=60).json()
    assert server_memory["peaks"][0] != [-0.5, 0.5]  # served from memory: not read again
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: computed again
    again = requests.get(f"{library_api}/api/peaks", params={"id": item}, timeout=60).json()
    assert again["peaks"] == overview["peaks"] and json.loads(kept.read_text())["mtime_ns"] == stat.st_mtime_ns + 10**9
    assert requests.get(f"{library_api}/api/peaks", params={"id": "nope"}, timeout=60).status_code == 404
