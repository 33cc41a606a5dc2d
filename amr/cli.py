"""The `amr` command: a thin typer layer over the stage functions.

Each command parses its options, calls one stage of the Python API (amr.extract,
amr.train, amr.index.build, amr.query, amr.evaluate) and prints its result.
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
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from typer.exceptions import TyperException

from amr import __version__
from amr.config import (
    BY_FIELDS,
    DEVICES,
    LAYOUT_NAMES,
    MAX_EXAMPLE_SECONDS,
    ModelConfig,
    TrainConfig,
    Validation,
    ZeroShotConfig,
)
from amr.console import error
from amr.errors import AmrError, Interrupted
from amr.fusion import Fusion, Init
from amr.index.kinds import AnnKind
from amr.items import SPLITS
from amr.results import SERVER_ENV, Format
from amr.segments import SegmentGrid
from amr.workspace import WORKSPACE_ENV, Workspace

app = typer.Typer(
    name="amr",
    help="Language-based audio retrieval with metadata: extract, train, index, query, serve, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # what --threads sets


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
        except (typer.Exit, typer.Abort, TyperException):  # typer's own: exits and usage errors
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


# The choices of options, as enums for typer; their vocabularies are amr.config's and amr.items'.
Device = StrEnum("Device", {name: name for name in DEVICES})
Split = StrEnum("Split", {name: name for name in SPLITS})
EvaluatedSplit = StrEnum("EvaluatedSplit", {name: name for name in (*SPLITS, "all")})
Layout = StrEnum("Layout", {name: name for name in LAYOUT_NAMES})
By = StrEnum("By", {name: name for name in BY_FIELDS})


WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", envvar=WORKSPACE_ENV, help="Workspace directory (default: ./amr-workspace)."),
]
DeviceOption = Annotated[Device, typer.Option(help="Where models run: auto (CUDA when available), cpu or cuda.")]


def _emit(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, ensure_ascii=False))


# --- extract ------------------------------------------------------------------------------


class ExtractEngine(StrEnum):
    local = "local"
    ray = "ray"


@command
def extract(
    dataset: Annotated[
        Path,
        typer.Argument(help="Dataset root: Clotho, AudioCaps, WavCaps, a folder with items.jsonl / items.csv, or a folder of audio files."),
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
    workers: Annotated[int | None, typer.Option(min=1, help="Processes that decode and embed (default: one per available core).")] = None,
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
    from amr.datasets import load_dataset
    from amr.devices import resolve_device
    from amr.extract import extract as run_extract
    from amr.extract import failures_path
    from amr.weights import resolve_weights

    if engine is ExtractEngine.local and (ray_address or num_gpus or actors):
        raise AmrError("--ray-address, --num-gpus and --actors need --engine ray")
    ray_engine = None
    if engine is ExtractEngine.ray:
        from amr.extract.ray import RayEngine, RayOptions

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
    given = None  # on --resume, the options set on the command line: the rest are the run's own
    if resume:
        given = {name for name in ctx.params if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}
    elif not caches:
        training = TrainConfig(**{**training.__dict__, "caches": (str(ws.latest("cache").resolve()),)})
    output = output or ws.new_checkpoint_path(model_config.fusion.value)
    result = run_train(output, model_config, training, resume=resume, device=resolve_device(device.value), given=given)
    ws.set_latest("checkpoint", output)
    _emit(result.summary())


# --- index --------------------------------------------------------------------------------


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

    from amr.devices import resolve_device
    from amr.index.build import build_index, retriever_spec
    from amr.index.build import refresh_query_encoder as refresh
    from amr.retrievers import load_retriever

    ws = Workspace.resolve(workspace)
    if refresh_query_encoder:
        if caches or append or zero_shot:
            raise typer.BadParameter(
                "takes the index (--output) and at most its --checkpoint: no caches, --append or --zero-shot",
                param_hint="--refresh-query-encoder",
            )
        output = output or ws.latest("index")
        spec = retriever_spec(None, checkpoint, output, lambda: ws.latest("checkpoint"))
        retriever = load_retriever(spec, resolve_device(device.value))
        _emit({"index": str(output), "query_encoder": refresh(output, retriever)})
        return
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

MaxQuerySecondsOption = Annotated[
    float,
    typer.Option(
        "--max-query-seconds", min=0.0, help="Longest example clip accepted, in seconds of decoded audio (longer ones fail as queries)."
    ),
]


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
    moments: Annotated[
        bool,
        typer.Option(
            "--moments",
            help="A long recording's start/end: the span its matching sound occupies (finer windows around the best segment), "
            "not the 10 s segment; needs the caches the index was built from.",
        ),
    ] = False,
    exact: Annotated[bool, typer.Option(help="Exact search even where the index has an approximate one.")] = False,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="Checkpoint to encode queries with (default: the one the index records).")
    ] = None,
    audio_weights: Annotated[
        Path | None, typer.Option(envvar="AMR_AUDIO_WEIGHTS", help="Local checkpoint file of the audio model, for --audio.")
    ] = None,
    max_query_seconds: MaxQuerySecondsOption = MAX_EXAMPLE_SECONDS,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="CPU threads of the query encoder and of exact search; 1 keeps one query fast and steady on a busy machine, more speed "
            "up large batches.",
        ),
    ] = 1,
    server: Annotated[
        str | None,
        typer.Option(
            envvar=SERVER_ENV,
            help="Send the queries to this running `amr serve` (http://HOST:PORT) and print its answers, the same records as "
            "a local search (its index and model answer: --index, --checkpoint, --device and --threads are the server's).",
        ),
    ] = None,
    device: DeviceOption = Device.cpu,
    workspace: WorkspaceOption = None,
) -> None:
    """Rank the indexed items for each query; results on stdout, one record per (query, item).

    Text queries are encoded by the index's query encoder (onnxruntime), an
    example clip by the audio model (torch). Exit code 0 when every query
    ran; 3 when some failed (each reported on stderr; the others still
    produce results); 1 when nothing could run; 2 for a query without words."""
    _limit_threads(threads)
    from amr.results import gather_queries, print_outcomes
    from amr.text_input import normalize_text

    if not queries and not audio:
        raise AmrError("no queries: give query texts, '-' to read them from stdin, or --audio FILE")
    wordless = next((q for q in queries or [] if q != "-" and not normalize_text(q)), None)
    if wordless is not None:
        raise typer.BadParameter(f"{wordless!r} has no words to search for", param_hint="QUERIES")
    inputs = gather_queries(queries or [], audio or [], sys.stdin.buffer)
    if server:
        from amr.client import Client

        client = Client(server)
        parts = client.parts if explain else None
        outcomes = client.run_queries(inputs, top, explain_scores=explain, exact=exact, all_segments=all_segments)
    else:
        path = index_path or Workspace.resolve(workspace).latest("index")
        from amr.query import open_searcher, run_queries

        searcher = open_searcher(path, checkpoint, audio_weights, _device(device), threads, max_query_seconds)
        parts = [name for name, _ in searcher.index.header.parts] if explain else None
        outcomes = run_queries(searcher, inputs, top, explain_scores=explain, exact=exact, all_segments=all_segments, moments=moments)
    code = print_outcomes(outcomes, fmt, parts)
    if code:
        raise typer.Exit(code)


# --- categorize ---------------------------------------------------------------------------


class CategorizeFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    table = "table"


class CategorizeBy(StrEnum):
    fused = "fused"
    audio = "audio"
    metadata = "metadata"


@command
def categorize(
    cache: Annotated[Path | None, typer.Argument(help="Embedding cache (default: the workspace's latest).", show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, max=752, help="CatIDs per item.")] = 3,
    by: Annotated[CategorizeBy, typer.Option(help="Score from the audio and metadata fused, or one of them.")] = CategorizeBy.fused,
    fmt: Annotated[
        CategorizeFormat | None, typer.Option("--format", "-f", help="Output format (default: table on a terminal, jsonl in a pipe).")
    ] = None,
    rename_plan: Annotated[
        bool,
        typer.Option("--rename-plan", help="Give each file not UCS-named a name CatID_FXName_CreatorID_SourceID.ext (nothing changes)."),
    ] = False,
    creator: Annotated[str | None, typer.Option(help="CreatorID of the planned names (who recorded the sounds).")] = None,
    source: Annotated[str | None, typer.Option(help="SourceID of the planned names (the library or project).")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Rename the files as planned, writing an undo file first.")] = False,
    undo_file: Annotated[
        Path | None, typer.Option(help="Where --apply writes its undo file (default: <workspace>/renames/undo-<time>.jsonl).")
    ] = None,
    undo: Annotated[Path | None, typer.Option(help="Put back the names an undo file records, and do nothing else.")] = None,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of the text encoder.")] = 1,
    workspace: WorkspaceOption = None,
) -> None:
    """Suggest UCS categories (CatIDs) for every item of a cache, zero-shot from its audio and metadata.

    Items already UCS-named report whether their audio agrees with their CatID.
    With --rename-plan, each file that is not UCS-named gets a planned name
    (--creator and --source give its CreatorID and SourceID); --apply renames."""
    import time

    import torch

    from amr.categorize import Format, Source, apply_renames, categorize, plan_renames, undo_renames, write_results

    if undo is not None:
        print(json.dumps({"undone": undo_renames(undo), "undo_file": str(undo)}))
        return
    if (rename_plan or apply) and not (creator and source):
        error("--rename-plan and --apply need --creator and --source (the CreatorID and SourceID blocks)")
        raise typer.Exit(2)
    torch.set_num_threads(threads)
    path = cache or Workspace.resolve(workspace).latest("cache")
    results = categorize(path, top, Source(by.value))
    if rename_plan or apply:
        results = plan_renames(results, creator or "", source or "")
    chosen = Format((fmt or (CategorizeFormat.table if sys.stdout.isatty() else CategorizeFormat.jsonl)).value)
    written = write_results(results, chosen, sys.stdout, top)
    if apply:
        target = undo_file or Workspace.resolve(workspace).root / "renames" / f"undo-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        renamed = apply_renames([(r.audio, r.rename) for r in written if r.rename], target)
        print(f"renamed {renamed} files; undo with: amr categorize --undo {target}", file=sys.stderr)


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
    moments: Annotated[
        bool, typer.Option("--moments", help="Results in long recordings span the sound found, as amr query --moments.")
    ] = False,
    max_query_seconds: MaxQuerySecondsOption = MAX_EXAMPLE_SECONDS,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of the query encoder and of exact search.")] = 1,
    device: DeviceOption = Device.cpu,
    workspace: WorkspaceOption = None,
) -> None:
    """Serve a web page and a JSON API to search the index and listen to what it finds, until Ctrl-C.

    Listens on http://127.0.0.1:8000/ unless told otherwise; the API is
    described in amr/serve.py and at /api/openapi.json. `amr query --server
    URL` sends queries to it."""
    _limit_threads(threads)
    from amr.serve import serve as serve_index

    path = index_path or Workspace.resolve(workspace).latest("index")
    serve_index(
        path,
        host,
        port,
        checkpoint=checkpoint,
        audio_weights=audio_weights,
        device=_device(device),
        upload_limit=upload_limit << 20,
        moments=moments,
        max_query_seconds=max_query_seconds,
        threads=threads,
    )


def _limit_threads(threads: int) -> None:
    """Set the thread count of OpenMP, OpenBLAS and MKL before numpy, FAISS or
    torch load (each reads it once). Measured (bench/query.py): with torch
    loaded, a multi-threaded matrix-vector product stalls ~8 ms; one thread takes 0.5 ms."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)


