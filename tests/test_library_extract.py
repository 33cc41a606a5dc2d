"""Extracting a sound library as people keep one (issue 10): long recordings
with the tags of each segment, resume after SIGKILL, and incremental reruns
that compute only what changed. The recordings are built here by
concatenating real clips of the shared `sounds` set at known offsets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

import amr.extraction.run
from amr.audio.encoder import ClipEmbedder
from amr.audio.frontend import load_audio
from amr.audio.mobilenet import audioset_class_names
from amr.audio.weights import resolve_weights
from amr.cache import ClipEmbedding, EmbeddingCache, Segment, read_info, write_cache
from amr.datasets import load_dataset
from amr.errors import AmrError
from amr.extraction import extract, parts_folder
from amr.items import Item
from amr.segments import SegmentGrid

REPO = Path(__file__).resolve().parents[1]
RATE = 32000  # the recordings are written at the model's rate, so no resampling blurs the offsets
BARK_AT, BARK_SECONDS = 30.0, 6.0  # bigsoundbank-dog.mp3 (5.99 s, "2 dogs barking") in the park recording
PARK = [  # (offset in seconds, clip of the shared sounds set): 79 s
    (0.0, "freesound-rain.wav"),
    (12.5, "freesound-car_engine.wav"),
    (BARK_AT, "bigsoundbank-dog.mp3"),
    (37.0, "freesound-piano.wav"),
    (48.0, "freesound-train.wav"),
    (66.0, "freesound-typing.wav"),
]
STREET = [(0.0, "freesound-train.wav"), (17.0, "freesound-crowd_cheering.wav"), (30.0, "freesound-thunder.wav")]  # 44 s
KITCHEN = [(0.0, "freesound-typing.wav"), (12.0, "bigsoundbank-cat.mp3"), (15.0, "freesound-snoring.wav"), (32.0, "freesound-rain.wav")]


def recording(path: Path, sounds: Path, plan: list[tuple[float, str]], seed: int = 0) -> Path:
    """The clips of `plan` at their offsets over quiet noise (-60 dB), one mono WAV at 32 kHz."""
    clips = [(round(offset * RATE), load_audio(sounds / name, RATE, 10.0)) for offset, name in plan]
    signal_ = 0.001 * np.random.default_rng(seed).standard_normal(max(start + len(clip) for start, clip in clips) + RATE)
    for start, clip in clips:
        signal_[start : start + len(clip)] += clip
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, signal_.astype(np.float32), RATE, subtype="FLOAT")
    return path


def assert_same_segments(a: list[Segment], b: list[Segment]) -> None:
    """The same spans with bit-identical tags."""
    assert [(s.start, s.end) for s in a] == [(s.start, s.end) for s in b]
    np.testing.assert_array_equal(np.stack([s.tags for s in a]), np.stack([s.tags for s in b]))


@pytest.fixture(scope="module")
def weights(mn04_weights: Path):
    return resolve_weights("mn04_as", mn04_weights)


@pytest.fixture(scope="module")
def sounds(shared: Path) -> Path:
    return shared / "data" / "sounds" / "audio"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sounds: Path) -> Path:
    """Three long field recordings and two short clips, in nested folders (the folder layout)."""
    root = tmp_path_factory.mktemp("library") / "Sounds"
    recording(root / "field" / "park walk.wav", sounds, PARK)
    recording(root / "field" / "street.wav", sounds, STREET, seed=1)
    recording(root / "home" / "kitchen night.wav", sounds, KITCHEN, seed=2)
    for name in ("bigsoundbank-owl.mp3", "esc50-2-104105-A-19.wav"):
        (root / "clips").mkdir(exist_ok=True)
        shutil.copyfile(sounds / name, root / "clips" / name)
    return root


@pytest.fixture(scope="module")
def library_cache(library: Path, weights, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("library-cache") / "library.h5"
    report = extract(load_dataset(library, layout="folder").items, out, weights, workers=1, progress=False)
    assert report.computed == 5 and not report.failures
    return out


# --- long recordings: segments and their tags ---------------------------------------------


def test_the_segment_with_the_bark_is_tagged_dog_and_the_others_not(library_cache: Path) -> None:
    """On real audio: the segments holding the 6 s of barking rank Dog and Bark near the top;
    those that hold none of it do not (measured: Dog ranks 2nd in the former, 25th or lower in
    the latter, Bark 4th-5th against 175th or lower, so the bounds leave wide margins for other
    CPUs). The clip's own tags, one mean over 79 s, dilute the bark: that is why segments."""
    names = audioset_class_names()
    dog, bark = names.index("Dog"), names.index("Bark")
    with EmbeddingCache(library_cache) as cache:
        i = cache.index_of("field/park walk.wav")
        segments = cache.segments(i)
        assert len(segments) == cache.segments_per_item[i] > 10

        def seconds(segment: Segment) -> tuple[float, float]:
            return cache.info.seconds(segment.start), cache.info.seconds(segment.end)

        def rank(segment: Segment, c: int) -> int:
            return int((segment.tags > segment.tags[c]).sum())

        whole = [s for s in segments if seconds(s)[0] <= BARK_AT and seconds(s)[1] >= BARK_AT + BARK_SECONDS]
        apart = [s for s in segments if seconds(s)[1] <= BARK_AT or seconds(s)[0] >= BARK_AT + BARK_SECONDS]
        assert whole and len(apart) >= len(segments) - 4
        for segment in whole:
            assert rank(segment, dog) < 3 and rank(segment, bark) < 6, seconds(segment)
        for segment in apart:
            assert rank(segment, dog) >= 10 and rank(segment, bark) >= 20, seconds(segment)
            assert segment.tags[dog] < 0.05 and segment.tags[bark] < 0.05, seconds(segment)
        best = max(segments, key=lambda s: s.tags[dog])
        assert abs(seconds(best)[0] - BARK_AT) <= cache.info.segment_hop, seconds(best)  # found within one hop
        assert cache.tags[i, dog] < best.tags[dog] / 3 and rank(Segment(0, 0, cache.tags[i]), dog) > 3


