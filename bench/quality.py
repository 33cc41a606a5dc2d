"""Retrieval quality on the shared data: zero-shot, BM25 and `amr train` side by side.

Builds, from ../shared/data alone, two settings over the same clips
(sfx-dev, sounds and clotho-mini: 902 real clips, titles as metadata where
the source gives one, 15 clips without any):

* **unseen**: whole concepts are held out — no clip of a test concept, and no
  caption of one, is in training (the val split holds other unseen concepts);
* **seen**: the test clips' concepts are trained on, with other clips.

A clip's *concept* is its caption stripped of boilerplate ("sound of goose
(category: animals/misc)" → "goose", "A badger." → "badger"). Half of the
clips (a fixed half, by id) lose their metadata, as in a library where half
the files have no usable name: the shared sets' titles mostly repeat their
captions, so with every title kept any metadata matcher scores near 100 and
nothing else can be measured. Each test
concept is one query, its caption text, with every test clip of the concept
relevant (as on the held-out set we are measured on: several relevant clips
per query); clotho-mini's clips are concepts of their own, each of their five
human captions a query. Then it trains `amr train` with its defaults for
every fusion mode (and whatever variants are asked for) and prints mAP@10 of
each model in each setting, next to the zero-shot rows (fused and each half)
and BM25.

    python bench/quality.py [--fusions none metadata late mid] [--seeds 0] [--option="--freeze-text"] [--work DIR]

The first run extracts the clips (about a minute on 2 cores); later runs reuse
the caches in --work (default amr-workspace/bench-quality), and the trained
runs there (delete `runs/` to train again).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amr.audio.weights import resolve_weights  # noqa: E402
from amr.cache import ClipEmbedding, EmbeddingCache, write_cache  # noqa: E402
from amr.config import TrainConfig  # noqa: E402
from amr.datasets import load_dataset  # noqa: E402
from amr.evaluate import evaluate_models  # noqa: E402
from amr.extraction import extract  # noqa: E402
from amr.items import Item, Query, write_jsonl  # noqa: E402
from amr.model.model import ModelConfig  # noqa: E402
from amr.training import train  # noqa: E402
from amr.workspace import Workspace  # noqa: E402

SHARED = REPO.parent / "shared"
SETS = ("sfx-dev", "sounds", "clotho-mini")
TEST_SHARE = 0.3  # of the concepts (unseen) or of each concept's clips (seen)
VAL_SHARE = 0.1
METADATA_KEPT = 0.5  # share of the clips that keep their metadata


def concept(caption: str) -> str:
    """A caption without its boilerplate: what sound it names."""
    text = re.sub(r"\(.*?\)", " ", caption.lower())
    text = re.sub(r"^\s*(the\s+)?sound of\s+", "", text)
    text = re.sub(r"^\s*(a|an|the)\s+", "", text)
    text = re.sub(r"[^a-z ]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def fraction(key: str) -> float:
    """A fixed pseudo-random number in [0, 1) for a string."""
    return zlib.crc32(key.encode()) / 2**32


def pool(work: Path) -> list[Path]:
    """The shared sets extracted once (mn04), one cache each."""
    weights = resolve_weights("mn04_as", SHARED / "weights" / "mn04_as_mAP_432.pt")
    caches = []
    for name in SETS:
        data = load_dataset(SHARED / "data" / name)
        path = work / f"{name}.mn04_as.h5"
        report = extract(data.items, path, weights, progress=False)
        if report.failures:
            raise SystemExit(f"{name}: {len(report.failures)} clips failed to decode")
        caches.append(path)
    return caches


def settings(caches: list[Path], work: Path) -> dict[str, tuple[Path, Path]]:
    """(cache, queries.jsonl) of each setting: the pooled clips relabelled with its splits."""
    clips: list[tuple[Item, EmbeddingCache, int]] = []
    opened = [EmbeddingCache(path) for path in caches]
    for cache in opened:
        clips += [(item, cache, i) for i, item in enumerate(cache.items)]
    groups: dict[str, list[int]] = {}
    for k, (item, _, _) in enumerate(clips):
        key = f"clotho:{item.id}" if not item.metadata and len(item.captions) == 5 else concept(item.captions[0])
        groups.setdefault(key, []).append(k)
    out = {}
    for setting in ("unseen", "seen"):
        split = {}
        for key, members in groups.items():
            if setting == "unseen":
                r = fraction(key)
                label = "test" if r < TEST_SHARE else "val" if r < TEST_SHARE + VAL_SHARE else "train"
                split.update({k: label for k in members})
            elif len(members) >= 2:  # seen: some clips of the concept train, the others test
                ordered = sorted(members, key=lambda k: fraction(clips[k][0].id))
                n_test = max(1, round(TEST_SHARE * len(members)))
                split.update({k: "test" for k in ordered[:n_test]})
                split.update({k: "val" if fraction("val" + clips[k][0].id) < VAL_SHARE else "train" for k in ordered[n_test:]})
            else:
                split.update({k: "val" if fraction("val" + clips[k][0].id) < VAL_SHARE else "train" for k in members})
        path = work / f"{setting}.h5"
        info = opened[0].info
        relabelled = (replace(item, split=split[k], metadata=kept(item)) for k, (item, _, _) in enumerate(clips))
        write_cache(path, info, (ClipEmbedding(item, *stored(cache, i)) for item, (_, cache, i) in zip(relabelled, clips)))
        queries = []
        for key, members in groups.items():
            tested = [k for k in members if split[k] == "test"]
            if not tested:
                continue
            if key.startswith("clotho:"):
                item = clips[tested[0]][0]
                queries += [Query(f"{item.id}#{c}", text, [item.id], "test") for c, text in enumerate(item.captions)]
            else:
                queries.append(Query(key, clips[tested[0]][0].captions[0], [clips[k][0].id for k in tested], "test"))
        write_jsonl(work / f"{setting}.queries.jsonl", queries)
        out[setting] = (path, work / f"{setting}.queries.jsonl")
    for cache in opened:
        cache.close()
    return out


def kept(item: Item) -> dict:
    """The item's metadata, for the clips that keep theirs."""
    return item.metadata if fraction("metadata" + item.id) < METADATA_KEPT else {}


