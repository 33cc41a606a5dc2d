"""Decoding, resampling, the log-mel front end and SpecAugment."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from amr.audio import frontend as audio
from amr.audio.frontend import AudioError, MelFrontEnd, spec_augment
from amr.audio.weights import EFFICIENTAT_AUDIO

MEL = EFFICIENTAT_AUDIO.mel
SAMPLE_RATE = MEL.sample_rate
U = 2.0**-24  # float32 unit roundoff: every float32 operation is exact to a relative U


def iter_windows(path: Path, window_seconds: float = 10.0, start_window: int = 0):
    return audio.iter_windows(path, SAMPLE_RATE, window_seconds, start_window)


def load_audio(path: Path) -> np.ndarray:
    return audio.load_audio(path, SAMPLE_RATE, EFFICIENTAT_AUDIO.window_seconds)


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
    # the spectral peak lies in the bin holding 1 kHz: one bin is SAMPLE_RATE / len(x) <= 2 Hz here
    assert abs(_peak_hz(x) - 1000.0) <= 1.5 * SAMPLE_RATE / len(x)
    # amplitude 0.5, not rescaled: lossy Vorbis moves the peak by a few percent, resampling by ~1e-3
    assert 0.4 < np.abs(x).max() < 0.6


def test_channels_are_averaged(tmp_path: Path) -> None:
    left = _sine(44100, 0.5)
    path = tmp_path / "opposite.wav"
    sf.write(path, np.stack([left, -left], axis=1), 44100, subtype="FLOAT")
    assert not load_audio(path).any()  # a + (-a) is exactly 0 in floating point, and resamples to 0


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


def _rounding_bound(x: np.ndarray, taps: torch.Tensor) -> float:
    """Bound on the float32 rounding error of an FIR filter's output: a sum of
    n nonzero products w_i x_i (w_i float32 taps) is exact to
    (n + 2) U sum |w_i x_i| <= (n + 2) U max|x| max_phase sum_i |w_i| (products,
    accumulation and the final rounding; Higham, Accuracy and Stability, 3.1)."""
    nonzero = int((taps != 0).sum(dim=-1).max())
    return (nonzero + 2) * U * float(np.abs(x).max()) * float(taps.abs().sum(dim=-1).max())


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000, 96000])
def test_resampling_is_torchaudios_filter(rate: int) -> None:
    """The polyphase product computes torchaudio's Resample filter: against the
    same taps applied in float64 it differs by float32 rounding alone."""
    x = np.random.default_rng(rate).standard_normal(rate + 77).astype(np.float32)
    resample = torchaudio.transforms.Resample(rate, SAMPLE_RATE, lowpass_filter_width=6, rolloff=0.99)
    reference = resample.to(torch.float64)(torch.from_numpy(x).double()).numpy()
    y = audio._resampler(rate, SAMPLE_RATE)(x)
    assert len(y) == round(len(x) * SAMPLE_RATE / rate)
    np.testing.assert_allclose(y, reference[: len(y)], rtol=0, atol=_rounding_bound(x, resample.kernel))


def test_direct_interpolation_is_the_same_filter() -> None:
    """The path for rates like 11127 Hz evaluates torchaudio's filter at each exact
    output instant: equal to torchaudio in float64 (exact phases) up to rounding of
    its taps (U each) and of its float32 sums."""
    x = np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    reference = torchaudio.functional.resample(torch.from_numpy(x).double(), 22050, SAMPLE_RATE).numpy()
    y = audio._interpolate(x, 22050, SAMPLE_RATE)
    taps = torchaudio.transforms.Resample(22050, SAMPLE_RATE, lowpass_filter_width=6, rolloff=0.99).kernel
    np.testing.assert_allclose(y, reference[: len(y)], rtol=0, atol=2 * _rounding_bound(x, taps))


@pytest.mark.parametrize("rate", [11127, 22254])
def test_awkward_rates_resample_correctly(rate: int) -> None:
    x = _sine(rate, 1.0, freq=440.0).astype(np.float32)
    y = audio._resampler(rate, SAMPLE_RATE)(x)
    assert len(y) == round(len(x) * SAMPLE_RATE / rate)
    expected = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(len(y)) / SAMPLE_RATE)
    # The filter's own approximation error (a Hann-windowed sinc of 6 zero crossings:
    # passband ripple, measured 3e-4 at 22254 Hz), not rounding (< 1e-5): 1e-3 of full scale.
    np.testing.assert_allclose(y[500:-500], expected[500:-500], rtol=0, atol=1e-3)


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


def _fails(path: Path, kind: str, message: str) -> None:
    with pytest.raises(AudioError, match=message) as error:
        load_audio(path)
    assert error.value.kind == kind


def test_missing_file(tmp_path: Path) -> None:
    _fails(tmp_path / "nothing here.wav", "missing", "nothing here.wav: no such audio file")


def test_empty_file(tmp_path: Path) -> None:
    _fails(_write_bytes(tmp_path / "empty.ogg", b""), "empty", r"empty.ogg: empty file \(0 bytes\)")


@pytest.mark.parametrize("name", ["notes.wav", "notes.mp3", "notes.ogg"])
def test_not_audio(tmp_path: Path, name: str) -> None:
    """A text file is "not an audio file", never libsndfile's "possibly a pipe?"."""
    path = _write_bytes(tmp_path / name, b"these are my notes, not a sound\n" * 20)
    with pytest.raises(AudioError, match=f"{name}: not an audio file: libsndfile recognises no audio format in it$") as error:
        load_audio(path)
    assert error.value.kind == "not-audio" and "pipe" not in str(error.value)


