"""Running the `amr` command in a subprocess, and checking its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

AMR = Path(sys.executable).with_name("amr")


def amr(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    command = [str(AMR)] if AMR.exists() else [sys.executable, "-m", "amr"]
    return subprocess.run([*command, *args], input=stdin, capture_output=True, timeout=600, env={**os.environ, **(env or {})})


def one_error_line(done: subprocess.CompletedProcess[bytes], *fragments: str) -> None:
    """Exit code 1 and a single `error:` line on stderr that contains every fragment."""
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
