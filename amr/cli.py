"""The `amr` command: a thin typer layer over the stage functions.

Each command parses its options, calls one stage of the Python API (amr.extract,
amr.train, amr.indexing, amr.query, amr.evaluate) and prints its result.
Results go to stdout in a parseable form; progress and messages go to stderr.
An AmrError becomes one line on stderr and exit code 1; a usage error (an
unknown option, a value out of range or not among the choices) exit code 2.
Defaults shown in ``--help`` come from the stages' config dataclasses.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer

from amr import __version__
from amr.console import error
from amr.errors import AmrError, Interrupted
from amr.fusion import Fusion, Init
from amr.workspace import WORKSPACE_ENV, Workspace

app = typer.Typer(
    name="amr",
    help="Language-based audio retrieval with metadata: extract, train, index, query, serve, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def command(function: F) -> F:
    """Register a command whose errors end in one line on stderr and exit 1
    (also under typer's test runner), and Ctrl-C in exit 130.

    An AmrError is the message; an OSError (disk full, permissions) names its
    file; anything else is a bug of amr, said so in one line (AMR_DEBUG=1
    lets its traceback through)."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Interrupted as e:
            error(str(e))
            raise typer.Exit(130) from None
        except AmrError as e:
            error(str(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except OSError as e:
            error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else f"{type(e).__name__}: {e}")
            raise typer.Exit(1) from None
        except Exception as e:
            if os.environ.get("AMR_DEBUG"):
                raise
            first_line = str(e).splitlines()[0] if str(e) else ""
            error(f"internal error, {type(e).__name__}: {first_line} (a bug of amr: please report it; AMR_DEBUG=1 shows where)")
            raise typer.Exit(1) from None

    app.command()(run)
    return function


def main() -> None:
    """The `amr` command. A usage error (an unknown option, a value out of
    range) is one line on stderr and exit 2, not typer's framed box."""
    from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer's own click: no public names
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as e:  # a bare `amr`: its help
        e.show()
        code = e.exit_code
    except TyperException as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if isinstance(e, UsageError) and e.ctx is not None else ""
        error(" ".join(e.format_message().split()) + hint)
        code = e.exit_code
    except typer.Abort:
        error("interrupted")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print amr's version and exit.")] = False,
) -> None:
    """Language-based audio retrieval with metadata: extract, train, index, query, serve, evaluate."""


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class AnnKind(StrEnum):
    ivf_sq8 = "ivf-sq8"
    ivf_pq = "ivf-pq"


class Split(StrEnum):
    train = "train"
    val = "val"
    test = "test"


class EvaluatedSplit(StrEnum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", envvar=WORKSPACE_ENV, help="Workspace directory (default: ./amr-workspace)."),
]
DeviceOption = Annotated[Device, typer.Option(help="Where models run: auto (CUDA when available), cpu or cuda.")]


def _emit(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, ensure_ascii=False))


# --- extract ------------------------------------------------------------------------------

from amr.datasets import LAYOUTS  # noqa: E402  (the layouts, as choices)
from amr.segments import SegmentGrid  # noqa: E402  (the segment defaults)

Layout = StrEnum("Layout", {name: name for name in LAYOUTS})


class ExtractEngine(StrEnum):
    local = "local"
    ray = "ray"


