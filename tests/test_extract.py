"""The extract stage on real clips: cache contents, bad audio, resume after SIGKILL."""

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

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from amr.cache import ClipEmbedding, EmbeddingCache, read_info, write_cache
from amr.cli import app
from amr.datasets import load_dataset
from amr.errors import AmrError
from amr.extract import extract, failures_path
from amr.items import Item
from amr.weights import resolve_weights

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(mn04_weights: Path):
    return resolve_weights("mn04_as", mn04_weights)


@pytest.fixture(scope="module")
def sounds(shared: Path) -> list[Item]:
    """The real `sounds` clips: mp3 and wav, mono and stereo, 44.1 and 48 kHz, with and without metadata."""
    return load_dataset(shared / "data" / "sounds").items


def test_cache_holds_every_clip_with_its_item(sounds_cache: Path, sounds: list[Item], weights) -> None:
    with EmbeddingCache(sounds_cache) as cache:
        assert cache.items == sounds
        assert cache.info.audio_model == "mn04_as"
        assert cache.info.weights_sha256 == weights.sha256
        assert cache.info.embed_dim == 384
        assert cache.info.frame_rate == pytest.approx(3.125)
        for i, item in enumerate(sounds):
            seconds = sf.info(item.audio).duration
            windows = int(np.ceil(seconds / 10))
            # about 3.2 frames per second, counted per 10 s window
            assert abs(cache.lengths[i] - seconds * 3.125) <= windows + 1
            sequence = cache.sequence(i)
            assert sequence.shape == (cache.lengths[i], 384) and np.isfinite(sequence).all()
        assert cache.tags.shape == (len(sounds), 527)
        assert ((cache.tags >= 0) & (cache.tags <= 1)).all()


def test_embedding_does_not_depend_on_batch_company(sounds_cache: Path, sounds: list[Item], weights, tmp_path) -> None:
    alone = tmp_path / "alone.h5"
    extract(sounds[2:3], alone, weights, workers=1, progress=False)
    with EmbeddingCache(sounds_cache) as together, EmbeddingCache(alone) as single:
        np.testing.assert_array_equal(single.stored(0)[0], together.stored(2)[0])
        np.testing.assert_array_equal(single.tags[0], together.tags[2])


def test_rerun_reuses_and_refreshes_metadata(sounds_cache: Path, sounds: list[Item], weights, tmp_path) -> None:
    copy = tmp_path / "copy.h5"
    shutil.copy(sounds_cache, copy)
    renamed = [Item(i.id, i.audio, "test", {"title": "new title"}, i.captions) for i in sounds]
    report = extract(renamed, copy, weights, workers=1, progress=False)
    assert report.computed == 0 and report.reused == len(sounds)
    with EmbeddingCache(copy) as cache, EmbeddingCache(sounds_cache) as original:
        assert cache.items == renamed
        np.testing.assert_array_equal(cache.all_frames(), original.all_frames())


def test_cache_of_another_model_is_refused(sounds_cache: Path, sounds: list[Item], weights, tmp_path) -> None:
    other = tmp_path / "other.h5"
    info = read_info(sounds_cache)
    with EmbeddingCache(sounds_cache) as cache:
        clips = [cache_clip(cache, 0)]
    write_cache(other, replace(info, audio_model="mn10_as", weights_sha256="0" * 64), clips)
    with pytest.raises(AmrError, match="mn10_as"):
        extract(sounds[:1], other, weights, workers=1, progress=False)


def cache_clip(cache: EmbeddingCache, i: int) -> ClipEmbedding:
    frames, views = cache.stored(i)
    return ClipEmbedding(cache.items[i], frames, cache.tags[i], views)


def test_augmented_views_are_stored_and_reproducible(sounds: list[Item], weights, tmp_path) -> None:
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    extract(sounds[:2], first, weights, augment_views=2, workers=1, progress=False)
    extract(sounds[:2], second, weights, augment_views=2, workers=1, progress=False)
    with EmbeddingCache(first) as a, EmbeddingCache(second) as b:
        assert a.info.augment_views == 2
        clean, view0, view1 = a.sequence(0), a.sequence(0, view=0), a.sequence(0, view=1)
        assert view0.shape == clean.shape
        assert not np.array_equal(view0, clean) and not np.array_equal(view0, view1)
        np.testing.assert_array_equal(a.all_frames(augmented=True), b.all_frames(augmented=True))