def test_segments_are_the_grids_spans_with_the_tags_of_their_frames(library_cache: Path, library: Path, mn04_weights: Path) -> None:
    """Every item: the grid's spans (the whole clip for a short one, with the clip's tags), and each
    segment's tags those of its own frames through the tagger's head. The reference embeds the file
    again in float32; the cache rounded to float16, so they agree to one float16 step (2^-10
    relative, 2^-24 absolute for subnormals), as in test_extract.test_embed_file_matches_the_cache."""
    grid = SegmentGrid()
    with EmbeddingCache(library_cache) as cache:
        assert read_info(library_cache).segments == grid == cache.info.segments
        embedder = ClipEmbedder.for_collection(cache.info, library_cache, mn04_weights)
        long_clips = 0
        for i, item in enumerate(cache.items):
            segments = cache.segments(i)
            spans = [(s.start, s.end) for s in segments]
            assert spans == grid.spans(
                int(cache.lengths[i]), cache.info.frames_per_window, cache.info.window_seconds
            ) and cache.segments_per_item[i] == len(spans)
            if len(segments) == 1:
                assert spans == [(0, cache.lengths[i])] and np.array_equal(segments[0].tags, cache.tags[i])
                continue
            long_clips += 1
            assert all(s.end - s.start == cache.info.frames_per_window for s in segments)  # 10 s: one window
            frames, _ = embedder.embed(Path(item.audio))
            for segment in segments:
                expected = embedder.encoder.tags(frames[segment.start : segment.end]).astype(np.float16).astype(np.float32)
                np.testing.assert_allclose(segment.tags, expected, rtol=2**-10, atol=2**-24)
                assert segment.tags.dtype == np.float32
        assert long_clips == 3


