"""Audio decoding and EfficientAT's log-mel front end.

Files are decoded with soundfile (WAV, FLAC, OGG, MP3, ...) in windows of a
few seconds (the model's window length), mixed to mono and resampled to the
model's rate, so an hour-long recording is never held in memory at once.
`MelFrontEnd` turns batches of such windows into the (B, 1, n_mels, T)
log-mels a checkpoint was trained on; `spec_augment` masks them for augmented
training views. The numbers (rate, FFT size, hop, mel bands, ...) are a
`MelSettings` that travels with the weights (amr.audio.weights), never constants here.

A file that cannot be embedded raises `AudioError`, whose ``kind`` names the
problem for the failures report: ``missing``, ``empty``, ``not-audio``,
``corrupt``, ``truncated``, ``non-finite``, ``out-of-range``, ``no-samples``
or ``too-long`` (longer than a caller's limit: query clips are limited).

Absurd samples are refused, not embedded: a NaN or infinite sample
(``non-finite``), or one beyond ±MAX_SAMPLE (``out-of-range``). Decoded audio
has full scale ±1; only float files can exceed it, and real ones do so by a
few dB (overs of a float master, +24 dB at the very most). Samples 60 dB above
full scale (1000) are not a recording but garbage read as floats (random bytes
as float data are mostly far larger: half of all bit patterns exceed 1, many
1e30), and such values overflow the log-mel's float32 power (|x| of about
1e14 and above) into infinities and then NaN embeddings. The bound is far from
both: no real float recording is refused, and every sample that passes gives
finite log-mels.

Truncated files are refused, not embedded. A WAV whose header declares more
sample data than the file holds (an interrupted copy or download) would
otherwise decode to its first part without a word: it raises a ``truncated``
AudioError naming both lengths, so the clip goes to the failures report
instead of the cache, and every rerun reports it again until the file is
replaced. Embedding the decodable part instead would store a clip that
silently differs from the recording its metadata describes. (A truncated
FLAC or MP3 is detected by the decoder itself and reported as ``corrupt``;
libsndfile only estimates an MP3's length, so its header is not compared.)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor, nn

from amr.errors import AmrError


@dataclass(frozen=True)
class MelSettings:
    """A log-mel front end (EfficientAT's AugmentMelSTFT in eval mode): the
    values each checkpoint was trained with live in its weights entry."""

    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    preemphasis: float
    log_offset: float  # log(mel + offset)
    norm_shift: float  # (log-mel + shift) / scale ...
    norm_scale: float  # ... puts AudioSet log-mels near zero mean, unit spread

    @property
    def min_samples(self) -> int:
        """Reflect padding needs more than n_fft // 2 samples; shorter inputs are zero-padded to this."""
        return self.n_fft // 2 + 2

    def frames(self, n_samples: int) -> int:
        """Log-mel frames of a signal of `n_samples` (pre-emphasis drops one sample)."""
        return (max(n_samples, self.min_samples) - 1) // self.hop_length + 1

    @property
    def mask_value(self) -> float:
        """EfficientAT masks the log-mel with 0 before normalising; the same value after it."""
        return self.norm_shift / self.norm_scale


class AudioError(AmrError):
    """A file that cannot be embedded; ``kind`` names the problem (see the module docstring)."""

    def __init__(self, path: Path, kind: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.kind = kind


# Resampling uses torchaudio's filter (Hann-windowed sinc, 6 zero crossings,
# roll-off 0.99), which has one row per output phase of the reduced rate ratio:
# 320 for 44.1 -> 32 kHz but 32000 (1.4 GB, half a minute to build) for 11127 Hz.
# Ratios with more phases than this are interpolated sample by sample instead.
_MAX_RESAMPLE_PHASES = 2048
_UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's frame count of a stream that does not state its length (a FLAC with 0 samples in STREAMINFO)
MAX_SAMPLE = 1000.0  # the loudest sample embedded: 60 dB above full scale (see the module docstring)
_MIN_GEMM_PHASES = 64
_LOWPASS_ZERO_CROSSINGS = 6
_ROLLOFF = 0.99


def iter_windows(
    path: Path, sample_rate: int, window_seconds: float, start_window: int = 0, max_seconds: float | None = None
) -> Iterator[np.ndarray]:
    """Yield the file as mono float32 windows at `sample_rate`, each at most `window_seconds` long.

    A window of n source samples at rate sr becomes exactly round(n * sample_rate / sr)
    samples. Windows are resampled independently (each is also embedded on its own).
    `start_window` skips that many windows by seeking, so workers can split a long
    file; from a start past the end nothing is yielded, while a file with no samples
    at all is an error. A file longer than `max_seconds` raises a ``too-long``
    AudioError: at once when its header says so (nothing is decoded), else
    when its decoded samples pass the limit (a header that understates).
    """
    path = Path(path)
    sound = _open(path)
    with sound:
        block = max(1, round(window_seconds * sound.samplerate))
        resample = _resampler(sound.samplerate, sample_rate)
        limit = math.inf if max_seconds is None else max_seconds * sound.samplerate  # source samples
        if sound.frames > limit and sound.frames != _UNKNOWN_LENGTH:
            raise AudioError(path, "too-long", f"{_duration(sound.frames / sound.samplerate)} long, over the limit of {max_seconds:g} s")
        empty = True
        read = 0
        try:
            if start_window:
                if start_window * block >= sound.frames:
                    return
                sound.seek(start_window * block)
            while len(data := sound.read(block, dtype="float32")):
                read += len(data)
                if read > limit:
                    raise AudioError(path, "too-long", f"longer than the limit of {max_seconds:g} s")
                _check_samples(path, data)
                if data.ndim == 2:
                    data = _mix_down(data)
                window = resample(data)
                if len(window):  # a last sample or two can round to nothing
                    empty = False
                    yield window
        except sf.SoundFileError as e:
            raise AudioError(path, "corrupt", f"corrupt or truncated audio ({_reason(e)})") from e
    if empty and not start_window:
        raise AudioError(path, "no-samples", "no audio samples")


def _duration(seconds: float) -> str:
    """h:mm:ss (or m:ss) of a duration."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _check_samples(path: Path, data: np.ndarray) -> None:
    """Refuse NaN, infinite and out-of-range samples (beyond ±MAX_SAMPLE; see the module docstring)."""
    peak = float(np.abs(data).max())
    if peak <= MAX_SAMPLE:
        return
    if not np.isfinite(data).all():
        raise AudioError(path, "non-finite", "NaN or infinite samples; not embedded")
    raise AudioError(
        path, "out-of-range", f"samples up to {peak:.3g}, beyond ±{MAX_SAMPLE:g} (full scale is ±1): not a recording; not embedded"
    )


def _mix_down(data: np.ndarray) -> np.ndarray:
    """Mean over channels; column by column, as numpy's mean over a short axis is ~20x slower."""
    mono = data[:, 0].copy()
    for channel in range(1, data.shape[1]):
        mono += data[:, channel]
    mono /= data.shape[1]
    return mono


def load_audio(path: Path, sample_rate: int, window_seconds: float) -> np.ndarray:
    """The whole file as one mono float32 array at `sample_rate` (for short files): its
    windows of `window_seconds`, each resampled on its own as iter_windows does, joined."""
    return np.concatenate(list(iter_windows(path, sample_rate, window_seconds)))


def _open(path: Path) -> sf.SoundFile:
    if not path.is_file():
        raise AudioError(path, "missing", "no such audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty", "empty file (0 bytes)")
    try:
        sound = sf.SoundFile(path)
    except sf.SoundFileError as e:
        # For a file of no known format libsndfile's message can read "... not a
        # regular file (possibly a pipe?)"; the file was checked to be a regular one.
        raise AudioError(path, "not-audio", "not an audio file: libsndfile recognises no audio format in it") from e
    if sound.format == "WAV" and (lengths := _wav_truncation(path)):
        sound.close()
        declared, present = lengths
        raise AudioError(
            path,
            "truncated",
            f"truncated: the header declares {declared:.2f} s of audio, the file holds {present:.2f} s "
            "(an incomplete copy or download?); not embedded",
        )
    return sound


def _wav_truncation(path: Path) -> tuple[float, float] | None:
    """(declared, present) seconds when a RIFF WAVE file's data chunk declares more
    whole frames than the file holds; None otherwise. Sizes 0 and 0xFFFFFFFF mean
    "unknown" (a writer that streamed to a pipe) and are not a truncation."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        rate = block_align = 0
        while len(chunk := f.read(8)) == 8:
            name, length = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
            if name == b"fmt " and length >= 16:
                fmt = f.read(16)
                rate, block_align = struct.unpack(endian + "I", fmt[4:8])[0], struct.unpack(endian + "H", fmt[12:14])[0]
                f.seek(length - 16 + length % 2, 1)
            elif name == b"data":
                if not rate or not block_align or length in (0, 0xFFFFFFFF):
                    return None
                declared, present = length // block_align, (size - f.tell()) // block_align
                return (declared / rate, present / rate) if declared > present else None
            else:
                f.seek(length + length % 2, 1)
    return None


def _reason(error: Exception) -> str:
    """libsndfile's own words, without soundfile's repetition of the path."""
    return getattr(error, "error_string", None) or str(error)


@cache
def _resampler(rate: int, target: int) -> Callable[[np.ndarray], np.ndarray]:
    if rate == target:
        return _unchanged
    if target // math.gcd(rate, target) > _MAX_RESAMPLE_PHASES:
        return partial(_interpolate, rate=rate, target=target)
    return _Polyphase(rate, target)


def _unchanged(x: np.ndarray) -> np.ndarray:
    return x


def _resampled_length(n: int, rate: int, target: int) -> int:
    return round(n * target / rate)


class _Polyphase:
    """torchaudio's Resample filter applied as matrix products over input blocks.

    Resample convolves with one filter row per output phase at a stride of one
    input period; the same sums as a GEMM over unfolded blocks run several times
    faster on CPU. Few-phase ratios (48 kHz: 2 phases) are widened to several
    periods per block so that the product stays large enough to be efficient.
    Each phase's taps are nonzero over only ~2 x 6 zero crossings of a block of
    hundreds of samples (17 of 459 for 44.1 kHz), so the outputs are computed in
    groups of consecutive phases, each from the span of the block its taps
    cover: the same nonzero products, a fraction of the multiplications.
    """

    _GROUP = 32  # outputs per product

    def __init__(self, rate: int, target: int) -> None:
        resample = torchaudio.transforms.Resample(rate, target, lowpass_filter_width=_LOWPASS_ZERO_CROSSINGS, rolloff=_ROLLOFF)
        kernel = resample.kernel[:, 0]  # (phases, taps), taps = 2 * width + period
        phases, taps = kernel.shape
        period = rate // math.gcd(rate, target)
        periods = -(-_MIN_GEMM_PHASES // phases)
        table = torch.zeros(periods * phases, taps + (periods - 1) * period)
        for p in range(periods):
            table[p * phases : (p + 1) * phases, p * period : p * period + taps] = kernel
        self.groups = []  # (first input of the block, last + 1, outputs' table (span, group))
        for start in range(0, len(table), self._GROUP):
            rows = table[start : start + self._GROUP]
            used = rows.any(dim=0).nonzero().flatten()
            first, last = int(used[0]), int(used[-1]) + 1
            self.groups.append((first, last, rows[:, first:last].T.contiguous()))
        self.block = table.shape[1]
        self.step = periods * period
        self.pad = resample.width
        self.rate, self.target = rate, target

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            padded = nn.functional.pad(torch.from_numpy(x), (self.pad, self.pad + self.step))
            blocks = padded.unfold(0, self.block, self.step)
            y = torch.cat([blocks[:, first:last] @ table for first, last, table in self.groups], dim=1).reshape(-1)
            return y[: _resampled_length(len(x), self.rate, self.target)].numpy()


def _interpolate(x: np.ndarray, rate: int, target: int, chunk: int = 1 << 15) -> np.ndarray:
    """Band-limited interpolation at each output instant: torchaudio's Hann-windowed
    sinc filter, evaluated per output sample instead of tabulated per phase."""
    cutoff = min(rate, target) * _ROLLOFF  # Hz
    half = math.ceil(_LOWPASS_ZERO_CROSSINGS * rate / cutoff)  # taps on each side
    signal = torch.from_numpy(np.pad(x, (half, half + 1)))
    taps = torch.arange(-half + 1, half + 1)
    n_out = _resampled_length(len(x), rate, target)
    out = np.empty(n_out, dtype=np.float32)
    for start in range(0, n_out, chunk):
        j = torch.arange(start, min(start + chunk, n_out), dtype=torch.int64)
        left = j * rate // target  # input sample at or before output j
        frac = (j * rate % target).double() / target
        offset = taps[None, :] - frac[:, None]  # input index minus exact position, in input samples
        t = (offset * (cutoff / rate)).clamp(-_LOWPASS_ZERO_CROSSINGS, _LOWPASS_ZERO_CROSSINGS)
        window = torch.cos(t * (math.pi / (2 * _LOWPASS_ZERO_CROSSINGS))) ** 2
        weights = (torch.sinc(t) * window * (cutoff / rate)).float()
        neighbours = signal[(left + half)[:, None] + taps[None, :]]
        out[start : start + len(j)] = (neighbours * weights).sum(dim=1).numpy()
    return out


class MelFrontEnd(nn.Module):
    """EfficientAT's AugmentMelSTFT in eval mode: (B, N) waveforms -> (B, 1, n_mels, T) log-mels,
    T = settings.frames(N) ((N - 1) // hop + 1: 1000 frames for 10 s at 32 kHz, hop 320)."""

    def __init__(self, settings: MelSettings) -> None:
        super().__init__()
        self.settings = s = settings
        self.register_buffer("window", torch.hann_window(s.win_length, periodic=False), persistent=False)
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(s.n_mels, s.n_fft, float(s.sample_rate), s.f_min, s.f_max, 100.0, -500.0, 1.0)
        # Kaldi's banks cover n_fft // 2 bins; the Nyquist bin gets weight 0.
        self.register_buffer("mel_basis", nn.functional.pad(banks, (0, 1)), persistent=False)

    def forward(self, waveforms: Tensor) -> Tensor:
        s = self.settings
        if waveforms.shape[-1] < s.min_samples:
            waveforms = nn.functional.pad(waveforms, (0, s.min_samples - waveforms.shape[-1]))
        # EfficientAT's conv1d with kernel [-0.97, 1], written as a difference: same values, ~50x faster on CPU.
        x = waveforms[:, 1:] - s.preemphasis * waveforms[:, :-1]
        spec = torch.stft(
            x,
            s.n_fft,
            hop_length=s.hop_length,
            win_length=s.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_basis, power)
        return torch.log(mel + s.log_offset).add_(s.norm_shift).div_(s.norm_scale)[:, None]


def spec_augment(mel: Tensor, generator: torch.Generator, fill: float, freq_mask: int = 48, time_mask: int = 192) -> Tensor:
    """Mask one band of mel bins and one span of frames with `fill` (EfficientAT
    trains with at most 48 bins / 192 frames, filled with MelSettings.mask_value).

    mel: (..., F, T) from MelFrontEnd, e.g. (128, T) or (B, 1, 128, T); every
    leading index gets its own masks. Each width is drawn uniformly from 0 ... max,
    its start uniformly among the positions where it fits. The time mask is at most
    a fifth of the frames (192 of 1000 at 10 s), so short clips keep most of their
    content. Returns a new tensor; the same generator state gives the same masks.
    """
    *lead, n_bins, n_frames = mel.shape
    count = math.prod(lead)
    bins = _span_mask(count, n_bins, freq_mask, generator).view(*lead, n_bins, 1)
    frames = _span_mask(count, n_frames, min(time_mask, n_frames // 5), generator).view(*lead, 1, n_frames)
    return mel.masked_fill((bins | frames).to(mel.device), fill)


def _span_mask(count: int, size: int, max_width: int, generator: torch.Generator) -> Tensor:
    """(count, size) bool: one random contiguous span of 0 ... max_width cells per row."""
    width = torch.randint(0, max_width + 1, (count, 1), generator=generator)
    start = (torch.rand(count, 1, generator=generator) * (size - width + 1)).long()
    position = torch.arange(size)[None, :]
    return (position >= start) & (position < start + width)
