"""`amr train`: fit the retrieval model on (caption, clip) pairs of cached embeddings.

Protocol (Primus & Widmer 2024): every caption of every train-split clip is a
training pair; the loss is NT-Xent over the batch (other captions of the same
clip are masked, not negatives); AdamW with per-group learning rates (new
layers vs the pretrained text encoder), a warm-up, then cosine decay.

Where it starts: by default from the zero-shot model (amr.heads), so that
training can only build on what the untrained hybrid already does; model
selection validates before the first step (epoch 0) and after every epoch and
keeps the best, which may be epoch 0 (the zero-shot model itself), and weight
decay pulls every learned correction back toward that start. Validation is
the val split, or (``validation="concepts"``) train items held out because
their captions share no word with any other train item: concepts the model
never trains on, which a val split of the same concepts cannot show.

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
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress, TextColumn

from amr import checkpoint
from amr.cache import CacheInfo, EmbeddingCache, open_caches
from amr.config import TrainConfig, Validation
from amr.console import console, progress
from amr.errors import AmrError, Interrupted
from amr.files import exclusive
from amr.fusion import Init
from amr.heads import AudioBatch
from amr.items import Item
from amr.metrics import retrieval_metrics
from amr.model import CAPTIONS, ModelConfig, RetrievalModel, item_metadata, nt_xent, pad_sequences
from amr.text import TextEncoder, normalize_text
from amr.zeroshot import ZeroShotConfig, ZeroShotRetriever

HOLDOUT_MODULUS = 10  # a cache without a val split validates on 1 in 10 train items
BUCKET_BATCHES = 16  # batches per length bucket (see _bucketed_batches)


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


def resume_configs(output: Path, model: ModelConfig, training: TrainConfig, given: Collection[str]) -> tuple[ModelConfig, TrainConfig]:
    """The options of the interrupted run in ``output``, with those the user
    ``given`` explicitly (names of ModelConfig and TrainConfig fields) taken
    from ``model`` / ``training``; training refuses to resume if they differ."""
    stored = checkpoint.read_config(output)
    stored_model = checkpoint.model_config(stored, output)
    stored_training = TrainConfig(**stored["training"])  # read_config checked it
    model_names = {f.name for f in fields(ModelConfig)}
    training_names = {f.name for f in fields(TrainConfig)}
    model_changes = {name: getattr(model, name) for name in given if name in model_names}
    training_changes = {name: getattr(training, name) for name in given if name in training_names and name != "caches"}
    return replace(stored_model, **model_changes), replace(stored_training, **training_changes)


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


def _load_source(cache: EmbeddingCache, validation: Validation = Validation.split) -> _Source:
    splits = [item.split for item in cache.items]
    train = [i for i, s in enumerate(splits) if s == "train"]
    val = [i for i, s in enumerate(splits) if s == "val"]
    if not train:
        raise AmrError(f"{cache.path}: no train-split items to train on (splits: {', '.join(sorted(set(splits)))})")
    if validation is Validation.concepts:
        held = set(concept_holdout([cache.items[i].captions for i in train]))
        val = [i for k, i in enumerate(train) if k in held]
        train = [i for k, i in enumerate(train) if k not in held]
        console.print(
            f"{cache.path}: validating on {len(val)} train items of held-out concepts (their caption words never occur in training)"
        )
    elif not val:
        held = {i for i in train if zlib.crc32(cache.items[i].id.encode()) % HOLDOUT_MODULUS == 0}
        val = sorted(held)
        train = [i for i in train if i not in held]
        console.print(f"{cache.path}: no val split; validating on {len(val)} held-out train items (1 in {HOLDOUT_MODULUS} by id hash)")
    augmented = cache.all_frames(augmented=True) if cache.info.augment_views else None
    return _Source(cache, cache.all_frames(), augmented, train, val)


# Words that name no concept, left out when captions are compared by their words.
STOPWORDS = frozenset(
    "a an the of and or in on at to with from by for is are was were be being been it its this that these those "
    "as into onto over under while near then than there here some someone something someones sound sounds noise".split()
)
CONCEPT_HOLDOUT = 0.1  # the share of train items concept validation holds out


def concept_holdout(captions: Sequence[Sequence[str]], share: float = CONCEPT_HOLDOUT) -> list[int]:
    """Positions of items to hold out so that each of them has a word that
    occurs in no kept item's captions: whole words (concepts) leave training.

    Words are drawn in a fixed pseudo-random order (by their crc32); each
    takes out every item whose captions contain it, unless that would exceed
    ``share`` of the items; drawing stops there. Deterministic, so every run
    and every seed validates on the same items."""
    words = [{w for c in item for w in normalize_text(c).split() if w not in STOPWORDS} for item in captions]
    holders: dict[str, list[int]] = {}
    for position, item_words in enumerate(words):
        for word in item_words:
            holders.setdefault(word, []).append(position)
    budget = int(share * len(captions))
    held: set[int] = set()
    for word in sorted(holders, key=lambda w: (zlib.crc32(w.encode()), w)):
        if len(held | set(holders[word])) <= budget:
            held |= set(holders[word])
        if len(held) >= budget:
            break
    return sorted(held)


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
    """R@1/5/10 and mAP@10 of the validation items' captions ranked against
    those items, or None when no validation item has a caption."""
    items = source.val
    queries = [(row, j, c) for row, i in enumerate(items) for j, c in enumerate(source.cache.items[i].captions)]
    if not queries:
        return None
    config = model.config
    q_vectors = model.encode_queries([c for _, _, c in queries])
    sequences = [source.sequence(i) for i in items] if config.uses_audio else None
    tags = source.cache.tags[items]
    scores = np.empty((len(queries), len(items)), dtype=np.float32)
    captions_metadata = config.metadata == (CAPTIONS,) and config.uses_metadata
    variant = np.array([j for _, j, _ in queries]) if captions_metadata else np.zeros(len(queries), int)
    for v in np.unique(variant):
        metadata = None
        if config.uses_metadata:
            metadata = [_validation_metadata(source.cache.items[i], config, int(v)) for i in items]
        rows = np.flatnonzero(variant == v)
        scores[rows] = q_vectors[rows] @ model.encode_items(sequences, tags, metadata).T
    return retrieval_metrics(scores, [[row] for row, _, _ in queries]).as_dict()


def _validation_metadata(item: Item, config: ModelConfig, caption: int) -> str | None:
    """The item's metadata; for captions-as-metadata the caption after the
    query's own (``caption``), so that a query never meets its own sentence."""
    if config.metadata == (CAPTIONS,):
        return _other_caption(item.captions, caption, 0)
    return item_metadata(item, config.metadata)


