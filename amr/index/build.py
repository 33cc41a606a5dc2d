"""`amr index`: encode the items of embedding caches with a retriever into an index file.

A function of its inputs: the caches, the retriever (a checkpoint or the
zero-shot model) and the options. Items are encoded and written in batches,
so memory does not grow with the collection. ``append`` adds to an existing
index without re-encoding or reading its vectors; an id indexed again
replaces its old rows (marked dead, and compacted away at once in an index
of up to TIDY_LIMIT rows, else once they are more than COMPACT_DEAD of the rows). Two runs on one index never interleave: the
second stops at once, naming the first.

The approximate index follows the index's size (amr.index.kinds): none up to
EXACT_LIMIT rows, ivf-sq8 (in RAM) up to LARGE_LIMIT, ivf-pq (lists on disk,
vectors stored as float16) above. An append adds its rows to the approximate
index there is; it is trained again when the index has grown past twice the
rows it was trained on, or changes kind.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from amr.audio.audioset import top_classes
from amr.cache import EmbeddingCache, open_caches
from amr.console import console, progress, status, warn
from amr.errors import AmrError
from amr.files import exclusive, refuse_overwrite
from amr.hdf5 import has_format
from amr.index.ann import extend_ann
from amr.index.format import (
    FORMAT,
    TAGS_STORED,
    AnnInfo,
    IndexHeader,
    StoreState,
    ann_path,
    commit,
    query_folder,
    sidecar_path,
    unrecorded_removed_on_failure,
)
from amr.index.kinds import EXACT_LIMIT, AnnKind
from amr.index.reader import Index
from amr.index.store import Rows, Store, StoreWriter, compact
from amr.index.tune import build_ann
from amr.items import changed_on_disk
from amr.model.checkpoint import checkpoint_spec
from amr.model.retrievers import Retriever, describe

ENCODE_BATCH = 512  # items per Retriever.encode_items call
# Dead (replaced) rows are compacted away when they are more than this share
# of the rows: the columns and approximate index are rewritten without them.
COMPACT_DEAD = 0.25
# An index of up to this many rows is compacted at every replacement (a copy
# of that many rows takes well under a second), so small indexes never hold dead rows.
TIDY_LIMIT = 50_000


@dataclass
class IndexReport:
    path: Path
    items: int  # in the index now (live)
    rows: int  # segments in the index now (live)
    added: int  # items encoded by this run (new ids and replaced ones)
    replaced: int  # ids that were in the index and were encoded again
    ann: AnnInfo | None
    seconds: float


def retriever_spec(checkpoint: Path | None, append_to: Path | None, latest_checkpoint: Callable[[], Path]) -> dict[str, Any]:
    """The recorded spec of the model that indexes when it is not the zero-shot
    one (`amr.model.zeroshot.zero_shot_retriever`, built from its config): the
    checkpoint given, else the one the index appended to was built with, else
    the latest."""
    if checkpoint is not None:
        return checkpoint_spec(checkpoint)
    if append_to is not None:
        return Index(append_to).header.retriever
    return checkpoint_spec(latest_checkpoint())


def build_index(
    retriever: Retriever,
    caches: Sequence[Path],
    output: Path,
    *,
    splits: Sequence[str] | None = None,
    append: bool = False,
    ann: bool | None = None,
    ann_kind: AnnKind | str | None = None,
    auto_tags: int | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> IndexReport:
    """Encode every item of ``caches`` (in ``splits``, all when None) and write the index.

    ``append`` adds to the index at ``output`` without re-encoding what it
    holds; an id encoded again replaces the old one. ``ann`` builds the
    approximate index: True, False, or None for "when the index holds more
    than EXACT_LIMIT rows" (an appended index keeps its choice); ``ann_kind``
    ("ivf-sq8", "ivf-pq") overrides the kind its size picks (an appended
    index keeps an ivf-pq one). ``auto_tags`` K gives items without metadata
    their clip's K most probable AudioSet classes as metadata (default 0; an
    appended index keeps its K). An existing file at ``output`` that is not an
    index (an embedding cache, say) is refused unless ``force``. A run that
    fails leaves the index as it was and removes what it wrote."""
    started = time.perf_counter()
    output = Path(output)
    try:
        asked = AnnKind(ann_kind) if ann_kind is not None else None
    except ValueError:
        raise AmrError(f"unknown approximate index kind {ann_kind!r}; expected one of {', '.join(AnnKind)}") from None
    if ann is False and asked is not None:
        raise AmrError("--no-ann and --ann-kind exclude each other")
    refuse_overwrite(output, "an amr index", lambda path: has_format(path, FORMAT), force or append)
    with exclusive(output, "index"), unrecorded_removed_on_failure(output):
        opened = open_caches(caches)
        try:
            header = IndexHeader.of(retriever, opened[0].info, [str(c.path.resolve()) for c in opened])
            previous = _previous(output, header, retriever, auto_tags) if append else None
            header = replace(header, auto_tags=previous.header.auto_tags if previous is not None else auto_tags or 0)
            if previous is not None:
                header = replace(header, sources=previous.header.sources + [s for s in header.sources if s not in previous.header.sources])
            selected = [(c, [i for i, item in enumerate(c.items) if splits is None or item.split in splits]) for c in opened]
            if sum(len(rows) for _, rows in selected) == 0:
                raise AmrError(f"{', '.join(str(c) for c in caches)}: no items in split(s) {', '.join(splits or ())}")
            _warn_changed_files(selected)
            writer = StoreWriter(output, header, previous.state, previous.dead) if previous is not None else StoreWriter(output, header)
            before = writer.state
            _encode(retriever, selected, header, writer, show_progress)
        finally:
            for cache in opened:
                cache.close()
        state, dead = writer.finish()
        header = replace(header, query_encoder=_query_encoder(output, retriever, previous, show_progress))
        old_ann = previous.ann_info if previous is not None else None
        kind = _kind(ann, asked, old_ann, state.rows - state.dead_rows)
        state, dead, info = _finish(output, header, state, dead, kind, old_ann, before.rows, show_progress)
    added = writer.state.items - before.items - writer.repeated
    live_items, live_rows = state.items - state.dead_items, state.rows - state.dead_rows
    return IndexReport(output, live_items, live_rows, added, writer.replaced, info, time.perf_counter() - started)


def add_ann(path: Path, kind: AnnKind | str | None = None, show_progress: bool = True) -> AnnInfo | None:
    """(Re)build the approximate index of the index at ``path`` from its
    stored vectors (``kind``: by its size when None) and record it."""
    path = Path(path)
    with exclusive(path, "index"), unrecorded_removed_on_failure(path):
        index = Index(path)
        kind = AnnKind(kind) if kind is not None else AnnKind.fitting(index.live_rows)
        _, _, info = _finish(path, index.header, index.state, index.dead, kind, None, index.state.rows, show_progress)
    return info


def refresh_query_encoder(path: Path, retriever: Retriever, show_progress: bool = True) -> dict[str, Any]:
    """Write the query encoder of the index at ``path`` anew from ``retriever``
    (the model that built it) and record it: how an index of an older amr gets one."""
    path = Path(path)
    with exclusive(path, "index"):
        index = Index(path)
        index.header.require_retriever(retriever, path)
        header = replace(index.header, query_encoder=_query_encoder(path, retriever, None, show_progress))
        commit(path, header, index.state, index.dead, index.ann_info)
    return header.query_encoder


# --- internals ----------------------------------------------------------------------------


def _query_encoder(path: Path, retriever: Retriever, previous: Index | None, show: bool) -> dict[str, Any]:
    """The query encoder record of the index at ``path``: the one of the index
    appended to (the same model), else one written now (amr.model.query_encoder)."""
    from amr.model.query_encoder import GRAPH, export_query_encoder

    kept = previous.header.query_encoder if previous is not None else None
    if kept and (query_folder(path, kept["token"]) / GRAPH).is_file():
        return kept
    with status("writing the query encoder (the text side of the model, for `amr query`)", show):
        return export_query_encoder(retriever, path)


def _kind(ann: bool | None, ann_kind: AnnKind | None, old: AnnInfo | None, live_rows: int) -> AnnKind | None:
    """The approximate index to have: None, or its kind (an index on disk stays on disk)."""
    if ann is False:
        return None
    if ann_kind is not None:
        return ann_kind
    if ann is None and old is None and live_rows <= EXACT_LIMIT:
        return None
    return AnnKind.ivf_pq if old is not None and old.kind.on_disk else AnnKind.fitting(live_rows)


def _finish(
    path: Path,
    header: IndexHeader,
    state: StoreState,
    dead: np.ndarray,
    kind: AnnKind | None,
    old: AnnInfo | None,
    new_from: int,
    show: bool,
) -> tuple[StoreState, np.ndarray, AnnInfo | None]:
    """Compact the columns if they need it, bring the approximate index up to
    date (rows ``new_from`` … are new to ``old``), write the manifest and
    remove what this version no longer uses."""
    dtype = "float16" if kind is not None and kind.on_disk else state.vector_dtype  # the on-disk tier keeps half-precision vectors only
    if dtype != state.vector_dtype or state.dead_rows > (0 if state.rows <= TIDY_LIMIT else COMPACT_DEAD * state.rows):
        with status(f"compacting {path.name}: {state.dead_rows} replaced rows of {state.rows}, vectors as {dtype}", show):
            state, dead = compact(path, header, state, dead, dtype)
        old = None  # rows are renumbered: the approximate index is built anew
    info = _approximate(path, header, state, dead, kind, old, new_from, show) if kind is not None else None
    commit(path, header, state, dead, info)
    return state, dead, info


def _approximate(
    path: Path, header: IndexHeader, state: StoreState, dead: np.ndarray, kind: AnnKind, old: AnnInfo | None, new_from: int, show: bool
) -> AnnInfo:
    """The approximate index of ``state``, in files of a new token: ``old``
    with the rows from ``new_from`` added when it is of this kind and was
    trained on at least half the rows, else built and tuned anew."""
    started = time.perf_counter()
    vectors = Store(path, header, state).vectors
    live_dead = dead if state.dead_rows else None
    token = secrets.token_hex(4)
    sidecar = ann_path(path, token)
    if old is not None and old.kind == kind and state.rows <= 2 * old.trained_rows:
        extend_ann(kind, sidecar_path(path, old), vectors, new_from, sidecar)
        return replace(old, token=token, seconds=round(time.perf_counter() - started, 1))
    ann, per_result, recall = build_ann(kind, vectors, live_dead, sidecar, show)
    info = AnnInfo(kind, ann.nlist, ann.nprobe, round(recall, 4), token, round(time.perf_counter() - started, 1), per_result, state.rows)
    if kind.on_disk:
        described = f"IVF-PQ ({ann.code_size} bytes a row, lists on disk), {per_result} candidates a result"
    else:
        described = "IVF-SQ8 (in RAM)"
    console.print(
        f"approximate index: {described}, {info.nlist} lists, nprobe {info.nprobe}, re-ranked: recall@10 {recall:.3f} "
        f"against exact search (perturbed item vectors), built in {info.seconds:.0f} s"
    )
    target = kind.recall_target
    if recall < target:
        warn(f"recall@10 {recall:.3f} is below the {target} the approximate index is tuned for; `amr query --exact` searches exactly")
    return info


def _encode(
    retriever: Retriever, selected: list[tuple[EmbeddingCache, list[int]]], header: IndexHeader, writer: StoreWriter, show: bool
) -> None:
    """Encode the selected items ENCODE_BATCH at a time, each batch written at once.

    A clip the cache's segment grid keeps whole is one row; a long recording
    is one row per segment (amr.segments), each with its span in seconds and
    its own machine tags, so a sound a few minutes in can be found and played."""
    total = sum(len(rows) for _, rows in selected)
    with progress("index", show=show, transient=True) as bar:
        task = bar.add_task("index", total=total)
        for cache, rows in selected:
            counts = cache.segments_per_item
            for start in range(0, len(rows), ENCODE_BATCH):
                batch = rows[start : start + ENCODE_BATCH]
                writer.append(_batch_rows(retriever, cache, batch, counts, header))
                bar.advance(task, len(batch))


def _batch_rows(retriever: Retriever, cache: EmbeddingCache, batch: list[int], counts: np.ndarray, header: IndexHeader) -> Rows:
    """The rows of the cache's items ``batch``, in item order."""
    whole = [i for i in batch if counts[i] == 1]
    encoded = dict(zip(whole, retriever.encode_items(cache, whole, header.auto_tags))) if whole else {}
    vectors, spans, tags, row_item = [], [], [], []
    for position, i in enumerate(batch):
        if counts[i] == 1:
            vectors.append(encoded[i][None])
            spans.append([(0.0, cache.info.seconds(cache.lengths[i]))])
            tags.append(cache.tags[i][None])
        else:
            segments = cache.segments(i)
            vectors.append(retriever.encode_segments(cache, i, header.auto_tags))
            spans.append([(cache.info.seconds(s.start), cache.info.seconds(s.end)) for s in segments])
            tags.append(np.stack([s.tags for s in segments]))
        row_item += [position] * len(spans[-1])
    items = [cache.items[i] for i in batch]
    stacked = np.concatenate(vectors).astype(np.float32, copy=False)
    if stacked.shape != (len(row_item), header.dim):
        raise AmrError(f"{describe(retriever.spec)}: encoded {stacked.shape}, expected {(len(row_item), header.dim)}")
    _require_finite(stacked, [items[p] for p in row_item], cache.path)
    all_tags = np.concatenate(tags)
    top = top_classes(all_tags, TAGS_STORED)
    span_array = np.asarray([span for item_spans in spans for span in item_spans], np.float32)
    return Rows(items, np.asarray(row_item), span_array, stacked, top, np.take_along_axis(all_tags, top, axis=1))


