"""Whole-process start-up of the `amr` command: what a person at a shell, or a
script calling `amr query` once per line, waits for.

    python bench/cli.py                      # 7 runs of each command; the setup is kept in --work
    python bench/cli.py --runs 15 --million  # also a 10^6-row index (bench/query.py's synthetic collection)

Every figure is a fresh process, from fork to exit, as a shell runs it:
the median (p50) and the slowest (max) of ``--runs`` runs after one
unmeasured warm-up (the page cache then holds the files, as for a person's
second query), and the peak resident memory (ru_maxrss) of the process.
Measured, side by side with the target of issue 19:

* ``amr --help``, ``--version``, ``query --help`` and a usage error;
* ``amr query`` once on the zero-shot index of the shared sfx-dev clips
  (856) and on indexes of a trained late and a trained mid model of them,
  through the query encoder (onnxruntime) and through the torch model
  (AMR_QUERY_ENCODER=torch: the path before the query encoder);
* with ``--million``: once on an index of 10^6 rows (ivf-sq8, as `amr index`
  builds at that size) of bench/query.py's synthetic vectors, whose query
  encoder is that of an untrained model of the default configuration;
* ``amr serve``: seconds from its start to its first answer, then
  ``amr query --server`` against it;
* the query encoder's settings (amr.model.query_encoder), each in a fresh process:
  seconds to start an onnxruntime session on the sfx-dev zero-shot index's
  graph and ms per encoding of one short query, for each graph optimisation
  level and intra-op thread count, with the weights as external data (what
  amr writes) and embedded in the graph.

The setup (``amr extract`` of sfx-dev, one epoch of training each for the
late and mid models with a frozen text encoder: their query side costs what
a fully trained one does) is kept in ``--work`` and reused. The machine is
shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

SHARED = Path(os.environ.get("AMR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
AMR = [str(Path(sys.executable).with_name("amr"))] if Path(sys.executable).with_name("amr").exists() else [sys.executable, "-m", "amr"]
QUERY = "dog barking in the rain"
TARGETS = {"help": "≤ 0.3 s", "query": "≤ 0.6 s, ≤ 350 MB", "million": "≤ 1.5 s", "server": "≤ 50 ms", "serve": "≤ 2 s"}
TORCH = {"AMR_QUERY_ENCODER": "torch"}


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, process.returncode


def measure(label: str, args: list[str], runs: int, target: str, env: dict[str, str] | None = None, expect: int = 0) -> dict:
    run(args, env)  # warm-up
    walls, peaks = [], []
    for _ in range(runs):
        wall, peak, code = run(args, env)
        if code != expect:
            raise SystemExit(f"{' '.join(args)}: exit code {code}, expected {expect}")
        walls.append(wall)
        peaks.append(peak)
    row = {"command": label, "p50_s": statistics.median(walls), "max_s": max(walls), "rss_mb": max(peaks), "target": target}
    print(f"{row['command']:<58} {row['p50_s']:>7.3f} {row['max_s']:>7.3f} {row['rss_mb']:>8.0f}   {target}", flush=True)
    return row


def amr(*args: str, work: Path) -> dict:
    """Run an amr command for the setup; its JSON summary."""
    done = subprocess.run([*AMR, *args, "-w", str(work / "ws")], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"amr {' '.join(args)}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.splitlines()[-1])


def setup(work: Path) -> dict[str, Path]:
    """The indexes: zero-shot, trained late and trained mid, of the sfx-dev clips (made once, kept)."""
    indexes = {name: work / f"{name}.h5" for name in ("zero-shot", "late", "mid")}
    if all(p.exists() for p in indexes.values()):
        return indexes
    cache = amr("extract", str(SHARED / "data" / "sfx-dev"), "--audio-weights", str(SHARED / "weights" / "mn04_as_mAP_432.pt"), work=work)
    amr("index", cache["cache"], "--zero-shot", "-o", str(indexes["zero-shot"]), work=work)
    for fusion in ("late", "mid"):
        checkpoint = work / f"checkpoint-{fusion}"
        if not (checkpoint / "model.safetensors").exists():
            amr("train", "--cache", cache["cache"], "--fusion", fusion, "--epochs", "1", "--freeze-text", "-o", str(checkpoint), work=work)
        amr("index", cache["cache"], "-c", str(checkpoint), "-o", str(indexes[fusion]), work=work)
    return indexes


def million(work: Path) -> Path:
    """An ivf-sq8 index of 10^6 synthetic rows (bench/query.py), with the query encoder of an untrained model."""
    path = work / "million" / "index.h5"
    if path.exists():
        return path
    sys.path.insert(0, str(Path(__file__).parent))
    import query as bench_query  # bench/query.py

    from amr.index.build import add_ann, refresh_query_encoder
    from amr.model.checkpoint import checkpoint_spec
    from amr.model.retrievers import load_retriever

    checkpoint = bench_query.untrained_checkpoint(work / "million" / "checkpoint", None, None)
    started = time.perf_counter()
    bench_query.write_synthetic(path, bench_query.Synthetic(10**6, bench_query.dimension(checkpoint)), checkpoint, "float32")
    add_ann(path, "ivf-sq8")
    refresh_query_encoder(path, load_retriever(checkpoint_spec(checkpoint)), show_progress=False)
    print(f"(10^6-row index built in {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return path


def serve(index: Path, runs: int) -> list[dict]:
    """`amr serve`: seconds to its first answer; then `amr query --server` against it."""
    started = time.perf_counter()
    server = subprocess.Popen([*AMR, "serve", "-i", str(index), "--port", "0"], stderr=subprocess.PIPE, text=True)
    url: list[str] = []

    def read() -> None:
        for line in server.stderr:
            url.extend(re.findall(r"http://\S+/", line))

    threading.Thread(target=read, daemon=True).start()
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit("amr serve stopped before answering")
            if url:
                try:
                    with urllib.request.urlopen(f"{url[0]}api/search?q=dog", timeout=60) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
            time.sleep(0.01)
        first = time.perf_counter() - started
        print(
            f"{'amr serve (sfx-dev zero-shot): start to first answer':<58} {first:>7.3f} {'':>7} {'':>8}   {TARGETS['serve']}", flush=True
        )
        rows = [{"command": "amr serve: first answer", "p50_s": first, "max_s": first, "rss_mb": None, "target": TARGETS["serve"]}]
        rows.append(
            measure(
                "amr query --server URL (sfx-dev zero-shot)",
                [*AMR, "query", QUERY, "-k", "10", "--server", url[0]],
                runs,
                TARGETS["server"],
            )
        )
        return rows
    finally:
        server.terminate()
        server.wait(timeout=60)


SESSION = """
import sys, time
import numpy as np, onnxruntime as ort
path, level, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = ort.SessionOptions()
options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
started = time.perf_counter()
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
start = time.perf_counter() - started
feed = {"input_ids": np.array([[101, 3899, 17554, 1999, 1996, 4542, 102]]), "attention_mask": np.ones((1, 7), np.int64)}
session.run(None, feed)
started = time.perf_counter()
for _ in range(50):
    session.run(None, feed)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(start, (time.perf_counter() - started) / 50, peak / 1024)
