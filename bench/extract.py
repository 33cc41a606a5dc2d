"""`amr extract` against a plain per-file loop, whole processes, on real clips: speed, cores busy, fidelity.

Two sets of real audio, each extracted by fresh processes, side by side:

  * "real": the shared clips (by default sfx-dev + sounds + clotho-mini, 902 clips
    of 0.02-30 s, 43 min, OGG/WAV/MP3 at 5-96 kHz), one manifest of their paths;
  * "x4 gains": a set of >= 10^4 s built from them (every clip written as 16-bit
    WAV once per --gains value, 0.9/0.7/0.5/0.3 by default: 3,608 clips, 173 min),
    so no cache or deduplication can help: every copy is other audio.

On each, --runs times (default 3) and interleaved, so that a change of load hits
both alike:

  * a fresh `python -m amr extract SET -o CACHE` process (start-up, decoding,
    the model, writing parts and the merge: everything a user waits for);
  * a fresh process of the plain per-file loop, as a user of EfficientAT would
    write it: for each file in turn decode and resample (amr.audio.frontend: soundfile
    and torchaudio's filter, computed faster than torchaudio.functional.resample,
    so this baseline is if anything quick), compute the log-mel (EfficientAT's
    AugmentMelSTFT in eval mode) and run the pretrained model (its own forward,
    BatchNorm unfolded, nothing masked) on each 10 s window at batch 1; it saves
    its frames and tags (as amr writes its cache). Once with each torch thread
    count of --plain-threads (default 1 and all cores); the faster is the baseline.

For each: median and minimum wall seconds, median CPU seconds (the process and
its workers, from wait4) and cores busy (CPU seconds / wall seconds), peak
memory; the speed ratio of the medians and of the minima (target >= 3x on
>= 10^4 s, with >= 1.8 of 2 cores busy); fidelity of amr's cache (float16)
against the plain loop's frames and tags, cosine min and mean (target >= 0.9995).
The load average is printed before and after each set: other jobs on the
machine slow both sides and make cores look busy that are not amr's.

With --engine ray, also `amr extract --engine ray` on the real set (a local Ray
cluster on this machine's cores, started before the clock starts; its start is
timed apart), and whether its cache equals the local engine's bit for bit. On a
machine of a few cores this shows Ray's overhead, not its scaling.

    python bench/extract.py [--runs 3] [--data ROOT ...] [--gains 0.9 0.7 0.5 0.3] [--work DIR] [--engine ray]

On a quiet 2-core machine the default run takes about 6 minutes (the plain loops
are most of it); --work DIR keeps the built set for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amr.cache import EmbeddingCache  # noqa: E402
from amr.datasets import load_dataset  # noqa: E402
from amr.extraction.workers import available_cores  # noqa: E402
from amr.items import Item  # noqa: E402

SHARED = Path(os.environ.get("AMR_SHARED", REPO.parent / "shared"))
os.environ.setdefault("AMR_WEIGHTS_DIR", str(SHARED / "weights"))

# The plain loop, a process of its own: argv = manifest folder, torch threads, output .npz.
PLAIN_LOOP = """
import sys
from pathlib import Path
import numpy as np
import torch
from amr.audio import frontend as audio
from amr.datasets import load_dataset
from amr.audio.weights import load_audio_model, resolve_weights
torch.set_num_threads(int(sys.argv[2]))
weights = resolve_weights("mn04_as")
model = load_audio_model(weights)
front_end = audio.MelFrontEnd(weights.audio.mel)
rate, seconds = weights.audio.sample_rate, weights.audio.window_seconds
ids, samples, frames, tags = [], [], [], []
with torch.inference_mode():
    for item in load_dataset(Path(sys.argv[1]), allow_outside_root=True).items:
        windows = list(audio.iter_windows(Path(item.audio), rate, seconds))
        clip = torch.cat([model(front_end(torch.from_numpy(w)[None]))[0][0] for w in windows])
        ids.append(item.id)
        samples.append(sum(len(w) for w in windows))
        frames.append(clip.numpy())
        tags.append(torch.sigmoid(model.head(clip.mean(dim=0, keepdim=True)))[0].numpy())
lengths = [len(f) for f in frames]
np.savez(sys.argv[3], ids=np.array(ids), samples=np.array(samples), lengths=np.array(lengths),
         frames=np.concatenate(frames), tags=np.stack(tags))
