"""Audio decoding and EfficientAT's log-mel front end.

Files are decoded with soundfile (WAV, FLAC, OGG, MP3, ...) in windows of at
most 10 s, mixed to mono and resampled to 32 kHz, so an hour-long recording is
never held in memory at once. `MelFrontEnd` turns batches of such windows into
the (B, 1, 128, T) log-mels the EfficientAT checkpoints were trained on;
`spec_augment` masks them for augmented training views.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import cache, partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor, nn

from amr.errors import AmrError

SAMPLE_RATE = 32000
WINDOW_SECONDS = 10.0

# EfficientAT's AugmentMelSTFT settings (eval mode).
N_FFT = 1024
WIN_LENGTH = 800
HOP_LENGTH = 320
N_MELS = 128
F_MIN = 0.0
F_MAX = 15000.0
PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5
# "Fast normalisation": (log-mel + 4.5) / 5 puts AudioSet log-mels near zero mean, unit spread.
NORM_SHIFT = 4.5
NORM_SCALE = 5.0
# EfficientAT masks the log-mel with 0 before normalising; the same value after it.
MASK_VALUE = NORM_SHIFT / NORM_SCALE

# Resampling uses torchaudio's filter (Hann-windowed sinc, 6 zero crossings,
# roll-off 0.99), which has one row per output phase of the reduced rate ratio:
# 320 for 44.1 kHz but 32000 (1.4 GB, half a minute to build) for 11127 Hz.
# Ratios with more phases than this are interpolated sample by sample instead.
_MAX_RESAMPLE_PHASES = 2048
_MIN_GEMM_PHASES = 64
_LOWPASS_ZERO_CROSSINGS = 6
_ROLLOFF = 0.99


def iter_windows(
    path: Path, window_seconds: float = WINDOW_SECONDS, start_window: int = 0
) -> Iterator[np.ndarray]:
    """Yield the file as mono float32 windows at 32 kHz, each at most `window_seconds` long.

    A window of n source samples at rate sr becomes exactly round(n * 32000 / sr)
    samples. Windows are resampled independently (each is also embedded on its own).
    `start_window` skips that many windows by seeking, so workers can split a long
    file; from a start past the end nothing is yielded, while a file with no samples
    at all is an error.
    """
    path = Path(path)
    sound = _open(path)
    with sound:
        block = max(1, round(window_seconds * sound.samplerate))
        resample = _resampler(sound.samplerate)
        empty = True
        try:
            if start_window:
                if start_window * block >= sound.frames:
                    return
                sound.seek(start_window * block)
            while len(data := sound.read(block, dtype="float32")):
                if data.ndim == 2:
                    data = _mix_down(data)
                if not np.isfinite(data).all():
                    raise AmrError(f"{path}: NaN or infinite samples")
                window = resample(data)
                if len(window):  # a last sample or two can round to nothing
                    empty = False
                    yield window
        except sf.SoundFileError as e:
            raise AmrError(f"{path}: corrupt or truncated audio ({_reason(e)})") from e
    if empty and not start_window:
        raise AmrError(f"{path}: no audio samples")


def _mix_down(data: np.ndarray) -> np.ndarray:
    """Mean over channels; column by column, as numpy's mean over a short axis is ~20x slower."""
    mono = data[:, 0].copy()
    for channel in range(1, data.shape[1]):
        mono += data[:, channel]
    mono /= data.shape[1]
    return mono


def load_audio(path: Path) -> np.ndarray:
    """The whole file as one mono float32 array at 32 kHz (for short files and queries by example)."""
    return np.concatenate(list(iter_windows(path)))


def _open(path: Path) -> sf.SoundFile:
    if not path.is_file():
        raise AmrError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise AmrError(f"{path}: empty file (0 bytes)")
    try:
        return sf.SoundFile(path)
    except sf.SoundFileError as e:
        raise AmrError(f"{path}: not a readable audio file ({_reason(e)})") from e


def _reason(error: Exception) -> str:
    """libsndfile's own words, without soundfile's repetition of the path."""
    return getattr(error, "error_string", None) or str(error)


@cache
def _resampler(rate: int) -> Callable[[np.ndarray], np.ndarray]:
    if rate == SAMPLE_RATE:
        return _unchanged
    if SAMPLE_RATE // math.gcd(rate, SAMPLE_RATE) > _MAX_RESAMPLE_PHASES:
        return partial(_interpolate, rate=rate)
    return _Polyphase(rate)


def _unchanged(x: np.ndarray) -> np.ndarray:
    return x


def _resampled_length(n: int, rate: int) -> int:
    return round(n * SAMPLE_RATE / rate)


