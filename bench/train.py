"""Training speed of `amr train` on a Clotho-sized set, on the CPU.

    python bench/train.py                   # frozen text encoder: one full epoch; fine-tuning: a sample
    python bench/train.py --fusion mid      # another fusion mode
    python bench/train.py --fine-tune-pairs 0   # skip the (slow) fine-tuning measurement

The set is synthetic but shaped like Clotho development: 3,839 clips of 15–30 s
(uniform) at mn04's 3.125 frames/s and 384 dims, five captions each (19,195
training pairs) of 8–20 words, 5–10 keywords per clip as metadata, and a
validation split of 1,045 clips (5,225 queries). It runs the real training
code (amr.training.train) for one epoch into a temporary checkpoint and reads the
epoch record of its log.jsonl, which times:

* the training loop and, inside it, the model's forward and backward pass
  (text embedding, audio tower, loss, gradients); everything else in the loop
  (batch assembly, optimizer step, scheduler, progress) is "outside";
* the validation (all val items and queries encoded, mAP@10) and the saving
  of the checkpoint and resumable state.

With --freeze-text the first epoch also embeds every text once (a one-time
cost, reported separately). Fine-tuning the text encoder is measured on a
sample of --fine-tune-pairs pairs (one epoch, no validation set of Clotho
size) and extrapolated to 19,195 pairs.

The machine's load average is printed before and after: other processes
using the CPU slow the measurement down.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from amr.cache import CacheInfo, ClipEmbedding, write_cache
from amr.config import TrainConfig
from amr.items import Item
from amr.model.model import ModelConfig
from amr.training import train

CLOTHO_TRAIN_CLIPS = 3839
CLOTHO_VAL_CLIPS = 1045
CAPTIONS = 5
FRAME_RATE = 3.125
DIM = 384
VOCABULARY = (
    "a the dog barks loudly while cars pass by on wet street rain falls heavily roof birds chirp in "
    "distance people talk quietly crowd cheers door creaks open slowly water runs from tap engine idles "
    "wind blows through trees footsteps walk across wooden floor machine hums steadily bell rings twice"
).split()


def synthetic_clotho(path: Path, train_clips: int, val_clips: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    info = CacheInfo("mn04_as", "0" * 64, DIM, 527, 32000, FRAME_RATE, 10.0, 0)

    def words(lo: int, hi: int) -> list[str]:
        return list(rng.choice(VOCABULARY, size=int(rng.integers(lo, hi + 1))))

    def clips():
        for i in range(train_clips + val_clips):
            frames = rng.normal(size=(int(rng.uniform(15, 30) * FRAME_RATE), DIM)).astype(np.float16)
            item = Item(
                id=f"clip{i}",
                audio=f"/clotho/{i}.wav",
                split="train" if i < train_clips else "val",
                metadata={"keywords": words(5, 10)},
                captions=[" ".join(words(8, 20)) for _ in range(CAPTIONS)],
            )
            yield ClipEmbedding(item, frames, rng.random(527).astype(np.float16))

    write_cache(path, info, clips())


def one_epoch(cache: Path, output: Path, given: dict) -> tuple[dict, float]:
    """The epoch record of a one-epoch run, and the run's total time."""
    options = {"caches": (str(cache),), "epochs": 1, **given}
    model_names = {f.name for f in fields(ModelConfig)}
    unknown = set(options) - model_names - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise SystemExit(f"unknown training options: {', '.join(sorted(unknown))}")
    model = ModelConfig(**{k: v for k, v in options.items() if k in model_names})
    training = TrainConfig(**{k: v for k, v in options.items() if k not in model_names})
    started = time.perf_counter()
    train(output, model, training, progress=False)
    total = time.perf_counter() - started
    record = json.loads((output / "log.jsonl").read_text().splitlines()[-1])
    return record, total


def report(title: str, record: dict, total: float, pairs_target: int) -> None:
    outside = record["seconds"] - record["model_seconds"]
    epoch = record["seconds"] + record["validation_seconds"]
    scale = pairs_target / record["pairs"]
    print(f"\n{title}")
    print(f"  pairs                       {record['pairs']}")
    print(f"  throughput                  {record['pairs_per_second']:.0f} pairs/s")
    print(
        f"  CPU time of the loop        {record['cpu_seconds']:.1f} s over {torch.get_num_threads()} threads (wall "
        f"{record['seconds']:.1f} s)"
    )
    print(
        f"  training loop               {record['seconds']:.1f} s   "
        f"(x{scale:.2f} for {pairs_target} pairs: {record['seconds'] * scale:.1f} s)"
    )
    print(f"  forward + backward          {record['model_seconds']:.1f} s")
    print(f"  outside forward/backward    {outside:.1f} s = {100 * outside / record['seconds']:.1f} % of the loop")
    print(f"  validation                  {record['validation_seconds']:.1f} s")
    print(f"  epoch (loop + validation)   {epoch:.1f} s")
    print(f"  whole run (load, text cache, epoch, save)  {total:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fusion", default="late", choices=["none", "metadata", "late", "mid"])
    parser.add_argument("--train-clips", type=int, default=CLOTHO_TRAIN_CLIPS)
    parser.add_argument("--val-clips", type=int, default=CLOTHO_VAL_CLIPS)
    parser.add_argument("--fine-tune-pairs", type=int, default=640, help="pairs of the fine-tuning sample (0: skip)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=JSON", help="another training option, e.g. width=128")
    args = parser.parse_args()
    extra = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; load average before: {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="amr-bench-train-"))
    try:
        cache = work / "clotho.h5"
        synthetic_clotho(cache, args.train_clips, args.val_clips)
        pairs = args.train_clips * CAPTIONS
        record, total = one_epoch(cache, work / "frozen", {"fusion": args.fusion, "freeze_text": True, **extra})
        report(f"amr train --freeze-text --fusion {args.fusion} {' '.join(args.option)}", record, total, pairs)
        print(f"  text embedding (once per run)  {total - record['seconds'] - record['validation_seconds']:.1f} s incl. loading and saving")
        if args.fine_tune_pairs:
            sample = work / "sample.h5"
            synthetic_clotho(sample, args.fine_tune_pairs // CAPTIONS, max(10, args.fine_tune_pairs // 50), seed=1)
            record, total = one_epoch(sample, work / "tuned", {"fusion": args.fusion, **extra})
            report(f"amr train --fusion {args.fusion} (fine-tuning the text encoder; sample)", record, total, pairs)
        print(f"\nload average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
