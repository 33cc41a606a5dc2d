"""The README's Python API example runs as written, from a checkout beside ../shared."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def api_example() -> str:
    """The python block after the README's `<!-- api-example -->` marker."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert found, "README.md has no python block marked <!-- api-example -->"
    return found.group(1)


def test_the_readme_api_example_runs(shared: Path, tmp_path: Path) -> None:
    """Run where a reader runs it, a checkout beside ../shared, but in a fresh folder, so that
    nothing a previous run (or an older amr) left in the checkout's workspace decides the result."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (tmp_path / "shared").symlink_to(shared.resolve())
    env = {**os.environ, "AMR_WEIGHTS_DIR": str(shared / "weights"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", api_example()], cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["1", "bigsoundbank-dog"]  # the printed top result of "a dog barking"
    assert 0.5 < float(lines[-1]) <= 1.0  # the printed zero-shot mAP@10 on the 39 clips