class _Polyphase:
    """torchaudio's Resample filter applied as one matrix product over input blocks.

    Resample convolves with one filter row per output phase at a stride of one
    input period; the same sums as a GEMM over unfolded blocks run several times
    faster on CPU. Few-phase ratios (48 kHz: 2 phases) are widened to several
    periods per block so that the product stays large enough to be efficient.
    """

    def __init__(self, rate: int) -> None:
        resample = torchaudio.transforms.Resample(
            rate, SAMPLE_RATE, lowpass_filter_width=_LOWPASS_ZERO_CROSSINGS, rolloff=_ROLLOFF
        )
        kernel = resample.kernel[:, 0]  # (phases, taps), taps = 2 * width + period
        phases, taps = kernel.shape
        period = rate // math.gcd(rate, SAMPLE_RATE)
        periods = -(-_MIN_GEMM_PHASES // phases)
        table = torch.zeros(periods * phases, taps + (periods - 1) * period)
        for p in range(periods):
            table[p * phases : (p + 1) * phases, p * period : p * period + taps] = kernel
        self.table = table.T.contiguous()  # (block, outputs per block)
        self.step = periods * period
        self.pad = resample.width
        self.rate = rate

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            padded = nn.functional.pad(torch.from_numpy(x), (self.pad, self.pad + self.step))
            blocks = padded.unfold(0, self.table.shape[0], self.step)
            y = (blocks @ self.table).reshape(-1)
            return y[: _resampled_length(len(x), self.rate)].numpy()


def _interpolate(x: np.ndarray, rate: int, chunk: int = 1 << 15) -> np.ndarray:
    """Band-limited interpolation at each output instant: torchaudio's Hann-windowed
    sinc filter, evaluated per output sample instead of tabulated per phase."""
    cutoff = min(rate, SAMPLE_RATE) * _ROLLOFF  # Hz
    half = math.ceil(_LOWPASS_ZERO_CROSSINGS * rate / cutoff)  # taps on each side
    signal = torch.from_numpy(np.pad(x, (half, half + 1)))
    taps = torch.arange(-half + 1, half + 1)
    n_out = _resampled_length(len(x), rate)
    out = np.empty(n_out, dtype=np.float32)
    for start in range(0, n_out, chunk):
        j = torch.arange(start, min(start + chunk, n_out), dtype=torch.int64)
        left = j * rate // SAMPLE_RATE  # input sample at or before output j
        frac = (j * rate % SAMPLE_RATE).double() / SAMPLE_RATE
        offset = taps[None, :] - frac[:, None]  # input index minus exact position, in input samples
        t = (offset * (cutoff / rate)).clamp(-_LOWPASS_ZERO_CROSSINGS, _LOWPASS_ZERO_CROSSINGS)
        window = torch.cos(t * (math.pi / (2 * _LOWPASS_ZERO_CROSSINGS))) ** 2
        weights = (torch.sinc(t) * window * (cutoff / rate)).float()
        neighbours = signal[(left + half)[:, None] + taps[None, :]]
        out[start : start + len(j)] = (neighbours * weights).sum(dim=1).numpy()
    return out


# Reflect padding needs more than N_FFT // 2 samples; shorter inputs are zero-padded to this.
_MIN_SAMPLES = N_FFT // 2 + 2


def mel_frames(n_samples: int) -> int:
    """Log-mel frames of a 32 kHz signal of `n_samples` (pre-emphasis drops one sample)."""
    return (max(n_samples, _MIN_SAMPLES) - 1) // HOP_LENGTH + 1


class MelFrontEnd(nn.Module):
    """EfficientAT's AugmentMelSTFT in eval mode: (B, N) waveforms at 32 kHz -> (B, 1, 128, T) log-mels.

    T = mel_frames(N) = (N - 1) // 320 + 1 (1000 frames for 10 s).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(WIN_LENGTH, periodic=False), persistent=False)
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
            N_MELS, N_FFT, float(SAMPLE_RATE), F_MIN, F_MAX, 100.0, -500.0, 1.0
        )
        # Kaldi's banks cover N_FFT // 2 bins; the Nyquist bin gets weight 0.
        self.register_buffer("mel_basis", nn.functional.pad(banks, (0, 1)), persistent=False)

    def forward(self, waveforms: Tensor) -> Tensor:
        if waveforms.shape[-1] < _MIN_SAMPLES:
            waveforms = nn.functional.pad(waveforms, (0, _MIN_SAMPLES - waveforms.shape[-1]))
        # EfficientAT's conv1d with kernel [-0.97, 1], written as a difference: same values, ~50x faster on CPU.
        x = waveforms[:, 1:] - PREEMPHASIS * waveforms[:, :-1]
        spec = torch.stft(
            x,
            N_FFT,
            hop_length=HOP_LENGTH,
            win_length=WIN_LENGTH,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_basis, power)
        return torch.log(mel + LOG_OFFSET).add_(NORM_SHIFT).div_(NORM_SCALE)[:, None]


def spec_augment(
    mel: Tensor, generator: torch.Generator, freq_mask: int = 48, time_mask: int = 192
) -> Tensor:
    """Mask one band of mel bins and one span of frames (EfficientAT trains with at most 48 / 192).

    mel: (..., F, T) from MelFrontEnd, e.g. (128, T) or (B, 1, 128, T); every
    leading index gets its own masks. Each width is drawn uniformly from 0 ... max,
    its start uniformly among the positions where it fits. The time mask is at most
    a fifth of the frames (192 of 1000 at 10 s), so short clips keep most of their
    content. Masked cells get EfficientAT's mask value. Returns a new tensor; the
    same generator state gives the same masks.
    """
    *lead, n_bins, n_frames = mel.shape
    count = math.prod(lead)
    bins = _span_mask(count, n_bins, freq_mask, generator).view(*lead, n_bins, 1)
    frames = _span_mask(count, n_frames, min(time_mask, n_frames // 5), generator).view(*lead, 1, n_frames)
    return mel.masked_fill((bins | frames).to(mel.device), MASK_VALUE)


def _span_mask(count: int, size: int, max_width: int, generator: torch.Generator) -> Tensor:
    """(count, size) bool: one random contiguous span of 0 ... max_width cells per row."""
    width = torch.randint(0, max_width + 1, (count, 1), generator=generator)
    start = (torch.rand(count, 1, generator=generator) * (size - width + 1)).long()
    position = torch.arange(size)[None, :]
    return (position >= start) & (position < start + width)
