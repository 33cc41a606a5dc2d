"""The audio encoder: frames equal to the pretrained model's at every clip length, whatever the batch.

The reference is computed independently: the plain MobileNetV3 (eval mode, its
own BatchNorm layers, no masking) run on each exact window alone, at batch 1.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from amr.audio.encoder import MIN_WIDTH, AudioEncoder, ClipEmbedder
from amr.audio.frontend import load_audio
from amr.audio.mobilenet import MobileNetV3
from amr.audio.weights import EFFICIENTAT_AUDIO, resolve_weights
from amr.cache import CacheInfo
from amr.errors import AmrError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: one thread is fastest, and immune to a busy machine

AUDIO = EFFICIENTAT_AUDIO
RATE = AUDIO.sample_rate
# A 29.5 s real recording (Clotho): 44.1 kHz, paper sounds, with quiet and loud parts.
LONG_CLIP = "clotho-mini/clotho_audio_evaluation/turning pages book slow quickly.wav"
LENGTHS = [0.02, 0.05, 0.09, 1.0, 3.3, 7.8, 10.0, 12.5, 25.0]  # seconds: under 0.1 s, partial windows, full ones


@pytest.fixture(scope="module")
def encoder(mn04_model: MobileNetV3) -> AudioEncoder:
    return AudioEncoder(mn04_model, AUDIO)


@pytest.fixture(scope="module")
def signal(shared: Path) -> np.ndarray:
    return load_audio(shared / "data" / LONG_CLIP, RATE, AUDIO.window_seconds)


def _windows(signal: np.ndarray, seconds: float) -> list[np.ndarray]:
    """The first `seconds` of the signal, cut into the model's windows as amr.audio.frontend cuts a file."""
    clip = signal[: round(seconds * RATE)]
    return [clip[i : i + AUDIO.window_samples] for i in range(0, len(clip), AUDIO.window_samples)]


def _reference(model: MobileNetV3, mels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The plain pretrained model on each exact window alone; tags from the mean of the clip's frames."""
    with torch.inference_mode():
        frames = torch.cat([model(torch.from_numpy(mel)[None, None])[0][0] for mel in mels])
        tags = torch.sigmoid(model.head(frames.mean(dim=0, keepdim=True)))[0]
    return frames.numpy(), tags.numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# Tolerance: folding BatchNorm rounds every folded weight (relative 2^-24) and the
# convolutions sum in other orders (oneDNN, channels-last); each of the ~50 layers
# adds about sqrt(n) 2^-24 relative for sums of n <= 24,000 terms, so after the
# network the frames agree to ~1e-5 of their scale (measured: 2e-6). 1e-4 of the
# largest value, and cosine >= 0.99999, leave a 5x margin over that estimate;
# the target of issue 13 (cosine >= 0.9995) is far looser. Padding that leaked
# into the result changed frames by 10 % (cosine 0.90).
def _assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * float(np.abs(expected).max()))
    assert _cosines(got, expected).min() >= 0.99999


