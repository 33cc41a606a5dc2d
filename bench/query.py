"""Query latency, throughput, memory and recall of amr's index at 1e4 … 1e6 items.

    python bench/query.py                      # 1e4, 1e5, 1e6 (a few minutes per 1e6 build)
    python bench/query.py --sizes 1e4,1e5      # a quick run
    python bench/query.py --checkpoint CKPT    # the dimension and query encoder of a trained model
    python bench/query.py --width 256          # an untrained model of width 256 (512-dim late-fusion vectors)

For each size an index of synthetic item vectors is written at the retriever's
dimension, measured with exact search, then given its approximate index
(`amr index --ann`: FAISS IVF-SQ8, re-ranked) and measured again, each time
in a fresh process (so memory is that of a query process):

* latency of one query end to end (text encoding, search, result records;
  p50 and p95), and the same without the text encoding (query vectors given);
* the time of a bare FAISS search over the same vectors, so amr's own
  overhead is the ratio of the two: for the approximate index the same IVF
  object asked for its top 10 (amr asks it for 40 candidates and re-ranks
  them by exact score; that is part of amr's overhead); for exact search
  faiss.knn over the same memory map;
* throughput with queries in batches of 64, with and without text encoding;
* resident memory the opened index adds, after the queries: anonymous
  (loaded: the FAISS sidecar) and file-backed (memory-mapped pages of the
  vectors, shared with the page cache: all of them for exact search, and
  for re-ranking the kernel maps pages around each row read);
* recall@10 of the approximate index against exact search.

Synthetic vectors (what and why): real embedding collections are clustered
(sounds of a kind sit together) with clusters of very unequal size, grouped
into broader families, and anisotropic (every vector shares a common
direction). So: 24 families around a shared mean direction; K = N/500
clusters (50 … 2000) around family centres, their sizes Zipf-distributed
(exponent 1); each item a cluster centre plus isotropic noise, with a
per-cluster spread so an item's cosine to its centre is 0.45 … 0.8; all unit
length. Queries are *new* samples of random clusters (drawn like items, never
indexed), moved further to a cosine of 0.7 with that sample: queries near the
items, as a text query sits near the clips it describes.

Without --checkpoint the query encoder is an untrained model of the default
configuration (amr.model.ModelConfig): its dimension and encoding cost are
those of a trained one, which is all a latency measurement needs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from amr.cache import CacheInfo
from amr.index import (
    IndexHeader,
    add_ann,
    checkpoint_spec,
    exact_search,
    load_retriever,
    open_index,
    recall_at,
    search,
    write_index,
)
from amr.items import Item
from amr.query import QueryInput, Searcher, run_queries

FAMILIES = 24
QUERY_COSINE = 0.7
BATCH = 64
TIME_LIMIT = 20.0  # seconds per latency loop; fewer queries are timed where one is slow
TEXTS = [
    "dog barking in rain", "a cat meows twice", "heavy rain on a tin roof", "thunder rumbling in the distance",
    "birds singing at dawn", "a car engine starting", "footsteps on gravel", "people talking in a busy cafe",
    "a door creaks open and slams shut", "water dripping into a bucket", "wind blowing through trees",
    "a baby crying", "church bells ringing", "a train passing over a bridge", "typing on a keyboard",
    "glass shattering on a tiled floor", "a crowd cheering in a stadium", "waves crashing on the shore",
    "a helicopter flying overhead", "frogs croaking at night in a pond", "someone whistling a tune",
    "a motorcycle revving", "an old clock ticking", "paper being crumpled", "a dog growls and then barks loudly",
]


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


# --- synthetic collection -------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def toward(base: np.ndarray, cosine: np.ndarray | float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at the given cosine to the (unit) rows of ``base``, in random directions."""
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise = unit(noise - (noise * base).sum(-1, keepdims=True) * base)
    cosine = np.asarray(cosine, np.float32).reshape(-1, 1) if np.ndim(cosine) else np.float32(cosine)
    return unit(cosine * base + np.sqrt(1 - cosine**2) * noise)


@dataclass
class Synthetic:
    """The clustered collection described in the module docstring; every
    part is a function of (n, dim, seed), so the measuring process can draw
    the same queries without the vectors."""

    n: int
    dim: int
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.k = int(np.clip(self.n // 500, 50, 2000))
        mean = unit(rng.standard_normal(self.dim))
        families = unit(0.45 * mean + unit(rng.standard_normal((FAMILIES, self.dim))))
        self.centres = unit(families[rng.integers(0, FAMILIES, self.k)] + 0.8 * unit(rng.standard_normal((self.k, self.dim))))
        self.spread = rng.uniform(0.45, 0.8, self.k).astype(np.float32)  # cosine of an item to its centre
        weights = 1.0 / np.arange(1, self.k + 1) ** 0.8
        self.p = weights / weights.sum()

    def block(self, start: int, stop: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start])
        clusters = rng.choice(self.k, stop - start, p=self.p)
        return toward(self.centres[clusters], self.spread[clusters], rng)

    def queries(self, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, 0])  # blocks use [seed, start]
        clusters = rng.choice(self.k, count, p=self.p)
        fresh = toward(self.centres[clusters], self.spread[clusters], rng)
        return toward(fresh, QUERY_COSINE, rng)