def _warn_changed_files(selected: list[tuple[EmbeddingCache, list[int]]]) -> None:
    """One line per cache whose items' audio files changed or vanished since `amr extract` read them
    (their recorded size and modification time): the index would show what was extracted, not what is on disk."""
    for cache, rows in selected:
        changed, vanished = changed_on_disk(cache.items[i] for i in rows)
        if changed or vanished:
            warn(
                f"{cache.path}: {changed + vanished} item(s) changed ({changed}) or vanished ({vanished}) on disk since extraction; "
                "they are indexed as extracted: run `amr extract` again, then `amr index`"
            )


def _require_finite(vectors: np.ndarray, items: list, cache: Path) -> None:
    """Every item must get a finite vector (a retriever bug otherwise). A zero
    vector is allowed: it scores 0 (e.g. metadata only, for an item without any)."""
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise AmrError(f"{cache}: item {items[bad[0]].id!r} got a non-finite vector ({len(bad)} items in this batch)")


def _previous(output: Path, header: IndexHeader, retriever: Retriever, auto_tags: int | None) -> Index:
    """The index to append to, after checking it was built by the same model,
    from the same audio model, with the same auto tags (when given)."""
    if not output.exists():
        raise AmrError(f"{output}: no index to append to; build it first (without --append)")
    previous = Index(output)
    previous.header.require_retriever(retriever, output)
    previous.header.audio.require_compatible(header.audio, ", ".join(header.sources))
    if auto_tags is not None and auto_tags != previous.header.auto_tags:
        raise AmrError(f"{output}: was built with auto tags {previous.header.auto_tags}, not {auto_tags}; append with the same")
    return previous