def _device(device: Device) -> Any:
    """ "cpu" as it is (no torch needed: the query encoder runs on onnxruntime), else the torch device it stands for."""
    if device.value == "cpu":
        return "cpu"
    from amr.devices import resolve_device

    return resolve_device(device.value)


# --- evaluate -----------------------------------------------------------------------------


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
    cutoffs: Annotated[
        str | None,
        typer.Option("--k", help="Cut-offs, e.g. 1,5,10,16: R@K and mAP@K at each (default: the protocol's).", show_default=False),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="dcase2024: R@1/5/10 and mAP@10, AP over min(|relevant|, K); dcase2025: R@1/5/10 and mAP@16, AP over |relevant| "
            "(needs --relevance).",
        ),
    ] = "dcase2024",
    ap_norm: Annotated[
        str | None,
        typer.Option(
            "--ap-norm",
            help="AP@K divided by min(|relevant|, K) (clipped) or by |relevant| (total) (default: the protocol's).",
            show_default=False,
        ),
    ] = None,
    relevance: Annotated[
        Path | None,
        typer.Option(help="DCASE 2025 metadata_eval.csv (query,audio_filenames): the queries and their relevant files."),
    ] = None,
    lenient: Annotated[
        bool, typer.Option(help="With --relevance: leave out (and report) rows whose query or files match nothing, instead of exit 1.")
    ] = False,
    submission: Annotated[
        Path | None,
        typer.Option(help="Also write the model's DCASE submission CSV (queries x audio files, the baseline's format) to this file."),
    ] = None,
    submission_queries: Annotated[
        Path | None,
        typer.Option(
            help="With --submission: score the captions of this CSV (the DCASE retrieval_captions.csv) and only write the submission.",
        ),
    ] = None,
    moments: Annotated[
        Path | None,
        typer.Option(
            help="Moment retrieval instead: queries with (recording, start, end) moments (Clotho-Moment JSON Lines or CASTELLA "
            "JSON); R1/R5 at IoU 0.5/0.7 and mAP of the grid's windows and of refined spans.",
        ),
    ] = None,
    audio_weights: Annotated[
        Path | None, typer.Option(envvar="AMR_AUDIO_WEIGHTS", help="With --moments: the caches' audio model file (tags of finer windows).")
    ] = None,
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
    from amr.dcase import PROTOCOLS
    from amr.devices import resolve_device
    from amr.evaluate import check_per_query_output, evaluate_models, plot_recall, render_table, write_per_query
    from amr.metrics import APNorm
    from amr.submission import predict_submission

    if protocol not in PROTOCOLS:
        _usage("--protocol", f"{protocol!r}: use one of {', '.join(PROTOCOLS)}")
    if ap_norm is not None and ap_norm not in APNorm.__members__:
        _usage("--ap-norm", f"{ap_norm!r}: use one of {', '.join(APNorm.__members__)}")
    chosen = PROTOCOLS[protocol]
    ks, ap_ks = (chosen.ks, chosen.ap_ks) if cutoffs is None else (_cutoffs(cutoffs),) * 2
    ws = Workspace.resolve(workspace)
    if per_query is not None:
        check_per_query_output(per_query, force)  # before the evaluation, not after it
    if moments is not None:
        from amr.moments import evaluate_moments

        paths = (checkpoints or [], caches or [])
        options = {"zero_shot": zero_shot, "audio_weights": audio_weights, "workspace": ws, "device": resolve_device(device.value)}
        _emit(evaluate_moments(moments, *paths, **options))
        return
    if submission_queries is not None:
        if submission is None:
            _usage("--submission-queries", "needs --submission FILE to write to")
        paths = (checkpoints or [], index_paths or [], caches or [])
        options = {"zero_shot": zero_shot, "workspace": ws, "device": resolve_device(device.value)}
        _emit(predict_submission(submission, submission_queries, *paths, split.value, **options))
        return
    if protocol == "dcase2025" and relevance is None:
        _usage("--protocol", "dcase2025 evaluates the relevance of its metadata_eval.csv: give --relevance FILE")
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
        ks=ks,
        ap_ks=ap_ks,
        ap_norm=APNorm(ap_norm or chosen.ap_norm),
        relevance=relevance,
        lenient=lenient,
        submission=submission,
        workspace=ws,
        device=resolve_device(device.value),
    )
    summary = report.summary()
    if submission is not None:
        console.print(f"submission in {submission}")
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


def _cutoffs(text: str) -> tuple[int, ...]:
    """``--k 1,5,10,16`` as cut-offs: positive integers, comma-separated."""
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        ks = ()
    if not ks or ks[0] < 1:
        _usage("--k", f"{text!r}: positive integers separated by commas, e.g. 1,5,10,16")
    return ks


def _usage(option: str, message: str) -> NoReturn:
    """A usage error found after parsing: one line, exit 2 (as typer's own)."""
    error(f"{option}: {message}")
    raise typer.Exit(2)
