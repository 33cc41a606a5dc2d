"""Opening amr's HDF5 files (embedding caches, indexes): each names its format and version;
and writing them so that a full disk is one OSError naming the file.

Why writes go through `created`: HDF5 writes through its own file driver, and
when a write fails (``ENOSPC``) it fails the dataset or file close that
flushed it, leaves the file open inside the library, and h5py's clean-up at
exit closes it again, which failed and crashed the process (segfault, exit
139) in `amr extract` on a full 4 MB tmpfs. `created` hands HDF5 a Python file
(`_Sink`) instead: a failed write is remembered and that write and every later
one are dropped, so HDF5 itself never sees an error and closes cleanly; then
the remembered error is raised as an OSError naming the file. Writers call
the check it yields now and then to stop early rather than write into the void.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py

from amr.errors import AmrError


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


class _Sink(io.FileIO):
    """The file HDF5 writes through (h5py's fileobj driver, which ignores short
    writes: each write is completed here). The first failure is kept in
    ``error`` and from then on writes are dropped, reported as done."""

    error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                written = super().write(view[done:])
            except OSError as e:
                self.error = e
                break
            if not written:  # no progress and no error: treat as a full disk
                self.error = OSError(errno.ENOSPC, "No space left on device")
            done += written or 0
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return super().truncate(size)
            except OSError as e:
                self.error = e
        return self.tell() if size is None else size

    def flush(self) -> None:
        pass  # FileIO is unbuffered: nothing waits in Python


@contextmanager
def created(path: Path, shown: Path | None = None) -> Iterator[tuple[h5py.File, Callable[[], None]]]:
    """A new HDF5 file at ``path`` for writing, and a check that raises the
    first failed write (see the module docstring) as an OSError naming
    ``shown`` (default: ``path``; e.g. the final name of a temporary file).
    The error is raised after HDF5 closed the file, also when the check was never called."""
    sink = _Sink(path, "w+")

    def check() -> None:
        if sink.error is not None:
            raise OSError(sink.error.errno, sink.error.strerror or str(sink.error), str(shown or path))

    try:
        with h5py.File(sink, "w") as f:
            yield f, check
    finally:
        sink.close()
    check()


def has_format(path: Path, format_name: str) -> bool:
    """Whether ``path`` is an HDF5 file of format ``format_name`` (any version)."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == format_name
    except OSError:
        return False
