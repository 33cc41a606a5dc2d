"""What `amr query` reads and writes, importing nothing heavy: query inputs (arguments,
stdin lines), the result records, and their formats (jsonl, tsv, table).

Shared by the local search (amr.query), the server (amr.server.app) and the
client of a running server (amr.server.client), so all three print the same records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from enum import StrEnum
from itertools import count
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from rich.console import Console

SERVER_ENV = "AMR_SERVER"  # the `amr serve` that `amr query` sends its queries to (amr.server.client), when set
# Queries are encoded and searched this many at a time (amr.query), and sent so to a server (amr.server.client).
QUERY_BATCH = 64


class Format(StrEnum):
    jsonl = "jsonl"
    tsv = "tsv"
    table = "table"


# The records are NamedTuples, not dataclasses: the client of a running server
# (amr.launch) imports this module, and dataclasses' import (with inspect) is a
# tenth of that process's start-up.


class QueryInput(NamedTuple):
    """One query: a text, or (``example`` set) a clip to find similar clips to."""

    id: str
    text: str  # the query text; for an example, the file as given
    example: Path | None = None


class Result(NamedTuple):
    """One ranked item for one query; ``record()`` is its jsonl form."""

    query: str
    query_id: str
    rank: int
    score: float
    id: str
    audio: str
    metadata: dict[str, Any]
    start: float  # the matching segment of the clip, in seconds (the whole clip: 0 to its length)
    end: float
    explain: dict[str, float] | None = None  # part name → its share of the score
    tags: list[tuple[str, float]] | None = None  # the clip's machine tags, with --explain

    def record(self) -> dict[str, Any]:
        record = self._asdict()
        for optional in ("explain", "tags"):
            if record[optional] is None:
                del record[optional]
        return record


class Failure(NamedTuple):
    """A query that produced no results, and why."""

    query: str
    query_id: str
    error: str


# --- inputs -------------------------------------------------------------------------------


def gather_queries(args: Sequence[str], examples: Sequence[Path], stdin: IO[bytes]) -> Iterator[QueryInput | Failure]:
    """Queries in order: each argument (``-`` stands for stdin's lines), then
    each example clip, numbered from 1. A stdin line is a plain text,
    ``ID<TAB>TEXT``, or a JSON object with "text" and optionally "id" (an
    amr.items.Query line); blank lines are skipped. Stdin is read as bytes
    and each line decoded as UTF-8 on its own, so a line that is not (or holds
    a lone surrogate escape) fails alone and the others are answered. Read
    lazily, so a pipe streams."""
    number = count(1)
    for arg in args:
        if arg != "-":
            yield _checked_text(QueryInput(str(next(number)), arg))
            continue
        for raw in stdin:
            if raw.strip():
                yield _parse_line(raw.rstrip(b"\r\n"), str(next(number)))
    for path in examples:
        yield QueryInput(str(next(number)), str(path), example=Path(path))


def _parse_line(raw: bytes, number: str) -> QueryInput | Failure:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        shown = raw.decode("utf-8", errors="replace")
        return Failure(shown, number, f"line {number} is not UTF-8 ({e.reason} at byte {e.start})")
    if line.lstrip().startswith("{"):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return Failure(line, number, f"not valid JSON ({e})")
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            return Failure(line, number, 'a JSON query needs a "text" string')
        return _checked_text(QueryInput(str(obj.get("id", number)), obj["text"]))
    if "\t" in line:
        query_id, text = line.split("\t", 1)
        return QueryInput(query_id, text)
    return QueryInput(number, line)


def _checked_text(query: QueryInput) -> QueryInput | Failure:
    """A query whose id and text can be written as UTF-8 (a JSON "\\ud800" escape cannot)."""
    for value in (query.id, query.text):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            shown = query.text.encode("utf-8", errors="backslashreplace").decode("utf-8")
            return Failure(
                shown,
                query.id.encode("utf-8", errors="backslashreplace").decode("utf-8"),
                "holds a lone surrogate (an unpaired \\ud800-\\udfff escape), not text",
            )
    return query


# --- output -------------------------------------------------------------------------------


def default_format(stdout: IO[str]) -> Format:
    """A table for a person at a terminal, jsonl for a pipe."""
    return Format.table if stdout.isatty() else Format.jsonl


class JsonlWriter:
    def __init__(self, out: IO[str]):
        self.out = out

    def write(self, result: Result) -> None:
        self.out.write(json.dumps(result.record(), ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.out.flush()


class TsvWriter:
    """A header, then one line per result; metadata and tags as JSON; tabs,
    newlines and backslashes in fields escaped as \\t, \\n, \\\\. New
    columns are added at the end, so scripts reading by position keep working."""

    def __init__(self, out: IO[str], parts: Sequence[str] | None):
        self.out, self.parts = out, parts
        columns = ["query_id", "query", "rank", "score", "id", "audio", "metadata"]
        if parts is not None:
            columns += [f"explain_{name}" for name in parts] + ["tags"]
        self._line(columns + ["start", "end"])

    def write(self, r: Result) -> None:
        fields = [r.query_id, r.query, str(r.rank), f"{r.score:.6f}", r.id, r.audio, _json(r.metadata)]
        if self.parts is not None:
            fields += [f"{(r.explain or {}).get(name, 0.0):.6f}" for name in self.parts] + [_json(r.tags)]
        self._line(fields + [f"{r.start:.3f}", f"{r.end:.3f}"])

    def _line(self, fields: list[str]) -> None:
        self.out.write("\t".join(_escape(f) for f in fields) + "\n")

    def close(self) -> None:
        self.out.flush()


class TableWriter:
    """One rich table per query, printed when the query's results are complete."""

    def __init__(self, console: Console):
        self.console = console
        self.rows: list[Result] = []

    def write(self, result: Result) -> None:
        if self.rows and self.rows[-1].query_id != result.query_id:
            self._flush()
        self.rows.append(result)

    def close(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        from rich.table import Table

        first = self.rows[0]
        table = Table(title=f"[{first.query_id}] {first.query}", title_justify="left")
        for column in ("rank", "score", "id", "audio", "time", "metadata"):
            table.add_column(column, justify="right" if column in ("rank", "score", "time") else "left", overflow="fold")
        parts = list(first.explain or {})
        for name in parts:
            table.add_column(name, justify="right")
        if first.tags is not None:
            table.add_column("machine tags")
        for r in self.rows:
            cells = [str(r.rank), f"{r.score:.3f}", r.id, r.audio, f"{_clock(r.start)}–{_clock(r.end)}", _compact(r.metadata)]
            cells += [f"{(r.explain or {})[name]:+.3f}" for name in parts]
            if r.tags is not None:
                cells.append(", ".join(f"{name} {p:.2f}" for name, p in r.tags))
            table.add_row(*cells)
        self.console.print(table)
        self.rows = []


def make_writer(fmt: Format, out: IO[str], parts: Sequence[str] | None) -> JsonlWriter | TsvWriter | TableWriter:
    """``parts`` (the index's) when explaining, else None."""
    if fmt is Format.jsonl:
        return JsonlWriter(out)
    if fmt is Format.tsv:
        return TsvWriter(out, parts)
    from rich.console import Console

    # at a terminal its width; elsewhere (a file, a pager) room for long paths rather than 80 columns
    return TableWriter(Console(file=out, highlight=False, width=None if out.isatty() else 200))


def print_outcomes(outcomes: Iterable[Result | Failure], fmt: Format | None, parts: Sequence[str] | None) -> int:
    """Write each result to stdout (``fmt``, default by the terminal) and each
    failed query as one line on stderr; the exit code `amr query` ends with: 0,
    3 when some queries failed, 141 when the reader closed the pipe (`| head`)."""
    import os
    import sys

    from amr.console import error

    writer = make_writer(fmt or default_format(sys.stdout), sys.stdout, parts)
    failed = 0
    try:
        for outcome in outcomes:
            if isinstance(outcome, Failure):
                failed += 1
                error(f"query {outcome.query_id} ({outcome.query!r}): {outcome.error}")
            else:
                writer.write(outcome)
        writer.close()
    except BrokenPipeError:  # stop quietly, as a killed pipe writer would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 3 if failed else 0


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _escape(field: str) -> str:
    return field.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _clock(seconds: float) -> str:
    """m:ss.s (h:mm:ss past an hour)."""
    minutes, rest = divmod(seconds, 60)
    if minutes >= 60:
        hours, minutes = divmod(int(minutes), 60)
        return f"{hours}:{minutes:02d}:{rest:04.1f}"
    return f"{int(minutes)}:{rest:04.1f}"


def _compact(metadata: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {' '.join(v) if isinstance(v, list) else v}" for k, v in metadata.items())
