"""Throughput of `amr extract` on the shared real clips, next to the bare model.

Prints, for the chosen datasets:
  * end to end: `amr.extract.extract` into a fresh cache (decoding workers,
    front end, batching, model, writing): clips/s and real-time factor;
  * the bare model forward on the same, already decoded audio: front end +
    mn04 window by window (EfficientAT's per-file loop without its I/O), the
    reference the pipeline's overhead is measured against;
  * peak memory of the end-to-end run on the first half and on all clips
    (flat memory means these two match).

    python bench/extract.py [--data ../shared/data/sfx-dev ...] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amr import audio  # noqa: E402
from amr.datasets import load_dataset  # noqa: E402
from amr.extract import default_workers  # noqa: E402
from amr.weights import load_audio_model, resolve_weights  # noqa: E402

SHARED = REPO.parent / "shared"
os.environ.setdefault("AMR_WEIGHTS_DIR", str(SHARED / "weights"))

END_TO_END = """
import json, resource, sys, time
from pathlib import Path
from amr.datasets import load_dataset
from amr.extract import extract
from amr.weights import resolve_weights
items = [i for root in sys.argv[3:] for i in load_dataset(Path(root)).items][: int(sys.argv[2])]
started = time.perf_counter()
report = extract(items, Path(sys.argv[1]), resolve_weights("mn04_as"), workers={workers}, progress=False)
seconds = time.perf_counter() - started
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({{"clips": report.items, "failed": len(report.failures), "audio_seconds": report.audio_seconds, "seconds": seconds, "peak_mib": peak / 1024}}))
"""


def end_to_end(roots: list[Path], limit: int, workers: int) -> dict:
    """Run extraction in a fresh process (so peak memory is its own)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = END_TO_END.format(workers=workers)
        out = subprocess.run(
            [sys.executable, "-c", script, str(Path(tmp) / "bench.h5"), str(limit), *map(str, roots)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def decoded_windows(roots: list[Path]) -> list[list[torch.Tensor]]:
    clips = []
    for root in roots:
        for item in load_dataset(root).items:
            clips.append([torch.from_numpy(w) for w in audio.iter_windows(Path(item.audio))])
    return clips


def per_file_loop(model: torch.nn.Module, front_end: audio.MelFrontEnd, clips: list[list[torch.Tensor]]) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for windows in clips:
            for window in windows:
                model(front_end(window[None]))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=[SHARED / "data" / "sfx-dev", SHARED / "data" / "sounds", SHARED / "data" / "clotho-mini"])
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()

    torch.set_num_threads(2)
    weights = resolve_weights("mn04_as")
    model = load_audio_model(weights)
    front_end = audio.MelFrontEnd()
    clips = decoded_windows(args.data)
    total_seconds = sum(len(w) for windows in clips for w in windows) / audio.SAMPLE_RATE
    n = len(clips)

    half = end_to_end(args.data, n // 2, args.workers)
    full = end_to_end(args.data, n, args.workers)
    bare = per_file_loop(model, front_end, clips)

    print(f"data: {', '.join(str(d) for d in args.data)}")
    print(f"clips: {n}, audio: {total_seconds / 60:.1f} min, workers: {args.workers}, torch threads: 2")
    print(f"amr extract end to end:     {full['seconds']:7.1f} s  {n / full['seconds']:7.1f} clips/s  {total_seconds / full['seconds']:6.0f}x real time")
    print(f"bare front end + model:     {bare:7.1f} s  {n / bare:7.1f} clips/s  {total_seconds / bare:6.0f}x real time")
    print(f"end to end / bare forward:  {full['seconds'] / bare:.2f} (decoding, resampling, batching and writing included)")
    print(f"peak memory:                {half['peak_mib']:.0f} MiB for {n // 2} clips, {full['peak_mib']:.0f} MiB for {n} clips")


if __name__ == "__main__":
    main()
