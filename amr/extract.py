"""`amr extract`: every clip of a dataset -> its MobileNetV3 frame-embedding sequence and tags.

The pipeline, built for throughput on a few CPU cores and flat memory:

* worker processes (one per available core: `default_workers`) decode,
  resample and compute the log-mel of clips (`decode_segment`, in segments of
  a few minutes, so an hour-long file never sits in memory whole), a bounded
  number of tasks in flight, and run the windows through the model in their
  own `WindowBatcher`, which runs full batches of one bucket width through the
  `amr.encoder.AudioEncoder` (exact at every clip length, bit-repeatable
  whatever the batch company): each core decodes and embeds, one torch thread
  per worker, and only frames travel back (with the model on a GPU, the main
  process runs the one batcher instead: `embed_items`);
* the main process reassembles each clip from its windows (`assemble`, shared
  with amr.ray_engine) and computes its tags and, for a long recording, the
  tags of each segment (`AudioEncoder.segments`, on the cache's `SegmentGrid`),
  stored in the cache so that an index can cut exactly those spans;
* a `PartWriter` writes finished clips in *parts* (complete cache files, renamed
  into place) every PART_SIZE clips; a killed run loses at most the clips since
  the last part, and a rerun skips what the cache and the parts already hold,
  then merges everything into the final cache (`merge_parts`).

Incremental: a rerun on the same dataset computes only the clips that are new
or whose file changed: a clip is reused when the cache (or a part) holds the
same id from the same path with the same size and modification time
(`item_key`; Item.audio_size and Item.audio_mtime_ns, which load_dataset
fills). Clips that are no longer in the dataset are dropped from the merged
cache; clips whose metadata or captions changed are refreshed without
recomputing.

A cache holds the segment tags of one grid: a run with another grid (or other
augmented views, or another model) on an existing cache, or beside parts
written with another one, is refused rather than mixed; extract into another
file, or delete the cache. (Recomputing segment tags from the stored float16
frames would give values a fresh extraction does not.)

One run at a time per cache: a run holds the cache's lock (amr.files.exclusive)
from start to end, and a second run on the same cache stops at once with a
message naming the holder. Parts and temporary files carry names unique to the
run that wrote them, and the merge deletes only the parts it merged, so no run
can overwrite or delete another's work even without the lock.

Clips that cannot be embedded are reported and listed in
``<cache>.failures.jsonl``, one JSON object per line: ``id``, ``audio``,
``kind`` (missing, empty, not-audio, corrupt, truncated, non-finite, out-of-range,
no-samples; see amr.audio) and ``reason``. None of them is in the cache
(truncated files included: see amr.audio for why); the run goes on.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.progress import TimeRemainingColumn

from amr import audio
from amr.cache import CacheInfo, ClipEmbedding, EmbeddingCache, write_cache
from amr.console import progress, warn
from amr.encoder import AudioEncoder
from amr.errors import AmrError
from amr.files import atomic_write, exclusive
from amr.items import Failure, Item
from amr.segments import SegmentGrid
from amr.weights import ResolvedWeights

# A window waits for at most this many later windows before its bucket runs part-full,
# so that clips keep reaching part files when one bucket is rare (a killed run then
# loses little). On the shared data (950 windows) no bucket is forced.
MAX_WAIT_WINDOWS = 1024
SEGMENT_WINDOWS = 18  # windows a worker decodes per task (3 minutes of audio)
PART_SIZE = 256  # clips per part file


@dataclass
class ExtractReport:
    cache: Path
    items: int  # clips in the cache now
    computed: int  # clips computed by this run
    reused: int  # clips taken from an earlier (possibly interrupted) run
    dropped: int  # clips the cache held before and holds no more (their file is gone, or changed and now fails)
    failures: list[Failure]
    audio_seconds: float  # audio computed by this run
    seconds: float


def available_cores() -> int:
    """The cores this process may use: its affinity mask (taskset, a container's cpuset),
    capped by a CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``; a quota of
    1.5 cores counts 2). What `os.cpu_count` reports is the machine's, often far more."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def _cpu_quota(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota, in cores, of this process's cgroup (v2 or v1); None where there is none."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, group = line.split(":", 2)
        if controllers and "cpu" not in controllers.split(","):
            continue
        mount = root / controllers if controllers else root
        for folder in (mount / group.lstrip("/"), mount):  # the group's folder, or (inside a container) the mount itself
            if (quota := _quota_in(folder, v2=not controllers)) is not None:
                return quota
    return None


