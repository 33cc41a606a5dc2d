"""EfficientAT's MobileNetV3 audio tagger, written to load its official checkpoints strictly.

EfficientAT (Schmid, Koutini, Widmer, ICASSP 2023) trains torchvision's
MobileNetV3-Large on one-channel log-mel spectrograms (see `amr.audio.frontend.MelFrontEnd`)
with channel squeeze-excitation and an MLP head over the 527 AudioSet classes,
at widths 0.1 ... 4.0. Module names mirror EfficientAT's `models/mn/model.py`,
so a released state dict loads key for key.

Besides the clip logits, `forward` returns the last feature map averaged over
frequency: one embedding per output frame (32 mel frames, 0.32 s, each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from amr.audio.audioset import NUM_CLASSES, audioset_class_names  # noqa: F401  (audioset_class_names: re-exported)


class Block(NamedTuple):
    """One inverted-residual block: depthwise `kernel`, `expanded` inner channels, `out` channels."""

    kernel: int
    expanded: int
    out: int
    squeeze_excite: bool
    activation: str  # "RE": ReLU, "HS": Hardswish
    stride: int


# MobileNetV3-Large (Howard et al. 2019, Table 1), channels before width scaling.
FIRST_CHANNELS = 16
BLOCKS: tuple[Block, ...] = (
    Block(3, 16, 16, False, "RE", 1),
    Block(3, 64, 24, False, "RE", 2),
    Block(3, 72, 24, False, "RE", 1),
    Block(5, 72, 40, True, "RE", 2),
    Block(5, 120, 40, True, "RE", 1),
    Block(5, 120, 40, True, "RE", 1),
    Block(3, 240, 80, False, "HS", 2),
    Block(3, 200, 80, False, "HS", 1),
    Block(3, 184, 80, False, "HS", 1),
    Block(3, 184, 80, False, "HS", 1),
    Block(3, 480, 112, True, "HS", 1),
    Block(3, 672, 112, True, "HS", 1),
    Block(5, 672, 160, True, "HS", 2),
    Block(5, 960, 160, True, "HS", 1),
    Block(5, 960, 160, True, "HS", 1),
)
LAST_CONV_EXPANSION = 6  # features.16 has 6 x the last block's channels
HEAD_CHANNELS = 1280
FIRST_STRIDE = 2
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
DROPOUT = 0.2
# Mel frames per output frame: the product of the stride-2 layers' strides.
TIME_STRIDE = FIRST_STRIDE * math.prod(spec.stride for spec in BLOCKS)


@dataclass(frozen=True)
class ModelDims:
    """What it takes to rebuild a checkpoint's network."""

    width: float
    num_classes: int = NUM_CLASSES


def embed_dim_for(width: float) -> int:
    """Channels of a frame embedding at ``width``: the last conv's, 6 x the last block's (384 for mn04)."""
    return LAST_CONV_EXPANSION * make_divisible(BLOCKS[-1].out * width)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10 % below `value` (torchvision's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn(
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    activation: type[nn.Module] | None = None,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Scale each channel by a gate computed from its mean over frequency and time."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = make_divisible(channels // 4)
        gate = nn.ModuleDict({"fc1": nn.Linear(channels, squeezed), "fc2": nn.Linear(squeezed, channels)})
        # EfficientAT keeps a list of concurrent variants (channel, frequency, time);
        # its released checkpoints use the channel one only, stored at index 0.
        self.conc_se_layers = nn.ModuleList([gate])

    def forward(self, x: Tensor) -> Tensor:
        gate = self.conc_se_layers[0]
        scale = torch.sigmoid(gate["fc2"](torch.relu(gate["fc1"](x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]


class InvertedResidual(nn.Module):
    """1x1 expansion (when it widens), depthwise conv, optional squeeze-excitation, 1x1 projection."""

    def __init__(self, c_in: int, spec: Block, width: float) -> None:
        super().__init__()
        expanded = make_divisible(spec.expanded * width)
        c_out = make_divisible(spec.out * width)
        activation = nn.Hardswish if spec.activation == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(_conv_bn(c_in, expanded, 1, activation=activation))
        layers.append(_conv_bn(expanded, expanded, spec.kernel, spec.stride, groups=expanded, activation=activation))
        if spec.squeeze_excite:
            layers.append(SqueezeExcite(expanded))
        layers.append(_conv_bn(expanded, c_out, 1))
        self.block = nn.Sequential(*layers)
        self.residual = spec.stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return y + x if self.residual else y


class MobileNetV3(nn.Module):
    """EfficientAT `mnXX` at a given width: (B, 1, 128, T) log-mels -> frame embeddings and clip logits."""

    def __init__(self, width: float, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.dims = ModelDims(width, num_classes)
        channels = make_divisible(FIRST_CHANNELS * width)
        layers: list[nn.Module] = [_conv_bn(1, channels, 3, FIRST_STRIDE, activation=nn.Hardswish)]
        for spec in BLOCKS:
            layers.append(InvertedResidual(channels, spec, width))
            channels = make_divisible(spec.out * width)
        self._embed_dim = embed_dim_for(width)
        layers.append(_conv_bn(channels, self._embed_dim, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        hidden = make_divisible(HEAD_CHANNELS * width)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(self._embed_dim, hidden),
            nn.Hardswish(),
            nn.Dropout(DROPOUT),
            nn.Linear(hidden, num_classes),
        )

    @property
    def num_classes(self) -> int:
        return self.dims.num_classes

    @property
    def embed_dim(self) -> int:
        """Channels of a frame embedding (384 for mn04, 3840 for mn40)."""
        return self._embed_dim

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """mel (B, 1, 128, T) -> frames (B, T', C) with T' = output_frames(T), logits (B, num_classes).

        The logits come from the mean of all frames, which is EfficientAT's global
        average pool. A caller that pads a batch should instead pass the mean of
        each clip's valid frames to `head`.
        """
        frames = self.features(mel).mean(dim=2).transpose(1, 2)
        return frames, self.head(frames.mean(dim=1))

    def head(self, pooled: Tensor) -> Tensor:
        """Clip logits (B, num_classes) from pooled frame embeddings (B, C)."""
        return self.classifier(pooled[:, :, None, None])


def output_frames(mel_frames: int) -> int:
    """Frames the network leaves of `mel_frames` input frames (each stride-2 layer halves, rounding up)."""
    for stride in (FIRST_STRIDE, *(spec.stride for spec in BLOCKS)):
        mel_frames = (mel_frames - 1) // stride + 1
    return mel_frames
