"""amr.files.sha256_file remembers hashes per file version: a file replaced by
another of the same size and modification time is hashed again."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from amr.files import sha256_file


def test_a_replaced_file_with_the_same_size_and_mtime_is_hashed_again(tmp_path: Path) -> None:
    path, other = tmp_path / "clip.wav", tmp_path / "other.wav"
    path.write_bytes(b"first version")
    stat = path.stat()
    assert sha256_file(path) == hashlib.sha256(b"first version").hexdigest()
    other.write_bytes(b"other version")  # as long as the first
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, path)  # what a sync tool or `cp -p` over a rename does: same path, size and mtime
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert sha256_file(path) == hashlib.sha256(b"other version").hexdigest()


def test_a_file_rewritten_in_place_with_its_mtime_restored_is_hashed_again(tmp_path: Path) -> None:
    """Same inode, size and mtime: only the ctime, which no program can set back, tells."""
    path = tmp_path / "clip.wav"
    path.write_bytes(b"first version")
    stat = path.stat()
    assert sha256_file(path) == hashlib.sha256(b"first version").hexdigest()
    ctime = stat.st_ctime_ns
    while path.stat().st_ctime_ns == ctime:  # the ctime clock may be coarse (a few ms): rewrite until it moves
        time.sleep(0.002)
        path.write_bytes(b"other version")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    assert sha256_file(path) == hashlib.sha256(b"other version").hexdigest()
