"""What the commands of `amr` share: option types, choices, and how results and usage errors are printed.

The choices are the library's vocabularies, each owned by a light module
(no numpy, torch or FAISS, so that `amr --help` starts at once): devices
(amr.devices.Device), splits (amr.items.Split, EvaluatedSplit), dataset
layouts and ``--by`` breakdowns (amr.config), fusion modes (amr.model.fusion),
output formats (amr.results), kinds of approximate index (amr.index.kinds).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from amr.console import error
from amr.devices import Device
from amr.workspace import DEFAULT_WORKSPACE, WORKSPACE_ENV

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # what --threads sets


def listed(values: Iterable[str]) -> str:
    """``a, b or c``: choices in a help text."""
    *rest, last = [str(v) for v in values]
    return f"{', '.join(rest)} or {last}" if rest else last


WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", envvar=WORKSPACE_ENV, help=f"Workspace directory (default: ./{DEFAULT_WORKSPACE})."),
]
DeviceOption = Annotated[
    Device, typer.Option(help=f"Where models run: {listed([f'{Device.auto} (CUDA when available)', Device.cpu, Device.cuda])}.")
]
IndexOption = Annotated[
    Path | None, typer.Option("--index", "-i", envvar="AMR_INDEX", help="Index file (default: the workspace's latest index).")
]
MaxQuerySecondsOption = Annotated[
    float,
    typer.Option(
        "--max-query-seconds", min=0.0, help="Longest example clip accepted, in seconds of decoded audio (longer ones fail as queries)."
    ),
]


def emit(summary: dict[str, Any]) -> None:
    """A command's result: one JSON object on stdout."""
    print(json.dumps(summary, ensure_ascii=False))


def usage(option: str, message: str) -> NoReturn:
    """A usage error found after parsing: one line, exit 2 (as typer's own)."""
    error(f"{option}: {message}")
    raise typer.Exit(2)


def limit_threads(threads: int) -> None:
    """Set the thread count of OpenMP, OpenBLAS and MKL before numpy, FAISS or
    torch load (each reads it once). Measured (bench/query.py): with torch
    loaded, a multi-threaded matrix-vector product stalls ~8 ms; one thread takes 0.5 ms."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
