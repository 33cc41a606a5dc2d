"""Where models run: ``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

from __future__ import annotations

import torch

from amr.errors import AmrError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device ``name`` stands for; ``cuda`` without a usable GPU is an error."""
    if name not in DEVICES:
        raise AmrError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AmrError("--device cuda: no CUDA device is available to torch here; use --device cpu or auto")
    return torch.device(name)
