"""`amr train`: fit the retrieval model on (caption, clip) pairs of cached embeddings.

Protocol (Primus & Widmer 2024): every caption of every train-split clip is a
training pair; the loss is NT-Xent over the batch (other captions of the same
clip are masked, not negatives); Adam with per-group learning rates (new
layers vs the pretrained text encoder), one warm-up epoch, then cosine decay;
validation mAP@10 (amr.metrics) on the val split after every epoch, keeping
the best epoch's weights.

Data: all frames of the caches are read into memory once (float16). A cache
with SpecAugmented views gives each clip one random view per epoch. A cache
without a val split gives the train items whose id hashes to 0 mod 10 (a
fixed 10%) to validation. With ``metadata = ("captions",)`` a pair's metadata
is another caption of the same clip (random per epoch in training; in
validation the next caption, so a query never meets its own sentence).

Reproducible and resumable: all randomness of epoch e derives from (seed, e),
and after every epoch the state (weights, Adam, scheduler, history) is saved
atomically, so `--resume` after a Ctrl-C or a kill continues exactly as an
uninterrupted run would.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from amr import checkpoint
from amr.cache import CacheInfo, EmbeddingCache, open_caches
from amr.errors import AmrError
from amr.items import Item
from amr.metrics import retrieval_metrics
from amr.model import CAPTIONS, ModelConfig, RetrievalModel, item_metadata, nt_xent, pad_sequences
from amr.text import TextEncoder

HOLDOUT_MODULUS = 10  # a cache without a val split validates on 1 in 10 train items
BUCKET_BATCHES = 16  # batches per length bucket (see _bucketed_batches)

console = Console(stderr=True)


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the checkpoint stores it; a resumed run must match it).

    Defaults: the paper's batch 32, 25 epochs, one warm-up epoch and NT-Xent
    temperature 0.05; learning rate 5e-4 for the new layers, trained from
    scratch (better than 1e-4, 2e-4 and 1e-3 on sfx-dev's val split), and
    2e-5 for the pretrained text encoder (the usual BERT fine-tuning rate);
    no metadata dropout.
    """

    caches: tuple[str, ...] = ()
    epochs: int = 25
    batch_size: int = 32
    lr: float = 5e-4
    text_lr: float = 2e-5
    warmup_epochs: int = 1
    temperature: float = 0.05
    metadata_dropout: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "caches", tuple(str(c) for c in self.caches))
        if self.epochs < 1 or self.batch_size < 2:
            raise AmrError(f"need at least 1 epoch and a batch of 2, got {self.epochs} epochs, batch {self.batch_size}")
        if not 0 <= self.metadata_dropout <= 1:
            raise AmrError(f"metadata dropout {self.metadata_dropout} is not a probability")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise AmrError(f"{self.warmup_epochs} warm-up epochs do not fit in {self.epochs} epochs")


@dataclass
class TrainResult:
    checkpoint: Path
    best_epoch: int
    best_map10: float
    epochs: int  # completed
    seconds: float  # this run (a resumed run counts its own time)

    def summary(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "best_epoch": self.best_epoch,
            "best_val_map10": round(self.best_map10, 6),
            "epochs": self.epochs,
            "seconds": round(self.seconds, 1),
        }