def _validate_all(model: RetrievalModel, sources: Sequence[_Source]) -> tuple[float, dict[str, dict[str, float]]]:
    """Per cache metrics and their mean mAP@10 (the selection criterion)."""
    results = {}
    for source in sources:
        metrics = validate(model, source)
        if metrics is not None:
            results[str(source.cache.path)] = metrics
    return float(np.mean([m["mAP@10"] for m in results.values()])), results


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
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Train into the checkpoint directory ``output`` (see amr.checkpoint);
    with ``resume``, continue the run there from its last completed epoch.
    ``text``: the text encoder model_config names, already loaded (it is
    copied before fine-tuning, never modified)."""
    if not training.caches:
        raise AmrError("no cache to train on: name one with --cache")
    output = Path(output).resolve()
    with exclusive(output, "checkpoint"):
        caches = open_caches([Path(c) for c in training.caches])
        try:
            return _train(caches, output, model_config, training, resume, progress, text, torch.device(device))
        except KeyboardInterrupt:  # before the training loop (which reports what it kept)
            raise Interrupted(f"interrupted before training started; nothing was kept in {output}") from None
        finally:
            for cache in caches:
                cache.close()


def _train(
    caches: list[EmbeddingCache],
    output: Path,
    model_config: ModelConfig,
    training: TrainConfig,
    resume: bool,
    show_progress: bool,
    text: TextEncoder | None,
    device: torch.device,
) -> TrainResult:
    started = time.perf_counter()
    info = caches[0].info
    text = checkpoint.own_encoder(model_config, text)
    model_config = _complete(model_config, info, text)
    if resume:
        stored = checkpoint.read_config(output)
        _require_same(checkpoint.model_config(stored, output), model_config, TrainConfig(**stored["training"]), training, output)
    elif (output / checkpoint.CONFIG).exists():
        raise AmrError(f"{output}: already holds a checkpoint; continue it with --resume or choose another --output")

    sources = [_load_source(c, training.validation) for c in caches]
    if not any(source.cache.items[i].captions for source in sources for i in source.val):
        raise AmrError("no validation queries: no validation item has a caption")
    pairs = _training_pairs(sources, model_config.metadata)
    torch.manual_seed(training.seed)
    model = RetrievalModel(model_config, text)
    if model_config.init is Init.zero_shot:
        model.start_from_zero_shot(_zero_shot_start(model_config, text).class_embeddings)
    model.to(device)
    if model_config.freeze_text:
        model.remember(_all_texts(sources, pairs, model_config.metadata), progress=show_progress)

    steps = math.ceil(len(pairs) / training.batch_size)
    groups = [{"params": model.new_parameters(), "lr": training.lr, "weight_decay": training.weight_decay}]
    if not model_config.freeze_text:
        groups.append({"params": model.text_parameters(), "lr": training.text_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(steps, training))
    anchor = _Anchor(model, training.weight_decay)

    output.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_map10": -1.0, "history": []}
    mix = _Interpolation.of(model, training, output, resume)
    if resume and (output / checkpoint.STATE).exists():
        state = checkpoint.load_state(output, model, optimizer, scheduler)
        console.print(f"resuming {output} after epoch {state['epoch']}/{training.epochs}")
    else:  # a new run, or one interrupted before it completed an epoch
        checkpoint.write_config(output, model, info, asdict(training))
        console.print(f"training {model_config.fusion.value} from {model_config.init.value} into {output}")
        _select(output, model, sources, info, training, state, {"epoch": 0, "pairs": len(pairs)}, mix)

    try:
        with _progress_bar(show_progress) as bar:
            for epoch in range(state["epoch"], training.epochs):
                last = state["history"][-1]["val_map10"] if state["history"] else None
                record = _run_epoch(model, optimizer, scheduler, anchor, sources, pairs, training, epoch, bar, last)
                _select(output, model, sources, info, training, state, record, mix)
                checkpoint.save_state(output, model, optimizer, scheduler, state)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; {output} holds epoch {state['epoch']}: continue with `amr train --resume --output {output}`"
        ) from None
    return TrainResult(output, state["best_epoch"], state["best_map10"], state["epoch"], time.perf_counter() - started)


def _select(
    output: Path,
    model: RetrievalModel,
    sources: Sequence[_Source],
    info: CacheInfo,
    training: TrainConfig,
    state: dict[str, Any],
    record: dict[str, Any],
    mix: _Interpolation,
) -> None:
    """Validate after an epoch (epoch 0: before the first step) the model that
    would be kept (the interpolation of the start and this epoch's weights),
    log it, and keep it when it is the best so far."""
    tick = time.perf_counter()
    with mix.applied(model):
        record["val_map10"], record["val"] = _validate_all(model, sources)
        best = record["val_map10"] > state["best_map10"]
        if best:
            checkpoint.save_model(output, model)
    record["validation_seconds"] = round(time.perf_counter() - tick, 3)
    state["history"].append(record)
    state["epoch"] = record["epoch"]
    if best:
        state["best_epoch"], state["best_map10"] = record["epoch"], record["val_map10"]
        summary = {"epoch": record["epoch"], "val_map10": record["val_map10"], "interpolation": mix.alpha}
        checkpoint.write_config(output, model, info, asdict(training), summary)
    checkpoint.write_log(output, state["history"])
    loss = f"loss {record['loss']:.4f}, " if "loss" in record else "before training, "
    seconds = f", {record['seconds']:.1f} s" if "seconds" in record else ""
    console.print(
        f"epoch {record['epoch']}/{training.epochs}: {loss}val mAP@10 {record['val_map10']:.4f}{' (best)' if best else ''}{seconds}"
    )


def _zero_shot_start(model_config: ModelConfig, text: TextEncoder) -> ZeroShotRetriever:
    """The zero-shot model a zero-shot start begins as: the same text encoder,
    pooling, metadata fields and weights."""
    fields_ = model_config.metadata if model_config.metadata != (CAPTIONS,) else ZeroShotConfig.metadata_fields
    config = ZeroShotConfig(
        text_model=model_config.text_model,
        audio_weight=model_config.audio_weight,
        metadata_weight=model_config.metadata_weight,
        metadata_fields=fields_,
        text_pooling=model_config.text_pooling,
    )
    return ZeroShotRetriever(config, text)


class _Interpolation:
    """The kept model is the start plus ``alpha`` times what training changed,
    θ₀ + α (θ − θ₀), over every trained weight (text encoder included when it is
    fine-tuned): weight-space interpolation between the zero-shot model and the
    trained one (WiSE-FT, Wortsman et al. 2022), which keeps most of what
    training adds on the concepts it saw and gives back much of what it loses
    on others. Measured on bench/quality.py (frozen text, two seeds), α = 0.5
    beat α = 1 on unseen concepts in every run (by 0.1 to 4.9 mAP@10 points)
    while keeping 95 % of the gain on seen ones. A random start has no
    zero-shot model to interpolate with: α is 1 there. The start is stored in
    the checkpoint (start.safetensors), so a resumed run interpolates alike."""

    def __init__(self, alpha: float, start: dict[str, torch.Tensor] | None):
        self.alpha = alpha if start is not None else 1.0
        self.start = start

    @classmethod
    def of(cls, model: RetrievalModel, training: TrainConfig, output: Path, resume: bool) -> _Interpolation:
        if model.config.init is not Init.zero_shot or training.interpolation == 1:
            return cls(1.0, None)
        if resume and (output / checkpoint.START).exists():
            start = checkpoint.load_start(output, model)
        else:
            start = {k: v.to(model.device, copy=True) for k, v in checkpoint.model_tensors(model).items()}  # a copy, never the live weights
            checkpoint.save_start(output, start)
        return cls(training.interpolation, start)

    @contextmanager
    def applied(self, model: RetrievalModel) -> Iterator[None]:
        """The model holds the interpolated weights inside the block, its own after it."""
        if self.start is None:
            yield
            return
        trained = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.start}
        mixed = {k: self.start[k] + self.alpha * (v - self.start[k]) if v.is_floating_point() else v for k, v in trained.items()}
        model.load_state_dict(mixed, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(trained, strict=False)


class _Anchor:
    """Decoupled weight decay toward where a parameter started, for the
    parameters that do not start at zero from zero-shot: the class-name
    embeddings of the bridge and the fusion weights (AdamW's own decay pulls
    the corrections, which start at zero, toward zero already). Applied after
    each optimizer step as p ← p − lr·λ·(p − p₀), which is what AdamW does
    with p₀ = 0."""

    def __init__(self, model: RetrievalModel, weight_decay: float):
        self.weight_decay = weight_decay
        self.starts: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        if model.config.init is Init.zero_shot and weight_decay > 0:
            for name, parameter in model.head.named_parameters():
                if parameter.requires_grad and (name.endswith("class_embeddings") or name == "log_weights"):
                    self.starts.append((parameter, parameter.detach().clone()))

    def pull(self, lr: float) -> None:
        """Undo AdamW's decay toward zero and decay toward the start instead."""
        with torch.no_grad():
            for parameter, start in self.starts:
                parameter.add_(start, alpha=lr * self.weight_decay)


def _complete(model_config: ModelConfig, info: CacheInfo, text: TextEncoder) -> ModelConfig:
    """Fill in the audio embedding size and the text model's own pooling; name
    a local text model by its absolute path."""
    if model_config.audio_dim not in (0, info.embed_dim):
        raise AmrError(f"the caches hold {info.embed_dim}-dim embeddings, not {model_config.audio_dim}")
    text_model = model_config.text_model
    if Path(text_model).expanduser().is_dir():
        text_model = str(Path(text_model).expanduser().resolve())
    pooling = model_config.text_pooling or text.native_pooling
    return replace(model_config, audio_dim=info.embed_dim, text_model=text_model, text_pooling=pooling, num_classes=info.num_classes)


def _require_same(stored_model: ModelConfig, model: ModelConfig, stored: TrainConfig, training: TrainConfig, output: Path) -> None:
    differences = [
        f"{name} {_shown(getattr(a, name))} (was {_shown(getattr(b, name))})"
        for a, b in ((model, stored_model), (training, stored))
        for name in (f.name for f in fields(a))
        if getattr(a, name) != getattr(b, name)
    ]
    if differences:
        raise AmrError(f"{output / checkpoint.CONFIG}: cannot resume with other options: {'; '.join(differences)}")


def _shown(value: object) -> str:
    return repr(value.value) if isinstance(value, Enum) else repr(value)


def _all_texts(sources: Sequence[_Source], pairs: _Pairs, fields_: Sequence[str]) -> list[str]:
    """Every text a frozen encoder will see: captions and metadata of train and validation items."""
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
    anchor: _Anchor,
    sources: Sequence[_Source],
    pairs: _Pairs,
    training: TrainConfig,
    epoch: int,
    bar: Progress,
    last_map10: float | None,
) -> dict[str, Any]:
    config = model.config
    device = model.device
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
        audio = None
        if config.uses_audio:
            frames, lengths = pad_sequences(
                [sources[pairs.clip_source[c]].sequence(int(pairs.clip_item[c]), int(plan.views[c])) for c in clips]
            )
            tags = np.stack([sources[pairs.clip_source[c]].cache.tags[int(pairs.clip_item[c])] for c in clips])
            audio = AudioBatch(frames.to(device), lengths.to(device), torch.from_numpy(tags).to(device))
        queries = [pairs.clip_captions[c][k] for c, k in zip(clips, pairs.pair_caption[batch])]
        metadata = [plan.metadata[p] for p in batch] if config.uses_metadata else []
        tick = time.perf_counter()
        q, m = model.embed_texts(queries, metadata)
        items = model.item_vectors(audio, m if config.uses_metadata else None)
        loss = nt_xent(model.query_vectors(q) @ items.T, torch.from_numpy(clips).to(device), training.temperature)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise AmrError(_diverged(f"the loss became {losses[-1]} at step {len(losses)} of epoch {epoch + 1}", training))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model_seconds += time.perf_counter() - tick
        optimizer.step()
        anchor.pull(scheduler.get_last_lr()[0])
        scheduler.step()
        bar.update(task, advance=1, loss=float(np.mean(losses[-50:])), lr=scheduler.get_last_lr()[0])
    bar.remove_task(task)
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise AmrError(_diverged(f"the weights became non-finite in epoch {epoch + 1}", training))
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


def _diverged(what: str, training: TrainConfig) -> str:
    return f"training diverged: {what} (learning rates {training.lr:g} and {training.text_lr:g}); train again with a lower --lr / --text-lr"


def _progress_bar(show: bool) -> Progress:
    return progress(
        "{task.description}",
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  val mAP@10 {task.fields[val]}"),
        show=show,
    )
