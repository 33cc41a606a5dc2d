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


def test_extract_bench_prints_whole_process_figures_of_both_sets(tmp_path: Path) -> None:
    sounds = Path(os.environ.get("AMR_SHARED", REPO.parent / "shared")) / "data" / "sounds"
    out = bench("extract.py", "--data", str(sounds), "--gains", "0.5", "--runs", "1", "--plain-threads", "1", "--work", str(tmp_path))
    assert out.count("amr extract (") == 2 and out.count("plain per-file loop, 1 torch thread(s)") == 2
    assert out.count("speed ratio:") == 2 and out.count("load average before:") == 2
    assert "the real clips x1 gains: 39 clips" in out and (tmp_path / "gains" / "items.jsonl").exists()
    frames = [line for line in out.splitlines() if line.strip().startswith("frames, all")]
    assert len(frames) == 2 and all(float(line.split()[2]) >= 0.9995 for line in frames)
