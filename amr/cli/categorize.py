"""`amr categorize`: UCS categories for the items of a cache, and the renames they suggest."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from amr.cli.options import WorkspaceOption
from amr.config import CategorizeFormat, CategorizeSource
from amr.console import error
from amr.ucs import UCS_ENTRIES
from amr.workspace import Workspace


def categorize(
    cache: Annotated[Path | None, typer.Argument(help="Embedding cache (default: the workspace's latest).", show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, max=UCS_ENTRIES, help="CatIDs per item.")] = 3,
    by: Annotated[CategorizeSource, typer.Option(help="Score from the audio and metadata fused, or one of them.")] = CategorizeSource.fused,
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

    from amr.categorize import apply_renames, categorize, plan_renames, undo_renames, write_results

    if undo is not None:
        print(json.dumps({"undone": undo_renames(undo), "undo_file": str(undo)}))
        return
    if (rename_plan or apply) and not (creator and source):
        error("--rename-plan and --apply need --creator and --source (the CreatorID and SourceID blocks)")
        raise typer.Exit(2)
    torch.set_num_threads(threads)
    path = cache or Workspace.resolve(workspace).latest("cache")
    results = categorize(path, top, by)
    if rename_plan or apply:
        results = plan_renames(results, creator or "", source or "")
    chosen = fmt or (CategorizeFormat.table if sys.stdout.isatty() else CategorizeFormat.jsonl)
    written = write_results(results, chosen, sys.stdout, top)
    if apply:
        target = undo_file or Workspace.resolve(workspace).root / "renames" / f"undo-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        renamed = apply_renames([(r.audio, r.rename) for r in written if r.rename], target)
        print(f"renamed {renamed} files; undo with: amr categorize --undo {target}", file=sys.stderr)
