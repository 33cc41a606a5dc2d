"""File helpers every format shares: a streaming sha256, atomic writes and a
lock that keeps two runs off one output.

Atomic writes go to a temporary name unique to the writer (pid and a random
token) in the target's folder and are renamed into place, so a killed run
leaves the previous version intact and two writers never share a temp file.
The lock is an advisory ``flock`` on ``.<output>.lock`` beside the output
(kept there, empty of meaning once released): the kernel releases it
when its holder exits, however it exits (SIGKILL included), so a stale lock
never blocks a rerun.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from amr.errors import AmrError

_CHUNK = 1 << 20
_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in chunks; remembered for the life of the
    process per (path, size, mtime, inode, ctime): a file replaced by another
    of the same size and mtime (a rename over it, a copy that keeps the mtime)
    has a new inode, and any write or metadata change moves the ctime, which
    no program can set back."""
    path = Path(path)
    key = _hash_key(path)
    if key not in _HASHES:
        _HASHES[key] = sha256_files([path])
    return _HASHES[key]


def _hash_key(path: Path) -> tuple[str, int, int, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns


def sha256_files(paths: list[Path]) -> str:
    """sha256 of the files' contents, concatenated in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def remember_sha256(path: Path, digest: str) -> None:
    """Record the hash of a file just written (e.g. computed while downloading it)."""
    _HASHES[_hash_key(Path(path))] = digest


def temporary_path(path: Path) -> Path:
    """A fresh name beside ``path`` that no other writer uses: ``.<name>.<pid>.<token>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write ``path`` through; on success it is
    renamed onto ``path``, on any failure it is removed. A failure to write
    the temporary file or to rename it (a full disk, a directory at ``path``)
    is an AmrError naming ``path``, not the temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        ours = str(e.filename) in (str(tmp), str(path)) if e.filename is not None else e.errno is not None
        if not ours:
            raise  # another file's error (or a download's, errno None), raised inside the block
        raise AmrError(f"{path}: cannot write it ({e.strerror or e}); what was there is unchanged") from e
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError raised in the block (a full disk, no permission) into an AmrError naming ``path``."""
    try:
        yield
    except OSError as e:
        raise AmrError(f"{path}: cannot write it ({e.strerror or e})") from e


def refuse_overwrite(path: Path, what: str, is_one: Callable[[Path], bool], force: bool = False) -> None:
    """Refuse to write the output ``path``, a ``what`` ("an amr index"), over a
    directory, or over an existing file that ``is_one`` says is not one (an
    embedding cache, say) unless ``force``: one line naming it."""
    path = Path(path)
    if path.is_dir():
        raise AmrError(f"{path}: a directory, not a file to write {what} to")
    if not force and path.exists() and not is_one(path):
        raise AmrError(f"{path}: exists and is not {what}; choose another output, or pass --force to overwrite it")


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (text is written as UTF-8)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path) as tmp:
        tmp.write_bytes(raw)


_HELD: set[IO[str]] = set()  # lock files this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (a decoding worker): close the inherited lock files, so
    that a lock dies with the process that took it, not with its last worker."""
    for handle in list(_HELD):
        handle.close()
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def lock_path(path: Path) -> Path:
    return Path(path).with_name(f".{Path(path).name}.lock")


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold the lock of output ``path`` (``.<name>.lock`` beside it) while the block runs.

    A second run on the same output stops at once with an AmrError naming the
    holder (pid, host, command, start time), instead of interleaving its
    writes with the first one's. ``what`` names the output in the message
    ("cache", "index", ...)."""
    path = Path(path)
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AmrError(f"{path}: another amr run is writing this {what} ({_holder(handle)}); wait for it to finish") from None
        _describe_holder(handle)
        _HELD.add(handle)
        yield
    finally:
        _HELD.discard(handle)
        handle.close()  # releases the lock; the file stays (removing it would race a waiting run)


def _describe_holder(handle: IO[str]) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    fd = handle.fileno()  # written unbuffered: a failed write leaves nothing pending
    os.ftruncate(fd, 0)
    try:
        os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
    except OSError:  # a full disk: the lock holds all the same, a second run just cannot name its holder
        os.ftruncate(fd, 0)


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        holder: dict[str, Any] = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return "holder unknown"
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}: {holder.get('command')}"