@command
def extract(
    dataset: Annotated[
        Path, typer.Argument(help="Dataset root: Clotho, AudioCaps, a folder with items.jsonl / items.csv, or a folder of audio files.")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Cache file (default: <workspace>/caches/<dataset>.<model>.h5).")
    ] = None,
    audio_model: Annotated[
        str | None, typer.Option(help="EfficientAT model name, mn01_as … mn40_as_ext (default: mn04_as, or the name of --audio-weights).")
    ] = None,
    audio_weights: Annotated[
        Path | None, typer.Option(envvar="AMR_AUDIO_WEIGHTS", help="Local checkpoint file of the audio model.")
    ] = None,
    augment_views: Annotated[int, typer.Option(min=0, help="Also store K SpecAugmented sequences per clip, for training.")] = 0,
    workers: Annotated[int | None, typer.Option(min=1, help="Decoding processes (default: one per CPU core).")] = None,
    layout: Annotated[
        Layout | None,
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
    seed: Annotated[int, typer.Option(help="Seed of the SpecAugment views.")] = 0,
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
    from amr.datasets import load_dataset
    from amr.devices import resolve_device
    from amr.extract import extract as run_extract
    from amr.extract import failures_path
    from amr.weights import resolve_weights

    if engine is ExtractEngine.local and (ray_address or num_gpus or actors):
        raise AmrError("--ray-address, --num-gpus and --actors need --engine ray")
    ray_engine = None
    if engine is ExtractEngine.ray:
        from amr.ray_engine import RayEngine, RayOptions

        ray_engine = RayEngine(RayOptions(address=ray_address, actors=actors, num_gpus=num_gpus))
    ws = Workspace.resolve(workspace)
    data = load_dataset(
        dataset, layout=layout.value if layout else None, lenient=lenient, encoding=encoding, allow_outside_root=allow_outside_root
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
    )
    ws.set_latest("cache", output)
    _emit(
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

from amr.model import ModelConfig  # noqa: E402  (the defaults of the train options)
from amr.train import TrainConfig, Validation  # noqa: E402


@command
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
            help="Metadata fields, comma-separated: keywords, tags, title, description; or captions (Clotho's full-sentence setting)."
        ),
    ] = ",".join(ModelConfig.metadata),
    text_model: Annotated[str, typer.Option(help="Hugging Face BERT-family model name or directory.")] = ModelConfig.text_model,
    text_pooling: Annotated[
        str | None,
        typer.Option(help="cls or mean (default: the text model's own: mean for sentence-transformers models, cls for plain BERT)."),
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
    from amr.devices import resolve_device
    from amr.train import resume_configs
    from amr.train import train as run_train

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
    if resume:
        given = {name for name in ctx.params if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}
        model_config, training = resume_configs(output, model_config, training, given)
    elif not caches:
        training = TrainConfig(**{**training.__dict__, "caches": (str(ws.latest("cache").resolve()),)})
    output = output or ws.new_checkpoint_path(model_config.fusion.value)
    result = run_train(output, model_config, training, resume=resume, device=resolve_device(device.value))
    ws.set_latest("checkpoint", output)
    _emit(result.summary())


# --- index --------------------------------------------------------------------------------

from amr.zeroshot import ZeroShotConfig  # noqa: E402  (the defaults of the zero-shot options)


@command
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
        bool | None, typer.Option("--ann/--no-ann", help="Also build an approximate FAISS index (default: above 50000 rows).")
    ] = None,
    ann_kind: Annotated[
        AnnKind | None,
        typer.Option(
            help="Kind of approximate index (default: by size, ivf-sq8 in RAM up to 1 million rows, ivf-pq with its lists on disk above)."
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
    force: Annotated[bool, typer.Option("--force", help="Overwrite an --output that is a file of another kind (not an index).")] = False,
    device: DeviceOption = Device.auto,
    workspace: WorkspaceOption = None,
) -> None:
    """Encode every item of the caches through the checkpoint's item tower (or zero-shot) into a searchable index.

    Prints a JSON summary on stdout; with an approximate index, its recall
    against exact search goes to stderr."""
    from dataclasses import asdict

    from amr.devices import resolve_device
    from amr.indexing import build_index, retriever_spec
    from amr.retrievers import load_retriever

    ws = Workspace.resolve(workspace)
    caches = caches or [ws.latest("cache")]
    zero_shot_config = ZeroShotConfig(text_model, audio_weight, metadata_weight) if zero_shot else None
    if output is None:
        output = ws.latest("index") if append else ws.index_path(caches[0], zero_shot)
    spec = retriever_spec(zero_shot_config, checkpoint, output if append else None, lambda: ws.latest("checkpoint"))
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
    _emit(
        {
            "index": str(output),
            "items": report.items,
            "rows": report.rows,
            "added": report.added,
            "replaced": report.replaced,
            "ann": asdict(report.ann) if report.ann else None,
        }
    )


# --- query --------------------------------------------------------------------------------

from amr.query import Format  # noqa: E402  (the output formats)


@command
def query(
    queries: Annotated[
        list[str] | None,
        typer.Argument(
            help="Query texts; '-' reads queries from stdin, one per line (text, ID<TAB>TEXT, or JSON with \"text\").", show_default=False
        ),
    ] = None,
    audio: Annotated[
        list[Path] | None, typer.Option("--audio", "-a", help="Query by example: rank by similarity to this clip (repeatable).")
    ] = None,
    index_path: Annotated[
        Path | None, typer.Option("--index", "-i", envvar="AMR_INDEX", help="Index file (default: the workspace's latest index).")
    ] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Results per query.")] = 10,
    fmt: Annotated[
        Format | None, typer.Option("--format", "-f", help="Output format (default: table on a terminal, jsonl in a pipe).")
    ] = None,
    explain: Annotated[bool, typer.Option(help="Split each score into audio and metadata contributions; show machine tags.")] = False,
    all_segments: Annotated[
        bool, typer.Option("--all-segments", help="List every matching segment of a long recording, not only its best one.")
    ] = False,
    exact: Annotated[bool, typer.Option(help="Exact search even where the index has an approximate one.")] = False,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="Checkpoint to encode queries with (default: the one the index records).")
    ] = None,
    audio_weights: Annotated[
        Path | None, typer.Option(envvar="AMR_AUDIO_WEIGHTS", help="Local checkpoint file of the audio model, for --audio.")
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="CPU threads of the query encoder and of exact search; 1 keeps one query fast and steady on a busy machine, more speed "
            "up large batches.",
        ),
    ] = 1,
    device: DeviceOption = Device.cpu,
    workspace: WorkspaceOption = None,
) -> None:
    """Rank the indexed items for each query; results on stdout, one record per (query, item).

    Exit code 0 when every query ran; 3 when some failed (each reported on
    stderr; the others still produce results); 1 when nothing could run."""
    # Before numpy loads: its OpenBLAS reads this once. Measured (bench/query.py): with torch
    # loaded, a multi-threaded matrix-vector product stalls ~8 ms; one thread takes 0.5 ms.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))
    import torch

    from amr.devices import resolve_device
    from amr.query import Failure, default_format, gather_queries, make_writer, open_searcher, run_queries

    if not queries and not audio:
        raise AmrError("no queries: give query texts, '-' to read them from stdin, or --audio FILE")
    torch.set_num_threads(threads)
    path = index_path or Workspace.resolve(workspace).latest("index")
    searcher = open_searcher(path, checkpoint, audio_weights, resolve_device(device.value))
    parts = [name for name, _ in searcher.index.header.parts] if explain else None
    writer = make_writer(fmt or default_format(sys.stdout), sys.stdout, parts)
    failed = 0
    inputs = gather_queries(queries or [], audio or [], sys.stdin.buffer)
    try:
        for outcome in run_queries(searcher, inputs, top, explain_scores=explain, exact=exact, all_segments=all_segments):
            if isinstance(outcome, Failure):
                failed += 1
                error(f"query {outcome.query_id} ({outcome.query!r}): {outcome.error}")
            else:
                writer.write(outcome)
        writer.close()
    except BrokenPipeError:  # the reader stopped early (`| head`): stop quietly, as a killed pipe writer would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None
    if failed:
        raise typer.Exit(3)


