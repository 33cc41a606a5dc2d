"""Query latency, memory, recall and build cost of amr's index at 1e4 … 1e7 items.

    python bench/query.py                                # 1e5 and 1e6: exact, ivf-sq8, ivf-pq
    python bench/query.py --sizes 1e7 --kinds ivf-pq     # the on-disk tier at ten million (an hour or more)
    python bench/query.py --sizes 1e4,1e5 --init random  # a quick run, at 256 dims
    python bench/query.py --checkpoint CKPT              # the dimension and query encoder of a trained model
    python bench/query.py --sizes 1e7 --work DIR --keep  # keep the index: a rerun measures it (appended to) again

For each size and kind an index of synthetic item vectors is written at the
retriever's dimension, streamed to disk (never all in RAM), given its
approximate index (`amr index --ann-kind KIND`, by amr.index.build.add_ann) and
measured, each step in a fresh process:

* build: seconds to write the index (the synthetic vectors' own generation
  excluded) and to build the approximate index; peak resident memory of the
  building process, anonymous and file-backed (memory-mapped pages of the
  index, shared with the page cache), sampled every 0.2 s; size on disk;
* latency of one query end to end (text encoding, search, result records;
  p50 and p95), and the same without the text encoding (query vectors given);
* the time of a bare FAISS search over the same index (the same IVF object
  asked for its top 10 at the same nprobe; amr asks it for more candidates
  and re-ranks them by exact score: that is part of amr's overhead); for
  exact search faiss.knn over the same memory map (float32 indexes);
* throughput with queries in batches of 64, with and without text encoding;
* resident memory of the query process after the queries (anonymous:
  the process's own, loaded FAISS parts; file-backed: mapped pages) and its
  peak (VmHWM, both together);
* recall@10 against exact search on a sample of the queries;
* `amr index --append` of 10,000 items (a tenth of them ids already
  indexed, replaced) to the approximate index: seconds and peak memory.

A last line extrapolates the on-disk tier to 10^8 items from its 10^6 and
10^7 rows, with the assumptions it makes.

Synthetic vectors (what and why): real collections are clustered (sounds of
a kind sit together), with clusters of very unequal size grouped into
broader families, every vector sharing a common direction, and the spread
around a cluster concentrated in a few dozen directions rather than all D.
Measured on the zero-shot index of the shared sfx-dev clips (856, 768
dims): norm of the mean unit vector 0.66, participation ratio of the
centred spectrum 55 (33 % of the variance in 10 components), median cosine
of a clip to its nearest neighbour 0.87. The generator: 24 families around a
shared mean direction; K = N/500 clusters (50 … 2000) around family centres,
their sizes Zipf-distributed (exponent 0.8); each item a cluster centre plus
noise at a per-cluster cosine of 0.8 … 0.95; all noise drawn from one
anisotropic Gaussian (variance of the i-th of D random orthogonal directions
∝ i^-0.8); unit length. Its first 856 items of 1e5 give 0.65, 55, 34 % and
0.82. (Isotropic noise, as a first version of this script drew, gives a
nearest-neighbour cosine of 0.40 and a participation ratio in the hundreds:
no real embedding looks like that, and product quantisation cannot rank
such noise.) Queries are new samples of random clusters (drawn like items,
never indexed), moved further to a cosine of 0.7 with that sample, in the
same anisotropic noise: queries near the items, as a text query sits near
the clips it describes.

Without --checkpoint the query encoder is an untrained model of the default
configuration (amr.model.model.ModelConfig; ``--init random`` for a random-init
one): its dimension and encoding cost are those of a trained one (768 dims
from a zero-shot start, 2 x width = 256 from a random one), which is all a
latency measurement needs. Timings on a shared 2-core machine move with its
load: the script prints the load average while it builds and measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amr.cache import CacheInfo
from amr.errors import AmrError
from amr.index.ann import load_faiss, pq_lists, pq_sub_quantizers
from amr.index.build import add_ann
from amr.index.format import IndexHeader, sidecars
from amr.index.reader import open_index
from amr.index.search import exact_search, search
from amr.index.store import Rows
from amr.index.tune import recall_at
from amr.items import Item
from amr.model.checkpoint import checkpoint_spec
from amr.model.retrievers import load_retriever
from amr.query import QueryInput, Searcher, run_queries

faiss = load_faiss()

FAMILIES = 24
QUERY_COSINE = 0.7
SPECTRUM = 0.8  # noise variance along the i-th direction ∝ i^-SPECTRUM
MEAN_WEIGHT = 2.5  # how strongly families share the mean direction
SPREAD = (0.8, 0.95)  # cosine of an item to its cluster centre, per cluster
BATCH = 64
WRITE_BLOCK = 1 << 16
TIME_LIMIT = 20.0  # seconds per latency loop; fewer queries are timed where one is slow
TEXTS = [
    "dog barking in rain",
    "a cat meows twice",
    "heavy rain on a tin roof",
    "thunder rumbling in the distance",
    "birds singing at dawn",
    "a car engine starting",
    "footsteps on gravel",
    "people talking in a busy cafe",
    "a door creaks open and slams shut",
    "water dripping into a bucket",
    "wind blowing through trees",
    "a baby crying",
    "church bells ringing",
    "a train passing over a bridge",
    "typing on a keyboard",
    "glass shattering on a tiled floor",
    "a crowd cheering in a stadium",
    "waves crashing on the shore",
    "a helicopter flying overhead",
    "frogs croaking at night in a pond",
    "someone whistling a tune",
    "a motorcycle revving",
    "an old clock ticking",
    "paper being crumpled",
    "a dog growls and then barks loudly",
]


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


# --- synthetic collection -------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


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
        basis, _ = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))
        scale = np.arange(1, self.dim + 1, dtype=np.float64) ** (-SPECTRUM / 2)
        self.shape = (basis * (scale / np.linalg.norm(scale))).T.astype(np.float32)  # z @ shape: the anisotropic noise
        self.k = int(np.clip(self.n // 500, 50, 2000))
        mean = unit(rng.standard_normal(self.dim))
        families = unit(MEAN_WEIGHT * mean + unit(self.noise(rng, FAMILIES)))
        self.centres = unit(families[rng.integers(0, FAMILIES, self.k)] + 0.8 * unit(self.noise(rng, self.k)))
        self.spread = rng.uniform(*SPREAD, self.k).astype(np.float32)
        weights = 1.0 / np.arange(1, self.k + 1) ** 0.8
        self.p = weights / weights.sum()

    def noise(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.standard_normal((count, self.dim)).astype(np.float32) @ self.shape

    def toward(self, base: np.ndarray, cosine: np.ndarray | float, rng: np.random.Generator) -> np.ndarray:
        """Unit vectors at the given cosine to the (unit) rows of ``base``, in random (anisotropic) directions."""
        noise = self.noise(rng, len(base))
        noise = unit(noise - (noise * base).sum(-1, keepdims=True) * base)
        cosine = np.asarray(cosine, np.float32).reshape(-1, 1) if np.ndim(cosine) else np.float32(cosine)
        return unit(cosine * base + np.sqrt(1 - cosine**2) * noise)

    def block(self, start: int, stop: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start])
        clusters = rng.choice(self.k, stop - start, p=self.p)
        return self.toward(self.centres[clusters], self.spread[clusters], rng)

    def queries(self, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, 0])  # blocks use [seed, start]
        clusters = rng.choice(self.k, count, p=self.p)
        return self.toward(self.toward(self.centres[clusters], self.spread[clusters], rng), QUERY_COSINE, rng)


def write_synthetic(path: Path, synthetic: Synthetic, checkpoint: Path, vector_dtype: str) -> dict:
    """An exact-search index of the synthetic vectors, written in blocks (amr.index.store.write_index);
    returns the seconds taken without those of generating the vectors."""
    from amr.index.store import write_index

    retriever = load_retriever(checkpoint_spec(checkpoint))
    header = IndexHeader.of(retriever, retriever.audio, [])
    generating = 0.0

    def batches():
        nonlocal generating
        for start in range(0, synthetic.n, WRITE_BLOCK):
            stop = min(start + WRITE_BLOCK, synthetic.n)
            t = time.perf_counter()
            vectors = synthetic.block(start, stop)
            rng = np.random.default_rng([synthetic.seed, 2, start])
            tags = np.sort(rng.choice(527, (stop - start, 5)), axis=1).astype(np.int16)
            probs = np.sort(rng.random((stop - start, 5)), axis=1)[:, ::-1].astype(np.float16)
            items = [Item(f"clip{i:08d}", f"/library/clip{i:08d}.wav", "test", {"title": f"clip {i}"}) for i in range(start, stop)]
            spans = np.tile(np.array([[0.0, 10.0]], np.float32), (stop - start, 1))
            generating += time.perf_counter() - t
            yield Rows(items, np.arange(stop - start), spans, vectors, tags, probs)

    started = time.perf_counter()
    write_index(path, header, batches(), vector_dtype)
    return {"write_s": time.perf_counter() - started - generating, "generate_s": generating}


def build(path: Path, n: int, kind: str, args: argparse.Namespace) -> dict:
    """In this (fresh) process: write the synthetic index, then its approximate index."""
    synthetic = Synthetic(n, dimension(args.checkpoint), args.seed)
    dtype = "float16" if kind == "ivf-pq" else "float32"  # as amr index stores them
    row = write_synthetic(path, synthetic, args.checkpoint, dtype) if not path.exists() else {"write_s": 0.0}
    kept = open_index(path).ann_info if kind != "exact" and args.keep else None
    if kept is not None and kept.kind == kind:  # kept by an earlier --keep run: measured again, not rebuilt
        return row | {"ann_s": 0.0, "index": f"{kind} nlist {kept.nlist} nprobe {kept.nprobe} x{kept.rerank} (kept)"}
    if kind != "exact":
        started = time.perf_counter()
        info = add_ann(path, kind)
        described = f"{kind} nlist {info.nlist} nprobe {info.nprobe} x{info.rerank}"
        row.update(ann_s=time.perf_counter() - started, index=described, build_recall=info.recall_at_10)
    return row


class SyntheticRetriever:
    """The query encoder's identity (fingerprint, parts, audio model), with
    item vectors drawn from the synthetic collection: appends to a synthetic index."""

    def __init__(self, retriever, synthetic: Synthetic, offset: int):
        self.kind, self.fusion, self.fingerprint = retriever.kind, retriever.fusion, retriever.fingerprint
        self.configuration, self.parts, self.spec, self.audio = retriever.configuration, retriever.parts, retriever.spec, retriever.audio
        self.synthetic, self.offset = synthetic, offset
        self.query_side = retriever.query_side  # the model's own query encoder, should the index lack one

    def encode_items(self, cache, indices, auto_tags: int = 0) -> np.ndarray:
        indices = list(indices)
        return self.synthetic.block(self.offset + indices[0], self.offset + indices[-1] + 1)


def append(path: Path, n: int, count: int, args: argparse.Namespace) -> dict:
    """In this (fresh) process: `amr index --append` of ``count`` synthetic
    items to the index of n at ``path``: count - count/10 new ids, count/10
    ids of indexed items (replaced). The cache's frames are placeholders."""
    from amr.cache import ClipEmbedding, write_cache
    from amr.index.build import build_index

    retriever = load_retriever(checkpoint_spec(args.checkpoint))
    ids = [f"clip{i:08d}" for i in range(n, n + count - count // 10)] + [f"clip{i:08d}" for i in range(count // 10)]
    frames, tags = np.zeros((3, retriever.audio.embed_dim), np.float32), np.full(527, 0.1, np.float32)
    cache = path.with_name(f"append-{n}.h5")
    write_cache(cache, retriever.audio, (ClipEmbedding(Item(i, f"/library/{i}.wav", "test"), frames, tags) for i in ids))
    started = time.perf_counter()
    encoder = SyntheticRetriever(retriever, Synthetic(n, dimension(args.checkpoint), args.seed), 2 * n)
    report = build_index(encoder, [cache], path, append=True)
    cache.unlink()
    return {"append_s": time.perf_counter() - started, "appended": report.added, "replaced": report.replaced, "rows": report.rows}


def default_kinds(n: int) -> list[str]:
    return [*(["exact", "ivf-sq8"] if n <= 10**6 else []), *(["ivf-pq"] if n >= 10**6 else [])]


def dimension(checkpoint: Path) -> int:
    return sum(d for _, d in load_retriever(checkpoint_spec(checkpoint)).parts)


# --- the query encoder ----------------------------------------------------------------------


def untrained_checkpoint(directory: Path, width: int | None, init: str | None) -> Path:
    """A checkpoint of an untrained model of the default configuration (of
    model ``width`` and ``init``, when given)."""
    from dataclasses import asdict

    import torch

    from amr.audio.weights import WEIGHTS
    from amr.config import TrainConfig
    from amr.model.checkpoint import save_model, write_config
    from amr.model.model import ModelConfig, RetrievalModel
    from amr.model.text import TextEncoder

    torch.manual_seed(0)
    entry = WEIGHTS["mn04_as"]
    audio = CacheInfo("mn04_as", entry.sha256 or "", 384, 527, 32000, 3.125, 10.0, 0)
    options = {**({"width": width} if width else {}), **({"init": init} if init else {})}
    config = ModelConfig(audio_dim=audio.embed_dim, **options)
    model = RetrievalModel(config, TextEncoder())
    directory.mkdir(parents=True, exist_ok=True)
    write_config(directory, model, audio, training=asdict(TrainConfig()))  # never trained: the default options, no best epoch
    save_model(directory, model)
    return directory


class GivenVectors:
    """The retriever, with query "q<i>" encoded as the i-th given vector:
    everything amr does for a query except running the text encoder."""

    def __init__(self, retriever, vectors: np.ndarray):
        self.vectors = vectors
        self.fingerprint, self.fusion, self.parts, self.spec = retriever.fingerprint, retriever.fusion, retriever.parts, retriever.spec

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.vectors[[int(t[1:]) for t in texts]]


# --- measuring (in a fresh process) ---------------------------------------------------------


def memory_mib(pid: int | str = "self") -> dict[str, float]:
    """Resident memory: anonymous (the process's own), file-backed (mapped
    pages of the index files, shared with the page cache and reclaimable) and the peak of both (VmHWM)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
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


def measure(path: Path, checkpoint: Path, n: int, seed: int, count: int, recall_count: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)  # as `amr query --threads`
    retriever = load_retriever(checkpoint_spec(checkpoint))
    texts = [TEXTS[i % len(TEXTS)] for i in range(count)]
    before = memory_mib()
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
        bare = lambda q: lambda: index.ann.search(q, 10, params=index._params)  # noqa: E731
    elif index.vectors.dtype == np.float32:
        bare = lambda q: lambda: faiss.knn(q, index.vectors, 10, faiss.METRIC_INNER_PRODUCT)  # noqa: E731
    else:
        bare = None
    for i in range(5):  # warm up: the encoder, and the pages a query touches first
        one(text_searcher, texts[i])()
        one(vector_searcher, f"q{i}")()
    e2e = timed((one(text_searcher, t),) for t in texts)[:, 0]
    pairs = timed((one(vector_searcher, f"q{i}"),) + ((bare(queries[i : i + 1]),) if bare else ()) for i in range(count))
    row = {
        "items": n,
        "e2e_p50": float(np.percentile(e2e, 50)),
        "e2e_p95": float(np.percentile(e2e, 95)),
        "search_p50": float(np.percentile(pairs[:, 0], 50)),
        "search_p95": float(np.percentile(pairs[:, 0], 95)),
        "qps_e2e": batch(text_searcher, texts),
        "qps_search": batch(vector_searcher, [f"q{i}" for i in range(count)]),
        # before the recall check; the peak (VmHWM) is absolute
        **{f"query_{key}_mib": value - (before[key] if key != "VmHWM" else 0) for key, value in memory_mib().items()},
        "timed": [len(e2e), len(pairs)],
        "load": os.getloadavg()[0],
    }
    if bare:
        row["faiss_p50"] = float(np.percentile(pairs[:, 1], 50))
    if index.ann is not None:
        sample = queries[:recall_count]
        approx, _ = search(index, sample, 10)
        truth, _ = exact_search(index.vectors, sample, 10)
        row["recall_at_10"] = recall_at(approx, truth)
    return row


def in_child(args: argparse.Namespace, *extra: str) -> dict:
    """Run this script with ``extra`` options in a fresh process; its JSON
    result, with the peak memory (sampled every 0.2 s) and mean load average."""
    command = [sys.executable, __file__, "--checkpoint", str(args.checkpoint), "--seed", str(args.seed), *extra]
    command += ["--keep"] * args.keep
    command += ["--queries", str(args.queries), "--recall-queries", str(args.recall_queries), "--threads", str(args.threads)]
    # as `amr query --threads` sets it, before numpy loads
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", str(args.threads))}
    peak = {"RssAnon": 0.0, "RssFile": 0.0}
    loads = []
    with tempfile.TemporaryFile("w+") as out, subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True, env=env) as child:
        while child.poll() is None:
            try:
                for key, value in memory_mib(child.pid).items():
                    if key in peak:
                        peak[key] = max(peak[key], value)
            except (FileNotFoundError, ProcessLookupError):
                pass
            loads.append(os.getloadavg()[0])
            time.sleep(0.2)
        stderr = child.stderr.read()
        out.seek(0)
        lines = out.read().strip().splitlines()
    if child.returncode or not lines:
        sys.exit(f"{' '.join(extra)} failed: {stderr.strip().splitlines()[-1] if stderr.strip() else 'no output'}")
    peaks = {"peak_anon_mib": peak["RssAnon"], "peak_file_mib": peak["RssFile"]}
    return {**json.loads(lines[-1]), **peaks, "mean_load": float(np.mean(loads or [0]))}


def disk_mib(path: Path) -> float:
    files = [path, *sidecars(path), *(p for folder in path.parent.glob(f"{path.stem}.*.data") for p in folder.iterdir())]
    return sum(f.stat().st_size for f in files) / 2**20


# --- report ---------------------------------------------------------------------------------


COLUMNS = [
    ("items", "items", "{:,}"),
    ("index", "index", "{}"),
    ("build_s", "build s", "{:.0f}"),
    ("disk_mib", "disk MiB", "{:,.0f}"),
    ("build_anon_mib", "build peak anon / file MiB", "{}"),
    ("e2e_p50", "e2e p50 ms", "{:.2f}"),
    ("e2e_p95", "e2e p95 ms", "{:.2f}"),
    ("search_p50", "no-text p50 ms", "{:.3f}"),
    ("faiss_p50", "bare FAISS p50 ms", "{:.3f}"),
    ("overhead", "amr/FAISS", "{:.2f}x"),
    ("qps_e2e", "batch q/s (e2e)", "{:.0f}"),
    ("qps_search", "batch q/s (no text)", "{:.0f}"),
    ("query_RssAnon_mib", "query RSS anon +MiB", "{:.0f}"),
    ("query_RssFile_mib", "query RSS file +MiB", "{:.0f}"),
    ("query_VmHWM_mib", "query peak RSS MiB", "{:.0f}"),
    ("recall_at_10", "recall@10", "{:.3f}"),
    ("append_s", "append s", "{:.1f}"),
    ("append_memory", "append peak anon / file MiB", "{}"),
    ("load", "load", "{:.1f}"),
]


def print_table(rows: list[dict]) -> None:
    print("| " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        row = {**row, "build_anon_mib": f"{row['build_peak_anon_mib']:.0f} / {row['build_peak_file_mib']:.0f}"}
        if "append_s" in row:
            row["append_memory"] = f"{row['append_anon_mib']:.0f} / {row['append_file_mib']:.0f}"
        if "faiss_p50" in row:
            row["overhead"] = row["search_p50"] / row["faiss_p50"]
        print("| " + " | ".join(fmt.format(row[key]) if key in row else "-" for key, _, fmt in COLUMNS) + " |", flush=True)


def extrapolate(rows: list[dict], dim: int) -> str | None:
    """10^8 from the ivf-pq rows at 10^6 and 10^7 (None without both)."""
    pq = {row["items"]: row for row in rows if row["index"].startswith("ivf-pq")}
    if 10**6 not in pq or 10**7 not in pq:
        return None
    small, large = pq[10**6], pq[10**7]
    target = 10**8
    per_row = large["disk_mib"] / 10**7
    # search time a + b·√N: the lists scanned hold nprobe·N/nlist codes and nlist ∝ √N
    b = (large["search_p50"] - small["search_p50"]) / (math.sqrt(10**7) - math.sqrt(10**6))
    search = large["search_p50"] + b * (math.sqrt(target) - math.sqrt(10**7))
    text = large["e2e_p50"] - large["search_p50"]
    quantiser = lambda n: pq_lists(n) * dim * 4 / 2**20  # noqa: E731
    anon = large["query_RssAnon_mib"] + quantiser(target) - quantiser(10**7)
    build = large["build_s"] * (target * pq_lists(target)) / (10**7 * pq_lists(10**7))
    lists_gib = (pq_sub_quantizers(dim) + 8) * target / 2**30  # codes and ids
    return (
        f"10^8 extrapolated: disk {per_row * target / 2**10:,.0f} GiB; query anonymous memory ~{anon:,.0f} MiB; "
        f"search p50 ~{search:.1f} ms, end to end ~{search + text:.1f} ms; build ~{build / 3600:,.1f} h. Assumptions: disk "
        f"linear in N ({per_row * 2**20:,.0f} bytes a row at 10^7); anonymous memory that at 10^7 plus the larger coarse "
        f"quantiser ({pq_lists(target)} lists x {dim} float32); search time a + b·√N fitted to 10^6 and 10^7 (the nprobe "
        f"lists scanned hold N/nlist ∝ √N codes each, nprobe unchanged); the inverted lists ({lists_gib:,.0f} GiB) "
        f"in the page cache and the re-ranked rows read from disk as at 10^7; text encoding as at 10^7 ({text:.1f} ms); "
        "build time ∝ N x nlist (the coarse assignment dominates)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e5,1e6", help="comma-separated index sizes [default: 1e5,1e6]")
    parser.add_argument("--kinds", default="auto", help="exact, ivf-sq8, ivf-pq [default: exact, ivf-sq8 to 1e6; ivf-pq from 1e6]")
    parser.add_argument("--checkpoint", type=Path, help="trained checkpoint [default: an untrained model]")
    parser.add_argument("--width", type=int, help="model width of the untrained model [default: ModelConfig's]")
    parser.add_argument("--init", choices=["zero-shot", "random"], help="init of the untrained model [default: zero-shot, 768 dims]")
    parser.add_argument("--queries", type=int, default=200, help="queries per measurement [default: 200]")
    parser.add_argument("--recall-queries", type=int, default=200, help="of those, queries the recall is measured on [default: 200]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="threads of the query encoder and BLAS, as amr query --threads [default: 1]")
    parser.add_argument("--work", type=Path, help="folder for the indexes [default: a temporary one, removed]")
    parser.add_argument("--keep", action="store_true", help="keep the indexes in --work: a rerun measures them, not rebuilt")
    parser.add_argument("--append", type=int, default=10_000, help="items appended to each approximate index, 0: none [default: 10000]")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--append-to", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.measure:
            n = parse_sizes(args.sizes)[0]
            print(json.dumps(measure(args.measure, args.checkpoint, n, args.seed, args.queries, args.recall_queries, args.threads)))
            return
        if args.build:
            print(json.dumps(build(args.build, parse_sizes(args.sizes)[0], args.kind, args)))
            return
        if args.append_to:
            print(json.dumps(append(args.append_to, parse_sizes(args.sizes)[0], args.append, args)))
            return
    except AmrError as e:  # e.g. a kept index left incomplete by a killed run: its one line, not a traceback
        sys.exit(f"error: {e}")

    work = args.work or Path(tempfile.mkdtemp(prefix="amr-bench-query-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        trained = args.checkpoint is not None
        kept_model = work / "untrained" if args.keep and (work / "untrained").exists() else None  # the kept indexes' model
        args.checkpoint = args.checkpoint or kept_model or untrained_checkpoint(work / "untrained", args.width, args.init)
        dim = dimension(args.checkpoint)
        print(
            f"query encoder: {'checkpoint ' + str(args.checkpoint) if trained else 'untrained default model'} ({dim} dims); "
            f"{os.cpu_count()} CPUs, faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads, "
            f"query encoder and BLAS {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
        )
        rows = []
        written: dict[int, float] = {}  # seconds the exact index of each size took to write (ivf-sq8 adds to it)
        for n in parse_sizes(args.sizes):
            kinds = args.kinds.split(",") if args.kinds != "auto" else default_kinds(n)
            for kind in kinds:
                path = work / f"synthetic-{n}-{kind}.h5"
                exact_index = work / f"synthetic-{n}-exact.h5"
                if kind == "ivf-sq8" and exact_index.exists() and not path.exists():  # the same vectors: add to that index
                    for old in work.glob(f"synthetic-{n}-exact.*"):
                        old.rename(work / old.name.replace("-exact", "-ivf-sq8"))
                built = in_child(args, "--build", str(path), "--kind", kind, "--sizes", str(n))
                written[n] = built["write_s"] or written.get(n, 0.0)
                build_s = written[n] + built.get("ann_s", 0.0)
                row = {"index": built.get("index", "exact"), "build_s": build_s, "disk_mib": disk_mib(path)}
                row |= {"build_recall": built.get("build_recall")}
                row |= {"build_peak_anon_mib": built["peak_anon_mib"], "build_peak_file_mib": built["peak_file_mib"]}
                row |= {"build_load": built["mean_load"]}
                row |= in_child(args, "--measure", str(path), "--sizes", str(n))
                if kind != "exact" and args.append:
                    appended = in_child(args, "--append-to", str(path), "--sizes", str(n), "--append", str(args.append))
                    row |= {"append_s": appended["append_s"], "append_anon_mib": appended["peak_anon_mib"]}
                    row |= {"append_file_mib": appended["peak_file_mib"]}
                rows.append(row)
                print(f"{n:,} {row['index']}: {json.dumps(row)}", file=sys.stderr, flush=True)
                if not args.keep and (kind != "exact" or "ivf-sq8" not in kinds):
                    for file in work.glob(f"synthetic-{n}-{kind}.*"):
                        shutil.rmtree(file) if file.is_dir() else file.unlink()
        print_table(rows)
        line = extrapolate(rows, dim)
        if line:
            print(line)
        print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes on the machine skew the timings)", file=sys.stderr)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
