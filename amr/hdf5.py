"""Opening amr's HDF5 files (embedding caches, indexes): each names its format and version."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import h5py

from amr.errors import AmrError
from amr.files import atomic_write


def open_versioned(path: Path, format_name: str, version: int, kind: str) -> h5py.File:
    """Open ``path`` read-only, refusing a missing file, a file of another
    format and a version this amr does not read, with a message naming it."""
    if not Path(path).exists():
        raise AmrError(f"{path}: no such {kind} file")
    if Path(path).is_dir():
        raise AmrError(f"{path}: a directory, not an {kind} file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        reason = str(e).splitlines()[0].strip()  # HDF5's own messages run over several lines
        raise AmrError(f"{path}: not a readable HDF5 file ({reason})") from e
    if f.attrs.get("format") != format_name:
        f.close()
        raise AmrError(f"{path}: not an amr {kind}")
    found = int(f.attrs.get("version", -1))
    if found != version:
        f.close()
        raise AmrError(f"{path}: {kind} format version {found}, this amr reads version {version}")
    return f


def has_format(path: Path, format_name: str) -> bool:
    """Whether ``path`` is an HDF5 file of format ``format_name`` (any version)."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == format_name
    except OSError:
        return False


def write_small(path: Path, fill: Callable[[h5py.File], None]) -> None:
    """Write the HDF5 file that ``fill`` makes to ``path`` atomically, built in
    memory first: HDF5 writing onto a full disk fails on close, in object
    destructors, even in a crash; a plain write of its bytes fails cleanly,
    naming ``path``. For files of a few MB (an index manifest)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    atomic_write(path, buffer.getvalue())
