"""The extract stage's WindowBatcher on its own: batching, reassembly, failures, waiting."""

from __future__ import annotations

import numpy as np
import pytest

from amr.audio.encoder import AudioEncoder
from amr.audio.mobilenet import MobileNetV3
from amr.audio.weights import EFFICIENTAT_AUDIO
from amr.extraction.batching import WindowBatcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: one thread is fastest, and immune to a busy machine


class FakeEncoder:
    """Two buckets (width 8: 3 rows a batch; width 16: 2 rows). A window of T frames
    whose mel is filled with v embeds to ceil(T / 4) frames of value v, so where
    every frame came from can be read off the result. Records each batch."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []

    def bucket_width(self, frames: int) -> int:
        return 8 if frames <= 8 else 16

    def batch_rows(self, width: int) -> int:
        return 3 if width == 8 else 2

    def encode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        assert len({self.bucket_width(m.shape[1]) for m in mels}) == 1, "one bucket per batch"
        assert len(mels) <= self.batch_rows(self.bucket_width(mels[0].shape[1]))
        self.batches.append([float(m[0, 0]) for m in mels])
        return [np.full((-(-m.shape[1] // 4), 2), m[0, 0], np.float32) for m in mels]


def mel(value: float, frames: int) -> np.ndarray:
    return np.full((1, frames), value, np.float32)


def values(frames: np.ndarray) -> list[float]:
    """The window values of a clip's frames, one per window run."""
    out: list[float] = []
    for v in frames[:, 0].tolist():
        if not out or out[-1] != v:
            out.append(v)
    return out


@pytest.fixture
def fake() -> FakeEncoder:
    return FakeEncoder()


def test_full_batches_run_at_once_and_clips_come_back_whole(fake: FakeEncoder) -> None:
    batcher = WindowBatcher(fake)  # type: ignore[arg-type]
    assert batcher.add("a", 0, [mel(1, 5), mel(2, 6)]) == []  # two rows of the 8 bucket: waiting
    assert fake.batches == []
    done = batcher.add("b", 0, [mel(3, 8)])  # the third row fills the batch
    assert fake.batches == [[1, 2, 3]]
    assert {clip.key for clip in done} == {"a", "b"}
    a = next(clip for clip in done if clip.key == "a")
    assert values(a.frames) == [1, 2] and a.frames.shape == (4, 2)  # ceil(5/4) + ceil(6/4) frames, in window order
    assert batcher.waiting_frames == 0 and batcher.flush() == []


def test_segments_of_one_clip_interleave_with_others(fake: FakeEncoder) -> None:
    batcher = WindowBatcher(fake)  # type: ignore[arg-type]
    done = []
    done += batcher.add("long", 0, [mel(11, 7)], last=False)  # the 8 bucket
    done += batcher.add("long", 1, [mel(12, 12)], last=False)  # the 16 bucket
    done += batcher.add("other", 0, [mel(30, 14)])  # fills the 16 bucket: window 1 of "long" runs before window 0
    assert fake.batches == [[12, 30]] and [clip.key for clip in done] == ["other"]
    done += batcher.add("long", 2, [mel(13, 2)], last=True)
    assert len(fake.batches) == 1  # the 8 bucket holds two of three rows
    done += batcher.flush()
    assert fake.batches[1:] == [[11, 13]]
    long = next(clip for clip in done if clip.key == "long")
    assert values(long.frames) == [11, 12, 13]


def test_a_failed_clip_is_forgotten(fake: FakeEncoder) -> None:
    batcher = WindowBatcher(fake)  # type: ignore[arg-type]
    batcher.add("bad", 0, [mel(1, 4), mel(2, 10)], last=False)  # its second segment will fail
    batcher.add("good", 0, [mel(3, 4)])
    batcher.drop("bad")
    done = batcher.flush()
    assert fake.batches == [[3]] and [clip.key for clip in done] == ["good"]


def test_a_last_segment_without_windows_completes_the_clip(fake: FakeEncoder) -> None:
    """A long file whose final segment starts exactly at its end decodes to no windows."""
    batcher = WindowBatcher(fake)  # type: ignore[arg-type]
    assert batcher.add("exact", 0, [mel(1, 16), mel(2, 16)], last=False) == []  # ran, but more may follow
    done = batcher.add("exact", 2, [], last=True)
    assert [clip.key for clip in done] == ["exact"] and values(done[0].frames) == [1, 2]


def test_a_rare_bucket_runs_part_full_after_max_wait(fake: FakeEncoder) -> None:
    batcher = WindowBatcher(fake, max_wait=2)  # type: ignore[arg-type]
    batcher.add("a", 0, [mel(1, 3)])  # the 8 bucket, which nothing else will fill
    batcher.add("b", 0, [mel(2, 12)])
    assert fake.batches == [] and batcher.waiting_frames == 8 + 16
    done = batcher.add("c", 0, [mel(3, 12)])  # fills the 16 bucket; "a" has now waited for 2 later windows
    assert fake.batches == [[1], [2, 3]] and sorted(clip.key for clip in done) == ["a", "b", "c"]
    assert batcher.waiting_frames == 0


def test_augmented_views_come_back_per_frame(fake: FakeEncoder) -> None:
    batcher = WindowBatcher(fake, augment_views=2)  # type: ignore[arg-type]
    views = [np.stack([mel(1.25, 16), mel(1.5, 16)]), np.stack([mel(2.25, 4), mel(2.5, 4)])]
    done = batcher.add("clip", 0, [mel(1, 16), mel(2, 4)], views) + batcher.flush()
    (clip,) = done
    assert clip.frames.shape == (5, 2) and clip.augmented is not None and clip.augmented.shape == (5, 2, 2)
    assert clip.augmented[:4, :, 0].tolist() == [[1.25, 1.5]] * 4 and clip.augmented[4, :, 0].tolist() == [2.25, 2.5]


def test_arrival_order_never_changes_a_bit() -> None:
    """With the real encoder: any order and interleaving of segments gives the frames of encode()."""
    encoder = AudioEncoder(MobileNetV3(0.1).eval(), EFFICIENTAT_AUDIO)  # untrained weights are fine here
    rng = np.random.default_rng(0)
    windows = rng.integers(1, 4, 12)  # 12 clips of 1 to 3 windows of 2 to 1000 frames
    clips = {k: [rng.standard_normal((128, t)).astype(np.float32) for t in rng.integers(2, 1001, n)] for k, n in enumerate(windows)}
    expected = {k: np.concatenate(encoder.encode(mels)) for k, mels in clips.items()}
    for seed in range(2):
        order = np.random.default_rng(seed).permutation(len(clips))
        batcher = WindowBatcher(encoder, max_wait=5)
        done = [clip for k in order for clip in batcher.add(int(k), 0, clips[int(k)])] + batcher.flush()
        assert sorted(clip.key for clip in done) == sorted(clips)
        for clip in done:
            assert np.array_equal(clip.frames, expected[clip.key])