"""


def encoder_settings(index: Path, runs: int) -> list[dict]:
    """Session start and encoding time of the index's query encoder under each setting (run last: it imports onnx)."""
    import onnx

    from amr.index.format import query_folder
    from amr.index.reader import open_index
    from amr.model.query_encoder import GRAPH

    graph = query_folder(index, open_index(index).header.query_encoder["token"]) / GRAPH
    embedded = index.with_name("embedded.onnx")
    if not embedded.exists():
        onnx.save_model(onnx.load(str(graph)), str(embedded))
    rows = []
    print(f"{'query encoder setting':<58} {'start s':>7} {'ms/enc':>7} {'peak MB':>8}")
    for weights, path in (("external data", graph), ("embedded", embedded)):
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"):
            for threads in (1, 2):
                measured = []
                for _ in range(runs):
                    done = subprocess.run([sys.executable, "-c", SESSION, str(path), level, str(threads)], capture_output=True, text=True)
                    measured.append([float(x) for x in done.stdout.split()])
                start, encode, peak = (statistics.median(m[i] for m in measured) for i in range(3))
                label = f"weights {weights}, {level}, {threads} thread(s)"
                print(f"{label:<58} {start:>7.3f} {encode * 1000:>7.2f} {peak:>8.0f}", flush=True)
                rows.append({"setting": label, "start_s": start, "encode_ms": encode * 1000, "rss_mb": peak})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="measured runs of each command (after one warm-up) [default: 7]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/amr-bench-cli"), help="where the setup is made and kept")
    parser.add_argument("--million", action="store_true", help="also query a 10^6-row index (built once: about 3 minutes, 4 GB)")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    indexes = setup(args.work)
    # built in a child: a child's peak RSS (ru_maxrss) counts from this process's size when it forks
    here, work = str(Path(__file__).parent), str(args.work)
    code = f"import sys; sys.path.insert(0, {here!r}); import cli; from pathlib import Path; cli.million(Path({work!r}))"
    big = args.work / "million" / "index.h5" if args.million and subprocess.run([sys.executable, "-c", code]).returncode == 0 else None
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs; {args.runs} runs each")
    print(f"{'command':<58} {'p50 s':>7} {'max s':>7} {'peak MB':>8}   target")
    rows = [
        measure("amr --help", [*AMR, "--help"], args.runs, TARGETS["help"]),
        measure("amr --version", [*AMR, "--version"], args.runs, TARGETS["help"]),
        measure("amr query --help", [*AMR, "query", "--help"], args.runs, TARGETS["help"]),
        measure(
            "amr query --format xml dog (usage error)", [*AMR, "query", "--format", "xml", "dog"], args.runs, TARGETS["help"], expect=2
        ),
    ]
    for name, index in indexes.items():
        one_shot = [*AMR, "query", QUERY, "-k", "10", "-i", str(index)]
        rows.append(measure(f"amr query, sfx-dev {name} index: query encoder", one_shot, args.runs, TARGETS["query"]))
        rows.append(measure(f"amr query, sfx-dev {name} index: torch (the old path)", one_shot, args.runs, "reference", TORCH))
    if big is not None:
        one_shot = [*AMR, "query", QUERY, "-k", "10", "-i", str(big)]
        rows.append(measure("amr query, 10^6 rows (ivf-sq8): query encoder", one_shot, args.runs, TARGETS["million"]))
        rows.append(measure("amr query, 10^6 rows (ivf-sq8): torch (the old path)", one_shot, args.runs, "reference", TORCH))
    rows += serve(indexes["zero-shot"], args.runs)
    rows += encoder_settings(indexes["zero-shot"], args.runs)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
