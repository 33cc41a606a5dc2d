"""The one stderr console and progress-bar factory every stage uses.

stdout carries results only (jsonl, tsv, tables the user asked for); progress
bars, warnings and messages go here, to stderr.

rich is imported at the first message, not with this module (the CLI and
`amr query --server` import it and often print nothing): ``console`` is made
when first asked for.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn


@cache
def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def __getattr__(name: str) -> object:
    if name == "console":  # `from amr.console import console`: the one stderr console
        return _stderr()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def progress(
    description: str = "{task.description}",
    *columns: ProgressColumn,
    show: bool = True,
    transient: bool = False,
) -> Progress:
    """A progress bar on stderr: the description, a bar, done/total, elapsed
    time, then ``columns`` (e.g. a TextColumn of task fields). ``show=False``
    gives a disabled bar with the same interface."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(description, markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *columns,
        console=_stderr(),
        disable=not show,
        transient=transient,
    )


def status(message: str, show: bool = True) -> AbstractContextManager[object]:
    """A spinner with a message on stderr while a long step runs (nothing when not ``show``)."""
    return _stderr().status(_escape(message)) if show else nullcontext()


def warn(message: str) -> None:
    """One warning line on stderr."""
    _stderr().print(f"[yellow]warning:[/] {_escape(message)}")


def error(message: str) -> None:
    """One error line on stderr (what the CLI prints before exiting non-zero)."""
    _stderr().print(f"[bold red]error:[/] {_escape(message)}")
