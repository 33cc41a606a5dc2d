"""Where models run (``auto``: CUDA when available, ``cpu`` or ``cuda``), and in which mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from amr.config import DEVICES
from amr.errors import AmrError


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device ``name`` stands for; ``cuda`` without a usable GPU is an error."""
    if name not in DEVICES:
        raise AmrError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AmrError("--device cuda: no CUDA device is available to torch here; use --device cpu or auto")
    return torch.device(name)


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