def _quota_in(folder: Path, v2: bool) -> float | None:
    """cgroup v2 ``cpu.max`` ("max 100000" or "150000 100000"), v1 ``cpu.cfs_quota_us`` (-1: none) over its period."""
    try:
        if v2:
            limit, period = (folder / "cpu.max").read_text().split()
            return None if limit == "max" else int(limit) / int(period)
        quota, period = (int((folder / name).read_text()) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None


def default_workers() -> int:
    """One worker process per available core: each decodes its clips and runs the
    model on them on one torch thread, so every core does both and none waits
    for the other stage (see `embed_items`)."""
    return available_cores()


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
    unreadable: Sequence[Failure] = (),
    force: bool = False,
) -> ExtractReport:
    """Extract every item's embedding sequence (and a long clip's segment tags,
    on the grid ``segments``) into the cache at ``output``.

    A pure function of the items, the weights and the options: rerunning it
    completes an interrupted run, computes only new and changed clips, drops
    the clips no longer among ``items``, and refreshes the items' metadata and
    captions. Holds the cache's lock throughout: a concurrent run on the same
    cache raises AmrError at once. ``engine`` embeds the clips (default: this
    machine's decoding processes, `embed_items`; amr.ray_engine runs on Ray);
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
        _remove_stale_temporaries(output, parts)
        todo = pending(items, output, info, force)
        failures: list[Failure] = list(unreadable)
        for failure in unreadable:
            warn(f"skipped: {failure.reason}")
        audio_seconds = 0.0
        if todo:
            writer = PartWriter(parts, info, part_size)
            for result in _embed(todo, encoder, augment_views, workers or default_workers(), seed, segments, progress, engine):
                if isinstance(result, Failure):
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


def parts_folder(cache: Path) -> Path:
    """Where a run writes its parts: ``<cache>.parts/``."""
    return cache.with_name(cache.name + ".parts")


ItemKey = tuple[str, str, int | None, int | None]


def item_key(item: Item) -> ItemKey:
    """A clip is done when an earlier run embedded the same id from the same
    path, with the same file size and modification time (None where unknown:
    None matches only None, so a clip is recomputed rather than wrongly reused)."""
    return item.id, item.audio, item.audio_size, item.audio_mtime_ns


class Engine(Protocol):
    """What embeds the clips a run computes, in completion order: the local engine
    is `embed_items`; amr.ray_engine.RayEngine runs on a Ray cluster."""

    def __call__(
        self, items: Sequence[Item], encoder: AudioEncoder, augment_views: int, seed: int, segments: SegmentGrid
    ) -> Iterator[ClipEmbedding | Failure]: ...


def _embed(
    items: list[Item],
    encoder: AudioEncoder,
    augment_views: int,
    workers: int,
    seed: int,
    segments: SegmentGrid,
    show_progress: bool,
    engine: Engine | None,
) -> Iterator[ClipEmbedding | Failure]:
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


def embed_items(
    items: Sequence[Item],
    encoder: AudioEncoder,
    augment_views: int = 0,
    workers: int = 1,
    seed: int = 0,
    segments: SegmentGrid = SegmentGrid(),
    model_in_workers: bool | None = None,
) -> Iterator[ClipEmbedding | Failure]:
    """The local engine: yields each clip (with its segments' tags on the grid
    `segments`), or its failure, as it completes.

    `workers` forked processes, one torch thread each, take segments of clips
    (at most 4 tasks per worker in flight) and decode them; with the model on
    the CPU (`model_in_workers`, the default there) each worker also runs its
    windows through the model in its own `WindowBatcher` and sends back only
    frames, so every core both decodes and embeds and no stage waits for
    another, and the log-mels (40 times the frames' size) never cross a
    process boundary. With the model on a GPU, the workers send the log-mels
    and this process runs them in one batcher. Either way a window's frames are
    the same bit for bit (see amr.encoder), and this process assembles the
    clips (`assemble`)."""
    if model_in_workers is None:
        model_in_workers = encoder.device.type == "cpu"
    rows = _worker_rows(items, encoder, augment_views, workers, seed, model_in_workers)
    yield from assemble(items, encoder, segments, rows)


Row = dict[str, Any]  # one window's frames, or a clip's failure: see `assemble`


@dataclass
class _Reply:
    """A worker's answer to one task: whether the clip goes on past its segment, the
    rows of windows its model finished (of this or earlier tasks), and the windows
    left for this process's model (key, mel, views), when the workers run none."""

    more: bool
    rows: list[Row]
    windows: list[tuple[tuple[int, int, int], np.ndarray, np.ndarray | None]]


def _worker_rows(
    items: Sequence[Item], encoder: AudioEncoder, augment_views: int, workers: int, seed: int, model_in_workers: bool
) -> Iterator[Row]:
    """The rows of every window of `items` (and a row per failed clip), as the workers finish them."""
    local = None if model_in_workers else WindowBatcher(encoder, augment_views, MAX_WAIT_WINDOWS)
    queue = iter(range(len(items)))
    in_flight: dict[Future[_Reply], tuple[int, int]] = {}
    context = get_context("fork")  # workers start at once (spawn would import torch again in each) and share the model's memory
    barrier = context.Barrier(workers)
    initargs = (encoder, augment_views, model_in_workers, barrier)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:

        def submit(index: int, number: int) -> None:
            in_flight[pool.submit(_work, index, items[index].audio, number, seed)] = index, number

        def fill() -> None:  # new clips while fewer than 4 tasks per worker are in flight
            while len(in_flight) < 4 * workers and (index := next(queue, None)) is not None:
                submit(index, 0)

        fill()
        while in_flight:
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                index, number = in_flight.pop(future)
                reply = future.result()
                if reply.more:
                    submit(index, number + 1)
                yield from reply.rows
                for key, mel, views in reply.windows:
                    yield from _rows(local.add(key, 0, [mel], [views] if augment_views else (), last=True))  # type: ignore[union-attr]
            fill()
        if model_in_workers:  # one flush per worker: each waits at the barrier until every worker holds one
            for flushed in [pool.submit(_flush_worker) for _ in range(workers)]:
                yield from flushed.result()
    if local is not None:
        yield from _rows(local.flush())


def _rows(clips: list[EncodedClip]) -> list[Row]:
    """A batcher's finished windows as rows; each window was added as a clip of its own, keyed (clip, window, windows)."""
    rows = []
    for clip in clips:
        index, window, windows = clip.key  # type: ignore[misc]
        row = {"clip": index, "window": window, "windows": windows, "frames": clip.frames, "kind": "", "reason": ""}
        if clip.augmented is not None:
            row["augmented"] = clip.augmented
        rows.append(row)
    return rows


@dataclass
class _ArrivingClip:
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # window -> (t, C)
    augmented: dict[int, np.ndarray] = field(default_factory=dict)  # window -> (t, K, C)
    windows: int | None = None  # known once a window of the last segment arrived


def assemble(items: Sequence[Item], encoder: AudioEncoder, grid: SegmentGrid, rows: Iterator[Row]) -> Iterator[ClipEmbedding | Failure]:
    """Each clip once all of its windows' rows have arrived (in any order), with its
    tags and its segments' tags (computed here, by the process that writes); a
    failure row makes the clip a Failure, and its other rows are ignored.

    A row: ``clip`` (the item's index), ``window`` (its number in the clip),
    ``windows`` (the clip's window count, on the windows of its last segment; -1
    before), ``frames`` (t, C), ``augmented`` (t, K, C) with augmented views, and
    ``kind`` and ``reason``, empty but for a failure (amr.ray_engine's rows too)."""
    pending: dict[int, _ArrivingClip] = {}
    failed: set[int] = set()
    for row in rows:
        index = int(row["clip"])
        if index in failed:
            continue
        if row["kind"]:
            pending.pop(index, None)
            failed.add(index)
            yield Failure(items[index].id, items[index].audio, str(row["kind"]), str(row["reason"]))
            continue
        clip = pending.setdefault(index, _ArrivingClip())
        window = int(row["window"])
        clip.frames[window] = row["frames"]
        if "augmented" in row:
            clip.augmented[window] = row["augmented"]
        if row["windows"] >= 0:
            clip.windows = int(row["windows"])
        if clip.windows is not None and len(clip.frames) == clip.windows:
            del pending[index]
            frames = np.concatenate([clip.frames[w] for w in range(clip.windows)])
            augmented = np.concatenate([clip.augmented[w] for w in range(clip.windows)]) if clip.augmented else None
            yield ClipEmbedding(items[index], frames, encoder.tags(frames), augmented, encoder.segments(frames, grid))
    if pending:
        raise RuntimeError(f"the engine ended with {len(pending)} clips incomplete, e.g. {items[next(iter(pending))].audio}")


# --- the batcher: windows of many clips -> full batches -> finished clips ----------------


@dataclass
class EncodedClip:
    key: Hashable
    frames: np.ndarray  # (T, C) float32
    augmented: np.ndarray | None  # (T, K, C), with augmented views


@dataclass
class _Row:
    """One log-mel window waiting for the model: a clip's window, clean (view None) or an augmented view."""

    key: Hashable
    window: int
    view: int | None
    mel: np.ndarray  # (n_mels, T)
    arrival: int  # windows added to the batcher before this one


@dataclass
class _PendingClip:
    frames: dict[tuple[int, int | None], np.ndarray] = field(default_factory=dict)  # (window, view) -> (t, C)
    windows: int | None = None  # known once the clip's last segment arrived


class WindowBatcher:
    """Collects log-mel windows of many clips, runs them through the encoder in
    full batches of one bucket width, and hands back each clip (frames and
    augmented views) once all of its windows are embedded.

    A clip arrives as segments of consecutive windows (`add`), in any order and
    interleaved with other clips; `last` marks its final segment. A bucket runs
    as soon as it holds a full batch, so fewer than one batch per bucket ever
    waits (memory stays flat: under 16 x 2048 mel frames, 16 MB, for EfficientAT);
    a bucket whose oldest window has waited for `max_wait` later windows runs
    part-full. `flush` runs what is left. Which windows share a batch never
    changes a clip's values (see amr.encoder), so neither does arrival order."""

    def __init__(self, encoder: AudioEncoder, augment_views: int = 0, max_wait: int = MAX_WAIT_WINDOWS):
        self.encoder = encoder
        self.augment_views = augment_views
        self.max_wait = max_wait
        self._clips: dict[Hashable, _PendingClip] = {}
        self._waiting: dict[int, list[_Row]] = defaultdict(list)  # bucket width -> rows, oldest first
        self._arrivals = 0

    def add(
        self, key: Hashable, first_window: int, mels: Sequence[np.ndarray], views: Sequence[np.ndarray] = (), last: bool = True
    ) -> list[EncodedClip]:
        """Windows first_window, first_window + 1, ... of clip `key` ((n_mels, T) each;
        with augmented views, `views[i]` holds window i's (K, n_mels, T))."""
        clip = self._clips.setdefault(key, _PendingClip())
        for i, mel in enumerate(mels):
            rows = self._waiting[self.encoder.bucket_width(mel.shape[1])]
            rows.append(_Row(key, first_window + i, None, mel, self._arrivals))
            if self.augment_views:
                rows.extend(_Row(key, first_window + i, v, view, self._arrivals) for v, view in enumerate(views[i]))
            self._arrivals += 1
        if last:
            clip.windows = first_window + len(mels)
        done = []
        for width in list(self._waiting):
            while width in self._waiting and self._due(width):
                done += self._run(width)
        if last and key in self._clips:  # its windows may all have run already
            done += self._complete(key)
        return done

    def drop(self, key: Hashable) -> None:
        """Forget a clip (one of its segments failed to decode)."""
        self._clips.pop(key, None)
        for width in list(self._waiting):
            self._waiting[width] = [row for row in self._waiting[width] if row.key != key]
            if not self._waiting[width]:
                del self._waiting[width]

    def flush(self) -> list[EncodedClip]:
        """Run every waiting window; returns the clips this completes."""
        done = []
        while self._waiting:
            done += self._run(next(iter(self._waiting)))
        return done

    @property
    def waiting_frames(self) -> int:
        return sum(width * len(rows) for width, rows in self._waiting.items())

    def _due(self, width: int) -> bool:
        rows = self._waiting[width]
        return len(rows) >= self.encoder.batch_rows(width) or rows[0].arrival < self._arrivals - self.max_wait

    def _run(self, width: int) -> list[EncodedClip]:
        """One batch of bucket `width`: its oldest rows."""
        waiting = self._waiting[width]
        rows, self._waiting[width] = waiting[: self.encoder.batch_rows(width)], waiting[self.encoder.batch_rows(width) :]
        if not self._waiting[width]:
            del self._waiting[width]
        for row, frames in zip(rows, self.encoder.encode([row.mel for row in rows])):
            self._clips[row.key].frames[(row.window, row.view)] = frames
        done = []
        for key in dict.fromkeys(row.key for row in rows):
            done += self._complete(key)
        return done

    def _complete(self, key: Hashable) -> list[EncodedClip]:
        """[the clip] if every window (and view) of it is embedded, else []."""
        clip = self._clips[key]
        if clip.windows is None or len(clip.frames) < clip.windows * (1 + self.augment_views):
            return []
        del self._clips[key]
        frames = np.concatenate([clip.frames[(w, None)] for w in range(clip.windows)])
        augmented = None
        if self.augment_views:
            views = range(self.augment_views)
            augmented = np.concatenate([np.stack([clip.frames[(w, v)] for v in views], 1) for w in range(clip.windows)])
        return [EncodedClip(key, frames, augmented)]


# --- workers: decode -> resample -> log-mel (+ SpecAugmented views) ----------------------


@dataclass
class DecodedSegment:
    """Log-mels of consecutive windows of one clip, from one decoding task (not
    amr.cache.Segment, a span of a long clip's frames)."""

    number: int  # the clip's segment number: windows number * SEGMENT_WINDOWS ...
    mels: list[np.ndarray]  # (n_mels, T) per window
    views: list[np.ndarray]  # (K, n_mels, T) per window, when augmenting
    more: bool  # the clip goes on beyond this segment
    error: tuple[str, str] | None = None  # (kind, reason)

    @property
    def first_window(self) -> int:
        return self.number * SEGMENT_WINDOWS


def decode_segment(
    path: str, number: int, front_end: audio.MelFrontEnd, window_seconds: float, augment_views: int = 0, seed: int = 0
) -> DecodedSegment:
    """Segment `number` of the clip at `path`: the log-mels of its windows
    number * SEGMENT_WINDOWS ... (number + 1) * SEGMENT_WINDOWS - 1, and their
    augmented views; an undecodable file gives a DecodedSegment with `error` set."""
    sample_rate = front_end.settings.sample_rate
    mels, views = [], []
    try:
        windows = audio.iter_windows(Path(path), sample_rate, window_seconds, start_window=number * SEGMENT_WINDOWS)
        more = False
        for k, window in enumerate(windows):
            if k == SEGMENT_WINDOWS:
                more = True
                break
            with torch.inference_mode():
                mel = front_end(torch.from_numpy(window)[None])[0, 0]
            mels.append(mel.numpy())
            if augment_views:
                generator = torch.Generator().manual_seed(_view_seed(path, number, k, seed))
                fill = front_end.settings.mask_value
                views.append(torch.stack([audio.spec_augment(mel, generator, fill) for _ in range(augment_views)]).numpy())
    except audio.AudioError as e:
        return DecodedSegment(number, [], [], False, error=(e.kind, str(e)))
    except AmrError as e:
        return DecodedSegment(number, [], [], False, error=("unreadable", str(e)))
    return DecodedSegment(number, mels, views, more)


def _view_seed(path: str, segment: int, window: int, seed: int) -> int:
    """Augmentation depends on the clip and window only, never on run order."""
    return zlib.crc32(f"{path}|{segment}|{window}|{seed}".encode())


@dataclass
class _Worker:
    """A worker process's state: the encoder (inherited from the parent by fork), and
    its batcher when the model runs here."""

    encoder: AudioEncoder
    augment_views: int
    batcher: WindowBatcher | None
    barrier: Barrier


_worker: _Worker | None = None


def _init_worker(encoder: AudioEncoder, augment_views: int, model_in_workers: bool, barrier: Barrier) -> None:
    global _worker
    torch.set_num_threads(1)
    batcher = WindowBatcher(encoder, augment_views, MAX_WAIT_WINDOWS) if model_in_workers else None
    _worker = _Worker(encoder, augment_views, batcher, barrier)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _this_worker() -> _Worker:
    if _worker is None:
        raise RuntimeError("amr.extract's worker tasks run in a process started with _init_worker")
    return _worker


def _work(index: int, path: str, number: int, seed: int) -> _Reply:
    """Decode segment `number` of clip `index`; its windows go to this worker's
    batcher (each as a clip of its own, keyed (clip, window, windows)), or back
    to the parent when the model runs there."""
    worker = _this_worker()
    settings = worker.encoder.audio
    segment = decode_segment(path, number, worker.encoder.front_end, settings.window_seconds, worker.augment_views, seed)
    if segment.error is not None:
        failure = {"clip": index, "window": -1, "windows": -1, "frames": None, "kind": segment.error[0], "reason": segment.error[1]}
        return _Reply(False, [failure], [])
    windows = -1 if segment.more else segment.first_window + len(segment.mels)
    views: Sequence[np.ndarray | None] = segment.views or [None] * len(segment.mels)
    keyed = [((index, segment.first_window + k, windows), mel, view) for k, (mel, view) in enumerate(zip(segment.mels, views))]
    if worker.batcher is None:
        return _Reply(segment.more, [], keyed)
    rows = []
    for key, mel, view in keyed:
        rows += _rows(worker.batcher.add(key, 0, [mel], [view] if view is not None else (), last=True))
    return _Reply(segment.more, rows, [])


def _flush_worker() -> list[Row]:
    """The rows of every window still waiting in this worker's batcher. Waits until
    each worker holds one of these tasks, so that every worker gets exactly one."""
    worker = _this_worker()
    worker.barrier.wait()
    return _rows(worker.batcher.flush()) if worker.batcher is not None else []


def _exit_with_parent(parent: int) -> None:
    """A SIGKILLed main process cannot stop its workers: they notice and leave."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


# --- parts, resume and the merge -----------------------------------------------------------


class PartWriter:
    """Writes finished clips as parts of `size` clips: complete cache files in
    `folder`, each renamed into place when whole. Part names carry the writer's
    pid and a random token, so two writers (runs, or engines) never collide."""

    def __init__(self, folder: Path, info: CacheInfo, size: int = PART_SIZE):
        self.folder, self.info, self.size = Path(folder), info, size
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.number = 0
        self.pending: list[ClipEmbedding] = []

    def add(self, clip: ClipEmbedding) -> None:
        self.pending.append(clip)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            write_cache(self.folder / f"part-{self.run}-{self.number:05d}.h5", self.info, self.pending)
            self.number += 1
            self.pending = []


def _sources(output: Path, parts: Path) -> list[Path]:
    return ([output] if output.exists() else []) + sorted(parts.glob("part-*.h5"))


def _open(path: Path, info: CacheInfo) -> EmbeddingCache:
    """A cache (or part) this run may merge with: the same model, augmented views and segment grid."""
    cache = EmbeddingCache(path)
    try:
        info.require_compatible(cache.info, str(path))
        if cache.info.augment_views != info.augment_views:
            raise AmrError(
                f"{path}: holds {cache.info.augment_views} augmented views per clip, this run asks for "
                f"{info.augment_views}; use the same --augment-views or write to another file"
            )
        if cache.info.segments != info.segments:
            raise AmrError(
                f"{path}: holds segment tags of {_grid(cache.info.segments)}, this run asks for {_grid(info.segments)}; "
                "use the same segment options, or write to another file"
            )
    except AmrError:
        cache.close()
        raise
    return cache


def _grid(grid: SegmentGrid) -> str:
    return f"{grid.seconds:g} s segments every {grid.hop:g} s of clips over {grid.long_seconds:g} s"


def pending(items: Sequence[Item], output: Path, info: CacheInfo, force: bool = False) -> list[Item]:
    """The items that neither the cache at ``output`` nor its parts hold (by
    `item_key`): new clips, changed files, and those an interrupted run did
    not finish. Refuses a cache or part `info` cannot be merged with, and
    (unless ``force``) a cache of another dataset: one holding clips, none of them among ``items``."""
    done: set[ItemKey] = set()
    ids = {item.id for item in items}
    for path in _sources(output, parts_folder(output)):
        with _open(path, info) as cache:
            if path == output and cache.items and not force and not any(item.id in ids for item in cache.items):
                raise AmrError(
                    f"{output}: the embedding cache of another dataset (none of its {len(cache.items)} clips is in this one); "
                    "extracting into it would drop them all: choose another --output, or pass --force to replace it"
                )
            done.update(item_key(item) for item in cache.items)
    return [item for item in items if item_key(item) not in done]


@dataclass
class Merged:
    items: int  # clips in the cache now
    dropped: int  # clips the cache held before and holds no more


def merge_parts(items: Sequence[Item], output: Path, info: CacheInfo) -> Merged:
    """Write the cache at ``output`` from itself and its parts: each of ``items``
    that one of them holds (by `item_key`), with its embeddings from wherever
    they were computed and the item's current metadata and captions, in the
    order of ``items``; every other clip is left out. Then delete the merged
    parts. The cache is rewritten only when something changed. Callers hold
    the cache's lock (amr.files.exclusive)."""
    parts = parts_folder(output)
    paths = _sources(output, parts)
    with ExitStack() as opened:
        caches = [opened.enter_context(_open(path, info)) for path in paths]
        before = {item.id for item in caches[0].items} if output.exists() else set()
        found = {item_key(item): (cache, i) for cache in caches for i, item in enumerate(cache.items)}
        kept = [item for item in items if item_key(item) in found]
        if len(paths) > 1 or not output.exists() or caches[0].items != kept:

            def clips() -> Iterator[ClipEmbedding]:
                for item in kept:
                    cache, i = found[item_key(item)]
                    frames, augmented = cache.stored(i)
                    yield ClipEmbedding(item, frames, cache.tags[i], augmented, cache.segments(i))

            write_cache(output, info, clips())
    for path in paths:
        if path != output:
            path.unlink()
    if parts.exists() and not any(parts.iterdir()):
        parts.rmdir()
    return Merged(len(kept), len(before - {item.id for item in kept}))


def _remove_stale_temporaries(output: Path, parts: Path) -> None:
    """Temporary files of killed runs (amr.files.temporary_path names): no other
    run can be writing them while this one holds the lock."""
    stale = list(output.parent.glob(f".{output.name}.*.tmp"))
    if parts.is_dir():
        stale += parts.glob(".part-*.tmp")
    for path in stale:
        path.unlink(missing_ok=True)


def _write_failures(output: Path, failures: list[Failure]) -> None:
    path = failures_path(output)
    if not failures:
        path.unlink(missing_ok=True)
        return
    atomic_write(path, "".join(json.dumps(asdict(failure), ensure_ascii=False) + "\n" for failure in failures))
