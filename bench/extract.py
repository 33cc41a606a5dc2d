"""`amr extract` against a plain per-file loop on the shared real clips: speed and fidelity.

Prints, side by side on the same clips (by default sfx-dev + sounds + clotho-mini,
902 clips of 0.02-30 s, OGG/WAV/MP3 at 5-96 kHz):

  * `amr extract` end to end into a fresh cache (decoding workers, front end,
    batching, the masked model, writing), in a fresh process;
  * a plain per-file loop, as a user of EfficientAT would write it: for each file
    in turn decode and resample (amr.audio), compute the log-mel, and run the
    pretrained model (its own forward, BatchNorm unfolded, nothing masked) on each
    10 s window at batch 1. Timed with 1 torch thread and with all cores
    (--plain-threads); the faster is the baseline;
  * the speed ratio (target >= 2.5x);
  * fidelity: cosine of amr's stored frames and tags (float16) against the plain
    loop's, min and mean, over all clips and over those whose length is not a
    multiple of 10 s (target >= 0.9995 everywhere);
  * peak memory of the end-to-end run on the first half and on all clips (flat
    memory means these two match);
  * with --engine ray, also `amr extract --engine ray` end to end on the same clips
    (a local Ray cluster on this machine's cores, started before the clock starts; its
    start is timed apart), and whether its cache equals the local engine's bit for bit.
    On a machine of a few cores this shows Ray's overhead, not its scaling.

    python bench/extract.py [--data ../shared/data/sfx-dev ...] [--workers N] [--engine ray]

Timings move with anything else running on the machine: quote them as provisional.
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amr import audio  # noqa: E402
from amr.cache import EmbeddingCache  # noqa: E402
from amr.datasets import load_dataset  # noqa: E402
from amr.extract import available_cores, default_workers  # noqa: E402
from amr.items import Item  # noqa: E402
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
weights = resolve_weights("mn04_as")
started, cpu = time.perf_counter(), time.process_time()
report = extract(items, Path(sys.argv[1]), weights, workers={workers}, progress=False)
seconds = time.perf_counter() - started
children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the decoding workers, all started and joined by extract()
cpu = time.process_time() - cpu + children.ru_utime + children.ru_stime
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children.ru_maxrss)
print(json.dumps({{"clips": report.items, "seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak / 1024}}))
"""

# The Ray engine in place of the local one; Ray's processes are
# not this process's children, so only the wall time is measured.
RAY_END_TO_END = """
import json, sys, time
from pathlib import Path
import ray
import amr.extract
from amr.datasets import load_dataset
from amr.ray_engine import RayEngine, ray_session
from amr.weights import resolve_weights
items = [i for root in sys.argv[3:] for i in load_dataset(Path(root)).items][: int(sys.argv[2])]
weights = resolve_weights("mn04_as")
engine = RayEngine()
started = time.perf_counter()
with ray_session():
    ray_start = time.perf_counter() - started
    started = time.perf_counter()
    report = amr.extract.extract(items, Path(sys.argv[1]), weights, progress=False, engine=engine)
    seconds = time.perf_counter() - started
    cpus = int(ray.cluster_resources()["CPU"])
print(json.dumps({"clips": report.items, "seconds": seconds, "ray_start_seconds": ray_start, "cpus": cpus}))
"""