def write_synthetic(path: Path, synthetic: Synthetic, retriever) -> float:
    """An exact-search index of the synthetic vectors; returns the seconds taken."""
    started = time.perf_counter()
    raw = path.with_suffix(".f32")
    vectors = np.lib.format.open_memmap(raw, mode="w+", dtype=np.float32, shape=(synthetic.n, synthetic.dim))
    for start in range(0, synthetic.n, 1 << 16):
        stop = min(start + (1 << 16), synthetic.n)
        vectors[start:stop] = synthetic.block(start, stop)
    rng = np.random.default_rng(synthetic.seed)
    items = [Item(f"clip{i:07d}", f"/library/clip{i:07d}.wav", "test", {"title": f"synthetic clip {i}"}) for i in range(synthetic.n)]
    tags = np.sort(rng.choice(527, (synthetic.n, 5)), axis=1).astype(np.int16)
    probs = np.sort(rng.random((synthetic.n, 5)), axis=1)[:, ::-1].astype(np.float16)
    header = IndexHeader(
        fingerprint=retriever.fingerprint,
        fusion=retriever.fusion,
        segments=retriever.segments,
        retriever=retriever.spec,
        audio=retriever.audio,
    )
    write_index(path, header, items, vectors, tags, probs)
    del vectors
    raw.unlink()
    return time.perf_counter() - started


# --- the query encoder ----------------------------------------------------------------------


def untrained_checkpoint(directory: Path, width: int | None) -> Path:
    """A checkpoint of an untrained model of the default configuration (of
    model ``width``, when given: late fusion vectors have twice as many dims)."""
    import torch

    from amr.checkpoint import save_model, write_config
    from amr.model import ModelConfig, RetrievalModel
    from amr.text import TextEncoder
    from amr.weights import WEIGHTS

    torch.manual_seed(0)
    entry = WEIGHTS["mn04_as"]
    audio = CacheInfo("mn04_as", entry.sha256 or "", 384, 527, 32000, 3.125, 10.0, 0)
    config = ModelConfig(audio_dim=audio.embed_dim, **({"width": width} if width else {}))
    model = RetrievalModel(config, TextEncoder())
    directory.mkdir(parents=True, exist_ok=True)
    write_config(directory, model, audio, training={"untrained": True})
    save_model(directory, model)
    return directory


class GivenVectors:
    """The retriever, with query "q<i>" encoded as the i-th given vector:
    everything amr does for a query except running the text encoder."""

    def __init__(self, retriever, vectors: np.ndarray):
        self.vectors = vectors
        self.fingerprint, self.fusion = retriever.fingerprint, retriever.fusion
        self.segments, self.spec = retriever.segments, retriever.spec

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.vectors[[int(t[1:]) for t in texts]]


# --- measuring (in a fresh process) ---------------------------------------------------------


