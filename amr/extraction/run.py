"""A run of `amr extract`: under the cache's lock, what is pending -> the engine -> parts -> the merged cache and the failures report."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from rich.progress import TimeRemainingColumn

from amr.audio.encoder import AudioEncoder
from amr.audio.weights import ResolvedWeights
from amr.cache import CacheInfo, ClipEmbedding
from amr.console import progress, warn
from amr.extraction.parts import PART_SIZE, PartWriter, merge_parts, parts_folder, pending, remove_stale_temporaries
from amr.extraction.workers import default_workers, embed_items
from amr.files import atomic_write, exclusive
from amr.items import ClipFailure, Item
from amr.segments import SegmentGrid


@dataclass
class ExtractReport:
    cache: Path
    items: int  # clips in the cache now
    computed: int  # clips computed by this run
    reused: int  # clips taken from an earlier (possibly interrupted) run
    dropped: int  # clips the cache held before and holds no more (their file is gone, or changed and now fails)
    failures: list[ClipFailure]
    audio_seconds: float  # audio computed by this run
    seconds: float


def extract(
    items: list[Item],
    output: Path,
    weights: ResolvedWeights,
    *,
    augment_views: int = 0,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    part_size: int = PART_SIZE,
    segments: SegmentGrid = SegmentGrid(),
    engine: Engine | None = None,
    device: torch.device | str = "cpu",
    unreadable: Sequence[ClipFailure] = (),
    force: bool = False,
) -> ExtractReport:
    """Extract every item's embedding sequence (and a long clip's segment tags,
    on the grid ``segments``) into the cache at ``output``.

    A pure function of the items, the weights and the options: rerunning it
    completes an interrupted run, computes only new and changed clips, drops
    the clips no longer among ``items``, and refreshes the items' metadata and
    captions. Holds the cache's lock throughout: a concurrent run on the same
    cache raises AmrError at once. ``engine`` embeds the clips (default: this
    machine's decoding processes, `embed_items`; amr.extraction.ray runs on Ray);
    the model runs on ``device``. ``unreadable``: files the dataset reader
    could not make items of (Dataset.unreadable), reported with the clips that
    fail to decode. A cache at ``output`` none of whose clips is among
    ``items`` (by id) is another dataset's: refused unless ``force`` (which
    replaces it), rather than dropping all its clips."""
    started = time.perf_counter()
    output = Path(output)
    with exclusive(output, "cache"):
        encoder = AudioEncoder.load(weights, device)
        info = cache_info(weights, augment_views, segments)
        parts = parts_folder(output)
        remove_stale_temporaries(output, parts)
        todo = pending(items, output, info, force)
        failures: list[ClipFailure] = list(unreadable)
        for failure in unreadable:
            warn(f"skipped: {failure.reason}")
        audio_seconds = 0.0
        if todo:
            writer = PartWriter(parts, info, part_size)
            for result in _embed(todo, encoder, augment_views, workers or default_workers(), seed, segments, progress, engine):
                if isinstance(result, ClipFailure):
                    failures.append(result)
                    warn(f"skipped: {result.reason}")
                else:
                    audio_seconds += info.seconds(len(result.frames))
                    writer.add(result)
            writer.flush()
        merged = merge_parts(items, output, info)
        _write_failures(output, failures)
    return ExtractReport(
        cache=output,
        items=merged.items,
        computed=len(todo) - len(failures) + len(unreadable),
        reused=len(items) - len(todo),
        dropped=merged.dropped,
        failures=failures,
        audio_seconds=audio_seconds,
        seconds=time.perf_counter() - started,
    )


def cache_info(weights: ResolvedWeights, augment_views: int = 0, segments: SegmentGrid = SegmentGrid()) -> CacheInfo:
    """What a cache of these weights records (every field from the weights' registry entry) and the segment grid."""
    return CacheInfo(
        audio_model=weights.name,
        weights_sha256=weights.sha256,
        embed_dim=weights.embed_dim,
        num_classes=weights.num_classes,
        sample_rate=weights.audio.sample_rate,
        frame_rate=weights.audio.frame_rate,
        window_seconds=weights.audio.window_seconds,
        augment_views=augment_views,
        segment_seconds=segments.seconds,
        segment_hop=segments.hop,
        long_clip_seconds=segments.long_seconds,
    )


def failures_path(cache: Path) -> Path:
    return cache.with_name(cache.stem + ".failures.jsonl")


class Engine(Protocol):
    """What embeds the clips a run computes, in completion order: the local engine
    is `embed_items`; amr.extraction.ray.RayEngine runs on a Ray cluster."""

    def __call__(
        self, items: Sequence[Item], encoder: AudioEncoder, augment_views: int, seed: int, segments: SegmentGrid
    ) -> Iterator[ClipEmbedding | ClipFailure]: ...


def _embed(
    items: list[Item],
    encoder: AudioEncoder,
    augment_views: int,
    workers: int,
    seed: int,
    segments: SegmentGrid,
    show_progress: bool,
    engine: Engine | None,
) -> Iterator[ClipEmbedding | ClipFailure]:
    """Every item's embedding (or failure), in completion order. This process only
    assembles clips, computes their tags and writes: one torch thread (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with progress("extract", TimeRemainingColumn(), show=show_progress) as bar:
            task = bar.add_task("extract", total=len(items))
            if engine is not None:
                results = engine(items, encoder, augment_views, seed, segments)
            else:
                results = embed_items(items, encoder, augment_views, workers, seed, segments)
            for result in results:
                bar.advance(task)
                yield result
    finally:
        torch.set_num_threads(threads)


def _write_failures(output: Path, failures: list[ClipFailure]) -> None:
    path = failures_path(output)
    if not failures:
        path.unlink(missing_ok=True)
        return
    atomic_write(path, "".join(json.dumps(asdict(failure), ensure_ascii=False) + "\n" for failure in failures))
