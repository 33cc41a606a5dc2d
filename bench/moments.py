"""Moment retrieval in long recordings: the fixed grid against refined spans.

Builds long recordings (60 to 180 s, 32 kHz mono) from the shared real clips
(../shared/data/sounds: ESC-50, Freesound and BigSoundBank recordings with
their class names as captions), each with 2 to 4 events placed at random
times on quiet noise (-50 dBFS), every event a different clip, its leading and
trailing silence trimmed, so its ground-truth window is where it was put. One
query per event: the clip's caption, relevant to that window of its recording.
It extracts them (mn04), scores them with the zero-shot model, and prints
R1/R5 at IoU 0.5 and 0.7 and mAP (IoU 0.5:0.05:0.95) for the grid's 10 s
windows (what `amr query` returns) and for `amr.moments.refine` at several
settings, the default marked, in one table.

    python bench/moments.py [--recordings 32] [--seed 0] [--work DIR]

About a minute on 2 cores; the recordings and their cache are rebuilt in
--work (default: a temporary folder) on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from amr.audio.encoder import ClipEmbedder
from amr.audio.frontend import load_audio
from amr.audio.weights import resolve_weights
from amr.cache import EmbeddingCache
from amr.datasets import load_dataset
from amr.extraction import extract
from amr.model.zeroshot import zero_shot_variants
from amr.moments import MomentQuery, RefineConfig, moment_metrics, retrieve_moments

RATE = 32000
SHARED = Path(os.environ.get("AMR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BACKGROUND_DBFS = -50.0
SETTINGS = [  # (window s, hop s, threshold): the default first
    (RefineConfig.window, RefineConfig.hop, RefineConfig.threshold),
    (1.0, 0.5, 0.3),
    (3.0, 0.5, 0.3),
    (2.0, 0.5, 0.5),
    (2.0, 0.5, 0.2),
]


def trimmed(samples: np.ndarray, floor_db: float = -40.0) -> np.ndarray:
    """The clip without its leading and trailing stretches quieter than floor_db below its peak (50 ms frames)."""
    frame = RATE // 20
    n = len(samples) // frame
    if n == 0:
        return samples
    energy = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1)) + 1e-12
    loud = np.flatnonzero(20 * np.log10(energy / energy.max()) > floor_db)
    return samples[loud[0] * frame : (loud[-1] + 1) * frame]


def build(work: Path, recordings: int, seed: int) -> list[MomentQuery]:
    """Write the recordings and items.jsonl into ``work``; return the queries."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    clips = [item for item in load_dataset(SHARED / "data" / "sounds").items if item.captions]
    audio = {item.id: trimmed(load_audio(Path(item.audio), RATE, 10.0)) for item in clips}
    clips = [item for item in clips if len(audio[item.id]) >= RATE]  # events of at least 1 s
    (work / "audio").mkdir(parents=True, exist_ok=True)
    queries, lines = [], []
    for r in range(recordings):
        length = rng.choice([60, 90, 120, 180])
        track = noise.standard_normal(length * RATE).astype(np.float32) * 10 ** (BACKGROUND_DBFS / 20)
        events = rng.sample(clips, rng.randint(2, 4))
        slot = length / len(events)  # one event per slot, so that events do not overlap
        for k, item in enumerate(events):
            samples = audio[item.id][: int(min(slot - 2, 20) * RATE)]
            start = k * slot + rng.uniform(1, slot - 1 - len(samples) / RATE)
            a = int(start * RATE)
            track[a : a + len(samples)] += 0.5 * samples / (np.abs(samples).max() + 1e-9)
            queries.append(MomentQuery(f"rec{r}#{k}", item.captions[0], f"rec{r}", ((a / RATE, (a + len(samples)) / RATE),)))
        sf.write(work / "audio" / f"rec{r}.wav", track, RATE, subtype="PCM_16")
        lines.append(json.dumps({"id": f"rec{r}", "audio": f"audio/rec{r}.wav", "split": "test", "captions": []}))
    (work / "items.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="amr-bench-moments-"))
    queries = build(work, args.recordings, args.seed)
    weights = resolve_weights("mn04_as", SHARED / "weights" / "mn04_as_mAP_432.pt")
    cache_path = work / "moments.h5"
    report = extract(load_dataset(work).items, cache_path, weights, workers=1, progress=False)
    if report.failures:
        sys.exit(f"extraction failed: {report.failures}")
    retriever = zero_shot_variants(False)[0][1]
    truths = [q.windows for q in queries]
    lengths = [b - a for q in queries for a, b in q.windows]
    spread = f"{min(lengths):.1f} to {max(lengths):.1f} s (median {np.median(lengths):.1f})"
    print(f"{args.recordings} recordings, {len(queries)} queries, events {spread}")
    print(f"{'spans':<48} {'R1@0.5':>7} {'R1@0.7':>7} {'R5@0.5':>7} {'R5@0.7':>7} {'mAP':>7}")
    with EmbeddingCache(cache_path) as cache:
        tagger = ClipEmbedder.for_collection(cache.info, cache_path, weights.path).encoder
        for i, (window, hop, threshold) in enumerate(SETTINGS):
            config = RefineConfig(window, hop, threshold)
            grid, refined = retrieve_moments(retriever, queries, [cache], tagger, config)
            rows = [("grid: 10 s windows every 5 s", grid)] if i == 0 else []
            default = " (default)" if i == 0 else ""
            rows.append((f"refined: {window:g} s / {hop:g} s, threshold {threshold:g}{default}", refined))
            for label, predicted in rows:
                m = moment_metrics(predicted, truths)
                cells = " ".join(f"{100 * m[name]:7.2f}" for name in ("R1@0.5", "R1@0.7", "R5@0.5", "R5@0.7", "mAP"))
                print(f"{label:<48} {cells}")
    print(f"({time.perf_counter() - started:.0f} s; percent; zero-shot model, mn04; seed {args.seed})")


if __name__ == "__main__":
    main()