def test_frame_times_follow_the_windows(library_cache: Path) -> None:
    """A 10 s window gives 32 frames, not 31.25: frame k starts at (k // 32) * 10 + (k % 32) * 0.32 s."""
    info = read_info(library_cache)
    assert info.frames_per_window == 32
    assert [info.seconds(k) for k in (0, 1, 31, 32, 33, 320)] == [0.0, 0.32, 9.92, 10.0, 10.32, 100.0]
    with EmbeddingCache(library_cache) as cache:
        i = cache.index_of("field/park walk.wav")
        duration = sf.info(cache.items[i].audio).duration
        assert duration <= info.seconds(int(cache.lengths[i])) <= duration + 1 / info.frame_rate


def test_another_grid_is_recorded_and_never_mixed(library: Path, library_cache: Path, weights, tmp_path: Path) -> None:
    items = [item for item in load_dataset(library, layout="folder").items if item.id == "field/street.wav"]
    grid = SegmentGrid(seconds=8, hop=4, long_seconds=20)
    other = tmp_path / "other.h5"
    extract(items, other, weights, workers=1, progress=False, segments=grid)
    with EmbeddingCache(other) as cache:
        assert cache.info.segments == grid
        assert [(s.start, s.end) for s in cache.segments(0)] == grid.spans(
            int(cache.lengths[0]), cache.info.frames_per_window, cache.info.window_seconds
        )
    copy = tmp_path / "copy.h5"
    shutil.copyfile(library_cache, copy)
    refused = r"copy\.h5: holds segment tags of 10 s segments every 5 s of clips over 30 s, this run asks for 8 s segments every 4 s"
    with pytest.raises(AmrError, match=refused):
        extract(items, copy, weights, workers=1, progress=False, segments=grid)


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_cache_is_refused(library_cache: Path, tmp_path: Path, version: int) -> None:
    old = tmp_path / "old.h5"
    shutil.copyfile(library_cache, old)
    with h5py.File(old, "a") as f:
        f.attrs["version"] = version
    with pytest.raises(AmrError, match=rf"old\.h5: an embedding cache of an older amr \(format version {version}\), .*extract again"):
        EmbeddingCache(old)


def test_a_long_clip_is_written_only_with_the_grids_segments(library_cache: Path, tmp_path: Path) -> None:
    with EmbeddingCache(library_cache) as cache:
        i = cache.index_of("field/street.wav")
        frames, _ = cache.stored(i)
        item, tags, segments = cache.items[i], cache.tags[i], cache.segments(i)
    with pytest.raises(ValueError, match="need the segments"):
        write_cache(tmp_path / "a.h5", cache.info, [ClipEmbedding(item, frames, tags)])
    with pytest.raises(ValueError, match="need the segments"):
        write_cache(tmp_path / "b.h5", cache.info, [ClipEmbedding(item, frames, tags, segments=segments[1:])])
    write_cache(tmp_path / "c.h5", cache.info, [ClipEmbedding(item, frames, tags, segments=segments)])
    with EmbeddingCache(tmp_path / "c.h5") as copy:
        assert_same_segments(copy.segments(0), segments)


# --- resume after SIGKILL ------------------------------------------------------------------