def configure(given: dict[str, Any], resume_from: Path | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Options given explicitly (names of ModelConfig and TrainConfig fields)
    over the defaults, or over the stored options of the run being resumed."""
    model, training = ModelConfig(), TrainConfig()
    if resume_from is not None:
        stored = checkpoint.read_config(resume_from)
        model, training = checkpoint.model_config(stored), TrainConfig(**stored["training"])
    names = {f.name for f in fields(ModelConfig)}
    unknown = set(given) - names - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}")
    model = replace(model, **{k: v for k, v in given.items() if k in names})
    training = replace(training, **{k: v for k, v in given.items() if k not in names})
    return model, training


# --- data ------------------------------------------------------------------


@dataclass
class _Source:
    """One cache in memory: its frames (clean and augmented) and its splits."""

    cache: EmbeddingCache
    frames: np.ndarray  # (F, C) float16
    augmented: np.ndarray | None  # (F, K, C) float16
    train: list[int]
    val: list[int]

    def sequence(self, i: int, view: int = -1) -> np.ndarray:
        start, n = int(self.cache.offsets[i]), int(self.cache.lengths[i])
        if view < 0:
            return self.frames[start : start + n]
        return self.augmented[start : start + n, view]


def _load_source(cache: EmbeddingCache) -> _Source:
    splits = [item.split for item in cache.items]
    train = [i for i, s in enumerate(splits) if s == "train"]
    val = [i for i, s in enumerate(splits) if s == "val"]
    if not train:
        raise AmrError(f"{cache.path}: no train-split items to train on (splits: {', '.join(sorted(set(splits)))})")
    if not val:
        val = [i for i in train if zlib.crc32(cache.items[i].id.encode()) % HOLDOUT_MODULUS == 0]
        train = [i for i in train if i not in set(val)]
        console.print(f"{cache.path}: no val split; validating on {len(val)} held-out train items (1 in {HOLDOUT_MODULUS} by id hash)")
    augmented = cache.all_frames(augmented=True) if cache.info.augment_views else None
    return _Source(cache, cache.all_frames(), augmented, train, val)


@dataclass
class _Pairs:
    """Every (caption, clip) training pair, as flat arrays."""

    clip_source: np.ndarray  # (n_clips,) which source
    clip_item: np.ndarray  # (n_clips,) item index in its cache
    clip_views: np.ndarray  # (n_clips,) augmented views available
    clip_length: np.ndarray  # (n_clips,) frames
    clip_metadata: list[str | None]  # per clip (unused for captions-as-metadata)
    clip_captions: list[list[str]]
    pair_clip: np.ndarray  # (n_pairs,)
    pair_caption: np.ndarray  # (n_pairs,)

    def __len__(self) -> int:
        return len(self.pair_clip)


def _training_pairs(sources: Sequence[_Source], fields_: Sequence[str]) -> _Pairs:
    clips = [(s, i) for s, source in enumerate(sources) for i in source.train if source.cache.items[i].captions]
    if not clips:
        raise AmrError("no train-split item has a caption: nothing to train on")
    captions = [sources[s].cache.items[i].captions for s, i in clips]
    counts = np.array([len(c) for c in captions])
    return _Pairs(
        clip_source=np.array([s for s, _ in clips]),
        clip_item=np.array([i for _, i in clips]),
        clip_views=np.array([sources[s].cache.info.augment_views for s, _ in clips]),
        clip_length=np.array([sources[s].cache.lengths[i] for s, i in clips]),
        clip_metadata=[item_metadata(sources[s].cache.items[i], fields_) for s, i in clips],
        clip_captions=captions,
        pair_clip=np.repeat(np.arange(len(clips)), counts),
        pair_caption=np.concatenate([np.arange(n) for n in counts]),
    )


@dataclass
class _Epoch:
    """Everything random about one epoch, drawn from (seed, epoch)."""

    batches: list[np.ndarray]  # pair indices
    views: np.ndarray  # per clip: augmented view, -1 for the clean sequence
    metadata: list[str | None]  # per pair
    torch_seed: int  # dropout


def _plan_epoch(pairs: _Pairs, model: ModelConfig, training: TrainConfig, epoch: int) -> _Epoch:
    rng = np.random.default_rng([training.seed, epoch])
    torch_seed = int(rng.integers(2**62))
    batches = _bucketed_batches(rng.permutation(len(pairs)), pairs.clip_length[pairs.pair_clip], training.batch_size, rng)
    views = np.where(pairs.clip_views > 0, (rng.random(len(pairs.clip_views)) * pairs.clip_views).astype(int), -1)
    other = rng.integers(2**31, size=len(pairs))
    dropped = rng.random(len(pairs)) < training.metadata_dropout
    metadata: list[str | None] = []
    for p in range(len(pairs)):
        clip, caption = int(pairs.pair_clip[p]), int(pairs.pair_caption[p])
        if model.metadata == (CAPTIONS,):
            text = _other_caption(pairs.clip_captions[clip], caption, int(other[p]))
        else:
            text = pairs.clip_metadata[clip]
        metadata.append(None if dropped[p] else text)
    return _Epoch(batches, views, metadata, torch_seed)


def _bucketed_batches(order: np.ndarray, lengths: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar-length sequences (less padding, less compute): the
    shuffled pairs are cut into buckets of BUCKET_BATCHES batches, each bucket
    sorted by length (ties stay in random order) and cut into batches, and
    the batches shuffled. A bucket is a small random sample of all pairs, so
    a batch rarely holds two captions of one clip, as with plain shuffling."""
    batches = []
    for start in range(0, len(order), size * BUCKET_BATCHES):
        bucket = order[start : start + size * BUCKET_BATCHES]
        bucket = bucket[np.argsort(lengths[bucket], kind="stable")]
        batches += [bucket[i : i + size] for i in range(0, len(bucket), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _other_caption(captions: list[str], own: int, draw: int) -> str | None:
    """A caption of the clip other than caption ``own`` (None when it has one)."""
    n = len(captions)
    return captions[(own + 1 + draw % (n - 1)) % n] if n > 1 else None


# --- validation ------------------------------------------------------------


def validate(model: RetrievalModel, source: _Source) -> dict[str, float] | None:
    """R@1/5/10 and mAP@10 of the val-split captions ranked against the val
    items, or None when no val item has a caption."""
    items = source.val
    queries = [(row, j, c) for row, i in enumerate(items) for j, c in enumerate(source.cache.items[i].captions)]
    if not queries:
        return None
    config = model.config
    q_vectors = model.encode_queries([c for _, _, c in queries])
    sequences = [source.sequence(i) for i in items] if config.uses_audio else None
    scores = np.empty((len(queries), len(items)), dtype=np.float32)
    variant = np.array([j for _, j, _ in queries]) if config.metadata == (CAPTIONS,) and config.uses_metadata else np.zeros(len(queries), int)
    for v in np.unique(variant):
        metadata = None
        if config.uses_metadata:
            metadata = [_validation_metadata(source.cache.items[i], config, int(v)) for i in items]
        rows = np.flatnonzero(variant == v)
        scores[rows] = q_vectors[rows] @ model.encode_items(sequences, metadata).T
    return retrieval_metrics(scores, [[row] for row, _, _ in queries]).as_dict()


def _validation_metadata(item: Item, config: ModelConfig, caption: int) -> str | None:
    """The item's metadata; for captions-as-metadata the caption after the
    query's own (``caption``), so that a query never meets its own sentence."""
    if config.metadata == (CAPTIONS,):
        return _other_caption(item.captions, caption, 0)
    return item_metadata(item, config.metadata)


# --- training --------------------------------------------------------------


def _schedule(steps_per_epoch: int, training: TrainConfig):
    warmup = training.warmup_epochs * steps_per_epoch
    total = training.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def train(
    output: Path,
    model_config: ModelConfig,
    training: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    text: TextEncoder | None = None,
) -> TrainResult:
    """Train into the checkpoint directory ``output`` (see amr.checkpoint);
    with ``resume``, continue the run there from its last completed epoch.
    ``text``: the text encoder model_config names, already loaded (it is
    copied before fine-tuning, never modified)."""
    if not training.caches:
        raise AmrError("no cache to train on: name one with --cache")
    caches = open_caches([Path(c) for c in training.caches])
    try:
        return _train(caches, Path(output).resolve(), model_config, training, resume, progress, text)
    except KeyboardInterrupt:  # before the training loop (which reports what it kept)
        raise AmrError(f"interrupted before training started; nothing was kept in {output}") from None
    finally:
        for cache in caches:
            cache.close()


def _train(
    caches: list[EmbeddingCache],
    output: Path,
    model_config: ModelConfig,
    training: TrainConfig,
    resume: bool,
    progress: bool,
    text: TextEncoder | None,
) -> TrainResult:
    started = time.perf_counter()
    info = caches[0].info
    model_config = _complete(model_config, info)
    if resume:
        stored = checkpoint.read_config(output)
        _require_same(checkpoint.model_config(stored), model_config, TrainConfig(**stored["training"]), training, output)
    elif (output / checkpoint.CONFIG).exists():
        raise AmrError(f"{output}: already holds a checkpoint; continue it with --resume or choose another --output")

    sources = [_load_source(c) for c in caches]
    if not any(source.cache.items[i].captions for source in sources for i in source.val):
        raise AmrError("no validation queries: no val item (or held-out train item) has a caption")
    pairs = _training_pairs(sources, model_config.metadata)
    text = checkpoint.own_encoder(model_config, text)
    torch.manual_seed(training.seed)
    model = RetrievalModel(model_config, text)
    if model_config.freeze_text:
        model.remember(_all_texts(sources, pairs, model_config.metadata), progress=progress)

    steps = math.ceil(len(pairs) / training.batch_size)
    groups = [{"params": model.new_parameters(), "lr": training.lr}]
    if not model_config.freeze_text:
        groups.append({"params": model.text_parameters(), "lr": training.text_lr})
    optimizer = torch.optim.Adam(groups, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(steps, training))

    output.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_map10": -1.0, "history": []}
    if resume and (output / checkpoint.STATE).exists():
        state = checkpoint.load_state(output, model, optimizer, scheduler)
        console.print(f"resuming {output} after epoch {state['epoch']}/{training.epochs}")
    else:  # a new run, or one interrupted before it completed an epoch
        checkpoint.write_config(output, model, info, asdict(training))
        console.print(f"training {model_config.fusion} into {output}")

    try:
        with _progress_bar(progress) as bar:
            for epoch in range(state["epoch"], training.epochs):
                last = state["history"][-1]["val_map10"] if state["history"] else None
                record = _run_epoch(model, optimizer, scheduler, sources, pairs, training, epoch, bar, last)
                tick = time.perf_counter()
                record["val_map10"], record["val"] = _validate_all(model, sources)
                record["validation_seconds"] = round(time.perf_counter() - tick, 3)
                state["history"].append(record)
                state["epoch"] = epoch + 1
                if record["val_map10"] > state["best_map10"]:
                    state["best_epoch"], state["best_map10"] = epoch + 1, record["val_map10"]
                    checkpoint.save_model(output, model)
                    best = {"epoch": epoch + 1, "val_map10": record["val_map10"]}
                    checkpoint.write_config(output, model, info, asdict(training), best)
                checkpoint.save_state(output, model, optimizer, scheduler, state)
                checkpoint.write_log(output, state["history"])
                bar.console.print(
                    f"epoch {epoch + 1}/{training.epochs}: loss {record['loss']:.4f}, "
                    f"val mAP@10 {record['val_map10']:.4f}{' (best)' if state['best_epoch'] == epoch + 1 else ''}, "
                    f"{record['seconds']:.1f} s",
                    highlight=False,
                )
    except KeyboardInterrupt:
        raise AmrError(
            f"interrupted; {output} holds epoch {state['epoch']}: continue with `amr train --resume --output {output}`"
        ) from None
    return TrainResult(output, state["best_epoch"], state["best_map10"], state["epoch"], time.perf_counter() - started)


def _complete(model_config: ModelConfig, info: CacheInfo) -> ModelConfig:
    """Fill in the audio embedding size; name a local text model by its absolute path."""
    if model_config.audio_dim not in (0, info.embed_dim):
        raise AmrError(f"the caches hold {info.embed_dim}-dim embeddings, not {model_config.audio_dim}")
    text_model = model_config.text_model
    if Path(text_model).expanduser().is_dir():
        text_model = str(Path(text_model).expanduser().resolve())
    return replace(model_config, audio_dim=info.embed_dim, text_model=text_model)


def _require_same(stored_model: ModelConfig, model: ModelConfig, stored: TrainConfig, training: TrainConfig, output: Path) -> None:
    differences = [
        f"{name} {getattr(a, name)!r} (was {getattr(b, name)!r})"
        for a, b in ((model, stored_model), (training, stored))
        for name in (f.name for f in fields(a))
        if getattr(a, name) != getattr(b, name)
    ]
    if differences:
        raise AmrError(f"{output / checkpoint.CONFIG}: cannot resume with other options: {'; '.join(differences)}")


def _all_texts(sources: Sequence[_Source], pairs: _Pairs, fields_: Sequence[str]) -> list[str]:
    """Every text a frozen encoder will see: captions and metadata of train and val items."""
    texts = [c for captions in pairs.clip_captions for c in captions]
    texts += [m for m in pairs.clip_metadata if m is not None]
    for source in sources:
        for i in source.val:
            item = source.cache.items[i]
            texts += item.captions
            metadata = item_metadata(item, fields_)
            if metadata is not None:
                texts.append(metadata)
    return texts


def _run_epoch(
    model: RetrievalModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sources: Sequence[_Source],
    pairs: _Pairs,
    training: TrainConfig,
    epoch: int,
    bar: Progress,
    last_map10: float | None,
) -> dict[str, Any]:
    config = model.config
    plan = _plan_epoch(pairs, config, training, epoch)
    torch.manual_seed(plan.torch_seed)
    model.train()
    started, cpu_started = time.perf_counter(), time.process_time()
    model_seconds, losses = 0.0, []
    steps = len(plan.batches)
    val = "-" if last_map10 is None else f"{last_map10:.4f}"
    task = bar.add_task(f"epoch {epoch + 1}/{training.epochs}", total=steps, loss=float("nan"), lr=scheduler.get_last_lr()[0], val=val)
    for batch in plan.batches:
        clips = pairs.pair_clip[batch]
        frames = lengths = None
        if config.uses_audio:
            frames, lengths = pad_sequences(
                [sources[pairs.clip_source[c]].sequence(int(pairs.clip_item[c]), int(plan.views[c])) for c in clips]
            )
        queries = [pairs.clip_captions[c][k] for c, k in zip(clips, pairs.pair_caption[batch])]
        metadata = [plan.metadata[p] for p in batch] if config.uses_metadata else []
        tick = time.perf_counter()
        q, m = model.embed_texts(queries, metadata)
        items = model.item_vectors(frames, lengths, m if config.uses_metadata else None)
        loss = nt_xent(model.query_vectors(q) @ items.T, torch.from_numpy(clips), training.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model_seconds += time.perf_counter() - tick
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.update(task, advance=1, loss=float(np.mean(losses[-50:])), lr=scheduler.get_last_lr()[0])
    bar.remove_task(task)
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch + 1,
        "loss": float(np.mean(losses)),
        "lr": scheduler.get_last_lr()[0],
        "pairs": len(pairs),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(time.process_time() - cpu_started, 3),  # all threads: compare with seconds x threads
        "model_seconds": round(model_seconds, 3),
        "pairs_per_second": round(len(pairs) / seconds, 1),
    }


def _validate_all(model: RetrievalModel, sources: Sequence[_Source]) -> tuple[float, dict[str, dict[str, float]]]:
    """Per cache metrics and their mean mAP@10 (the selection criterion)."""
    results = {}
    for source in sources:
        metrics = validate(model, source)
        if metrics is not None:
            results[str(source.cache.path)] = metrics
    return float(np.mean([m["mAP@10"] for m in results.values()])), results


def _progress_bar(show: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  val mAP@10 {task.fields[val]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
    )
