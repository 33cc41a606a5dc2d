"""`amr query`: rank an index's items for text queries or example clips.

The index and its retriever are loaded once (a `Searcher`); queries stream
through `run_queries` in batches (one encoder call and one search per batch)
and come out as `Result` records in input order, or as a `Failure` for a
query that could not be run. Writing them (jsonl, tsv, table) is separate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from itertools import count, islice
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from amr.checkpoint import checkpoint_spec
from amr.encoder import ClipEmbedder
from amr.errors import AmrError
from amr.index import Index, explain, machine_tags, open_index, search
from amr.moments import MomentRefiner
from amr.retrievers import Retriever, load_retriever
from amr.text import normalize_text

QUERY_BATCH = 64
# A clip asks for items that sound alike: ranked by the cosine of audio-tower
# vectors, whatever the items' metadata adds to their fused vectors.
EXAMPLE_PART = "audio"
# The longest clip a query by example may be (seconds of decoded audio, whatever the file's size: a
# FLAC of hours of silence is small). Its embedding is a few MB and a second or two of CPU time.
MAX_EXAMPLE_SECONDS = 300.0


class Format(StrEnum):
    jsonl = "jsonl"
    tsv = "tsv"
    table = "table"


@dataclass(frozen=True)
class QueryInput:
    """One query: a text, or (``example`` set) a clip to find similar clips to."""

    id: str
    text: str  # the query text; for an example, the file as given
    example: Path | None = None


@dataclass
class Result:
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
        record = asdict(self)
        for optional in ("explain", "tags"):
            if record[optional] is None:
                del record[optional]
        return record


@dataclass
class Failure:
    """A query that produced no results, and why."""

    query: str
    query_id: str
    error: str


@dataclass
class Searcher:
    """An index and the retriever that encodes queries for it, loaded once."""

    index: Index
    retriever: Retriever
    audio_weights: Path | None = None  # local file of the audio model, for queries by example
    max_example_seconds: float = MAX_EXAMPLE_SECONDS  # longer example clips are refused (a failed query)
    clip_embedder: ClipEmbedder | None = field(default=None, repr=False)  # None: loaded when first needed
    refiner: MomentRefiner | None = field(default=None, repr=False)  # None: loaded when first needed

    def __post_init__(self) -> None:
        self.index.header.require_retriever(self.retriever, self.index.path)

    def embedder(self) -> ClipEmbedder:
        """The audio model of the index's caches, loaded on the first query by example."""
        if self.clip_embedder is None:
            self.clip_embedder = ClipEmbedder.for_index(self.index, self.audio_weights, self.max_example_seconds)
        return self.clip_embedder

    def moments(self) -> MomentRefiner:
        """Refined spans of long recordings (amr.moments), loaded on the first query that asks."""
        if self.refiner is None:
            self.refiner = MomentRefiner(self.retriever, self.index.header.sources, self.embedder().encoder)
        return self.refiner


def open_searcher(
    index_path: Path,
    checkpoint: Path | None = None,
    audio_weights: Path | None = None,
    device: torch.device | str = "cpu",
    max_example_seconds: float = MAX_EXAMPLE_SECONDS,
) -> Searcher:
    """The index and the retriever it records, or the checkpoint given (which
    must be the one the index was built with), its models on ``device``;
    example clips longer than ``max_example_seconds`` are refused."""
    index = open_index(index_path)
    spec = checkpoint_spec(checkpoint) if checkpoint is not None else index.header.retriever
    return Searcher(index, load_retriever(spec, device), audio_weights, max_example_seconds)


def run_queries(
    searcher: Searcher,
    queries: Iterable[QueryInput | Failure],
    top: int = 10,
    *,
    explain_scores: bool = False,
    exact: bool = False,
    all_segments: bool = False,
    moments: bool = False,
    batch_size: int = QUERY_BATCH,
) -> Iterator[Result | Failure]:
    """The ``top`` results of each query, best first, queries in input order.

    Text queries rank by the retriever's score; a clip (query by example)
    ranks by the cosine between its and each item's audio-tower vector.
    A long recording indexed as segments appears once, by its best segment,
    unless ``all_segments``; with ``moments`` a text query's result in a long
    recording spans the refined moment around its best segment
    (`amr.moments.MomentRefiner`) instead of the segment. Queries are encoded and searched ``batch_size`` at
    a time. A Failure in the input (an unreadable line) passes through; a
    query that cannot be run (no words, an undecodable clip) becomes one."""
    stream = iter(queries)
    while batch := list(islice(stream, batch_size)):
        yield from _run_batch(searcher, batch, top, explain_scores, exact, all_segments, moments)


def _run_batch(
    searcher: Searcher, batch: list[QueryInput | Failure], top: int, explain_scores: bool, exact: bool, all_segments: bool, moments: bool
) -> Iterator[Result | Failure]:
    failures: dict[int, Failure] = {}
    sequences: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # query → (frames, tag probabilities)
    for i, q in enumerate(batch):
        if isinstance(q, Failure):
            failures[i] = q
        elif q.example is not None:
            embedder = searcher.embedder()  # a model that cannot be loaded fails the run, not the query
            try:
                sequences[i] = embedder.embed(q.example)
            except AmrError as e:
                failures[i] = Failure(q.text, q.id, str(e))
        elif not normalize_text(q.text):
            failures[i] = Failure(q.text, q.id, "the query has no words")
    texts = [i for i in range(len(batch)) if i not in failures and i not in sequences]
    index = searcher.index
    vectors = np.zeros((len(batch), index.header.dim), np.float32)
    if texts:
        vectors[texts] = searcher.retriever.encode_queries([batch[i].text for i in texts])
    if sequences:
        clips = list(sequences.values())
        vectors[list(sequences)] = searcher.retriever.encode_examples([c[0] for c in clips], np.stack([c[1] for c in clips]))
    ranked: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for members, part in ((texts, None), (list(sequences), EXAMPLE_PART)):
        if members:
            rows, scores = search(index, vectors[members], top, exact, part, per_item=not all_segments)
            ranked.update(zip(members, zip(rows, scores)))
    for i, q in enumerate(batch):
        if i in failures:
            yield failures[i]
            continue
        part = EXAMPLE_PART if i in sequences else None
        found = [(int(r), float(s)) for r, s in zip(*ranked[i]) if r >= 0]
        for rank, (row, score) in enumerate(found, start=1):
            item = index.item_of_row(row)
            start, end = (float(t) for t in index.spans[row])
            refined = searcher.moments().span(item.id, vectors[i], (start, end)) if moments and part is None else None
            start, end = (round(t, 3) for t in (refined or (start, end)))
            yield Result(
                query=q.text,
                query_id=q.id,
                rank=rank,
                score=round(score, 6),
                id=item.id,
                audio=item.audio,
                metadata=item.metadata,
                start=start,
                end=end,
                explain={k: round(v, 6) for k, v in explain(index, vectors[i], row, part).items()} if explain_scores else None,
                tags=machine_tags(index, row) if explain_scores else None,
            )


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
    # at a terminal its width; elsewhere (a file, a pager) room for long paths rather than 80 columns
    return TableWriter(Console(file=out, highlight=False, width=None if out.isatty() else 200))


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
