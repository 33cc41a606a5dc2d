"""The benchmark scripts run (at toy sizes) and print the figures the README quotes.

What they measure is theirs to report; here only that they still run against
the current API and print their table lines, so a change of the code cannot
leave them broken until someone next benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def bench(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_train_bench_reports_an_epoch_of_each_kind() -> None:
    out = bench("train.py", "--train-clips", "30", "--val-clips", "10", "--fine-tune-pairs", "50")
    assert out.count("pairs/s") == 2 and "amr train --freeze-text --fusion late" in out and "text embedding (once per run)" in out


def test_query_bench_prints_its_table(tmp_path: Path) -> None:
    out = bench(
        "query.py",
        "--sizes",
        "2e3",
        "--kinds",
        "exact,ivf-sq8",
        "--queries",
        "10",
        "--recall-queries",
        "10",
        "--append",
        "100",
        "--init",
        "random",
        "--work",
        str(tmp_path),
    )
    rows = [line for line in out.splitlines() if line.startswith("| 2,000 |")]
    assert len(rows) == 2 and "ivf-sq8" in rows[1]


def test_moments_bench_prints_grid_and_refined_rows(tmp_path: Path) -> None:
    out = bench("moments.py", "--recordings", "3", "--work", str(tmp_path))
    rows = [line for line in out.splitlines() if line.startswith(("grid:", "refined:"))]
    assert len(rows) == 6 and rows[0].startswith("grid: 10 s windows") and "(default)" in rows[1]


def test_ucs_bench_prints_its_table(tmp_path: Path) -> None:
    out = bench("ucs.py", "--work", str(tmp_path), "--limit", "12")
    assert "12 hand-labelled sfx-dev clips" in out
    for row in ("audio only", "metadata only", "fused", "chance"):
        assert any(line.startswith(row) and len(line.split()) >= 3 for line in out.splitlines()), out