def write_bad_audio(root: Path) -> dict[str, str | None]:
    """A generic dataset of awkward files; maps id → expected failure reason (None: must work)."""
    rng = np.random.default_rng(0)
    noise = lambda sr, seconds, channels=1: (0.1 * rng.standard_normal((int(sr * seconds), channels))).astype(np.float32)
    audio = root / "audio"
    audio.mkdir()
    sf.write(audio / "rate 8k.wav", noise(8000, 2.0), 8000)
    sf.write(audio / "rate 96k.flac", noise(96000, 1.5), 96000)
    sf.write(audio / "six channels.wav", noise(44100, 1.0, 6), 44100)
    sf.write(audio / "silence.wav", np.zeros(32000, np.float32), 32000)
    sf.write(audio / "très court ñ.ogg", noise(44100, 0.05), 44100)
    sf.write(audio / "long 35 s.wav", noise(16000, 35.0), 16000)
    with_nan = noise(32000, 1.0)
    with_nan[100] = np.nan
    sf.write(audio / "nan.wav", with_nan, 32000, subtype="FLOAT")
    (audio / "empty.wav").write_bytes(b"")
    (audio / "text.mp3").write_text("this is not audio\n" * 100)
    sf.write(audio / "whole.wav", noise(44100, 2.0), 44100)
    (audio / "truncated.flac").write_bytes((audio / "rate 96k.flac").read_bytes()[:200])
    expected = {
        "rate 8k.wav": None,
        "rate 96k.flac": None,
        "six channels.wav": None,
        "silence.wav": None,
        "très court ñ.ogg": None,
        "long 35 s.wav": None,
        "nan.wav": "NaN",
        "empty.wav": "empty",
        "text.mp3": "",
        "truncated.flac": "",
    }
    with open(root / "items.jsonl", "w", encoding="utf-8") as f:
        for name in expected:
            f.write(json.dumps({"id": name, "audio": f"audio/{name}"}, ensure_ascii=False) + "\n")
    return expected


def test_bad_audio_is_reported_by_name_and_the_run_goes_on(tmp_path: Path, mn04_weights: Path) -> None:
    root = tmp_path / "awkward"
    root.mkdir()
    expected = write_bad_audio(root)
    out = tmp_path / "awkward.h5"
    result = CliRunner().invoke(
        app, ["extract", str(root), "--output", str(out), "--audio-weights", str(mn04_weights), "--workers", "1"]
    )
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    failed = {json.loads(line)["id"]: json.loads(line)["reason"] for line in failures_path(out).open()}
    assert set(failed) == {name for name, reason in expected.items() if reason is not None}
    assert summary["failed"] == len(failed) and summary["items"] == len(expected) - len(failed)
    for name, reason in failed.items():
        assert name in reason and expected[name] in reason
    with EmbeddingCache(out) as cache:
        ok = {item.id: i for i, item in enumerate(cache.items)}
        assert set(ok) == {name for name, reason in expected.items() if reason is None}
        assert cache.lengths[ok["très court ñ.ogg"]] >= 1
        assert cache.lengths[ok["long 35 s.wav"]] == 32 + 32 + 32 + 16  # four windows: 10 + 10 + 10 + 5 s
        assert np.isfinite(cache.sequence(ok["silence.wav"])).all()