def rss_mib() -> dict[str, float]:
    """Resident memory: anonymous (the process's own) and file-backed (mapped
    pages of the index files, shared with the page cache and reclaimable)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def timed(calls, limit: float = TIME_LIMIT) -> np.ndarray:
    """Milliseconds per call of each column of ``calls`` (tuples of calls, run
    in turn, so that compared calls share the machine's moods), stopping after
    ``limit`` seconds (at least 10 rows): (rows, columns)."""
    times, started = [], time.perf_counter()
    for row in calls:
        times.append([])
        for call in row:
            t = time.perf_counter()
            call()
            times[-1].append((time.perf_counter() - t) * 1000)
        if len(times) >= 10 and time.perf_counter() - started > limit:
            break
    return np.array(times)


def measure(path: Path, checkpoint: Path, n: int, seed: int, count: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)  # as `amr query --threads`
    retriever = load_retriever(checkpoint_spec(checkpoint))
    texts = [TEXTS[i % len(TEXTS)] for i in range(count)]
    before = rss_mib()
    index = open_index(path)
    queries = Synthetic(n, index.header.dim, seed).queries(count)
    text_searcher = Searcher(index, retriever)
    vector_searcher = Searcher(index, GivenVectors(retriever, queries))

    def one(searcher: Searcher, text: str):
        return lambda: list(run_queries(searcher, [QueryInput("1", text)], top=10))

    def batch(searcher: Searcher, inputs: list[str]) -> float:
        started = time.perf_counter()
        for _ in run_queries(searcher, [QueryInput(str(i), t) for i, t in enumerate(inputs)], top=10, batch_size=BATCH):
            pass
        return len(inputs) / (time.perf_counter() - started)

    if index.ann is not None:
        bare = lambda q: lambda: index.ann.search(q, 10)  # noqa: E731
    else:
        bare = lambda q: lambda: faiss.knn(q, index.vectors, 10, faiss.METRIC_INNER_PRODUCT)  # noqa: E731
    for i in range(5):  # warm up: the encoder, and the pages a query touches first
        one(text_searcher, texts[i])()
        one(vector_searcher, f"q{i}")()
    e2e = timed((one(text_searcher, t),) for t in texts)[:, 0]
    pairs = timed((one(vector_searcher, f"q{i}"), bare(queries[i : i + 1])) for i in range(count))
    vectors_only, faiss_only = pairs[:, 0], pairs[:, 1]
    row = {
        "items": n,
        "index": f"{index.ann_info.kind} nlist {index.ann_info.nlist} nprobe {index.ann_info.nprobe}" if index.ann_info else "exact",
        "e2e_p50": float(np.percentile(e2e, 50)),
        "e2e_p95": float(np.percentile(e2e, 95)),
        "search_p50": float(np.percentile(vectors_only, 50)),
        "search_p95": float(np.percentile(vectors_only, 95)),
        "faiss_p50": float(np.percentile(faiss_only, 50)),
        "qps_e2e": batch(text_searcher, texts),
        "qps_search": batch(vector_searcher, [f"q{i}" for i in range(count)]),
        **{f"{key}_mib": value - before[key] for key, value in rss_mib().items()},  # before the recall check
        "timed": [len(e2e), len(vectors_only), len(faiss_only)],
    }
    if index.ann is not None:
        approx, _ = search(index, queries, 10)
        truth, _ = exact_search(index.vectors, queries, 10)
        row["recall_at_10"] = recall_at(approx, truth)
    return row


def measure_in_child(path: Path, n: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--measure", str(path), "--checkpoint", str(args.checkpoint), "--sizes", str(n)]
    command += ["--seed", str(args.seed)]
    command += ["--queries", str(args.queries), "--threads", str(args.threads)]
    # as `amr query --threads` sets it, before numpy loads
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", str(args.threads))}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"measuring {path} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report ---------------------------------------------------------------------------------


COLUMNS = [
    ("items", "items", "{:,}"), ("index", "index", "{}"), ("build_s", "build s", "{:.1f}"),
    ("e2e_p50", "e2e p50 ms", "{:.2f}"), ("e2e_p95", "e2e p95 ms", "{:.2f}"),
    ("search_p50", "no-text p50 ms", "{:.3f}"), ("search_p95", "no-text p95 ms", "{:.3f}"),
    ("faiss_p50", "bare FAISS p50 ms", "{:.3f}"), ("overhead", "amr/FAISS", "{:.2f}x"),
    ("qps_e2e", "batch q/s (e2e)", "{:.0f}"), ("qps_search", "batch q/s (no text)", "{:.0f}"),
    ("RssAnon_mib", "RSS anon +MiB", "{:.0f}"), ("RssFile_mib", "RSS file +MiB", "{:.0f}"), ("recall_at_10", "recall@10", "{:.3f}"),
]


def print_table(rows: list[dict]) -> None:
    print("| " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        row = {**row, "overhead": row["search_p50"] / row["faiss_p50"]}
        print("| " + " | ".join(fmt.format(row[key]) if key in row else "-" for key, _, fmt in COLUMNS) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated index sizes [default: 1e4,1e5,1e6]")
    parser.add_argument("--checkpoint", type=Path, help="trained checkpoint [default: an untrained model]")
    parser.add_argument("--width", type=int, help="model width of the untrained model [default: ModelConfig's]")
    parser.add_argument("--queries", type=int, default=200, help="queries per measurement [default: 200]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="threads of the query encoder and BLAS, as amr query --threads [default: 1]")
    parser.add_argument("--work", type=Path, help="folder for the indexes [default: a temporary one, removed]")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.checkpoint, parse_sizes(args.sizes)[0], args.seed, args.queries, args.threads)))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="amr-bench-query-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        trained = args.checkpoint is not None
        args.checkpoint = args.checkpoint or untrained_checkpoint(work / "untrained", args.width)
        retriever = load_retriever(checkpoint_spec(args.checkpoint))
        print(
            f"query encoder: {'checkpoint ' + str(args.checkpoint) if trained else 'untrained default model'} "
            f"(fusion {retriever.fusion}, {sum(d for _, d in retriever.segments)} dims); "
            f"{os.cpu_count()} CPUs, faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads, "
            f"query encoder and BLAS {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
        )
        rows = []
        for n in parse_sizes(args.sizes):
            path = work / f"synthetic-{n}.h5"
            seconds = write_synthetic(path, Synthetic(n, sum(d for _, d in retriever.segments), args.seed), retriever)
            rows.append({**measure_in_child(path, n, args), "build_s": seconds})
            info = add_ann(path)
            rows.append({**measure_in_child(path, n, args), "build_s": seconds + info.seconds})
            for file in [path, *work.glob(f"synthetic-{n}.*.faiss")]:
                file.unlink()
        print_table(rows)
        print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes on the machine skew the timings)", file=sys.stderr)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
