"""The `amr` command: a thin typer layer over the stage functions.

Results go to stdout in a parseable form; progress and messages go to stderr.
An AmrError becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from amr.errors import AmrError
from amr.workspace import WORKSPACE_ENV, Workspace

app = typer.Typer(
    name="amr",
    help="Language-based audio retrieval with metadata: extract, train, index, query, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True)

WorkspaceOption = Annotated[
    Optional[Path],
    typer.Option("--workspace", "-w", envvar=WORKSPACE_ENV, help="Workspace directory (default: ./amr-workspace)."),
]


ZeroShotOption = Annotated[bool, typer.Option("--zero-shot", help="Fuse audio (through AudioSet tags, the label-text bridge) and metadata with no trained checkpoint.")]
AudioWeightOption = Annotated[float, typer.Option(min=0.0, help="Zero-shot: weight of the audio vector in the fused item vector.")]
MetadataWeightOption = Annotated[float, typer.Option(min=0.0, help="Zero-shot: weight of the metadata vector in the fused item vector.")]
TextModelOption = Annotated[Optional[str], typer.Option(help="Zero-shot: Hugging Face text model name or directory (default: all-MiniLM-L6-v2).")]


def zero_shot_spec(text_model: str | None, audio_weight: float, metadata_weight: float) -> dict:
    from amr.text import DEFAULT_TEXT_MODEL
    from amr.zeroshot import ZeroShotConfig, ZeroShotRetriever

    config = ZeroShotConfig(text_model or DEFAULT_TEXT_MODEL, audio_weight, metadata_weight)
    return ZeroShotRetriever.spec_of(config)


def main() -> None:
    try:
        app()
    except AmrError as e:
        stderr.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)


@app.command()
def extract(
    dataset: Annotated[Path, typer.Argument(help="Dataset root: Clotho, AudioCaps, or a folder with items.jsonl / items.csv.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Cache file (default: <workspace>/caches/<dataset>.<model>.h5).")] = None,
    audio_model: Annotated[Optional[str], typer.Option(help="EfficientAT model name, mn01_as … mn40_as_ext (default: mn04_as, or the name of --audio-weights).")] = None,
    audio_weights: Annotated[Optional[Path], typer.Option(envvar="AMR_AUDIO_WEIGHTS", help="Local checkpoint file of the audio model.")] = None,
    augment_views: Annotated[int, typer.Option(min=0, help="Also store K SpecAugmented sequences per clip, for training.")] = 0,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Decoding processes (default: one per CPU core).")] = None,
    layout: Annotated[Optional[str], typer.Option(help="Dataset layout: clotho, audiocaps or generic (default: detected).")] = None,
    lenient: Annotated[bool, typer.Option(help="Skip malformed manifest rows (reported) instead of failing.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the SpecAugment views.")] = 0,
    workspace: WorkspaceOption = None,
) -> None:
    """Compute every clip's frame-embedding sequence and AudioSet tags into an HDF5 cache.

    Reruns resume: finished clips are skipped. Prints a JSON summary on stdout;
    exit code 3 when some clips could not be decoded (listed in <cache>.failures.jsonl)."""
    from amr.datasets import load_dataset
    from amr.extract import extract as run_extract
    from amr.extract import failures_path
    from amr.weights import resolve_weights

    ws = Workspace.resolve(workspace)
    data = load_dataset(dataset, layout=layout, lenient=lenient)
    weights = resolve_weights(audio_model, audio_weights)
    output = output or ws.caches / f"{data.name}.{weights.name}.h5"
    report = run_extract(data.items, output, weights, augment_views=augment_views, workers=workers, seed=seed)
    ws.set_latest("cache", output)
    stderr.print(
        f"{report.items} clips in {output} ({report.computed} computed, {report.reused} reused, "
        f"{len(report.failures)} failed) in {report.seconds:.1f} s",
        highlight=False,
    )
    summary = {
        "cache": str(output),
        "items": report.items,
        "computed": report.computed,
        "reused": report.reused,
        "failed": len(report.failures),
        "failures": str(failures_path(output)) if report.failures else None,
    }
    print(json.dumps(summary))
    if report.failures:
        raise typer.Exit(3)


@app.command()
def train(
    cache: Annotated[Optional[list[Path]], typer.Option("--cache", help="Cache file to train on (repeatable: combined training) (default: the workspace's latest cache).")] = None,
    fusion: Annotated[Optional[str], typer.Option(help="none (audio only), metadata (metadata only), late or mid (default: late).")] = None,
    metadata: Annotated[Optional[str], typer.Option(help="Metadata fields, comma-separated: keywords, tags, title, description; or captions (Clotho's full-sentence setting) (default: all four).")] = None,
    text_model: Annotated[Optional[str], typer.Option(help="Hugging Face BERT-family model name or directory (default: all-MiniLM-L6-v2).")] = None,
    freeze_text: Annotated[bool, typer.Option("--freeze-text", help="Do not fine-tune the text encoder (its outputs are computed once: fast).")] = False,
    separate_text_encoders: Annotated[bool, typer.Option("--separate-text-encoders", help="Give metadata its own copy of the text encoder.")] = False,
    metadata_dropout: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Drop an item's metadata with this probability (default: 0).")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs (default: 25).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=2, help="Pairs per batch (default: 32).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate of the new layers (default: 5e-4).")] = None,
    text_lr: Annotated[Optional[float], typer.Option(help="Learning rate of the text encoder (default: 2e-5).")] = None,
    warmup_epochs: Annotated[Optional[int], typer.Option(min=0, help="Linear warm-up epochs before the cosine decay (default: 1).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="NT-Xent temperature (default: 0.05).")] = None,
    width: Annotated[Optional[int], typer.Option(min=8, help="Audio transformer width = retrieval space size (default: 128).")] = None,
    depth: Annotated[Optional[int], typer.Option(min=1, help="Audio transformer layers (default: 2).")] = None,
    heads: Annotated[Optional[int], typer.Option(min=1, help="Attention heads (default: 4).")] = None,
    ff: Annotated[Optional[int], typer.Option(min=1, help="Feed-forward size of the transformer layers (default: 512).")] = None,
    dropout: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Dropout in the transformer layers (default: 0.1).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same model (default: 0).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Checkpoint directory (default: <workspace>/checkpoints/<fusion>-<time>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --output from its last completed epoch (its options apply).")] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Train the retrieval model on the caption-clip pairs of the caches' train split, validating (mAP@10) on the val split.

    Prints a JSON summary on stdout: checkpoint, best epoch, best validation mAP@10."""
    import time

    from amr.train import configure
    from amr.train import train as run_train

    ws = Workspace.resolve(workspace)
    given = {
        "fusion": fusion,
        "metadata": tuple(f.strip() for f in metadata.split(",")) if metadata is not None else None,
        "text_model": text_model,
        "freeze_text": freeze_text or None,
        "separate_text_encoders": separate_text_encoders or None,
        "metadata_dropout": metadata_dropout,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "text_lr": text_lr,
        "warmup_epochs": warmup_epochs,
        "temperature": temperature,
        "width": width,
        "depth": depth,
        "heads": heads,
        "ff": ff,
        "dropout": dropout,
        "seed": seed,
        "caches": tuple(str(c.resolve()) for c in cache) if cache else None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if resume and output is None:
        raise AmrError("--resume needs --output DIR: the checkpoint directory of the interrupted run")
    model_config, training = configure(given, output if resume else None)
    if not training.caches:
        model_config, training = configure({**given, "caches": (str(ws.latest("cache").resolve()),)})
    output = output or ws.checkpoints / f"{model_config.fusion}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_train(output, model_config, training, resume=resume)
    ws.set_latest("checkpoint", output)
    print(json.dumps(result.summary()))


@app.command()
def index(
    caches: Annotated[Optional[list[Path]], typer.Argument(help="Cache files (default: the workspace's latest cache).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="Trained checkpoint (default: with --append the index's own, else the workspace's latest).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Index file (default: with --append the workspace's latest index, else <workspace>/indexes/<cache>.h5).")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", "-s", help="Index only items of this split (repeatable) (default: all splits).")] = None,
    append: Annotated[bool, typer.Option(help="Add to an existing index without re-encoding it; an id indexed again replaces the old vector.")] = False,
    ann: Annotated[Optional[bool], typer.Option("--ann/--no-ann", help="Also build an approximate FAISS index (default: above 50000 items).")] = None,
    auto_tags: Annotated[Optional[int], typer.Option(min=0, help="Give items without metadata their clip's K most probable AudioSet tags as metadata (default: 0; with --append the index's).")] = None,
    zero_shot: ZeroShotOption = False,
    audio_weight: AudioWeightOption = 1.0,
    metadata_weight: MetadataWeightOption = 1.0,
    text_model: TextModelOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Encode every item of the caches through the checkpoint's item tower (or zero-shot) into a searchable index.

    Prints a JSON summary on stdout; with an approximate index, its recall
    against exact search goes to stderr."""
    from dataclasses import asdict

    from amr.index import build_index, checkpoint_spec, load_retriever, open_index

    ws = Workspace.resolve(workspace)
    caches = caches or [ws.latest("cache")]
    if output is None:
        suffix = ".zero-shot" if zero_shot else ""
        output = ws.latest("index") if append else ws.indexes / f"{caches[0].stem}{suffix}.h5"
    if zero_shot:
        if checkpoint is not None:
            raise AmrError("--zero-shot and --checkpoint exclude each other")
        spec = zero_shot_spec(text_model, audio_weight, metadata_weight)
    elif checkpoint is not None:
        spec = checkpoint_spec(checkpoint)
    elif append:
        spec = open_index(output).header.retriever
    else:
        spec = checkpoint_spec(ws.latest("checkpoint"))
    report = build_index(load_retriever(spec), caches, output, splits=split, append=append, ann=ann, auto_tags=auto_tags)
    ws.set_latest("index", output)
    stderr.print(
        f"{report.items} items in {output} ({report.added} encoded, {report.replaced} replaced) in {report.seconds:.1f} s",
        highlight=False,
    )
    summary = {
        "index": str(output),
        "items": report.items,
        "added": report.added,
        "replaced": report.replaced,
        "ann": asdict(report.ann) if report.ann else None,
    }
    print(json.dumps(summary))


@app.command()
def query(
    queries: Annotated[Optional[list[str]], typer.Argument(help="Query texts; '-' reads queries from stdin, one per line (text, ID<TAB>TEXT, or JSON with \"text\").", show_default=False)] = None,
    audio: Annotated[Optional[list[Path]], typer.Option("--audio", "-a", help="Query by example: rank by similarity to this clip (repeatable).")] = None,
    index_path: Annotated[Optional[Path], typer.Option("--index", "-i", envvar="AMR_INDEX", help="Index file (default: the workspace's latest index).")] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Results per query.")] = 10,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="jsonl, tsv or table (default: table on a terminal, jsonl in a pipe).")] = None,
    explain: Annotated[bool, typer.Option(help="Split each score into audio and metadata contributions; show machine tags.")] = False,
    exact: Annotated[bool, typer.Option(help="Exact search even where the index has an approximate one.")] = False,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="Checkpoint to encode queries with (default: the one the index records).")] = None,
    audio_weights: Annotated[Optional[Path], typer.Option(envvar="AMR_AUDIO_WEIGHTS", help="Local checkpoint file of the audio model, for --audio.")] = None,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of the query encoder and of exact search; 1 keeps one query fast and steady on a busy machine, more speed up large batches.")] = 1,
    workspace: WorkspaceOption = None,
) -> None:
    """Rank the indexed items for each query; results on stdout, one record per (query, item).

    Exit code 0 when every query ran; 3 when some failed (each reported on
    stderr; the others still produce results); 1 when nothing could run."""
    import os

    # Before numpy loads: its OpenBLAS reads this once. Measured (bench/query.py): with torch
    # loaded, a multi-threaded matrix-vector product stalls ~8 ms; one thread takes 0.5 ms.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))
    import torch

    from amr.query import Failure, Format, default_format, gather_queries, make_writer, open_searcher, run_queries

    if not queries and not audio:
        raise AmrError("no queries: give query texts, '-' to read them from stdin, or --audio FILE")
    formats = [f.value for f in Format]
    if fmt is not None and fmt not in formats:
        raise AmrError(f"--format {fmt}: expected one of {', '.join(formats)}")
    torch.set_num_threads(threads)
    searcher = open_searcher(index_path or Workspace.resolve(workspace).latest("index"), checkpoint, audio_weights)
    segments = [name for name, _ in searcher.index.header.segments] if explain else None
    writer = make_writer(Format(fmt) if fmt else default_format(sys.stdout), sys.stdout, segments)
    failed = 0
    inputs = gather_queries(queries or [], audio or [], sys.stdin)
    try:
        for outcome in run_queries(searcher, inputs, top, explain_scores=explain, exact=exact):
            if isinstance(outcome, Failure):
                failed += 1
                stderr.print(f"[bold red]error:[/] query {outcome.query_id} ({outcome.query!r}): {outcome.error}", highlight=False, soft_wrap=True)
            else:
                writer.write(outcome)
        writer.close()
    except BrokenPipeError:  # the reader stopped early (`| head`): stop quietly, as a killed pipe writer would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None
    if failed:
        raise typer.Exit(3)


@app.command()
def evaluate(
    checkpoints: Annotated[Optional[list[Path]], typer.Argument(help="Trained checkpoints, e.g. the runs of three seeds (default: the workspace's latest, if any, unless --index is given).", show_default=False)] = None,
    index_paths: Annotated[Optional[list[Path]], typer.Option("--index", "-i", help="Evaluate an index: its vectors, queries encoded by the model that built it (repeatable).")] = None,
    caches: Annotated[Optional[list[Path]], typer.Option("--cache", help="Cache files holding the evaluated items (repeatable) (default: the workspace's latest cache; with only --index, the first index's items).")] = None,
    split: Annotated[str, typer.Option("--split", "-s", help="Evaluate the items of this split: train, val, test, or all.")] = "test",
    queries: Annotated[Optional[Path], typer.Option("--queries", "-q", help="queries.jsonl with lists of relevant item ids (default: one query per caption of the split's items).")] = None,
    bm25: Annotated[bool, typer.Option("--bm25", help="Also score the metadata-only baseline: BM25 over the items' metadata text.")] = False,
    by: Annotated[Optional[str], typer.Option(help="Also break the results down by: split, has_metadata, has_keywords, has_tags, has_title or has_description (of the query's relevant items).")] = None,
    per_query: Annotated[Optional[Path], typer.Option("--per-query", help="Write the summary and, per model and query, the ranks of the relevant items to this JSON file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON summary on stdout even at a terminal (the table then goes to stderr).")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Write recall@K for K = 1..50, one curve per model, to this PNG file.")] = None,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="Also score the zero-shot hybrid model, and with --ablate its audio-only and metadata-only halves.")] = False,
    ablate: Annotated[bool, typer.Option("--ablate", help="With --zero-shot: add the audio-only and metadata-only zero-shot rows.")] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Text-to-audio retrieval metrics (R@1, R@5, R@10, mAP@10, in percent) as the Clotho and AudioCaps benchmarks define them.

    Every query ranks every item of the split; ties go to the item that comes
    first (caches in the order given, each in storage order). Models of one
    fusion mode count as runs of one configuration: two or more distinct ones
    get a row "mean ± std" (sample standard deviation). --zero-shot adds the
    zero-shot model (no checkpoint needed), --bm25 a lexical metadata baseline.

    stdout: the table at a terminal; in a pipe, or with --json, the summary as
    one JSON object (metrics as fractions in [0, 1]; "models" with "metrics"
    and, with --by, "groups"; "aggregates" with "mean" and "std"), while the
    table goes to stderr."""
    from rich.console import Console

    from amr.baselines import BM25
    from amr.datasets import load_queries
    from amr.evaluate import CURVE_KS, IndexScorer, RetrieverScorer, Scorer, index_collection, model_names, open_collection, plot_recall, render_table, write_per_query
    from amr.evaluate import evaluate as run_evaluate
    from amr.index import checkpoint_spec, load_retriever, open_index

    ws = Workspace.resolve(workspace)
    index_paths = index_paths or []
    if not checkpoints and not index_paths:
        try:
            checkpoints = [ws.latest("checkpoint")]
        except AmrError:
            if not (bm25 or zero_shot):
                raise
            checkpoints = []  # baselines alone, before any training
    names = model_names([*checkpoints, *index_paths])
    indexes = [open_index(path) for path in index_paths]
    scorers: list[Scorer] = [RetrieverScorer(name, load_retriever(checkpoint_spec(path))) for name, path in zip(names, checkpoints)]
    scorers += [IndexScorer(name, ix) for name, ix in zip(names[len(checkpoints):], indexes)]
    if zero_shot:
        from amr.zeroshot import zero_shot_variants

        scorers += [RetrieverScorer(name, retriever) for name, retriever in zero_shot_variants(ablate)]
    if bm25:
        scorers.append(BM25())
    explicit = load_queries(queries) if queries is not None else None
    ks = CURVE_KS if plot is not None else ()
    if caches or checkpoints or not indexes:
        with open_collection(caches or [ws.latest("cache")], split) as collection:
            report = run_evaluate(scorers, collection, explicit, by, ks)
    else:
        report = run_evaluate(scorers, index_collection(indexes[0], split), explicit, by, ks)
    summary = report.summary()
    if per_query is not None:
        write_per_query(report, per_query)
        stderr.print(f"per-query results in {per_query}", highlight=False, soft_wrap=True)
    if plot is not None:
        plot_recall(report, plot)
        stderr.print(f"recall curves in {plot}", highlight=False, soft_wrap=True)
    if sys.stdout.isatty() and not as_json:
        Console(highlight=False).print(render_table(summary))
    else:  # a log file is not a terminal: a table of its natural width rather than wrapped at 80
        Console(stderr=True, width=None if stderr.is_terminal else 200).print(render_table(summary))
        print(json.dumps(summary))
