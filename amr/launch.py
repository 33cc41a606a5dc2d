"""The `amr` command's entry point.

`amr query --server URL` (or with ``$AMR_SERVER`` set) is a client of a
running `amr serve`: it runs here, on the standard library and amr's light
modules alone (amr.server.client, amr.results), so a shell loop of queries pays
Python's start-up and one HTTP request, not the 0.15 s of importing typer and
the CLI. Only the options a client needs are read here (query texts, ``-``,
``--audio``, ``--top``, ``--format``, ``--explain``, ``--exact``,
``--all-segments``, ``--server``); any other argument, a value the CLI would
refuse, or no server goes to `amr.cli`, which parses everything and answers
with the same records and exit codes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

from amr.results import SERVER_ENV


class ClientQuery(NamedTuple):
    """What `amr query --server` was asked to do (a NamedTuple: importing dataclasses would cost this
    process a tenth of its start-up)."""

    server: str
    texts: list[str]
    audio: list[Path]
    top: int = 10
    fmt: str | None = None
    explain: bool = False
    exact: bool = False
    all_segments: bool = False


_FLAGS = {"--explain": "explain", "--exact": "exact", "--all-segments": "all_segments"}
_VALUES = {"--top": "top", "-k": "top", "--format": "fmt", "-f": "fmt", "--server": "server", "--audio": "audio", "-a": "audio"}


def client_query(args: list[str], environ: dict[str, str] | os._Environ[str]) -> ClientQuery | None:
    """``args`` (after ``amr``) as a client query, or None when they are not
    one this entry point can run by itself (then amr.cli takes them)."""
    from amr.model.text_input import normalize_text
    from amr.results import Format

    if not args or args[0] != "query":
        return None
    values: dict[str, list[str]] = {}
    flags: set[str] = set()
    texts: list[str] = []
    rest = iter(args[1:])
    for arg in rest:
        name, has_value, inline = arg.partition("=") if arg.startswith("--") else (arg, False, "")
        if name in _FLAGS and not has_value:
            flags.add(_FLAGS[name])
        elif name in _VALUES:
            value = inline if has_value else next(rest, None)
            if value is None:
                return None
            values.setdefault(_VALUES[name], []).append(value)
        elif arg == "-" or not arg.startswith("-"):
            texts.append(arg)
        else:
            return None  # --help, an option of the local search, `--`, a typo: the CLI's to answer
    servers = values.get("server") or ([environ[SERVER_ENV]] if environ.get(SERVER_ENV) else [])
    tops, formats = values.get("top", ["10"]), values.get("fmt", [])
    # an empty --server is no server, as the CLI takes it
    if len(servers) != 1 or not servers[0] or len(tops) != 1 or len(formats) > 1 or not (texts or values.get("audio")):
        return None
    if not tops[0].isdigit() or int(tops[0]) < 1 or (formats and formats[0] not in {f.value for f in Format}):
        return None
    if any(t != "-" and not normalize_text(t) for t in texts):
        return None  # a query without words: the CLI's usage error
    return ClientQuery(
        server=servers[0],
        texts=texts,
        audio=[Path(a) for a in values.get("audio", [])],
        top=int(tops[0]),
        fmt=formats[0] if formats else None,
        **{name: True for name in flags},
    )


def run_client(plan: ClientQuery) -> int:
    """Send the queries to the server and print its answers; the exit code."""
    from amr.errors import AmrError
    from amr.results import Format, gather_queries, print_outcomes
    from amr.server.client import Client

    try:
        client = Client(plan.server)
        inputs = gather_queries(plan.texts, plan.audio, sys.stdin.buffer)
        outcomes = client.run_queries(inputs, plan.top, explain_scores=plan.explain, exact=plan.exact, all_segments=plan.all_segments)
        return print_outcomes(outcomes, Format(plan.fmt) if plan.fmt else None, client.parts if plan.explain else None)
    except AmrError as e:
        from amr.console import error

        error(str(e))
        return 1
    except KeyboardInterrupt:
        from amr.console import error

        error("interrupted")
        return 130


def main() -> None:
    """`amr`: a client query runs here; everything else is amr.cli's."""
    plan = client_query(sys.argv[1:], os.environ)
    if plan is None:
        from amr.cli import main as cli

        cli()
        return
    sys.exit(run_client(plan))
