"""The Ray engine of `amr extract` (``--engine ray``): the local engine's cache, computed on a Ray cluster.

A Ray Data pipeline in three stages:

* the items become a dataset of (clip number, audio path) rows, CLIPS_PER_BLOCK per block;
* a CPU map stage (`flat_map`, Ray tasks of one CPU, one torch thread) decodes,
  resamples and computes the log-mel of each clip in segments, exactly as the
  local engine's workers do (`amr.extraction.decoding.decode_segment`), and emits one row
  per log-mel window (with its augmented views), or one failure row for a clip
  that cannot be decoded;
* an actor pool (`map_batches` with a callable class; CPU actors of one thread,
  or GPU actors with `num_gpus` each) runs batches of BATCH_WINDOWS windows
  through `amr.audio.encoder.AudioEncoder.encode`, which pads them to the same
  bucket widths, masked, so a window's frames do not depend on which windows
  share its batch: they are bit-identical to the local engine's on the same
  machine and thread count (see amr.audio.encoder).

The driver reassembles each clip from its windows as they stream back (any
order, any actor) with the local engine's `amr.extraction.clips.assemble`, which computes
its tags with the same `AudioEncoder.tags`, and yields it; `amr.extraction.extract`
writes the clips as the same part files, so resume after a kill, the failures
report and the merge are the local engine's.

Ray is optional (``pip install amr[ray]``). On a cluster every node needs amr
and Ray of the driver's versions and the audio files at the same paths (a
shared file system); the model's tensors travel through Ray's object store.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from amr.audio.encoder import AudioEncoder
from amr.audio.frontend import MelFrontEnd
from amr.audio.mobilenet import MobileNetV3
from amr.audio.weights import AudioSettings, MelSettings
from amr.cache import ClipEmbedding
from amr.errors import AmrError
from amr.extraction.clips import assemble
from amr.extraction.decoding import decode_segment
from amr.extraction.workers import available_cores
from amr.items import ClipFailure, Item
from amr.segments import SegmentGrid

CLIPS_PER_BLOCK = 32  # clips per decoding task: a few seconds of work, so results stream back steadily
# Windows per model call. encode() tops up each bucket's last batch of a call with zero rows,
# so a call wastes at most one batch (2048 mel frames) per bucket width it holds; at 512 windows
# that is a few percent of the work on short clips and nothing on long recordings.
BATCH_WINDOWS = 512
CONNECT_SECONDS = 10  # to reach a cluster's head node


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # the cluster to join (host:port, or "auto"); None: start a local one
    actors: int | None = None  # model actors (default: half the cluster's CPUs, or one per num_gpus GPUs)
    num_gpus: float = 0  # GPUs per model actor; 0: CPU actors


class RayEngine:
    """`amr.extraction`'s engine on Ray: called with the clips to embed, yields each
    clip's ClipEmbedding (or ClipFailure) as it completes. Refuses at once, with the
    install line, where Ray is missing."""

    def __init__(self, options: RayOptions = RayOptions()):
        self.options = options
        self.ray = import_ray()

    def __call__(
        self, items: Sequence[Item], encoder: AudioEncoder, augment_views: int = 0, seed: int = 0, segments: SegmentGrid = SegmentGrid()
    ) -> Iterator[ClipEmbedding | ClipFailure]:
        """Each clip's embedding (with its segments' tags on the grid `segments`), or its failure, as it completes."""
        with ray_session(self.options.address):
            rows = self._pipeline(items, encoder, augment_views, seed).iter_rows()
            yield from assemble(items, encoder, segments, rows)

    def _pipeline(self, items: Sequence[Item], encoder: AudioEncoder, augment_views: int, seed: int) -> Any:
        ray = self.ray
        gpus = self.options.num_gpus
        if gpus > (available := ray.cluster_resources().get("GPU", 0)):
            raise AmrError(f"--num-gpus {gpus:g}: the Ray cluster has {available:g} GPUs; use CPU actors (--num-gpus 0) or add GPU nodes")
        clips = [{"clip": i, "audio": item.audio} for i, item in enumerate(items)]
        dataset = ray.data.from_items(clips, override_num_blocks=max(1, -(-len(clips) // CLIPS_PER_BLOCK)))
        windows = dataset.flat_map(decode_windows, fn_kwargs={"settings": encoder.audio, "augment_views": augment_views, "seed": seed})
        resources = {"num_gpus": gpus} if gpus else {"num_cpus": 1}
        return windows.map_batches(
            EncoderActor,
            fn_constructor_kwargs={"model": encoder.model, "settings": encoder.audio, "on_gpu": bool(gpus)},
            batch_size=BATCH_WINDOWS,
            compute=ray.data.ActorPoolStrategy(size=self.options.actors or _default_actors(ray, gpus)),
            **resources,
        )


def import_ray() -> ModuleType:
    try:
        import ray
        import ray.data
    except ImportError:
        raise AmrError("--engine ray needs Ray, which is not installed here: pip install amr[ray]") from None
    return ray


def _default_actors(ray: ModuleType, gpus_per_actor: float) -> int:
    """One actor per `gpus_per_actor` GPUs of the cluster; CPU actors on half its CPUs
    (the model costs about what decoding costs), at least one."""
    resources = ray.cluster_resources()
    if gpus_per_actor:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1)) // 2)


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray as this process finds it (already initialised: left so), else joined at
    `address`, else a local cluster on this machine's cores without a dashboard;
    what this starts it shuts down. Ray Data's progress bars and execution
    messages are off: amr shows its own progress. Several extractions inside one
    session share one start of Ray.

    A local cluster is not bound to 127.0.0.1: Ray maps the loopback address to
    the machine's own and listens on every interface; Ray's token authentication
    (on by default, token in ~/.ray/auth_token) is what keeps others out."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if address is None:
            ray.init(address="local", num_cpus=available_cores(), **quiet)
        else:
            _require_reachable(address)
            try:
                ray.init(address=address, **quiet)
            except ConnectionError as e:
                raise AmrError(
                    f"--ray-address {address}: could not join the Ray cluster there ({e}); where it uses token authentication "
                    "(Ray's default), run with RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token"
                ) from None
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars, context.print_on_execution_start = False, False
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
        data_logger.setLevel(level)
        if started:
            ray.shutdown()


def _require_reachable(address: str) -> None:
    """Refuse at once a host:port where nothing listens (Ray itself retries for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except (OSError, ValueError) as e:
        raise AmrError(f"--ray-address {address}: no Ray cluster answers there ({e}); give its head node as host:port, or auto") from None


# --- the CPU stage: clip -> log-mel windows ----------------------------------------------------


@functools.cache
def _front_end(settings: MelSettings) -> MelFrontEnd:
    """This worker process's front end. Decoding runs on one torch thread, as the
    local engine's workers do (Ray's CPU slots are what run in parallel)."""
    torch.set_num_threads(1)
    return MelFrontEnd(settings)


def decode_windows(row: dict[str, Any], settings: AudioSettings, augment_views: int, seed: int) -> Iterator[dict[str, Any]]:
    """One row per log-mel window of the clip: its number, the clip's window count
    (on the windows of its last segment; -1 before), the (n_mels, T) log-mel and,
    when augmenting, its (K, n_mels, T) views. A clip that fails to decode ends
    with a failure row (kind and reason set, no mel); its earlier windows are
    discarded by the driver."""
    front_end, n_mels = _front_end(settings.mel), settings.mel.n_mels
    number = 0
    while True:
        segment = decode_segment(row["audio"], number, front_end, settings.window_seconds, augment_views, seed)
        if segment.error is not None:
            empty = {"mel": np.zeros((n_mels, 0), np.float32)}
            if augment_views:
                empty["views"] = np.zeros((augment_views, n_mels, 0), np.float32)
            yield {"clip": row["clip"], "window": -1, "windows": -1, **empty, "kind": segment.error[0], "reason": segment.error[1]}
            return
        # Segments after the first hold at least one window (decode_segment reads a window
        # past a segment's end to set `more`), so the last segment always carries the count.
        windows = -1 if segment.more else segment.first_window + len(segment.mels)
        for k, mel in enumerate(segment.mels):
            views = {"views": segment.views[k]} if augment_views else {}
            window = {"clip": row["clip"], "window": segment.first_window + k, "windows": windows, "mel": mel}
            yield {**window, **views, "kind": "", "reason": ""}
        if not segment.more:
            return
        number += 1


# --- the actor stage: log-mel windows -> frames -----------------------------------------------


class EncoderActor:
    """A model actor: the checkpoint, folded and masked once (amr.audio.encoder), on one
    CPU thread or on the actor's GPU."""

    def __init__(self, model: MobileNetV3, settings: AudioSettings, on_gpu: bool):
        if on_gpu:
            self.encoder = AudioEncoder(model, settings, device=torch.device("cuda"))
        else:
            torch.set_num_threads(1)
            self.encoder = AudioEncoder(model, settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Frames (t, C) of each window row, and its views' (t, K, C) when augmenting;
        failure rows pass with no frames. Clean windows and views run in the same
        encode() call: one set of part-full batches per call."""
        rows = len(batch["kind"])
        ok = [i for i in range(rows) if not batch["kind"][i]]
        views = [len(batch["views"][i]) for i in ok] if "views" in batch else []  # K per row, when augmenting
        mels = [np.array(batch["mel"][i]) for i in ok]  # copies: Ray hands read-only views
        mels += [np.array(view) for i in ok if views for view in batch["views"][i]]
        encoded = iter(self.encoder.encode(mels))
        empty = np.zeros((0, self.encoder.embed_dim), np.float32)
        frames = [empty] * rows
        for i in ok:
            frames[i] = next(encoded)
        out = {name: batch[name] for name in ("clip", "window", "windows", "kind", "reason")}
        out["frames"] = frames
        if "views" in batch:
            augmented = [np.zeros((0, len(batch["views"][0]), self.encoder.embed_dim), np.float32)] * rows
            for i, k in zip(ok, views):
                augmented[i] = np.stack([next(encoded) for _ in range(k)], 1)
            out["augmented"] = augmented
        return out