# --- serve --------------------------------------------------------------------------------


@command
def serve(
    index_path: Annotated[
        Path | None, typer.Option("--index", "-i", envvar="AMR_INDEX", help="Index file (default: the workspace's latest index).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; any but loopback lets other machines search and play the files.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: a free one).")] = 8000,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="Checkpoint to encode queries with (default: the index's).")
    ] = None,
    audio_weights: Annotated[
        Path | None, typer.Option(envvar="AMR_AUDIO_WEIGHTS", help="Local file of the audio model, for uploaded clips.")
    ] = None,
    upload_limit: Annotated[int, typer.Option(min=1, help="Largest clip accepted for query by example, in MiB.")] = 64,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of the query encoder and of exact search.")] = 1,
    device: DeviceOption = Device.cpu,
    workspace: WorkspaceOption = None,
) -> None:
    """Serve a web page and a JSON API to search the index and listen to what it finds, until Ctrl-C.

    Listens on http://127.0.0.1:8000/ unless told otherwise; the API is
    described in amr/serve.py and at /api/openapi.json."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))  # before numpy loads, as in `amr query`
    import torch

    from amr.devices import resolve_device
    from amr.serve import serve as serve_index

    torch.set_num_threads(threads)
    path = index_path or Workspace.resolve(workspace).latest("index")
    serve_index(
        path,
        host,
        port,
        checkpoint=checkpoint,
        audio_weights=audio_weights,
        device=resolve_device(device.value),
        upload_limit=upload_limit << 20,
    )


# --- evaluate -----------------------------------------------------------------------------

from amr.evaluate import By  # noqa: E402  (the breakdowns)


@command
def evaluate(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Trained checkpoints, e.g. the runs of three seeds (default: the workspace's latest, if any, unless --index is given).",
            show_default=False,
        ),
    ] = None,
    index_paths: Annotated[
        list[Path] | None,
        typer.Option("--index", "-i", help="Evaluate an index: its vectors, queries encoded by the model that built it (repeatable)."),
    ] = None,
    caches: Annotated[
        list[Path] | None,
        typer.Option(
            "--cache",
            help="Cache files holding the evaluated items (repeatable) (default: the workspace's latest cache; with only --index, the "
            "first index's items).",
        ),
    ] = None,
    split: Annotated[EvaluatedSplit, typer.Option("--split", "-s", help="Evaluate the items of this split.")] = EvaluatedSplit.test,
    queries: Annotated[
        Path | None,
        typer.Option(
            "--queries", "-q", help="queries.jsonl with lists of relevant item ids (default: one query per caption of the split's items)."
        ),
    ] = None,
    bm25: Annotated[
        bool, typer.Option("--bm25", help="Also score the metadata-only baseline: BM25 over the items' metadata text.")
    ] = False,
    by: Annotated[By | None, typer.Option(help="Also break the results down by this property of the query's relevant items.")] = None,
    per_query: Annotated[
        Path | None,
        typer.Option("--per-query", help="Write the summary and, per model and query, the ranks of the relevant items to this JSON file."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON summary on stdout even at a terminal (the table then goes to stderr).")
    ] = False,
    plot: Annotated[Path | None, typer.Option(help="Write recall@K for K = 1..50, one curve per model, to this PNG file.")] = None,
    zero_shot: Annotated[
        bool,
        typer.Option(
            "--zero-shot", help="Also score the zero-shot hybrid model, and with --ablate its audio-only and metadata-only halves."
        ),
    ] = False,
    ablate: Annotated[
        bool, typer.Option("--ablate", help="With --zero-shot: add the audio-only and metadata-only zero-shot rows.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Let --per-query overwrite a file of another kind (not a per-query results file).")
    ] = False,
    device: DeviceOption = Device.auto,
    workspace: WorkspaceOption = None,
) -> None:
    """Text-to-audio retrieval metrics (R@1, R@5, R@10, mAP@10, in percent) as the Clotho and AudioCaps benchmarks define them.

    Every query ranks every item of the split; ties go to the item that comes
    first (caches in the order given, each in storage order). Models that
    share their configuration except the seed count as runs of one
    configuration: two or more distinct ones get a row "mean ± std" (sample
    standard deviation). --zero-shot adds the zero-shot model (no checkpoint
    needed), --bm25 a lexical metadata baseline.

    stdout: the table at a terminal; in a pipe, or with --json, the summary as
    one JSON object (metrics as fractions in [0, 1]; "models" with "metrics"
    and, with --by, "groups"; "aggregates" with "mean" and "std"), while the
    table goes to stderr."""
    from amr.console import console
    from amr.devices import resolve_device
    from amr.evaluate import check_per_query_output, evaluate_models, plot_recall, render_table, write_per_query

    ws = Workspace.resolve(workspace)
    if per_query is not None:
        check_per_query_output(per_query, force)  # before the evaluation, not after it
    report = evaluate_models(
        checkpoints or [],
        index_paths or [],
        caches or [],
        split.value,
        queries=queries,
        zero_shot=zero_shot,
        ablate=ablate,
        bm25=bm25,
        by=by.value if by else None,
        curves=plot is not None,
        workspace=ws,
        device=resolve_device(device.value),
    )
    summary = report.summary()
    if per_query is not None:
        write_per_query(report, per_query)
        console.print(f"per-query results in {per_query}")
    if plot is not None:
        plot_recall(report, plot)
        console.print(f"recall curves in {plot}")
    from rich.console import Console

    if sys.stdout.isatty() and not as_json:
        Console(highlight=False).print(render_table(summary))  # results: stdout
    else:  # a log file is not a terminal: a table of its natural width rather than wrapped at 80
        Console(stderr=True, highlight=False, width=None if console.is_terminal else 200).print(render_table(summary))
        _emit(summary)
