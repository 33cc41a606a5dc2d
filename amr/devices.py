"""Where models run (``auto``: CUDA when available, ``cpu`` or ``cuda``), and in which mode.

Light at import (torch loads in the functions that need it), so that the
CLI takes its ``--device`` choices from `Device` at start-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING

from amr.errors import AmrError

if TYPE_CHECKING:
    import torch
    from torch import nn


class Device(StrEnum):
    """Where models run."""

    auto = "auto"  # CUDA when available
    cpu = "cpu"
    cuda = "cuda"


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device ``name`` stands for; ``cuda`` without a usable GPU is an error."""
    if name not in Device.__members__:
        raise AmrError(f"unknown device {name!r}; expected one of {', '.join(Device)}")
    import torch

    if name == Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == Device.cuda and not torch.cuda.is_available():
        raise AmrError("--device cuda: no CUDA device is available to torch here; use --device cpu or auto")
    return torch.device(name)


def query_device(name: str) -> torch.device | str:
    """``"cpu"`` as it is, without importing torch (a text query is encoded on
    onnxruntime there: amr.model.query_encoder), else the torch device it stands for."""
    return Device.cpu.value if name == Device.cpu else resolve_device(name)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` and its submodules in eval mode meanwhile, each back in its
    own mode afterwards. Sets their flags rather than calling ``eval()``,
    which goes through every ``train()`` override on the way (transformers'
    takes milliseconds): switching the mode twice per call was a third of
    the time one short query took to encode on a CPU core."""
    training = [m for m in module.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True