def end_to_end(roots: list[Path], limit: int, workers: int, cache: Path, engine: str = "local") -> dict:
    """`amr extract` in a fresh process (so peak memory is its own), into `cache`."""
    script = END_TO_END.format(workers=workers) if engine == "local" else RAY_END_TO_END
    out = subprocess.run(
        [sys.executable, "-c", script, str(cache), str(limit), *map(str, roots)], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def plain_loop(items: list[Item], model: torch.nn.Module, threads: int) -> tuple[float, float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Seconds and CPU seconds for the whole loop, and each clip's (frames, tags)."""
    weights_audio = resolve_weights("mn04_as").audio
    front_end = audio.MelFrontEnd(weights_audio.mel)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    results = {}
    started, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for item in items:
            windows = audio.iter_windows(Path(item.audio), weights_audio.sample_rate, weights_audio.window_seconds)
            frames = torch.cat([model(front_end(torch.from_numpy(w)[None]))[0][0] for w in windows])
            tags = torch.sigmoid(model.head(frames.mean(dim=0, keepdim=True)))[0]
            results[item.id] = (frames.numpy(), tags.numpy())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    torch.set_num_threads(previous)
    return seconds, cpu, results


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def fidelity(cache_path: Path, reference: dict[str, tuple[np.ndarray, np.ndarray]], partial: set[str]) -> dict[str, tuple[float, float]]:
    """(min, mean) cosine of frames and of tags, over all clips and over clips with a partial window."""
    frames: dict[str, list[np.ndarray]] = {"all": [], "partial": []}
    tags: dict[str, list[float]] = {"all": [], "partial": []}
    with EmbeddingCache(cache_path) as cache:
        for i, item in enumerate(cache.items):
            ref_frames, ref_tags = reference[item.id]
            frame_cos = cosines(cache.sequence(i), ref_frames)
            tag_cos = float(cosines(cache.tags[i], ref_tags))
            for group in ("all", "partial") if item.id in partial else ("all",):
                frames[group].append(frame_cos)
                tags[group].append(tag_cos)
    out = {}
    for group in ("all", "partial"):
        f = np.concatenate(frames[group])
        out[f"frames, {group}"] = (float(f.min()), float(f.mean()))
        out[f"tags, {group}"] = (float(np.min(tags[group])), float(np.mean(tags[group])))
    return out


def same_caches(a_path: Path, b_path: Path) -> tuple[int, int]:
    """(clips whose stored frames, tags and segment tags are equal bit for bit, clips) of two caches of the same items."""
    with EmbeddingCache(a_path) as a, EmbeddingCache(b_path) as b:
        same = 0
        for i, item in enumerate(a.items):
            j = b.index_of(item.id)
            segments = zip(a.segments(i), b.segments(j))
            same += bool(
                np.array_equal(a.stored(i)[0], b.stored(j)[0])
                and np.array_equal(a.tags[i], b.tags[j])
                and all(x.start == y.start and x.end == y.end and np.array_equal(x.tags, y.tags) for x, y in segments)
            )
        return same, len(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = [SHARED / "data" / "sfx-dev", SHARED / "data" / "sounds", SHARED / "data" / "clotho-mini"]
    parser.add_argument("--data", type=Path, nargs="+", default=default_data)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument(
        "--plain-threads",
        type=int,
        nargs="+",
        default=sorted({1, available_cores()}),
        help="torch threads of the plain loop, each timed (default: 1 and all cores)",
    )
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: also time the Ray engine on a local Ray cluster (pip install amr[ray])",
    )
    args = parser.parse_args()

    weights = resolve_weights("mn04_as")
    model = load_audio_model(weights)
    items = [item for root in args.data for item in load_dataset(root).items]
    n = len(items)
    settings = weights.audio
    lengths = {}  # samples after resampling (decoding every file once also warms the page cache for both runs)
    for item in items:
        lengths[item.id] = sum(len(w) for w in audio.iter_windows(Path(item.audio), settings.sample_rate, settings.window_seconds))
    partial = {clip for clip, samples in lengths.items() if samples % settings.window_samples}
    total_seconds = sum(lengths.values()) / settings.sample_rate

    with tempfile.TemporaryDirectory() as tmp:
        half = end_to_end(args.data, n // 2, args.workers, Path(tmp) / "half.h5")
        full = end_to_end(args.data, n, args.workers, Path(tmp) / "full.h5")
        if args.engine == "ray":
            ray_run = end_to_end(args.data, n, args.workers, Path(tmp) / "ray.h5", engine="ray")
            identical = same_caches(Path(tmp) / "full.h5", Path(tmp) / "ray.h5")
        loops = {threads: plain_loop(items, model, threads) for threads in args.plain_threads}
        threads, (plain_seconds, _, reference) = min(loops.items(), key=lambda kv: kv[1][0])
        scores = fidelity(Path(tmp) / "full.h5", reference, partial)

    load = os.getloadavg()[0]
    print(f"data: {', '.join(str(d) for d in args.data)}")
    print(f"clips: {n} ({len(partial)} not a multiple of 10 s), audio: {total_seconds / 60:.1f} min, load average {load:.1f}")

    def line(name: str, seconds: float, cpu: float) -> None:
        speed = f"{n / seconds:6.1f} clips/s  {total_seconds / seconds:5.0f}x real time  ({cpu:.1f} CPU s)"
        print(f"{name:44s} {seconds:7.1f} s  {speed}")

    line(f"amr extract end to end ({args.workers} decoding workers):", full["seconds"], full["cpu_seconds"])
    if args.engine == "ray":
        name = f"amr extract --engine ray ({ray_run['cpus']} CPUs):"
        seconds = ray_run["seconds"]
        print(
            f"{name:44s} {seconds:7.1f} s  {n / seconds:6.1f} clips/s  {total_seconds / seconds:5.0f}x real time  "
            f"(+ {ray_run['ray_start_seconds']:.1f} s to start Ray; CPU s not measured)"
        )
        print(
            f"  {full['seconds'] / seconds:.2f}x the local engine's speed; cache equal to the local engine's, bit for bit: "
            f"{identical[0]} / {identical[1]} clips"
        )
        print(
            f"  (a local Ray cluster of {ray_run['cpus']} CPUs: this shows Ray's overhead over the local engine, not its scaling;"
            " no GPU on this machine, so GPU actors are not measured)"
        )
    for t, (seconds, cpu, _) in loops.items():
        line(f"plain per-file loop, {t} torch thread(s):", seconds, cpu)
    print(f"speed ratio: {plain_seconds / full['seconds']:.2f}x (against the faster plain loop, {threads} thread(s); target >= 2.5x)")
    print("fidelity, cosine against the plain loop (min / mean; target >= 0.9995):")
    for name, (low, mean) in scores.items():
        print(f"  {name:18s} {low:.6f} / {mean:.6f}")
    print(f"peak memory: {half['peak_mib']:.0f} MiB for {n // 2} clips, {full['peak_mib']:.0f} MiB for {n} clips")
    print("(timings are provisional when other jobs share the machine)")


if __name__ == "__main__":
    main()
