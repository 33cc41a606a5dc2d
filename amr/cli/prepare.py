"""`amr extract`, `amr train` and `amr index`: the stages that build a searchable collection.

Each resolves the workspace's defaults (amr.workspace), makes one call into
its stage (amr.extraction, amr.training, amr.index.build) and prints its JSON summary.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from amr.cli.options import DeviceOption, WorkspaceOption, emit, listed
from amr.config import CAPTIONS, DEFAULT_WEIGHTS, LayoutName, ModelConfig, TrainConfig, Validation, ZeroShotConfig
from amr.devices import Device, resolve_device
from amr.errors import AmrError
from amr.index.kinds import EXACT_LIMIT, LARGE_LIMIT, AnnKind
from amr.items import METADATA_FIELDS, Split
from amr.model.fusion import Fusion, Init
from amr.model.text_input import POOLINGS
from amr.segments import SegmentGrid
from amr.workspace import Workspace

# --- extract ------------------------------------------------------------------------------


class ExtractEngine(StrEnum):
    local = "local"
    ray = "ray"


def extract(
    dataset: Annotated[
        Path,
        typer.Argument(help="Dataset root: Clotho, AudioCaps, WavCaps, a folder with items.jsonl / items.csv, or a folder of audio files."),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Cache file (default: <workspace>/caches/<dataset>.<model>.h5).")
    ] = None,
    audio_model: Annotated[
        str | None,
        typer.Option(help=f"EfficientAT model name, mn01_as … mn40_as_ext (default: {DEFAULT_WEIGHTS}, or the name of --audio-weights)."),
    ] = None,
    audio_weights: Annotated[
        Path | None, typer.Option(envvar="AMR_AUDIO_WEIGHTS", help="Local checkpoint file of the audio model.")
    ] = None,
    augment_views: Annotated[int, typer.Option(min=0, help="Also store K SpecAugmented sequences per clip, for training.")] = 0,
    workers: Annotated[int | None, typer.Option(min=1, help="Processes that decode and embed (default: one per available core).")] = None,
    layout: Annotated[
        LayoutName | None,
        typer.Option(help="Dataset layout (default: detected; folder: every audio file under it, metadata from names and tags)."),
    ] = None,
    lenient: Annotated[bool, typer.Option(help="Skip malformed manifest rows (reported) instead of failing.")] = False,
    encoding: Annotated[
        str | None, typer.Option(help="Text encoding of the manifests (default: UTF-8, else a guess, with a warning).")
    ] = None,
    allow_outside_root: Annotated[
        bool,
        typer.Option(
            "--allow-outside-root", help="Accept manifest audio paths outside the dataset folder (absolute, or climbing out with '..')."
        ),
    ] = False,
    follow_outside_links: Annotated[
        bool,
        typer.Option(
            "--follow-outside-links", help="Folder layout: follow symbolic links that lead outside the folder (default: left out, said so)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the SpecAugment views.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an --output cache of another dataset (none of its clips in this one): refused without.")
    ] = False,
    engine: Annotated[
        ExtractEngine, typer.Option(help="local: decoding processes on this machine; ray: a Ray cluster (pip install 'amr\\[ray]').")
    ] = ExtractEngine.local,
    ray_address: Annotated[
        str | None, typer.Option(help="--engine ray: the cluster to join, host:port of its head node or auto (default: start a local one).")
    ] = None,
    num_gpus: Annotated[float, typer.Option(min=0.0, help="--engine ray: GPUs per model actor (0: CPU actors).")] = 0.0,
    actors: Annotated[
        int | None, typer.Option(min=1, help="--engine ray: model actors (default: one per --num-gpus GPUs, or half the cluster's CPUs).")
    ] = None,
    device: DeviceOption = Device.auto,
    long_clip: Annotated[
        float, typer.Option(min=0.0, help="Clips longer than this (seconds) are searched by segment.")
    ] = SegmentGrid.long_seconds,
    segment_seconds: Annotated[float, typer.Option(min=0.0, help="Length of a long clip's segments (seconds).")] = SegmentGrid.seconds,
    segment_hop: Annotated[float, typer.Option(min=0.0, help="Step between a long clip's segments (seconds).")] = SegmentGrid.hop,
    workspace: WorkspaceOption = None,
) -> None:
    """Compute every clip's frame-embedding sequence and AudioSet tags (and a long clip's per segment) into an HDF5 cache.

    Reruns are incremental: only new or changed files (size, time or path) are
    computed, deleted ones are dropped, and an interrupted run resumes. Prints a JSON summary on stdout;
    exit code 3 when some clips could not be decoded (listed in <cache>.failures.jsonl)."""
    from amr.audio.weights import resolve_weights
    from amr.datasets import load_dataset
    from amr.extraction import extract as run_extract
    from amr.extraction import failures_path

    if engine is ExtractEngine.local and (ray_address or num_gpus or actors):
        raise AmrError("--ray-address, --num-gpus and --actors need --engine ray")
    ray_engine = None
    if engine is ExtractEngine.ray:
        from amr.extraction.ray import RayEngine, RayOptions

        ray_engine = RayEngine(RayOptions(address=ray_address, actors=actors, num_gpus=num_gpus))
    ws = Workspace.resolve(workspace)
    data = load_dataset(
        dataset,
        layout=layout.value if layout else None,
        lenient=lenient,
        encoding=encoding,
        allow_outside_root=allow_outside_root,
        follow_outside_links=follow_outside_links,
    )
    weights = resolve_weights(audio_model, audio_weights)
    output = output or ws.cache_path(data.name, weights.name)
    grid = SegmentGrid(segment_seconds, segment_hop, long_clip)
    report = run_extract(
        data.items,
        output,
        weights,
        augment_views=augment_views,
        workers=workers,
        seed=seed,
        segments=grid,
        engine=ray_engine,
        device=resolve_device(device.value),
        unreadable=data.unreadable,
        force=force,
    )
    ws.set_latest("cache", output)
    emit(
        {
            "cache": str(output),
            "items": report.items,
            "computed": report.computed,
            "reused": report.reused,
            "dropped": report.dropped,
            "failed": len(report.failures),
            "failures": str(failures_path(output)) if report.failures else None,
        }
    )
    if report.failures:
        raise typer.Exit(3)


# --- train --------------------------------------------------------------------------------


def train(
    ctx: typer.Context,
    cache: Annotated[
        list[Path] | None,
        typer.Option("--cache", help="Cache file to train on (repeatable: combined training) (default: the workspace's latest cache)."),
    ] = None,
    fusion: Annotated[Fusion, typer.Option(help="none (audio only), metadata (metadata only), late or mid.")] = ModelConfig.fusion,
    init: Annotated[
        Init,
        typer.Option(
            help="Start from the zero-shot model (scoring exactly as `amr index --zero-shot` before the first step) or from random (the "
            "paper's)."
        ),
    ] = ModelConfig.init,
    metadata: Annotated[
        str,
        typer.Option(
            help=f"Metadata fields, comma-separated: {', '.join(METADATA_FIELDS)}; or {CAPTIONS} (Clotho's full-sentence setting)."
        ),
    ] = ",".join(ModelConfig.metadata),
    text_model: Annotated[str, typer.Option(help="Hugging Face BERT-family model name or directory.")] = ModelConfig.text_model,
    text_pooling: Annotated[
        str | None,
        typer.Option(
            help=f"{listed(POOLINGS)} (default: the text model's own: mean for sentence-transformers models, cls for plain BERT)."
        ),
    ] = None,
    freeze_text: Annotated[
        bool,
        typer.Option(
            "--freeze-text/--fine-tune-text", help="Keep the text encoder's weights (its outputs are computed once: fast), or fine-tune it."
        ),
    ] = ModelConfig.freeze_text,
    separate_text_encoders: Annotated[
        bool, typer.Option("--separate-text-encoders", help="Give metadata its own copy of the text encoder.")
    ] = ModelConfig.separate_text_encoders,
    metadata_dropout: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Drop an item's metadata with this probability, so that items without metadata are trained for."
        ),
    ] = TrainConfig.metadata_dropout,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = TrainConfig.epochs,
    batch_size: Annotated[int, typer.Option(min=2, help="Pairs per batch.")] = TrainConfig.batch_size,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate of the new layers.")] = TrainConfig.lr,
    text_lr: Annotated[float, typer.Option(min=0.0, help="Learning rate of the text encoder.")] = TrainConfig.text_lr,
    weight_decay: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Decoupled weight decay pulling every learned correction toward its start (the zero-shot model from --init zero-shot).",
        ),
    ] = TrainConfig.weight_decay,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="Linear warm-up epochs before the cosine decay.")] = TrainConfig.warmup_epochs,
    temperature: Annotated[float, typer.Option(min=1e-4, help="NT-Xent temperature.")] = TrainConfig.temperature,
    validation: Annotated[
        Validation,
        typer.Option(
            help="What to select the best epoch on: the val split, or held-out train concepts (train items whose captions share no word "
            "with the rest of train)."
        ),
    ] = TrainConfig.validation,
    interpolation: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="--init zero-shot: keep this point between the start (0) and the trained weights (1), a weight-space "
            "interpolation that keeps what the zero-shot model knows of concepts training never saw.",
        ),
    ] = TrainConfig.interpolation,
    width: Annotated[
        int, typer.Option(min=2, help="Audio transformer width (the retrieval space size with --init random).")
    ] = ModelConfig.width,
    depth: Annotated[int, typer.Option(min=1, help="Audio transformer layers.")] = ModelConfig.depth,
    heads: Annotated[int, typer.Option(min=1, help="Attention heads.")] = ModelConfig.heads,
    ff: Annotated[int, typer.Option(min=1, help="Feed-forward size of the transformer layers.")] = ModelConfig.ff,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="Dropout in the transformer layers.")] = ModelConfig.dropout,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same model.")] = TrainConfig.seed,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Checkpoint directory (default: <workspace>/checkpoints/<fusion>-<time>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the interrupted run in --output from its last completed epoch (its options apply).")
    ] = False,
    device: DeviceOption = Device.auto,
    workspace: WorkspaceOption = None,
) -> None:
    """Train the retrieval model on the caption-clip pairs of the caches' train split, selecting the best epoch (mAP@10, epoch 0 included).

    Prints a JSON summary on stdout: checkpoint, best epoch, best validation mAP@10."""
    from amr.training import train as run_train

    ws = Workspace.resolve(workspace)
    if resume and output is None:
        raise AmrError("--resume needs --output DIR: the checkpoint directory of the interrupted run")
    caches = tuple(str(c.resolve()) for c in cache) if cache else ()
    model_config = ModelConfig(
        fusion=fusion,
        init=init,
        metadata=tuple(f.strip() for f in metadata.split(",")),
        text_model=text_model,
        text_pooling=text_pooling or "",
        freeze_text=freeze_text,
        separate_text_encoders=separate_text_encoders,
        width=width,
        depth=depth,
        heads=heads,
        ff=ff,
        dropout=dropout,
    )
    training = TrainConfig(
        caches=caches,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        text_lr=text_lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        temperature=temperature,
        metadata_dropout=metadata_dropout,
        validation=validation,
        interpolation=interpolation,
        seed=seed,
    )
    given = None  # on --resume, the options set on the command line: the rest are the run's own
    if resume:
        given = {name for name in ctx.params if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}
    elif not caches:
        training = TrainConfig(**{**training.__dict__, "caches": (str(ws.latest("cache").resolve()),)})
    output = output or ws.new_checkpoint_path(model_config.fusion.value)
    result = run_train(output, model_config, training, resume=resume, device=resolve_device(device.value), given=given)
    ws.set_latest("checkpoint", output)
    emit(result.summary())


# --- index --------------------------------------------------------------------------------


def index(
    caches: Annotated[list[Path] | None, typer.Argument(help="Cache files (default: the workspace's latest cache).")] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", "-c", help="Trained checkpoint (default: with --append the index's own, else the workspace's latest)."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Index file (default: with --append the workspace's latest index, else <workspace>/indexes/<cache>.h5)."
        ),
    ] = None,
    split: Annotated[
        list[Split] | None, typer.Option("--split", "-s", help="Index only items of this split (repeatable) (default: all splits).")
    ] = None,
    append: Annotated[
        bool, typer.Option(help="Add to an existing index without re-encoding it; an id indexed again replaces the old vector.")
    ] = False,
    ann: Annotated[
        bool | None, typer.Option("--ann/--no-ann", help=f"Also build an approximate FAISS index (default: above {EXACT_LIMIT} rows).")
    ] = None,
    ann_kind: Annotated[
        AnnKind | None,
        typer.Option(
            help=f"Kind of approximate index (default: by size, {AnnKind.ivf_sq8} in RAM up to {LARGE_LIMIT:,} rows, "
            f"{AnnKind.ivf_pq} with its lists on disk above)."
        ),
    ] = None,
    auto_tags: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Give items without metadata their clip's K most probable AudioSet tags as metadata (default: 0; with --append the "
            "index's).",
        ),
    ] = None,
    zero_shot: Annotated[
        bool,
        typer.Option(
            "--zero-shot", help="Fuse audio (through AudioSet tags, the label-text bridge) and metadata with no trained checkpoint."
        ),
    ] = False,
    audio_weight: Annotated[
        float, typer.Option(min=0.0, help="Zero-shot: weight of the audio vector in the fused item vector.")
    ] = ZeroShotConfig.audio_weight,
    metadata_weight: Annotated[
        float, typer.Option(min=0.0, help="Zero-shot: weight of the metadata vector in the fused item vector.")
    ] = ZeroShotConfig.metadata_weight,
    text_model: Annotated[str, typer.Option(help="Zero-shot: Hugging Face text model name or directory.")] = ZeroShotConfig.text_model,
    refresh_query_encoder: Annotated[
        bool,
        typer.Option(
            "--refresh-query-encoder",
            help="Only write the query encoder of the index --output (default: the latest) anew, from the model that built it: "
            "how an index of an older amr gets one.",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an --output that is a file of another kind (not an index).")] = False,
    device: DeviceOption = Device.auto,
    workspace: WorkspaceOption = None,
) -> None:
    """Encode every item of the caches through the checkpoint's item tower (or zero-shot) into a searchable index.

    Beside the index goes its query encoder (the text side of the model as
    an ONNX graph), with which `amr query` encodes text without torch.
    Prints a JSON summary on stdout; with an approximate index, its recall
    against exact search goes to stderr."""
    from dataclasses import asdict

    from amr.index.build import build_index, retriever_spec
    from amr.index.build import refresh_query_encoder as refresh
    from amr.model.retrievers import load_retriever
    from amr.model.zeroshot import zero_shot_retriever

    ws = Workspace.resolve(workspace)
    if refresh_query_encoder:
        if caches or append or zero_shot:
            raise typer.BadParameter(
                "takes the index (--output) and at most its --checkpoint: no caches, --append or --zero-shot",
                param_hint="--refresh-query-encoder",
            )
        output = output or ws.latest("index")
        retriever = load_retriever(retriever_spec(checkpoint, output, lambda: ws.latest("checkpoint")), resolve_device(device.value))
        emit({"index": str(output), "query_encoder": refresh(output, retriever)})
        return
    caches = caches or [ws.latest("cache")]
    zero_shot_config = ZeroShotConfig(text_model, audio_weight, metadata_weight) if zero_shot else None
    if output is None:
        output = ws.latest("index") if append else ws.index_path(caches[0], zero_shot)
    if zero_shot_config is not None:
        if checkpoint is not None:
            raise AmrError("--zero-shot and --checkpoint exclude each other")
        retriever = zero_shot_retriever(zero_shot_config, resolve_device(device.value))
    else:
        spec = retriever_spec(checkpoint, output if append else None, lambda: ws.latest("checkpoint"))
        retriever = load_retriever(spec, resolve_device(device.value))
    splits = [s.value for s in split] if split else None
    report = build_index(
        retriever,
        caches,
        output,
        splits=splits,
        append=append,
        ann=ann,
        ann_kind=ann_kind.value if ann_kind else None,
        auto_tags=auto_tags,
        force=force,
    )
    ws.set_latest("index", output)
    emit(
        {
            "index": str(output),
            "items": report.items,
            "rows": report.rows,
            "added": report.added,
            "replaced": report.replaced,
            "ann": asdict(report.ann) if report.ann else None,
        }
    )
