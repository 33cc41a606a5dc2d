"""`amr query` and `amr serve`: search an index, once from the shell or behind a web page.

Both set the thread counts before numpy loads (`limit_threads`), and a text
query on the CPU never imports torch (amr.devices.query_device).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from amr.cli.options import DeviceOption, IndexOption, MaxQuerySecondsOption, WorkspaceOption, limit_threads
from amr.config import MAX_EXAMPLE_SECONDS, SERVE_HOST, SERVE_PORT, UPLOAD_LIMIT
from amr.devices import Device, query_device
from amr.errors import AmrError
from amr.results import SERVER_ENV, Format
from amr.workspace import Workspace


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
    index_path: IndexOption = None,
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
    limit_threads(threads)
    from amr.model.text_input import normalize_text
    from amr.results import gather_queries, print_outcomes

    if not queries and not audio:
        raise AmrError("no queries: give query texts, '-' to read them from stdin, or --audio FILE")
    wordless = next((q for q in queries or [] if q != "-" and not normalize_text(q)), None)
    if wordless is not None:
        raise typer.BadParameter(f"{wordless!r} has no words to search for", param_hint="QUERIES")
    inputs = gather_queries(queries or [], audio or [], sys.stdin.buffer)
    if server:
        from amr.server.client import Client

        client = Client(server)
        parts = client.parts if explain else None
        outcomes = client.run_queries(inputs, top, explain_scores=explain, exact=exact, all_segments=all_segments)
    else:
        path = index_path or Workspace.resolve(workspace).latest("index")
        from amr.query import open_searcher, run_queries

        searcher = open_searcher(path, checkpoint, audio_weights, query_device(device.value), threads, max_query_seconds)
        parts = [name for name, _ in searcher.index.header.parts] if explain else None
        outcomes = run_queries(searcher, inputs, top, explain_scores=explain, exact=exact, all_segments=all_segments, moments=moments)
    code = print_outcomes(outcomes, fmt, parts)
    if code:
        raise typer.Exit(code)


def serve(
    index_path: IndexOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; any but loopback lets other machines search and play the files.")
    ] = SERVE_HOST,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: a free one).")] = SERVE_PORT,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="Checkpoint to encode queries with (default: the index's).")
    ] = None,
    audio_weights: Annotated[
        Path | None, typer.Option(envvar="AMR_AUDIO_WEIGHTS", help="Local file of the audio model, for uploaded clips.")
    ] = None,
    upload_limit: Annotated[int, typer.Option(min=1, help="Largest clip accepted for query by example, in MiB.")] = UPLOAD_LIMIT >> 20,
    moments: Annotated[
        bool, typer.Option("--moments", help="Results in long recordings span the sound found, as amr query --moments.")
    ] = False,
    max_query_seconds: MaxQuerySecondsOption = MAX_EXAMPLE_SECONDS,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of the query encoder and of exact search.")] = 1,
    device: DeviceOption = Device.cpu,
    workspace: WorkspaceOption = None,
) -> None:
    """Serve a web page and a JSON API to search the index and listen to what it finds, until Ctrl-C.

    Listens on --host at --port (their defaults below); the API is
    described in amr/server/app.py and at /api/openapi.json. `amr query --server
    URL` sends queries to it."""
    limit_threads(threads)
    from amr.server.app import serve as serve_index

    path = index_path or Workspace.resolve(workspace).latest("index")
    serve_index(
        path,
        host,
        port,
        checkpoint=checkpoint,
        audio_weights=audio_weights,
        device=query_device(device.value),
        upload_limit=upload_limit << 20,
        moments=moments,
        max_query_seconds=max_query_seconds,
        threads=threads,
    )