def test_long_file_split_into_worker_segments(tmp_path: Path, weights, monkeypatch) -> None:
    """A clip longer than one worker segment is decoded in several tasks and reassembled in order."""
    import amr.extract as extract_module

    path = tmp_path / "long.wav"
    rng = np.random.default_rng(1)
    sf.write(path, (0.1 * rng.standard_normal(16000 * 50)).astype(np.float32), 16000)
    item = [Item("long", str(path))]
    whole = tmp_path / "whole.h5"
    extract(item, whole, weights, workers=1, progress=False)
    monkeypatch.setattr(extract_module, "SEGMENT_WINDOWS", 2)
    split = tmp_path / "split.h5"
    extract(item, split, weights, workers=1, progress=False)
    with EmbeddingCache(whole) as a, EmbeddingCache(split) as b:
        assert a.lengths[0] == 5 * 32
        np.testing.assert_array_equal(a.all_frames(), b.all_frames())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


KILLABLE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from amr.datasets import load_dataset
    from amr.extract import extract
    from amr.weights import resolve_weights
    items = load_dataset(Path(sys.argv[1])).items[: int(sys.argv[4])]
    extract(items, Path(sys.argv[2]), resolve_weights("mn04_as", Path(sys.argv[3])), workers=1, progress=False, part_size=8)
    """
)


def test_sigkill_leaves_readable_parts_and_rerun_completes_identically(shared: Path, weights, tmp_path: Path) -> None:
    dataset = shared / "data" / "sfx-dev"
    count = 40
    items = load_dataset(dataset).items[:count]
    reference = tmp_path / "reference.h5"
    extract(items, reference, weights, workers=1, progress=False)

    killed = tmp_path / "killed.h5"
    parts = killed.with_name(killed.name + ".parts")
    process = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(dataset), str(killed), str(weights.path), str(count)],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.h5"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    children = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert children, "the run should have started decoding workers"
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in children), "orphaned workers must exit with their parent"
    written = sorted(parts.glob("part-*.h5"))
    assert written and not killed.exists(), "the run should have been killed mid-way"
    for part in written:  # every part left behind is a complete, readable cache
        with EmbeddingCache(part) as cache:
            assert len(cache) == 8

    report = extract(items, killed, weights, workers=1, progress=False)
    assert report.reused >= 8 and report.computed == count - report.reused
    assert not parts.exists()
    with EmbeddingCache(reference) as a, EmbeddingCache(killed) as b:
        assert a.items == b.items
        np.testing.assert_array_equal(a.lengths, b.lengths)
        np.testing.assert_array_equal(a.all_frames(), b.all_frames())
        np.testing.assert_array_equal(a.tags, b.tags)


def test_padding_buckets_stay_tight_and_leave_full_windows_alone() -> None:
    from amr import audio
    from amr.extract import MIN_PAD, bucket_width

    full = audio.mel_frames(round(audio.WINDOW_SECONDS * audio.SAMPLE_RATE))
    assert bucket_width(full) == full == 1000
    widths = [bucket_width(frames) for frames in range(1, full)]
    for frames, width in zip(range(1, full), widths):
        assert frames <= width <= max(frames + MIN_PAD - 1, frames * 9 // 8)
    assert widths == sorted(widths) and len(set(widths)) <= 48  # few buckets: batches fill up


def test_folded_batch_norm_computes_the_same_frames(mn04_model, sounds: list[Item]) -> None:
    import torch

    from amr import audio
    from amr.extract import fold_batch_norm

    window = next(audio.iter_windows(Path(sounds[0].audio)))
    mel = audio.MelFrontEnd()(torch.from_numpy(window)[None])
    with torch.inference_mode():
        plain, _ = mn04_model(mel)
        folded, _ = fold_batch_norm(mn04_model)(mel)
    torch.testing.assert_close(folded, plain, atol=1e-4, rtol=1e-4)


def test_embed_file_matches_the_cache(sounds_cache: Path, mn04_model) -> None:
    """Query by example embeds a clip as `amr extract` did (to float16 precision)."""
    from amr import audio
    from amr.extract import embed_file

    with EmbeddingCache(sounds_cache) as cache:
        i = cache.index_of("bigsoundbank-dog")
        frames, tags = embed_file(Path(cache.items[i].audio), mn04_model, audio.MelFrontEnd())
        np.testing.assert_allclose(frames, cache.sequence(i), atol=2e-2)
        np.testing.assert_allclose(tags, cache.tags[i], atol=2e-2)
