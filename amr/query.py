"""`amr query`: rank an index's items for text queries or example clips.

The index and what encodes queries for it are loaded once (a `Searcher`);
queries stream through `run_queries` in batches (one encoder call and one
search per batch) and come out as `Result` records in input order, or as a
`Failure` for a query that could not be run. Reading queries and writing
results (jsonl, tsv, table) is amr.results.

Text queries are encoded by the index's query encoder (amr.model.query_encoder:
onnxruntime, no torch), else by the model that built the index; an example
clip needs that model (torch), loaded on the first one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from amr.config import MAX_EXAMPLE_SECONDS
from amr.errors import AmrError
from amr.index.reader import Index, open_index
from amr.index.search import explain, machine_tags, search
from amr.model.query_encoder import QueryEncoder, open_query_encoder
from amr.model.retrievers import Retriever, load_retriever
from amr.model.text_input import normalize_text
from amr.results import QUERY_BATCH, Failure, QueryInput, Result

if TYPE_CHECKING:
    import torch

    from amr.audio.encoder import ClipEmbedder
    from amr.moments import MomentRefiner

# A clip asks for items that sound alike: ranked by the cosine of audio-tower
# vectors, whatever the items' metadata adds to their fused vectors.
EXAMPLE_PART = "audio"


class TextQueries(Protocol):
    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """(q, dim) float32 query vectors."""
        ...


@dataclass
class Searcher:
    """An index and what encodes queries for it, loaded once.

    ``retriever`` is the model that built the index (checked by its
    fingerprint); None until a query needs it: a query by example, or a text
    query of an index without a query encoder. ``query_encoder`` encodes the
    text queries when given."""

    index: Index
    retriever: Retriever | None = None
    audio_weights: Path | None = None  # local file of the audio model, for queries by example
    max_example_seconds: float = MAX_EXAMPLE_SECONDS  # longer example clips are refused (a failed query)
    clip_embedder: ClipEmbedder | None = field(default=None, repr=False)  # None: loaded when first needed
    refiner: MomentRefiner | None = field(default=None, repr=False)  # None: loaded when first needed
    query_encoder: QueryEncoder | None = None
    device: torch.device | str = "cpu"
    threads: int = 1  # of the torch model, when it is loaded

    def __post_init__(self) -> None:
        if self.retriever is not None:
            self.index.header.require_retriever(self.retriever, self.index.path)

    def model(self) -> Retriever:
        """The model that built the index, loaded (torch) on first use."""
        if self.retriever is None:
            import torch

            torch.set_num_threads(self.threads)
            self.retriever = load_retriever(self.index.header.retriever, self.device)
            self.index.header.require_retriever(self.retriever, self.index.path)
        return self.retriever

    def text_encoder(self) -> TextQueries:
        return self.query_encoder if self.query_encoder is not None else self.model()

    def embedder(self) -> ClipEmbedder:
        """The audio model of the index's caches, loaded on the first query by example."""
        if self.clip_embedder is None:
            from amr.audio.encoder import ClipEmbedder

            self.clip_embedder = ClipEmbedder.for_index(self.index, self.audio_weights, self.max_example_seconds, self.device)
        return self.clip_embedder

    def moments(self) -> MomentRefiner:
        """Refined spans of long recordings (amr.moments), loaded on the first query that asks."""
        if self.refiner is None:
            from amr.moments import MomentRefiner

            self.refiner = MomentRefiner(self.model(), self.index.header.sources, self.embedder().encoder)
        return self.refiner


def open_searcher(
    index_path: Path,
    checkpoint: Path | None = None,
    audio_weights: Path | None = None,
    device: torch.device | str = "cpu",
    threads: int = 1,
    max_example_seconds: float = MAX_EXAMPLE_SECONDS,
) -> Searcher:
    """The index and its query encoder, with the model it records loaded when
    a query needs it. A checkpoint given (which must be the one the index was
    built with) or a device other than the CPU encodes text queries with the
    torch model, at once loaded on ``device``. Example clips longer than
    ``max_example_seconds`` are refused."""
    index = open_index(index_path)
    if checkpoint is not None or str(device) != "cpu":
        import torch

        from amr.model.checkpoint import checkpoint_spec

        torch.set_num_threads(threads)
        spec = checkpoint_spec(checkpoint) if checkpoint is not None else index.header.retriever
        retriever = load_retriever(spec, device)
        return Searcher(index, retriever, audio_weights, max_example_seconds, device=device, threads=threads)
    encoder = open_query_encoder(index, threads)
    searcher = Searcher(index, None, audio_weights, max_example_seconds, query_encoder=encoder, device=device, threads=threads)
    if encoder is None:
        searcher.model()  # a missing or mismatched model is an error before any query
    return searcher


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
        vectors[texts] = searcher.text_encoder().encode_queries([batch[i].text for i in texts])
    if sequences:
        clips = list(sequences.values())
        vectors[list(sequences)] = searcher.model().encode_examples([c[0] for c in clips], np.stack([c[1] for c in clips]))
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
            span = None
            if moments and part is None:
                segment = (float(index.spans[row, 0]), float(index.spans[row, 1]))
                span = searcher.moments().span(index.item_of_row(row).id, vectors[i], segment)
            yield ranked_result(index, q, rank, row, score, vectors[i], part, explain_scores=explain_scores, span=span)


def ranked_result(
    index: Index,
    query: QueryInput | None,
    rank: int,
    row: int,
    score: float,
    vector: np.ndarray,
    part: str | None = None,
    *,
    explain_scores: bool = False,
    span: tuple[float, float] | None = None,
) -> Result:
    """Result ``rank`` of ``query`` (None: a search without one, as the page's "sounds like"): row
    ``row`` of the index, scored ``score`` by the query's ``vector`` (within ``part``), over its
    segment or ``span``, rounded as every result is: scores and their parts to 6 decimals, times
    as `shown_span`."""
    item = index.item_of_row(row)
    start, end = shown_span(*(span or index.spans[row]))
    return Result(
        query=query.text if query else "",
        query_id=query.id if query else "",
        rank=rank,
        score=round(score, 6),
        id=item.id,
        audio=item.audio,
        metadata=item.metadata,
        start=start,
        end=end,
        explain={k: round(v, 6) for k, v in explain(index, vector, row, part).items()} if explain_scores else None,
        tags=machine_tags(index, row) if explain_scores else None,
    )


def shown_span(start: float, end: float) -> tuple[float, float]:
    """A segment's times as results show them: seconds, to the millisecond."""
    return round(float(start), 3), round(float(end), 3)
