"""The `amr` command: a thin typer layer over the stages of the Python API.

Each command parses its options, resolves the workspace's defaults (its
latest cache, checkpoint or index: amr.workspace), makes one call into the
Python API and prints its result. Results go to stdout in a parseable form;
progress and messages go to stderr. An AmrError becomes one line on stderr
and exit code 1; a usage error (an unknown option, a value out of range or
not among the choices) exit code 2. The choices and defaults ``--help``
shows are the library's own (amr.cli.options says where each lives).

The commands live by stage: amr.cli.prepare (extract, train, index),
amr.cli.search (query, serve), amr.cli.categorize, amr.cli.evaluate; the
options they share in amr.cli.options. Importing this package imports no
numpy, torch or FAISS: each command imports what it needs when it runs.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.exceptions import TyperException

from amr import __version__
from amr.cli.categorize import categorize
from amr.cli.evaluate import evaluate
from amr.cli.prepare import extract, index, train
from amr.cli.search import query, serve
from amr.console import error
from amr.errors import AmrError, Interrupted

SUMMARY = "Language-based audio retrieval with metadata: extract, train, index, query, serve, evaluate."
app = typer.Typer(name="amr", help=SUMMARY, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def command(function: Callable[..., Any]) -> None:
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


for _command in (extract, train, index, query, categorize, serve, evaluate):  # the order `amr --help` lists them in
    command(_command)


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


@app.callback(help=SUMMARY)
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print amr's version and exit.")] = False,
) -> None:
    pass
