"""Decoding, resampling, the log-mel front end and SpecAugment."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from amr import audio
from amr.audio import SAMPLE_RATE, MelFrontEnd, iter_windows, load_audio, mel_frames, spec_augment
from amr.errors import AmrError


def _sine(rate: int, seconds: float, freq: float = 1000.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / len(x)


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rate", "channels", "seconds"),
    [
        ("stereo 44k.wav", 44100, 2, 1.5),
        ("six channels 96k.flac", 96000, 6, 0.7),
        ("telephone 8k.ogg", 8000, 1, 1.2),
        ("régen über – ½.wav", 22050, 1, 0.9),
        ("already 32k.flac", 32000, 1, 0.5),
    ],
)
def test_generated_files_decode_to_32k_mono(tmp_path: Path, name: str, rate: int, channels: int, seconds: float) -> None:
    path = tmp_path / name
    sf.write(path, _sine(rate, seconds, channels=channels), rate)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == round(sf.info(path).frames * SAMPLE_RATE / rate)
    assert abs(_peak_hz(x) - 1000.0) < 5
    assert 0.3 < np.abs(x).max() < 0.6


def test_channels_are_averaged(tmp_path: Path) -> None:
    left = _sine(44100, 0.5)
    path = tmp_path / "opposite.wav"
    sf.write(path, np.stack([left, -left], axis=1), 44100, subtype="FLOAT")
    assert np.abs(load_audio(path)).max() < 1e-6


def test_silence_decodes(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000), 16000)
    x = load_audio(path)
    assert len(x) == 32000 and not x.any()


def test_long_files_come_in_ten_second_windows(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, _sine(44100, 25.0), 44100)
    lengths = [len(w) for w in iter_windows(path)]
    assert lengths == [320000, 320000, 160000]
    assert [len(w) for w in iter_windows(path, window_seconds=4.0)] == [128000] * 6 + [32000]


@pytest.mark.parametrize("suffix", [".wav", ".ogg"])
def test_start_window_seeks(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"long{suffix}"
    sf.write(path, np.random.default_rng(0).standard_normal(8000 * 25) * 0.1, 8000)
    whole = list(iter_windows(path))
    later = list(iter_windows(path, start_window=1))
    assert len(whole) == 3 and len(later) == 2
    for a, b in zip(whole[1:], later):
        np.testing.assert_array_equal(a, b)
    assert list(iter_windows(path, start_window=3)) == []  # past the end: nothing, no error


def test_start_window_in_an_mp3(shared: Path) -> None:
    path = shared / "data/sounds/audio/bigsoundbank-dog.mp3"  # 6 s at 48 kHz
    whole = list(iter_windows(path, window_seconds=2.0))
    later = list(iter_windows(path, window_seconds=2.0, start_window=1))
    assert [len(w) for w in later] == [len(w) for w in whole[1:]] == [64000, 63647]
    for a, b in zip(whole[1:], later):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000, 96000])
def test_resampling_matches_torchaudio(rate: int) -> None:
    x = np.random.default_rng(rate).standard_normal(rate + 77).astype(np.float32)
    reference = torchaudio.functional.resample(torch.from_numpy(x), rate, SAMPLE_RATE).numpy()
    y = audio._resampler(rate)(x)
    assert len(y) == round(len(x) * SAMPLE_RATE / rate)
    np.testing.assert_allclose(y, reference[: len(y)], atol=1e-4)  # float32 filters; unit-variance input


def test_direct_interpolation_is_the_same_filter() -> None:
    """The path for rates like 11127 Hz equals torchaudio where torchaudio is practical."""
    x = np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    reference = torchaudio.functional.resample(torch.from_numpy(x), 22050, SAMPLE_RATE).numpy()
    y = audio._interpolate(x, 22050)
    np.testing.assert_allclose(y, reference[: len(y)], atol=2e-4)


@pytest.mark.parametrize("rate", [11127, 22254])
def test_awkward_rates_resample_correctly(rate: int) -> None:
    x = _sine(rate, 1.0, freq=440.0).astype(np.float32)
    y = audio._resampler(rate)(x)
    assert len(y) == round(len(x) * SAMPLE_RATE / rate)
    expected = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(len(y)) / SAMPLE_RATE)
    np.testing.assert_allclose(y[500:-500], expected[500:-500], atol=1e-3)


@pytest.mark.parametrize(
    "relative",
    [
        "sounds/audio/bigsoundbank-dog.mp3",
        "sfx-dev/audio/antum_mod_sounds/sounds_rain_medium.ogg",  # 44.1 kHz stereo, 15 s
        "sfx-dev/audio/tuxpaint_stamps/food__fruit__apple_red.ogg",  # 22254 Hz
        "sfx-dev/audio/tuxpaint_stamps/town__roadsigns__xing_school.ogg",  # 11127 Hz
        "sfx-dev/audio/qabcs_noises/xun.ogg",  # 96 kHz
        "sfx-dev/audio/debian_game_sfx/flightgear__Sounds__engstart.wav",  # 8 kHz unsigned 8 bit, 0.2 s
    ],
)
def test_real_files_decode(shared: Path, relative: str) -> None:
    path = shared / "data" / relative
    windows = list(iter_windows(path))
    assert all(0 < len(w) <= 320000 and w.dtype == np.float32 for w in windows)
    assert all(len(w) == 320000 for w in windows[:-1])
    x = np.concatenate(windows)
    info = sf.info(path)
    if info.format != "MP3":  # libsndfile only estimates an MP3's length
        assert len(x) == round(info.frames * SAMPLE_RATE / info.samplerate)
    assert np.isfinite(x).all() and np.abs(x).max() > 1e-3


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AmrError, match="nothing here.wav: no such audio file"):
        load_audio(tmp_path / "nothing here.wav")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(AmrError, match=r"empty.ogg: empty file \(0 bytes\)"):
        load_audio(_write_bytes(tmp_path / "empty.ogg", b""))


def test_not_audio(tmp_path: Path) -> None:
    with pytest.raises(AmrError, match="notes.wav: not a readable audio file"):
        load_audio(_write_bytes(tmp_path / "notes.wav", b"these are my notes, not a sound\n" * 20))


def test_truncated_flac(tmp_path: Path) -> None:
    whole = tmp_path / "whole.flac"
    sf.write(whole, np.random.default_rng(0).standard_normal(44100) * 0.1, 44100)
    data = whole.read_bytes()
    cut = _write_bytes(tmp_path / "cut.flac", data[: len(data) // 2])
    with pytest.raises(AmrError, match="cut.flac: corrupt or truncated audio"):
        load_audio(cut)


def test_no_samples(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0), 16000)
    with pytest.raises(AmrError, match="zero.wav: no audio samples"):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "bad.wav"
    sf.write(path, np.array([0.0, bad, 0.1] * 100, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AmrError, match="bad.wav: NaN or infinite samples"):
        load_audio(path)


# --- front end --------------------------------------------------------------------------------


def _kaldi_mel_basis(n_mels: int = 128, n_fft: int = 1024, rate: int = 32000, f_max: float = 15000.0) -> np.ndarray:
    """Triangles equally spaced on Kaldi's mel scale, 0 Hz ... f_max, over the n_fft // 2 + 1 bins (last one 0)."""

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    step = (mel(f_max) - mel(0.0)) / (n_mels + 1)
    bins = mel(np.arange(n_fft // 2) * rate / n_fft)
    basis = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = mel(0.0) + step * np.array([m, m + 1, m + 2])
        rising = (bins - left) / (centre - left)
        falling = (right - bins) / (right - centre)
        basis[m, : n_fft // 2] = np.clip(np.minimum(rising, falling), 0.0, None)
    return basis


def _reference_log_mel(waveform: np.ndarray) -> np.ndarray:
    """EfficientAT's eval-mode front end written out step by step in float64."""
    x = waveform[1:] - 0.97 * waveform[:-1]
    x = np.pad(x, 512, mode="reflect")
    window = np.zeros(1024)
    window[112 : 112 + 800] = np.hanning(800)  # symmetric Hann, centred in the FFT frame
    n_frames = (len(x) - 1024) // 320 + 1
    frames = np.stack([x[i * 320 : i * 320 + 1024] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, 513)
    mel = _kaldi_mel_basis() @ power.T
    return (np.log(mel + 1e-5) + 4.5) / 5.0


def test_front_end_matches_reference() -> None:
    rng = np.random.default_rng(1)
    waveforms = [rng.standard_normal(32000) * 0.1, _sine(32000, 1.0, freq=3000.0) + rng.standard_normal(32000) * 1e-3]
    batch = torch.tensor(np.stack(waveforms), dtype=torch.float32)
    with torch.inference_mode():
        mel = MelFrontEnd()(batch)
    assert mel.shape == (2, 1, 128, mel_frames(32000)) == (2, 1, 128, 100)
    for i, waveform in enumerate(batch.double().numpy()):
        np.testing.assert_allclose(mel[i, 0].numpy(), _reference_log_mel(waveform), atol=1e-4)


def test_mel_basis_is_torchaudios_kaldi_banks() -> None:
    np.testing.assert_allclose(MelFrontEnd().mel_basis.numpy(), _kaldi_mel_basis(), atol=5e-5)  # float32 there


@pytest.mark.parametrize("n", [100, 513, 514, 3200, 32000, 320000, 320001])
def test_frame_count(n: int) -> None:
    with torch.inference_mode():
        mel = MelFrontEnd()(torch.zeros(1, n))
    assert mel.shape[-1] == mel_frames(n)
    if n >= 514:
        assert mel_frames(n) == (n - 1) // 320 + 1
    assert torch.isfinite(mel).all()


# --- SpecAugment ------------------------------------------------------------------------------


def test_spec_augment_masks_one_band_and_one_span() -> None:
    mel = torch.randn(8, 1, 128, 1000, generator=torch.Generator().manual_seed(0))
    original = mel.clone()
    out = spec_augment(mel, torch.Generator().manual_seed(3))
    assert torch.equal(mel, original)  # input untouched
    masked = out != mel
    assert torch.all(out[masked] == audio.MASK_VALUE)
    for example in masked[:, 0]:
        bins = example.all(dim=1).nonzero().flatten()
        frames = example.all(dim=0).nonzero().flatten()
        assert len(bins) <= 48 and len(frames) <= 192
        for run in (bins, frames):  # contiguous
            assert len(run) == 0 or run[-1] - run[0] + 1 == len(run)
        untouched = ~example
        untouched[bins] = True
        untouched[:, frames] = True
        assert untouched.all()  # nothing masked outside the band and the span
    assert masked.any(dim=(1, 2, 3)).sum() >= 6


def test_spec_augment_is_reproducible() -> None:
    mel = torch.randn(4, 1, 128, 300)
    a = spec_augment(mel, torch.Generator().manual_seed(7))
    b = spec_augment(mel, torch.Generator().manual_seed(7))
    c = spec_augment(mel, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_spec_augment_takes_a_single_spectrogram() -> None:
    mel = torch.randn(128, 1000)
    out = spec_augment(mel, torch.Generator().manual_seed(1))
    masked = out != mel
    assert out.shape == mel.shape
    assert masked.all(dim=1).sum() <= 48 and masked.all(dim=0).sum() <= 192
    assert torch.equal(out, spec_augment(mel[None, None], torch.Generator().manual_seed(1))[0, 0])


def test_spec_augment_keeps_most_of_a_short_clip() -> None:
    mel = torch.randn(64, 1, 128, 11)  # 0.1 s
    masked_frames = (spec_augment(mel, torch.Generator().manual_seed(0)) != mel).all(dim=2)
    assert masked_frames.sum(dim=-1).max() <= math.floor(11 / 5)