# Extracts the library one clip per part, and stops for good after the second
# clip, until the test kills it: the kill always lands mid-run, with parts on disk.
STOPPED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import amr.extraction.run
    from amr.datasets import load_dataset
    from amr.audio.weights import resolve_weights
    embed_items = amr.extraction.run.embed_items

    def stopping(*args, **kwargs):
        for k, clip in enumerate(embed_items(*args, **kwargs)):
            if k == 2:
                time.sleep(3600)
            yield clip

    amr.extraction.run.embed_items = stopping
    items = load_dataset(Path(sys.argv[1]), layout="folder").items
    amr.extraction.extract(items, Path(sys.argv[2]), resolve_weights("mn04_as", Path(sys.argv[3])), workers=1, progress=False, part_size=1)
    """
)


def test_resume_after_sigkill_equals_an_uninterrupted_run(library: Path, library_cache: Path, weights, tmp_path: Path) -> None:
    killed = tmp_path / "killed.h5"
    parts = parts_folder(killed)
    command = [sys.executable, "-c", STOPPED, str(library), str(killed), str(weights.path)]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(parts.glob("part-*.h5"))) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "the run should write two parts"
            time.sleep(0.05)
        workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()]
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 10  # the forked workers share the lock's open file: they leave within 0.5 s (extract._exit_with_parent)
    while any(Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" for pid in workers):
        assert time.monotonic() < deadline, "orphaned workers must exit with their parent"
        time.sleep(0.1)
    assert not killed.exists()
    report = extract(load_dataset(library, layout="folder").items, killed, weights, workers=1, progress=False)
    assert (report.reused, report.computed, report.dropped) == (2, 3, 0)
    assert not parts.exists()
    with EmbeddingCache(library_cache) as a, EmbeddingCache(killed) as b:
        assert a.items == b.items and a.info == b.info
        np.testing.assert_array_equal(a.all_frames(), b.all_frames())
        np.testing.assert_array_equal(a.tags, b.tags)
        for i in range(len(a)):
            assert_same_segments(a.segments(i), b.segments(i))


# --- incremental reruns ---------------------------------------------------------------------


def test_a_rerun_computes_only_new_and_changed_files_and_drops_deleted_ones(sounds: Path, weights, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "Sounds"
    (root / "animals").mkdir(parents=True)
    for name in ("bigsoundbank-cow.mp3", "bigsoundbank-frog.mp3", "bigsoundbank-pig.mp3"):
        shutil.copyfile(sounds / name, root / "animals" / name)
    shutil.copyfile(sounds / "esc50-2-104168-A-32.wav", root / "keyboard.wav")
    recording(root / "field" / "street.wav", sounds, STREET, seed=1)
    embedded: list[str] = []
    embed_items = amr.extraction.run.embed_items

    def recorded(items, *args, **kwargs):
        embedded.extend(item.id for item in items)
        yield from embed_items(items, *args, **kwargs)

    monkeypatch.setattr(amr.extraction.run, "embed_items", recorded)
    out = tmp_path / "sounds.h5"

    def run() -> amr.extraction.ExtractReport:
        embedded.clear()
        return extract(load_dataset(root, layout="folder").items, out, weights, workers=1, progress=False)

    first = run()
    assert (first.computed, first.reused, first.dropped, first.items) == (5, 0, 0, 5) and len(embedded) == 5
    with EmbeddingCache(out) as cache:
        before = {item.id: (cache.stored(i)[0], cache.segments(i)) for i, item in enumerate(cache.items)}

    shutil.copyfile(sounds / "bigsoundbank-duck.mp3", root / "animals" / "bigsoundbank-duck.mp3")  # added
    changed = root / "keyboard.wav"
    size = changed.stat().st_size
    alarm, rate = sf.read(sounds / "esc50-2-104475-A-37.wav", dtype="int16")
    sf.write(changed, alarm[: 3 * rate], rate, subtype="PCM_16")  # replaced: other content, another size
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    (root / "animals" / "bigsoundbank-pig.mp3").unlink()  # deleted
    assert changed.stat().st_size != size

    second = run()
    assert sorted(embedded) == ["animals/bigsoundbank-duck.mp3", "keyboard.wav"]
    assert (second.computed, second.reused, second.dropped, second.items) == (2, 3, 1, 5) and not second.failures
    with EmbeddingCache(out) as cache:
        ids = [item.id for item in cache.items]
        assert ids == [item.id for item in load_dataset(root, layout="folder").items] and "animals/bigsoundbank-pig.mp3" not in ids
        i = cache.index_of("keyboard.wav")
        assert cache.items[i].audio_size == changed.stat().st_size and cache.items[i].audio_mtime_ns == changed.stat().st_mtime_ns
        assert cache.lengths[i] < len(before["keyboard.wav"][0])  # 3 s of the alarm clock, not 5 s of typing
        for clip_id in ("animals/bigsoundbank-cow.mp3", "animals/bigsoundbank-frog.mp3", "field/street.wav"):  # reused bit for bit
            j = cache.index_of(clip_id)
            frames, segments = before[clip_id]
            assert np.array_equal(cache.stored(j)[0], frames)
            assert_same_segments(cache.segments(j), segments)
        assert cache.segments_per_item[cache.index_of("field/street.wav")] > 1

    stamp = out.stat().st_mtime_ns, out.stat().st_ino
    third = run()  # nothing changed: nothing computed, the cache not even rewritten
    assert (third.computed, third.reused, third.dropped) == (0, 5, 0) and embedded == []
    assert (out.stat().st_mtime_ns, out.stat().st_ino) == stamp


def test_a_moved_file_is_computed_again(sounds_cache: Path, weights, tmp_path: Path) -> None:
    """The same id from another path (or a cached clip without a recorded size and mtime) is not reused."""
    copy = tmp_path / "copy.h5"
    shutil.copyfile(sounds_cache, copy)
    with EmbeddingCache(copy) as cache:
        items = list(cache.items[:3])
    moved = tmp_path / "moved.mp3"
    shutil.copyfile(items[0].audio, moved)
    stat = moved.stat()
    items[0] = replace(items[0], audio=str(moved), audio_size=stat.st_size, audio_mtime_ns=stat.st_mtime_ns)
    items[1] = replace(items[1], audio_size=None, audio_mtime_ns=None)
    report = extract(items, copy, weights, workers=1, progress=False)
    assert (report.computed, report.reused, report.dropped, report.items) == (2, 1, len(cache.items) - 3, 3)
    with EmbeddingCache(copy) as merged, EmbeddingCache(sounds_cache) as original:
        assert merged.items == items
        for i, item in enumerate(items):  # computed again from the same audio: the same values
            np.testing.assert_array_equal(merged.stored(i)[0], original.stored(original.index_of(item.id))[0])


def test_item_json_round_trips(sounds_cache: Path) -> None:
    with EmbeddingCache(sounds_cache) as cache:
        for item in cache.items:
            assert Item.from_json(item.to_json()) == item and item.audio_size and item.audio_mtime_ns


def test_the_grid_counts_seconds_in_the_encoders_windows() -> None:
    """A window of 10 s gives 32 frames: 30 s is 96 frames and stays whole; 5 s is 16 frames."""
    from amr.segments import SegmentGrid

    grid = SegmentGrid()
    assert grid.spans(96, 32, 10.0) == [(0, 96)]  # exactly 30 s: one item, as Clotho's longest clips
    spans = grid.spans(97, 32, 10.0)
    assert spans[0] == (0, 32) and spans[1] == (16, 48) and spans[-1][1] == 97  # 10 s every 5 s, the last ends with the clip
    assert all(end - start == 32 for start, end in spans)


# --- the library user's three commands: extract a folder, index it zero-shot, search it --------------


def test_a_bark_in_a_long_recording_is_found_at_its_offset_through_the_cli(library: Path, mn04_weights: Path, tmp_path: Path) -> None:
    """`amr extract <folder> && amr index --zero-shot && amr query` on the recordings built
    above: "dogs barking" finds the park walk by the segment holding the bark (starting within
    one hop, 5 s, of where it was put), the clip-long recordings are one row each, and an
    unchanged rerun of extract and a refreshed index keep the answer."""
    env = {**os.environ, "AMR_WORKSPACE": str(tmp_path / "ws"), "AMR_AUDIO_WEIGHTS": str(mn04_weights), "OMP_NUM_THREADS": "1"}

    def amr(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "amr", *args], capture_output=True, env=env, timeout=600)
        assert done.returncode == 0 and "Traceback" not in done.stderr.decode(), done.stderr.decode()
        return done.stdout.decode()

    def found() -> list[dict]:
        return [json.loads(line) for line in amr("query", "dogs barking", "--format", "jsonl", "--top", "5").splitlines()]

    amr("extract", str(library), "--workers", "1")
    amr("index", "--zero-shot")
    first = found()
    park = first[0]
    assert park["id"] == "field/park walk.wav", first
    assert abs(park["start"] - BARK_AT) <= 5.0 and park["end"] - park["start"] == pytest.approx(10.0, abs=0.2), park
    assert len({r["id"] for r in first}) == len(first)  # one result per recording: its best segment
    owl = json.loads(amr("query", "an owl hooting", "--format", "jsonl", "--top", "1"))
    assert owl["id"] == "clips/bigsoundbank-owl.mp3" and owl["start"] == 0.0, owl  # a short clip: one row, the whole clip
    amr("extract", str(library), "--workers", "1")
    amr("index", "--zero-shot")
    again = found()
    assert [(r["id"], r["start"]) for r in again] == [(r["id"], r["start"]) for r in first]


def test_all_segments_lists_each_matching_segment_best_first(library: Path, library_cache: Path, tmp_path: Path) -> None:
    """`--all-segments`: the park walk comes back once per segment, scores descending, the best
    segment first and holding the bark; without it, one row per recording."""
    from amr.index.build import build_index
    from amr.model.zeroshot import ZeroShotRetriever
    from amr.query import QueryInput, open_searcher, run_queries

    build_index(ZeroShotRetriever(), [library_cache], tmp_path / "index.h5", show_progress=False)
    searcher = open_searcher(tmp_path / "index.h5")
    every = list(run_queries(searcher, [QueryInput("1", "dogs barking")], top=40, all_segments=True))
    park = [r for r in every if r.id == "field/park walk.wav"]
    with EmbeddingCache(library_cache) as cache:
        assert len(park) == cache.segments_per_item[cache.index_of("field/park walk.wav")]
    assert [r.score for r in every] == sorted((r.score for r in every), reverse=True)
    assert every[0].id == "field/park walk.wav" and abs(every[0].start - BARK_AT) <= 5.0
    best = list(run_queries(searcher, [QueryInput("1", "dogs barking")], top=40))
    assert len({r.id for r in best}) == len(best) == 5 and best[0].start == every[0].start


@pytest.mark.parametrize("fusion", ["late", "mid"])
def test_a_trained_model_encodes_segments_and_evaluate_ranks_a_recording_by_its_best_one(
    fusion: str, library_cache: Path, text_encoder, tmp_path: Path
) -> None:
    """A trained model at its zero-shot start encodes a long recording's segments as the zero-shot
    model does (scores within 1e-5, float32 rounding of two paths), so a trained index finds the
    bark by its segment too; `amr evaluate` (here of the zero-shot model) scores a recording by its best
    segment: "dogs barking" ranks the park walk (the bark is 6 s of its 79) first."""
    import torch

    from amr.evaluate import evaluate_models
    from amr.items import Query, write_jsonl
    from amr.model.checkpoint import TrainedRetriever
    from amr.model.model import ModelConfig, RetrievalModel
    from amr.model.zeroshot import ZeroShotRetriever
    from amr.training.loop import _complete, _zero_shot_start

    zero_shot = ZeroShotRetriever(text=text_encoder)
    with EmbeddingCache(library_cache) as cache:
        config = _complete(ModelConfig(fusion=fusion, freeze_text=True), cache.info, text_encoder)
        torch.manual_seed(0)
        model = RetrievalModel(config, text_encoder)
        model.start_from_zero_shot(_zero_shot_start(config, text_encoder).class_embeddings)
        trained = TrainedRetriever(Path("/start"), model, cache.info, "f", "c")
        park = cache.index_of("field/park walk.wav")
        queries = ["dogs barking", "rain falling", "a piano"]
        expected = zero_shot.encode_queries(queries) @ zero_shot.encode_segments(cache, park).T
        got = trained.encode_queries(queries) @ trained.encode_segments(cache, park).T
        np.testing.assert_allclose(got, expected, atol=1e-5)
        bark_segment = int(np.argmax(got[0]))
        assert abs(cache.info.seconds(cache.segments(park)[bark_segment].start) - BARK_AT) <= cache.info.segment_hop
    write_jsonl(tmp_path / "queries.jsonl", [Query("dog", "dogs barking", ["field/park walk.wav"])])
    report = evaluate_models([], [], [library_cache], "all", queries=tmp_path / "queries.jsonl", zero_shot=True, workspace=None)
    record = report.per_query()[0]
    assert record["ranks"] == [1] and record["top"][0] == "field/park walk.wav"