@pytest.mark.parametrize("seconds", LENGTHS)
def test_frames_and_tags_are_the_pretrained_models_at_every_length(encoder, mn04_model, signal, seconds: float) -> None:
    mels = [encoder.mel(w) for w in _windows(signal, seconds)]
    expected_frames, expected_tags = _reference(mn04_model, mels)
    frames = np.concatenate(encoder.encode(mels))
    assert len(frames) == sum(-(-mel.shape[1] // AUDIO.model_stride) for mel in mels)
    _assert_same(frames, expected_frames)
    # tag probabilities in [0, 1]: the same frames through the same head, 1e-5 absolute
    np.testing.assert_allclose(encoder.tags(frames), expected_tags, rtol=0, atol=1e-5)


def test_all_lengths_in_one_batch(encoder, mn04_model, signal) -> None:
    """Windows of every length, batched together (shared buckets, padding rows), each still exact."""
    per_clip = [[encoder.mel(w) for w in _windows(signal, seconds)] for seconds in LENGTHS]
    flat = [mel for mels in per_clip for mel in mels]
    encoded = iter(encoder.encode(flat[::-1])[::-1])  # reversed: other neighbours and positions
    for mels in per_clip:
        got = np.concatenate([next(encoded) for _ in mels])
        _assert_same(got, _reference(mn04_model, mels)[0])


@pytest.mark.parametrize("seconds", [2.1, 3.3])  # buckets of 9 and 5 rows
def test_batch_company_never_changes_a_bit(encoder, signal, seconds: float) -> None:
    """A window's frames are bit-identical alone and at every row of a full batch, among
    other windows of its bucket (the last row once differed: see encoder._gate)."""
    rng = np.random.default_rng(0)
    target = encoder.mel(signal[: round(seconds * RATE)])
    width = encoder.bucket_width(target.shape[1])
    rows = encoder.batch_rows(width)
    alone = encoder.encode([target])[0]
    starts = rng.integers(0, len(signal) - 4 * RATE, rows - 1)
    lowest = min(t for t in range(2, width + 1) if encoder.bucket_width(t) == width)
    frames = rng.integers(lowest, width + 1, rows - 1)  # other lengths in the same bucket
    others = [encoder.mel(signal[s : s + (n - 1) * AUDIO.mel.hop_length + 1]) for s, n in zip(starts, frames)]
    assert {encoder.bucket_width(mel.shape[1]) for mel in others} == {width}
    for position in range(rows):
        batch = others[:position] + [target] + others[position:]
        assert np.array_equal(encoder.encode(batch)[position], alone), position
    assert np.array_equal(encoder.encode([target] * 3)[2], alone)  # a part-full batch, another row


def test_buckets_are_few_and_tight() -> None:
    encoder = AudioEncoder(MobileNetV3(0.1), AUDIO)  # untrained: only the widths matter here
    full = AUDIO.window_frames
    widths = [encoder.bucket_width(frames) for frames in range(2, full + 1)]
    assert encoder.bucket_width(full) == full == 1000
    for frames, width in zip(range(2, full + 1), widths):
        assert frames <= width <= full and width - frames < max(MIN_WIDTH, frames / 4)
        assert width % MIN_WIDTH == 0 or width == full
    assert widths == sorted(widths) and len(set(widths)) == 16
    assert all(encoder.batch_rows(w) * w <= 2048 or encoder.batch_rows(w) == 1 for w in set(widths))


def test_embed_file_cuts_windows_like_extract(encoder, mn04_model, shared: Path) -> None:
    path = shared / "data" / LONG_CLIP  # 29.5 s: windows of 10, 10 and 9.5 s (952 mel frames)
    frames, tags = encoder.embed_file(path)
    mels = [encoder.mel(w) for w in _windows(load_audio(path, RATE, AUDIO.window_seconds), 30.0)]
    assert [mel.shape[1] for mel in mels] == [1000, 1000, 952]
    expected_frames, expected_tags = _reference(mn04_model, mels)
    _assert_same(frames, expected_frames)
    np.testing.assert_allclose(tags, expected_tags, rtol=0, atol=1e-5)


def test_clip_embedder_refuses_other_weights(mn04_weights: Path, tmp_path: Path) -> None:
    info = CacheInfo("mn04_as", "0" * 64, 384, 527, RATE, AUDIO.frame_rate, AUDIO.window_seconds, 0)
    with pytest.raises(AmrError, match=r"index.h5: was built from mn04_as embeddings with weights sha256 000000000000"):
        ClipEmbedder.for_collection(info, tmp_path / "index.h5", mn04_weights)


def test_clip_embedder_loads_the_encoder_on_the_device_asked_for(mn04_weights: Path, tmp_path: Path) -> None:
    """Query by example's audio model runs on the --device given: "cpu:0" (not the default "cpu") reaches the encoder."""
    weights = resolve_weights("mn04_as", mn04_weights)
    info = CacheInfo("mn04_as", weights.sha256, 384, 527, RATE, AUDIO.frame_rate, AUDIO.window_seconds, 0)
    index = SimpleNamespace(path=tmp_path / "index.h5", header=SimpleNamespace(audio=info))
    assert ClipEmbedder.for_collection(info, index.path, mn04_weights).encoder.device == torch.device("cpu")
    embedder = ClipEmbedder.for_index(index, mn04_weights, device="cpu:0")
    assert embedder.encoder.device == torch.device("cpu:0") != torch.device("cpu")
    assert {p.device for p in embedder.encoder.model.parameters()} == {torch.device("cpu")}
