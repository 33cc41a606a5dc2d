"""`amr evaluate`: retrieval metrics of checkpoints, indexes and baselines, moment retrieval, DCASE submissions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from amr.cli.options import DeviceOption, WorkspaceOption, emit, usage
from amr.config import By
from amr.devices import Device
from amr.items import EvaluatedSplit
from amr.workspace import Workspace


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
    from amr.devices import resolve_device
    from amr.evaluate import check_per_query_output, evaluate_models, plot_recall, render_table, write_per_query
    from amr.evaluate.dcase import PROTOCOLS
    from amr.evaluate.submission import predict_submission
    from amr.metrics import APNorm

    if protocol not in PROTOCOLS:
        usage("--protocol", f"{protocol!r}: use one of {', '.join(PROTOCOLS)}")
    if ap_norm is not None and ap_norm not in APNorm.__members__:
        usage("--ap-norm", f"{ap_norm!r}: use one of {', '.join(APNorm.__members__)}")
    chosen = PROTOCOLS[protocol]
    ks, ap_ks = (chosen.ks, chosen.ap_ks) if cutoffs is None else (_cutoffs(cutoffs),) * 2
    ws = Workspace.resolve(workspace)
    if per_query is not None:
        check_per_query_output(per_query, force)  # before the evaluation, not after it
    if moments is not None:
        from amr.moments import evaluate_moments

        paths = ws.evaluated(checkpoints or [], [], caches or [], zero_shot, bm25=False)
        emit(evaluate_moments(moments, *paths, zero_shot=zero_shot, audio_weights=audio_weights, device=resolve_device(device.value)))
        return
    if submission_queries is not None:
        if submission is None:
            usage("--submission-queries", "needs --submission FILE to write to")
        chosen_checkpoints, chosen_caches = ws.evaluated(checkpoints or [], index_paths or [], caches or [], zero_shot, bm25=False)
        paths = (chosen_checkpoints, index_paths or [], chosen_caches)
        emit(
            predict_submission(
                submission, submission_queries, *paths, split.value, zero_shot=zero_shot, device=resolve_device(device.value)
            )
        )
        return
    if protocol == "dcase2025" and relevance is None:
        usage("--protocol", "dcase2025 evaluates the relevance of its metadata_eval.csv: give --relevance FILE")
    chosen_checkpoints, chosen_caches = ws.evaluated(checkpoints or [], index_paths or [], caches or [], zero_shot, bm25)
    report = evaluate_models(
        chosen_checkpoints,
        index_paths or [],
        chosen_caches,
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
        emit(summary)


def _cutoffs(text: str) -> tuple[int, ...]:
    """``--k 1,5,10,16`` as cut-offs: positive integers, comma-separated."""
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        ks = ()
    if not ks or ks[0] < 1:
        usage("--k", f"{text!r}: positive integers separated by commas, e.g. 1,5,10,16")
    return ks
