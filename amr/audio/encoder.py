"""The audio encoder: log-mel windows -> MobileNetV3 frame embeddings and AudioSet tags.

`amr extract` and query by example both go through `AudioEncoder.encode`, so a
clip is embedded the same way wherever it is embedded.

**Exact at every length.** A clip is cut into windows of the model's length
(10 s); the last one is usually shorter. To batch windows of different lengths
they are zero-padded to a few bucket widths, and the padding is made provably
irrelevant (`MaskedMobileNet`): MobileNetV3 mixes time steps only in its
first convolution, its depthwise convolutions and the means of its
squeeze-excitation gates (1x1 convolutions, activations, residual sums and the
mean over frequency act per time step). The input of every time-mixing
convolution is zeroed beyond the window's valid length, which is exactly what
that convolution's own zero padding shows it when the window runs alone; each
gate averages over valid time steps only; the valid length is tracked through
each stride-2 layer (ceil(T / 2) for kernel k and padding (k - 1) // 2); and
only valid output frames are kept. A window's frames are then those of the
pretrained model run on that window alone, up to float rounding, whatever it
is batched with; the tests compare against the plain model.

**Repeatable.** Every batch of a bucket width has the same shape (missing rows
are zeros), and every operation computes a row the same way at any row of the
batch (see `_gate` for the two that did not), so a window gives bit-identical
frames whichever windows share its batch, in which order clips finish
decoding, or where an interrupted run resumed. This holds on one machine and
library build; across thread counts it held in the tests (1 and 2 threads),
but other kernels may be picked at other counts, so across machines or thread
counts expect agreement to float32 rounding (about 1e-6 relative), which can
move a stored float16 value by one step.

Tags are sigmoid(head(mean of the clip's frames)), the clip-level logits of
EfficientAT for a single window; a long recording's segments (amr.segments)
get theirs the same way from their own frames (`AudioEncoder.segments`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from amr.audio.frontend import MelFrontEnd, iter_windows
from amr.audio.mobilenet import InvertedResidual, MobileNetV3, SqueezeExcite
from amr.audio.weights import AudioSettings, ResolvedWeights, load_audio_model, resolve_weights
from amr.cache import CacheInfo, Segment
from amr.errors import AmrError
from amr.segments import SegmentGrid

# Bucket widths (mel frames) step by a quarter octave and are multiples of
# MIN_WIDTH: padding costs at most a quarter of a window's compute (above 128
# frames), and a run has few distinct batch shapes (16 for 10 s windows), so
# batches fill up and each shape's kernels are prepared once. Finer buckets
# (1/8 octave, multiples of 16: 32 shapes) measured no faster on the shared data.
MIN_WIDTH = 32
STEPS_PER_OCTAVE = 4
# Mel frames per batch (two full windows; 64 rows of the narrowest bucket).
# Larger batches are no faster per frame on a CPU; smaller ones waste less at
# the end of a run, where every bucket's last batch is topped up with zeros.
BATCH_FRAMES = 2048


class AudioEncoder:
    """A checkpoint ready to embed: its front end, its masked BatchNorm-folded
    network (for frames) and its classifier head (for tags)."""

    def __init__(self, model: MobileNetV3, audio: AudioSettings, device: torch.device | str = "cpu"):
        """The network and head run on `device` (moving `model` there); the front end on the CPU."""
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.audio = audio
        self.front_end = MelFrontEnd(audio.mel)
        self.network = MaskedMobileNet(self.model)

    @classmethod
    def load(cls, weights: ResolvedWeights, device: torch.device | str = "cpu") -> AudioEncoder:
        return cls(load_audio_model(weights), weights.audio, device)

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    def bucket_width(self, frames: int) -> int:
        """The padded width of a window of `frames` mel frames."""
        full = self.audio.window_frames
        if frames >= full:
            return frames
        octave = 1 << (frames.bit_length() - 1)  # the power of two at or below frames
        step = max(MIN_WIDTH, octave // STEPS_PER_OCTAVE)
        return min(full, -(-frames // step) * step)

    def batch_rows(self, width: int) -> int:
        """Rows of every batch of bucket `width`."""
        return max(1, BATCH_FRAMES // width)

    def mel(self, window: np.ndarray) -> np.ndarray:
        """(n_mels, T) log-mel of one window of samples."""
        with torch.inference_mode():
            return self.front_end(torch.from_numpy(window)[None])[0, 0].numpy()

    def encode(self, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The (t, C) float32 frames of each (n_mels, T) log-mel window, in input order,
        t = ceil(T / model stride): those of the pretrained model run on each window alone.

        Windows are grouped by bucket width and run in batches of `batch_rows(width)`;
        a caller that hands over exactly one batch's windows of one width (as
        amr.extraction's batcher does) gets exactly one forward pass."""
        out: list[np.ndarray | None] = [None] * len(mels)
        by_width: dict[int, list[int]] = defaultdict(list)
        for i, mel in enumerate(mels):
            by_width[self.bucket_width(mel.shape[1])].append(i)
        for width, members in by_width.items():
            rows = self.batch_rows(width)
            for start in range(0, len(members), rows):
                chunk = members[start : start + rows]
                for i, frames in zip(chunk, self._forward(width, rows, [mels[i] for i in chunk])):
                    out[i] = frames
        return out  # type: ignore[return-value]

    def _forward(self, width: int, rows: int, mels: list[np.ndarray]) -> list[np.ndarray]:
        batch = torch.zeros(rows, 1, self.audio.mel.n_mels, width)
        lengths = torch.full((rows,), width)
        for r, mel in enumerate(mels):
            batch[r, 0, :, : mel.shape[1]] = torch.from_numpy(mel)
            lengths[r] = mel.shape[1]
        with torch.inference_mode():
            frames, valid = self.network(batch.to(self.device), lengths.to(self.device))
        frames, valid = frames.cpu().numpy(), valid.cpu()
        return [frames[r, : valid[r]].copy() for r in range(len(mels))]

    def tags(self, frames: np.ndarray) -> np.ndarray:
        """Tag probabilities (num_classes,) of a clip from its (T, C) frames."""
        with torch.inference_mode():
            logits = self.model.head(torch.from_numpy(np.ascontiguousarray(frames, np.float32)).to(self.device).mean(0, keepdim=True))
        return torch.sigmoid(logits)[0].cpu().numpy()

    def segments(self, frames: np.ndarray, grid: SegmentGrid) -> list[Segment] | None:
        """A long clip's segments (the grid's spans of its (T, C) frames), each with
        ``tags`` of its own frames; None for a clip the grid keeps whole (its one
        segment is the clip, with the clip's tags)."""
        spans = grid.spans(len(frames), self.audio.frames_per_window, self.audio.window_seconds)
        if len(spans) == 1:
            return None
        return [Segment(start, end, self.tags(frames[start:end])) for start, end in spans]

    def embed_file(self, path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One clip's (T, C) float32 frames and tag probabilities, as `amr extract` computes them.

        Streams: windows are decoded and embedded one batch at a time (the
        same values in any company, see the module docstring), so memory
        holds a batch of log-mels and the frames, not the whole file's
        log-mels. A clip longer than ``max_seconds`` raises AudioError
        (``too-long``; see amr.audio.frontend.iter_windows)."""
        windows = iter_windows(Path(path), self.audio.sample_rate, self.audio.window_seconds, max_seconds=max_seconds)
        per_batch = self.batch_rows(self.audio.window_frames)
        frames: list[np.ndarray] = []
        while batch := [self.mel(window) for window in islice(windows, per_batch)]:
            frames += self.encode(batch)
        joined = np.concatenate(frames)
        return joined, self.tags(joined)


class _AudioHeader(Protocol):
    audio: CacheInfo


class _Indexed(Protocol):
    """What a ClipEmbedder needs of an amr.index.reader.Index (structural: the encoder sits below the index)."""

    path: Path
    header: _AudioHeader


class ClipEmbedder:
    """Query by example: audio files -> frames and tag probabilities exactly as
    `amr extract` computed them for a collection (same weights, same encoder)."""

    def __init__(self, encoder: AudioEncoder, max_seconds: float | None = None):
        """Clips longer than ``max_seconds`` (None: no limit) are refused."""
        self.encoder = encoder
        self.max_seconds = max_seconds

    @classmethod
    def for_index(
        cls, index: _Indexed, weights_path: Path | None, max_seconds: float | None = None, device: torch.device | str = "cpu"
    ) -> ClipEmbedder:
        """The audio model the index's caches were extracted with, on ``device``, refused if the weights found differ."""
        return cls.for_collection(index.header.audio, index.path, weights_path, max_seconds, device)

    @classmethod
    def for_collection(
        cls, info: CacheInfo, source: Path, weights_path: Path | None, max_seconds: float | None = None, device: torch.device | str = "cpu"
    ) -> ClipEmbedder:
        """The audio model `info` records (of a cache or an index at `source`), its network on ``device``."""
        weights = resolve_weights(info.audio_model, weights_path)
        if weights.sha256 != info.weights_sha256:
            raise AmrError(
                f"{source}: was built from {info.audio_model} embeddings with weights sha256 "
                f"{info.weights_sha256[:12]}, the weights found have {weights.sha256[:12]}; "
                "pass the original weights file with --audio-weights"
            )
        return cls(AudioEncoder.load(weights, device), max_seconds)

    def embed(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(T, C) float32 frames and tag probabilities of the clip."""
        return self.encoder.embed_file(path, self.max_seconds)


@dataclass(frozen=True)
class _Conv:
    """A convolution with its BatchNorm folded in, then its activation (in place), if any."""

    conv: nn.Conv2d
    activation: Callable[[Tensor], Tensor] | None

    def __call__(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.activation(y) if self.activation is not None else y


@dataclass(frozen=True)
class _Block:
    expand: _Conv | None
    depthwise: _Conv
    gate: tuple[nn.Linear, nn.Linear] | None  # squeeze-excitation fc1, fc2
    project: _Conv
    residual: bool


class MaskedMobileNet:
    """MobileNetV3's features with BatchNorm folded and padding masked (see the
    module docstring): (B, 1, n_mels, W) zero-padded log-mels and their valid
    lengths (B,) -> frames (B, W', C) and the valid frame counts (B,).

    Reads the modules of a loaded MobileNetV3 (whose own forward stays the
    plain, strict EfficientAT one). Runs in channels-last memory order with
    in-place activations: about twice as fast on a CPU as the plain layout."""

    def __init__(self, model: MobileNetV3):
        features = list(model.features)
        self.first = _folded(features[0])
        self.blocks = [_block(block) for block in features[1:-1]]
        self.last = _folded(features[-1])

    def __call__(self, mel: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = self.first(mel.contiguous(memory_format=torch.channels_last))  # zero padding: already masked
        lengths = _strided(lengths, self.first.conv)
        mask = _time_mask(lengths, x.shape[-1])
        for block in self.blocks:
            y = block.expand(x).mul_(mask) if block.expand is not None else x * mask
            y = block.depthwise(y)
            if block.depthwise.conv.stride[1] > 1:
                lengths = _strided(lengths, block.depthwise.conv)
                mask = _time_mask(lengths, y.shape[-1])
            if block.gate is not None:
                mean = (y.sum(dim=2, keepdim=True) * mask).sum(dim=(2, 3)) / (lengths[:, None] * y.shape[2])
                y.mul_(_gate(*block.gate, mean)[:, :, None, None])
            y = block.project(y)
            x = y.add_(x) if block.residual else y
        frames = self.last(x).mean(dim=2).transpose(1, 2)
        return frames, lengths


def _gate(fc1: nn.Linear, fc2: nn.Linear, mean: Tensor) -> Tensor:
    """sigmoid(fc2(relu(fc1(mean)))) of (B, C) channel means, each row computed
    the same way wherever it sits in the batch.

    Two things would otherwise round a row differently at another row position
    (found when one window in a few hundred changed with its batch company): a
    matrix product over all rows lets BLAS block over rows, so each row is its
    own (1 x C) (C x S) product of one shape (`_rowwise`); and torch's vectorised
    sigmoid leaves a tensor's last elements (fewer than two vector widths) to a
    scalar loop that differs in the last bit, so it runs on a copy padded to a
    multiple of 64 elements, which keeps every element in the vector loop."""
    hidden = torch.relu(_rowwise(fc1, mean))
    logits = _rowwise(fc2, hidden).reshape(-1)
    padded = nn.functional.pad(logits, (0, -len(logits) % _SIGMOID_BLOCK))
    return torch.sigmoid(padded)[: len(logits)].view(mean.shape)


def _rowwise(linear: nn.Linear, x: Tensor) -> Tensor:
    """linear(x) for (B, C) x as B separate products of one shape (a batched matrix product)."""
    weight = linear.weight.T
    return torch.bmm(x[:, None, :], weight.expand(len(x), *weight.shape))[:, 0] + linear.bias


_SIGMOID_BLOCK = 64  # elements: two vectors of 32 floats covers AVX-512 and every narrower ISA


def _strided(lengths: Tensor, conv: nn.Conv2d) -> Tensor:
    """Valid output steps of a convolution over `lengths` valid input steps: ceil(T / stride)
    for kernel k with padding (k - 1) // 2, as each of MobileNetV3's has."""
    stride = conv.stride[1]
    return (lengths + stride - 1) // stride


def _time_mask(lengths: Tensor, width: int) -> Tensor:
    """(B, 1, 1, W) float: 1 on each row's valid time steps, 0 on its padding."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).float()[:, None, None, :]


def _folded(conv_bn: nn.Sequential) -> _Conv:
    """mobilenet._conv_bn's Sequential(conv, batch norm, activation?) as one folded convolution."""
    conv = fuse_conv_bn_eval(conv_bn[0], conv_bn[1]).to(memory_format=torch.channels_last)
    activation: Callable[[Tensor], Tensor] | None = None
    if len(conv_bn) > 2:
        activation = torch.relu_ if isinstance(conv_bn[2], nn.ReLU) else _hardswish_
    return _Conv(conv, activation)


def _hardswish_(x: Tensor) -> Tensor:
    return nn.functional.hardswish(x, inplace=True)


def _block(block: InvertedResidual) -> _Block:
    """The parts of an InvertedResidual: [expansion], depthwise, [squeeze-excitation], projection."""
    layers = list(block.block)
    gate = None
    if isinstance(layers[-2], SqueezeExcite):
        se = layers.pop(-2).conc_se_layers[0]
        gate = (se["fc1"], se["fc2"])
    expand = _folded(layers.pop(0)) if len(layers) == 3 else None
    depthwise, project = layers
    return _Block(expand, _folded(depthwise), gate, _folded(project), block.residual)
