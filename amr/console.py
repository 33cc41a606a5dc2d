"""The one stderr console and progress-bar factory every stage uses.

stdout carries results only (jsonl, tsv, tables the user asked for); progress
bars, warnings and messages go here, to stderr.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)


def progress(
    description: str = "{task.description}",
    *columns: ProgressColumn,
    show: bool = True,
    transient: bool = False,
) -> Progress:
    """A progress bar on stderr: the description, a bar, done/total, elapsed
    time, then ``columns`` (e.g. a TextColumn of task fields). ``show=False``
    gives a disabled bar with the same interface."""
    return Progress(
        TextColumn(description, markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *columns,
        console=console,
        disable=not show,
        transient=transient,
    )


def status(message: str, show: bool = True) -> AbstractContextManager[object]:
    """A spinner with a message on stderr while a long step runs (nothing when not ``show``)."""
    return console.status(escape(message)) if show else nullcontext()


def warn(message: str) -> None:
    """One warning line on stderr."""
    console.print(f"[yellow]warning:[/] {escape(message)}")


def error(message: str) -> None:
    """One error line on stderr (what the CLI prints before exiting non-zero)."""
    console.print(f"[bold red]error:[/] {escape(message)}")
