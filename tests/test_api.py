"""`import amr`, the Python API's front door: every name it lists resolves to what its module
defines, loading nothing heavy until asked, and no stage function is shadowed by a package."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

import amr

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", [n for n in amr.__all__ if n != "__version__"])
def test_every_front_door_name_is_its_module_own(name: str) -> None:
    assert getattr(amr, name) is getattr(import_module(amr._API[name]), name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'extrct'"):
        amr.extrct  # noqa: B018


def test_import_amr_is_light_and_stage_functions_outlive_their_packages() -> None:
    """The stage functions' packages (amr.extraction, amr.training, amr.server) are imported as a run
    goes; a package named like its function would replace the function on the amr module."""
    code = """import sys
import amr
heavy = [m for m in ("numpy", "torch", "h5py", "faiss", "onnxruntime") if m in sys.modules]
import amr.extraction, amr.training, amr.server.app
print(heavy, callable(amr.extract), callable(amr.train), callable(amr.serve))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True", "True", "True"]
