"""The local engine: forked worker processes that decode clips and, with the model on the CPU, embed them.

One worker per available core (`default_workers`): each decodes segments of
clips (`amr.extraction.decoding`) and runs their windows through the model in its
own `WindowBatcher`, one torch thread per worker, so every core both decodes
and embeds and only frames travel back; with the model on a GPU the main
process runs the one batcher instead. The main process reassembles the clips
(`amr.extraction.clips.assemble`).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import torch

from amr.audio.encoder import AudioEncoder
from amr.cache import ClipEmbedding
from amr.extraction.batching import MAX_WAIT_WINDOWS, EncodedClip, WindowBatcher
from amr.extraction.clips import Row, assemble
from amr.extraction.decoding import decode_segment
from amr.items import ClipFailure, Item
from amr.segments import SegmentGrid


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


def embed_items(
    items: Sequence[Item],
    encoder: AudioEncoder,
    augment_views: int = 0,
    workers: int = 1,
    seed: int = 0,
    segments: SegmentGrid = SegmentGrid(),
    model_in_workers: bool | None = None,
) -> Iterator[ClipEmbedding | ClipFailure]:
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
    the same bit for bit (see amr.audio.encoder), and this process assembles the
    clips (`assemble`)."""
    if model_in_workers is None:
        model_in_workers = encoder.device.type == "cpu"
    rows = _worker_rows(items, encoder, augment_views, workers, seed, model_in_workers)
    yield from assemble(items, encoder, segments, rows)


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
        raise RuntimeError("amr.extraction's worker tasks run in a process started with _init_worker")
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