def stored(cache: EmbeddingCache, i: int) -> tuple:
    frames, augmented = cache.stored(i)
    return frames, cache.tags[i], augmented


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusions", nargs="+", default=["none", "metadata", "late", "mid"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        help='extra `amr train` options of a variant, e.g. "--freeze-text" (repeatable: one variant each)',
    )
    parser.add_argument("--work", type=Path, default=REPO / "amr-workspace" / "bench-quality")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    variants = [("defaults", {})] + [(option, parse_options(option)) for option in args.option]

    started = time.perf_counter()
    caches = pool(args.work)
    rows: dict[str, dict[str, list[float]]] = {}
    counts = {}
    for setting, (cache, queries) in settings(caches, args.work).items():
        with EmbeddingCache(cache) as c:
            counts[setting] = {s: sum(item.split == s for item in c.items) for s in ("train", "val", "test")}
        checkpoints = []
        for name, options in variants:
            for fusion in args.fusions:
                for seed in args.seeds:
                    output = args.work / "runs" / setting / f"{fusion}-{slug(name)}-seed{seed}"
                    if not (output / "model.safetensors").exists():
                        model = ModelConfig(**{"fusion": fusion, **options.get("model", {})})
                        training = TrainConfig(**{"caches": (str(cache),), "seed": seed, **options.get("training", {})})
                        train(output, model, training, progress=False)
                    checkpoints.append((f"train {fusion} ({name})", output))
        report = evaluate_models(
            [path for _, path in checkpoints],
            [],
            [cache],
            "test",
            queries=queries,
            zero_shot=True,
            ablate=True,
            bm25=True,
            workspace=Workspace(args.work),
        )
        labels = {path.name: label for label, path in checkpoints}  # the run directories' names are distinct
        for model in report.summary()["models"]:
            label = labels.get(model["name"], model["name"])
            rows.setdefault(label, {}).setdefault(setting, []).append(100 * model["metrics"]["mAP@10"])

    print(f"clips per split: {json.dumps(counts)}")
    print(f"{'model':<44} {'unseen mAP@10':>14} {'seen mAP@10':>12}")
    for label, values in rows.items():
        cells = [
            f"{sum(v) / len(v):.2f}" + (f" ±{(max(v) - min(v)) / 2:.1f}" if len(v) > 1 else "")
            for v in (values.get("unseen", []), values.get("seen", []))
        ]
        print(f"{label:<44} {cells[0]:>14} {cells[1]:>12}")
    print(f"({time.perf_counter() - started:.0f} s; mAP@10 in %, test split, one query per test concept)")


def parse_options(text: str) -> dict[str, dict]:
    """`amr train` options of a variant as ModelConfig / TrainConfig fields (flags: True; --fine-tune-text: freeze False)."""
    tokens = shlex.split(text)
    model_fields, training_fields = set(ModelConfig.__dataclass_fields__), set(TrainConfig.__dataclass_fields__)
    options: dict[str, dict] = {"model": {}, "training": {}}
    i = 0
    while i < len(tokens):
        name = tokens[i].removeprefix("--").replace("-", "_")
        if name == "fine_tune_text":
            name, value = "freeze_text", False
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value, i = tokens[i + 1], i + 1
        else:
            value = True
        field = ModelConfig.__dataclass_fields__.get(name) or TrainConfig.__dataclass_fields__.get(name)
        if field is None:
            raise SystemExit(f"unknown option {tokens[i]}")
        kind = {"int": int, "float": float}.get(str(field.type))
        options["model" if name in model_fields else "training"][name] = kind(value) if kind else value
        i += 1
    assert set(options["model"]) <= model_fields and set(options["training"]) <= training_fields
    return options


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "defaults"


if __name__ == "__main__":
    main()