def test_truncated_flac(tmp_path: Path) -> None:
    whole = tmp_path / "whole.flac"
    sf.write(whole, np.random.default_rng(0).standard_normal(44100) * 0.1, 44100)
    data = whole.read_bytes()
    cut = _write_bytes(tmp_path / "cut.flac", data[: len(data) // 2])
    _fails(cut, "corrupt", "cut.flac: corrupt or truncated audio")


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT", "PCM_U8"])
def test_truncated_wav_is_refused_with_both_lengths(tmp_path: Path, subtype: str) -> None:
    """Header says 5 s, the file holds 2 s: refused (libsndfile alone would decode the 2 s silently)."""
    whole = tmp_path / "whole.wav"
    sf.write(whole, np.random.default_rng(0).standard_normal(5 * 8000) * 0.1, 8000, subtype=subtype)
    data = whole.read_bytes()
    header = len(data) - 5 * 8000 * sf.info(whole).channels * {"PCM_16": 2, "FLOAT": 4, "PCM_U8": 1}[subtype]
    cut = _write_bytes(tmp_path / "cut.wav", data[: header + (len(data) - header) * 2 // 5])
    assert len(np.concatenate(list(audio.iter_windows(whole, 8000, 10.0)))) == 40000
    _fails(cut, "truncated", r"cut.wav: truncated: the header declares 5.00 s of audio, the file holds 2.00 s .*not embedded")


def test_unknown_wav_length_is_not_a_truncation(tmp_path: Path) -> None:
    """A writer streaming to a pipe leaves the data size 0xFFFFFFFF: libsndfile reads to the end."""
    path = tmp_path / "streamed.wav"
    sf.write(path, np.random.default_rng(0).standard_normal(8000) * 0.1, 8000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at : at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert len(audio.load_audio(path, 8000, 10.0)) == 8000


def test_no_samples(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0), 16000)
    _fails(path, "no-samples", "zero.wav: no audio samples")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "bad.wav"
    sf.write(path, np.array([0.0, bad, 0.1] * 100, dtype=np.float32), 16000, subtype="FLOAT")
    _fails(path, "non-finite", "bad.wav: NaN or infinite samples")


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


_WINDOW = np.zeros(1024)
_WINDOW[112 : 112 + 800] = np.hanning(800)  # symmetric Hann, centred in the FFT frame


def _reference_stages(waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EfficientAT's eval-mode front end up to the spectrum, in float64: the windowed
    pre-emphasised frames z (T, 1024), the same frames of |x_n| + 0.97 |x_{n-1}| (the
    magnitudes pre-emphasis rounds against) and the spectrum X = rfft(z) (T, 513)."""
    frames = []
    for signal in (waveform[1:] - 0.97 * waveform[:-1], np.abs(waveform[1:]) + 0.97 * np.abs(waveform[:-1])):
        x = np.pad(signal, 512, mode="reflect")
        n_frames = (len(x) - 1024) // 320 + 1
        frames.append(np.stack([x[i * 320 : i * 320 + 1024] * _WINDOW for i in range(n_frames)]))
    return frames[0], frames[1], np.fft.rfft(frames[0], axis=1)


def _reference_log_mel(waveform: np.ndarray) -> np.ndarray:
    """EfficientAT's eval-mode front end written out step by step in float64."""
    _, _, spectrum = _reference_stages(waveform)
    mel = _kaldi_mel_basis() @ (np.abs(spectrum) ** 2).T
    return (np.log(mel + 1e-5) + 4.5) / 5.0


def _front_end_error_bound(waveform: np.ndarray, mel_basis: np.ndarray) -> np.ndarray:
    """Per value, a bound on |float32 front end - float64 reference| (128, T), from the arithmetic:

    * pre-emphasis and window in float32 (the 0.97 and the Hann window themselves rounded):
      each frame value is off by at most 8 U (|x_n| + 0.97 |x_{n-1}|) w_n;
    * a float32 FFT of N = 1024 points is exact to ||dX||_2 <= rho ||X||_2, rho =
      log2(N) eta / (1 - log2(N) eta), eta = mu + gamma_4 (sqrt 2 + mu) with twiddle error
      mu <= 2 U (Higham, Accuracy and Stability, Thm 24.2); the input error adds
      sqrt(N) ||dz||_2 (Parseval). One bin is off by at most D, the frame's whole error norm;
    * power |X|^2: off by 2 |X| D + D^2, plus 3 U of rounding;
    * the mel sum: the float32 bank's own deviation |dW| (exact, measured here) times the power,
      the bank times the power's error, and (bins + 1) U of summation;
    * log(mel + 1e-5) turns an absolute error dm into dm / (mel + 1e-5): a small mel energy
      next to a loud bin of the same frame amplifies the FFT's error, which is why a fixed
      absolute tolerance failed on some CPUs; then (+ 4.5) / 5 and its rounding."""
    z, magnitudes, spectrum = _reference_stages(waveform)
    n = z.shape[1]
    mu = 2 * U
    eta = mu + 4 * U / (1 - 4 * U) * (math.sqrt(2) + mu)
    rho = math.log2(n) * eta / (1 - math.log2(n) * eta)
    dz = 8 * U * np.linalg.norm(magnitudes, axis=1)
    bin_error = (rho * (np.linalg.norm(spectrum, axis=1) + math.sqrt(n) * dz) + math.sqrt(n) * dz)[:, None]
    power = np.abs(spectrum) ** 2
    power_error = (2 * np.abs(spectrum) * bin_error + bin_error**2) * (1 + 3 * U) + 3 * U * power
    reference_basis = _kaldi_mel_basis()
    mel = reference_basis @ power.T
    bins = int((reference_basis > 0).sum(axis=1).max())
    mel_error = (
        np.abs(mel_basis - reference_basis) @ (power + power_error).T
        + reference_basis @ power_error.T
        + (bins + 1) * U * (reference_basis @ (power + power_error).T)
    )
    log_error = mel_error / (mel + 1e-5 - mel_error) + 2 * U * np.abs(np.log(mel + 1e-5)) + U
    return log_error / 5 + 2 * U * np.abs((np.log(mel + 1e-5) + 4.5) / 5)


def test_front_end_matches_reference() -> None:
    rng = np.random.default_rng(1)
    waveforms = [rng.standard_normal(32000) * 0.1, _sine(32000, 1.0, freq=3000.0) + rng.standard_normal(32000) * 1e-3]
    batch = torch.tensor(np.stack(waveforms), dtype=torch.float32)
    front_end = MelFrontEnd(MEL)
    with torch.inference_mode():
        mel = front_end(batch)
    assert mel.shape == (2, 1, 128, MEL.frames(32000)) == (2, 1, 128, 100)
    basis = front_end.mel_basis.double().numpy()
    for i, waveform in enumerate(batch.double().numpy()):  # the float32 input, exactly, in float64
        error = np.abs(mel[i, 0].double().numpy() - _reference_log_mel(waveform))
        bound = _front_end_error_bound(waveform, basis)
        assert (error <= bound).all(), f"max error {error.max():.2e} at a bound of {bound.flat[np.argmax(error)]:.2e}"


def test_mel_basis_is_torchaudios_kaldi_banks() -> None:
    """torchaudio computes the triangles in float32: mel values up to M = mel(15 kHz) ~ 2.8e3
    carry ~3 U M of rounding, and a weight is a difference of them over a step of
    ~22 mel: off by at most 2 * 6 U M / step + U."""
    mel_max = 1127.0 * math.log(1.0 + 15000.0 / 700.0)
    step = mel_max / 129
    np.testing.assert_allclose(MelFrontEnd(MEL).mel_basis.numpy(), _kaldi_mel_basis(), rtol=0, atol=12 * U * mel_max / step + U)


@pytest.mark.parametrize("n", [100, 513, 514, 3200, 32000, 320000, 320001])
def test_frame_count(n: int) -> None:
    with torch.inference_mode():
        mel = MelFrontEnd(MEL)(torch.zeros(1, n))
    assert mel.shape[-1] == MEL.frames(n)
    if n >= 514:
        assert MEL.frames(n) == (n - 1) // 320 + 1
    assert torch.isfinite(mel).all()


# --- SpecAugment ------------------------------------------------------------------------------


def test_spec_augment_masks_one_band_and_one_span() -> None:
    mel = torch.randn(8, 1, 128, 1000, generator=torch.Generator().manual_seed(0))
    original = mel.clone()
    out = spec_augment(mel, torch.Generator().manual_seed(3), MEL.mask_value)
    assert torch.equal(mel, original)  # input untouched
    masked = out != mel
    assert torch.all(out[masked] == MEL.mask_value)
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
    a = spec_augment(mel, torch.Generator().manual_seed(7), MEL.mask_value)
    b = spec_augment(mel, torch.Generator().manual_seed(7), MEL.mask_value)
    c = spec_augment(mel, torch.Generator().manual_seed(8), MEL.mask_value)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_spec_augment_takes_a_single_spectrogram() -> None:
    mel = torch.randn(128, 1000)
    out = spec_augment(mel, torch.Generator().manual_seed(1), MEL.mask_value)
    masked = out != mel
    assert out.shape == mel.shape
    assert masked.all(dim=1).sum() <= 48 and masked.all(dim=0).sum() <= 192
    assert torch.equal(out, spec_augment(mel[None, None], torch.Generator().manual_seed(1), MEL.mask_value)[0, 0])


def test_spec_augment_keeps_most_of_a_short_clip() -> None:
    mel = torch.randn(64, 1, 128, 11)  # 0.1 s
    masked_frames = (spec_augment(mel, torch.Generator().manual_seed(0), MEL.mask_value) != mel).all(dim=2)
    assert masked_frames.sum(dim=-1).max() <= math.floor(11 / 5)


def _silence_flac(path: Path, seconds: float, rate: int = 8000, state_length: bool = True) -> Path:
    """A FLAC of silence, written a minute at a time; without ``state_length`` its
    STREAMINFO says 0 samples (unknown: a stream that does not state its length)."""
    with sf.SoundFile(path, "w", rate, 1, format="FLAC") as f:
        for _ in range(math.ceil(seconds / 60)):
            f.write(np.zeros(60 * rate, np.float32))
    if not state_length:
        data = bytearray(path.read_bytes())
        assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first: total samples in its bytes 13 (low 4 bits) to 17
        data[8 + 13] &= 0xF0
        data[8 + 14 : 8 + 18] = bytes(4)
        path.write_bytes(bytes(data))
    return path


def test_a_clip_whose_header_states_more_than_the_limit_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    """Hours of silence compress to a small FLAC: the duration, not the size, decides."""
    long = _silence_flac(tmp_path / "six hours.flac", 6 * 3600, rate=1000)
    assert long.stat().st_size < 2 << 20

    def no_decoding(*args, **kwargs):
        raise AssertionError("nothing may be decoded")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    with pytest.raises(AudioError, match=r"6:00:00 long, over the limit of 300 s") as refused:
        next(audio.iter_windows(long, SAMPLE_RATE, 10.0, max_seconds=300))
    assert refused.value.kind == "too-long" and str(long) in str(refused.value)


def test_a_clip_of_unstated_length_is_refused_once_its_samples_pass_the_limit(tmp_path: Path) -> None:
    unstated = _silence_flac(tmp_path / "unstated.flac", 120, state_length=False)
    assert sf.info(str(unstated)).frames == audio._UNKNOWN_LENGTH
    windows = audio.iter_windows(unstated, SAMPLE_RATE, 10.0, max_seconds=55)
    decoded = []
    with pytest.raises(AudioError, match="longer than the limit of 55 s") as refused:
        decoded.extend(windows)
    assert refused.value.kind == "too-long" and len(decoded) == 5  # the windows up to the limit, no more


def test_samples_far_beyond_full_scale_are_refused_and_loud_float_audio_is_not(tmp_path: Path) -> None:
    x = _sine(SAMPLE_RATE, 1.0).astype(np.float32)
    sf.write(tmp_path / "loud.wav", 16 * x, SAMPLE_RATE, subtype="FLOAT")  # +24 dB: a float master's overs
    assert np.isfinite(load_audio(tmp_path / "loud.wav")).all()
    for value, kind in ((1e20, "out-of-range"), (1001.0, "out-of-range"), (np.inf, "non-finite")):
        y = x.copy()
        y[100] = value
        sf.write(tmp_path / "bad.wav", y, SAMPLE_RATE, subtype="FLOAT")
        with pytest.raises(AudioError) as refused:
            load_audio(tmp_path / "bad.wav")
        assert refused.value.kind == kind