"""

# The Ray engine in place of the local one; Ray's processes are
# not this process's children, so only the wall time is measured.
RAY_END_TO_END = """
import json, sys, time
from pathlib import Path
import ray
import amr.extraction
from amr.datasets import load_dataset
from amr.extraction.ray import RayEngine, ray_session
from amr.audio.weights import resolve_weights
items = load_dataset(Path(sys.argv[2]), allow_outside_root=True).items
weights = resolve_weights("mn04_as")
engine = RayEngine()
started = time.perf_counter()
with ray_session():
    ray_start = time.perf_counter() - started
    started = time.perf_counter()
    report = amr.extraction.extract(items, Path(sys.argv[1]), weights, progress=False, engine=engine)
    seconds = time.perf_counter() - started
    cpus = int(ray.cluster_resources()["CPU"])
print(json.dumps({"clips": report.items, "seconds": seconds, "ray_start_seconds": ray_start, "cpus": cpus}))
"""


@dataclass
class Run:
    seconds: float  # wall
    cpu: float  # user + system seconds of the process and every child it waited for
    peak_mib: float  # the largest resident set among them


def timed(command: list[str], env: dict[str, str] | None = None) -> Run:
    """One fresh process, timed from its start to its exit; its CPU time and peak memory from wait4."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command[:4])} ... failed ({process.returncode}):\n{errors.read().decode()[-3000:]}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def real_set(roots: list[Path], folder: Path) -> list[Item]:
    """One generic manifest of every clip of `roots` (absolute paths: --allow-outside-root); its items."""
    items = [item for root in roots for item in load_dataset(root).items]
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"{Path(item.audio).parent.name}/{item.id}", "audio": str(Path(item.audio).resolve())} for item in items]
    (folder / "items.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return items


def gain_set(items: list[Item], gains: list[float], folder: Path) -> None:
    """Every clip once per gain, as 16-bit WAV at its own rate and channels; kept for a rerun with the same clips and gains."""
    stamp = json.dumps({"clips": [item.audio for item in items], "gains": gains})
    if (folder / "stamp.json").exists() and (folder / "stamp.json").read_text() == stamp:
        return
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for item in items:
        data, rate = sf.read(item.audio, dtype="float32", always_2d=True)
        for gain in gains:
            name = f"audio/{len(rows):05d}.wav"
            sf.write(folder / name, data * gain, rate, subtype="PCM_16")
            rows.append({"id": f"{len(rows):05d} {item.id} x{gain:g}", "audio": name})
    (folder / "items.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "stamp.json").write_text(stamp)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def fidelity(cache_path: Path, plain: Path, window_samples: int) -> dict[str, tuple[float, float]]:
    """(min, mean) cosine of amr's frames and tags against the plain loop's, over all clips and over clips with a partial window."""
    ref = np.load(plain)
    offsets = np.cumsum(ref["lengths"]) - ref["lengths"]
    at = {clip: i for i, clip in enumerate(ref["ids"].tolist())}
    frames: dict[str, list[np.ndarray]] = {"all": [], "partial": []}
    tags: dict[str, list[float]] = {"all": [], "partial": []}
    with EmbeddingCache(cache_path) as cache:
        for i, item in enumerate(cache.items):
            j = at[item.id]
            reference = ref["frames"][offsets[j] : offsets[j] + ref["lengths"][j]]
            frame_cos, tag_cos = cosines(cache.sequence(i), reference), float(cosines(cache.tags[i], ref["tags"][j]))
            for group in ("all", "partial") if ref["samples"][j] % window_samples else ("all",):
                frames[group].append(frame_cos)
                tags[group].append(tag_cos)
    out = {}
    for group in ("all", "partial"):
        if frames[group]:
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


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(name: str, folder: Path, work: Path, args: argparse.Namespace) -> Path:
    """Time the fresh processes on the set in `folder`, print their figures; returns the last amr cache."""
    items = load_dataset(folder, allow_outside_root=True).items
    seconds = sum(sf.info(item.audio).duration for item in items)
    print(f"\n{name}: {len(items)} clips, {seconds:,.0f} s of audio ({folder}); load average before: {load_average()}", flush=True)
    cache, plain = work / f"{folder.name}.h5", work / f"{folder.name}.plain.npz"
    amr = [sys.executable, "-m", "amr", "extract", str(folder), "-o", str(cache), "--workspace", str(work / "workspace")]
    amr += ["--allow-outside-root"] + (["--workers", str(args.workers)] if args.workers else [])
    runs: dict[str, list[Run]] = {}
    for _ in range(args.runs):
        cache.unlink(missing_ok=True)  # a fresh cache each run: everything is computed
        runs.setdefault("amr", []).append(timed(amr))
        for threads in args.plain_threads:
            runs.setdefault(f"plain {threads}", []).append(timed([sys.executable, "-c", PLAIN_LOOP, str(folder), str(threads), str(plain)]))
    print(f"load average after: {load_average()}")

    def row(label: str, done: list[Run]) -> tuple[float, float]:
        wall, low = statistics.median(r.seconds for r in done), min(r.seconds for r in done)
        cpu = statistics.median(r.cpu for r in done)
        busy = statistics.median(r.cpu / r.seconds for r in done)
        peak = max(r.peak_mib for r in done)
        print(f"  {label:44s} {wall:7.2f} {low:7.2f} {cpu:8.1f} {busy:8.2f}  {seconds / wall:6.0f}x {peak:6.0f} MiB")
        return wall, low

    heading = f"(fresh processes, {args.runs} runs each; wall s)"
    print(f"  {heading:44s} {'median':>7s} {'min':>7s} {'CPU s':>8s} {'cores':>8s}  {'speed':>7s} {'peak':>10s}")
    workers = args.workers or available_cores()
    amr_wall, amr_low = row(f"amr extract ({workers} workers, 1 thread each)", runs["amr"])
    plain = {threads: row(f"plain per-file loop, {threads} torch thread(s)", runs[f"plain {threads}"]) for threads in args.plain_threads}
    threads, (plain_wall, plain_low) = min(plain.items(), key=lambda kv: kv[1][0])
    print(
        f"  speed ratio: {plain_wall / amr_wall:.2f}x of medians, {plain_low / amr_low:.2f}x of minima "
        f"(against the faster plain loop, {threads} thread(s); target >= 3x on >= 10^4 s, >= 1.8 of 2 cores busy)"
    )
    print("  fidelity, cosine against the plain loop (min / mean; target >= 0.9995):")
    window_samples = round(args.window_seconds * args.sample_rate)
    for label, (low, mean) in fidelity(cache, work / f"{folder.name}.plain.npz", window_samples).items():
        print(f"    {label:18s} {low:.6f} / {mean:.6f}")
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = [SHARED / "data" / "sfx-dev", SHARED / "data" / "sounds", SHARED / "data" / "clotho-mini"]
    parser.add_argument("--data", type=Path, nargs="+", default=default_data, help="dataset roots of the real clips")
    parser.add_argument("--gains", type=float, nargs="+", default=[0.9, 0.7, 0.5, 0.3], help="one copy of every clip per gain")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes of each kind per set")
    parser.add_argument("--workers", type=int, default=None, help="amr extract --workers (default: amr's)")
    parser.add_argument(
        "--plain-threads",
        type=int,
        nargs="+",
        default=sorted({1, available_cores()}),
        help="torch threads of the plain loop, each timed (default: 1 and all cores)",
    )
    parser.add_argument("--work", type=Path, default=None, help="folder for the sets and caches (default: a temporary one); reused")
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: also time the Ray engine on a local Ray cluster (pip install amr[ray])",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    from amr.audio.weights import resolve_weights

    settings = resolve_weights("mn04_as").audio
    args.window_seconds, args.sample_rate = settings.window_seconds, settings.sample_rate
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"machine: {available_cores()} cores available to this process; data: {', '.join(str(d) for d in args.data)}")
        items = real_set(args.data, work / "real")
        gain_set(items, args.gains, work / "gains")
        real = measure("real clips", work / "real", work, args)
        measure(f"the real clips x{len(args.gains)} gains", work / "gains", work, args)
        if args.engine == "ray":
            out = subprocess.run(
                [sys.executable, "-c", RAY_END_TO_END, str(work / "ray.h5"), str(work / "real")],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            ray_run = json.loads(out.stdout.strip().splitlines()[-1])
            identical = same_caches(real, work / "ray.h5")
            print(
                f"\namr extract --engine ray ({ray_run['cpus']} CPUs), real clips, in one process: {ray_run['seconds']:.1f} s "
                f"(+ {ray_run['ray_start_seconds']:.1f} s to start Ray; CPU s not measured); cache equal to the local engine's, "
                f"bit for bit: {identical[0]} / {identical[1]} clips"
            )
    print(f"\n(this run took {time.perf_counter() - started:.0f} s; timings are provisional when other jobs share the machine)")


if __name__ == "__main__":
    main()
