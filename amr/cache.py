"""The embedding cache: one HDF5 file holding what `amr extract` computed.

Layout (format ``amr-embedding-cache``, version 3)::

    attrs            format, version, and every CacheInfo field (model name,
                     weights sha256, embedding size, sample and frame rate,
                     augmented views, the segment grid, amr version)
    items            (N,)        utf-8 JSON of each amr.items.Item
    offsets          (N,)        int64: first row of the item's sequence in `frames`
    lengths          (N,)        int32: number of frames of the item's sequence
    tags             (N, 527)    float16: AudioSet tag probabilities of the clip
    frames           (F, C)      float16: all frame-embedding sequences, concatenated
    augmented        (F, K, C)   float16: K SpecAugmented views (only when K > 0)
    segment_offsets  (N,)        int64: first row of the item's segments in `segment_spans`
    segment_counts   (N,)        int32: its number of segments; 0 for a clip the grid keeps whole
    segment_spans    (S, 2)      int32: [start, end) frames of each segment of a long clip
    segment_tags     (S, 527)    float16: the tag probabilities of each such segment

Long recordings (longer than the grid's ``long_clip_seconds``, see
amr.segments) are indexed as overlapping segments; the tagger's probabilities
of each segment, sigmoid(head(mean of its frames)), are computed at extract
time from the float32 frames (as the clip's tags are) and stored here with
their spans, so an index cuts exactly the spans the tags belong to. A clip the
grid keeps whole stores nothing extra: its one segment is the clip, with the
clip's tags. Caches of different grids are not merged (amr.extraction refuses).

Sequences are concatenated rather than stored one dataset per item, so that a
cache of 100k clips opens in milliseconds and reads in large contiguous chunks.
A cache is written by an extraction run as *parts* (small files, each complete,
renamed into place atomically) that are merged at the end; see amr.extraction.
Every write goes through a temporary name unique to the writer, so a killed
or concurrent writer never leaves a half-written file under a cache's name.

Version 3 added the segment grid and the segment datasets; a version 2 cache
(same frames, no segment tags) is refused with a message to extract again, as
nothing had been released with it. Version 2's frames are the pretrained
model's at every clip length (amr.audio.encoder). Version 1 padded partial windows
with silence, which changed their frames (cosine ~0.9), so a version 1 cache
is refused rather than mixed with exact ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import h5py
import numpy as np

from amr import __version__
from amr.errors import AmrError
from amr.files import atomic_output
from amr.hdf5 import created, open_versioned
from amr.items import Item
from amr.segments import SegmentGrid

FORMAT = "amr-embedding-cache"
VERSION = 3
_OLDER_VERSIONS = {  # what each older version lacks, for the message that refuses it
    1: "whose frames of clips that are not a multiple of 10 s differ from the model's",
    2: "without the tags of long recordings' segments",
}


@dataclass(frozen=True)
class CacheInfo:
    """Everything that decides whether two caches hold comparable embeddings."""

    audio_model: str
    weights_sha256: str
    embed_dim: int
    num_classes: int
    sample_rate: int
    frame_rate: float
    window_seconds: float
    augment_views: int
    amr_version: str = __version__
    # the SegmentGrid the segment tags were computed on (flat, so that the info stays a flat record in HDF5 and JSON)
    segment_seconds: float = SegmentGrid.seconds
    segment_hop: float = SegmentGrid.hop
    long_clip_seconds: float = SegmentGrid.long_seconds

    @property
    def segments(self) -> SegmentGrid:
        return SegmentGrid(self.segment_seconds, self.segment_hop, self.long_clip_seconds)

    @property
    def frames_per_window(self) -> int:
        """Frames of one full model window: ceil(window_seconds * frame_rate), 32 for 10 s at 3.125
        frames per second (the encoder's stride-32 output over 1000 mel frames rounds up)."""
        return math.ceil(round(self.window_seconds * self.frame_rate, 6))

    def seconds(self, frame: int) -> float:
        """Where frame ``frame`` of a clip's sequence starts in the recording, in seconds.

        Not ``frame / frame_rate``: each window of ``window_seconds`` gives
        ``frames_per_window`` frames, one more than its length times the frame
        rate (its last frame covers the window's last 0.08 s), so that would
        run ahead by 2.4 % (a minute per 40 minutes). One past a clip's last
        frame is at most 1 / frame_rate beyond its end."""
        window, within = divmod(int(frame), self.frames_per_window)
        return window * self.window_seconds + within / self.frame_rate

    def require_compatible(
        self,
        other: CacheInfo,
        what: str,
        expected: str = "not",
        remedy: str = "extract it again with the same model or write to another file",
    ) -> None:
        """Refuse to mix embeddings of different audio models (or weights): the one
        check of an audio model, for caches, indexes and checkpoints. ``what``
        holds ``other``; ``expected`` introduces this model in the message."""
        mine = (self.audio_model, self.weights_sha256, self.embed_dim)
        theirs = (other.audio_model, other.weights_sha256, other.embed_dim)
        if mine != theirs:
            raise AmrError(
                f"{what} holds embeddings of {other.audio_model} (weights sha256 {other.weights_sha256[:12]}, "
                f"{other.embed_dim} dims), {expected} {self.audio_model} ({self.weights_sha256[:12]}, {self.embed_dim} dims); "
                f"{remedy}"
            )


@dataclass
class Segment:
    """A span of an item's frame sequence and the tagger's class probabilities of it."""

    start: int  # first frame of the span in the item's sequence
    end: int  # one past its last frame
    tags: np.ndarray  # (num_classes,) float32: sigmoid(head(mean of frames[start:end]))


@dataclass
class ClipEmbedding:
    """One extracted clip, as the extract stage hands it to the writer.

    ``segments``: a long clip's segments (the spans of the cache's grid, each
    with its tags; see AudioEncoder.segments); None, or the one whole-clip
    segment, for a clip the grid keeps whole."""

    item: Item
    frames: np.ndarray  # (T, C)
    tags: np.ndarray  # (num_classes,)
    augmented: np.ndarray | None = None  # (T, K, C)
    segments: list[Segment] | None = None


def read_info(path: Path) -> CacheInfo:
    with _open(path) as f:
        return _info_from_attrs(path, f)


def write_cache(path: Path, info: CacheInfo, clips: Iterable[ClipEmbedding]) -> int:
    """Write clips to a new cache file atomically (a temporary file unique to
    this writer, renamed into place; removed if anything fails).

    Streams: clips are appended as they come, so memory stays flat."""
    with atomic_output(path) as tmp:
        return _write(tmp, path, info, clips)


_WRITE_BYTES = 16 << 20  # frames are buffered up to this size between writes: a few large HDF5 writes, flat memory


def _write(tmp: Path, path: Path, info: CacheInfo, clips: Iterable[ClipEmbedding]) -> int:
    """Write the cache to ``tmp``; a full disk is an OSError naming ``path`` (amr.hdf5.created)."""
    c, k = info.embed_dim, info.augment_views
    buffer_rows = max(256, _WRITE_BYTES // (2 * c * (1 + k)))
    with created(tmp, path) as (f, check):
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        for name, value in asdict(info).items():
            f.attrs[name] = value
        frames = f.create_dataset("frames", (0, c), np.float16, maxshape=(None, c), chunks=(256, c))
        augmented = f.create_dataset("augmented", (0, k, c), np.float16, maxshape=(None, k, c), chunks=(64, k, c)) if k else None
        items, offsets, lengths, tags = [], [], [], []
        segment_counts: list[int] = []
        segment_spans: list[tuple[int, int]] = []
        segment_tags: list[np.ndarray] = []
        pending: list[tuple[np.ndarray, np.ndarray | None]] = []
        rows = 0
        for clip in clips:
            n = clip.frames.shape[0]
            if augmented is not None and (clip.augmented is None or clip.augmented.shape != (n, k, c)):
                raise ValueError(f"clip {clip.item.id}: expected {k} augmented views of shape {(n, k, c)}")
            long_segments = _long_segments(clip, info)
            pending.append((clip.frames.astype(np.float16), None if augmented is None else clip.augmented.astype(np.float16)))
            items.append(clip.item.to_json())
            offsets.append(rows)
            lengths.append(n)
            tags.append(clip.tags.astype(np.float16))
            segment_counts.append(len(long_segments))
            segment_spans += [(segment.start, segment.end) for segment in long_segments]
            segment_tags += [segment.tags.astype(np.float16) for segment in long_segments]
            rows += n
            if rows - frames.shape[0] >= buffer_rows:
                _append(frames, augmented, pending)
                check()
        _append(frames, augmented, pending)
        f.create_dataset("items", data=np.array(items, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("offsets", data=np.array(offsets, dtype=np.int64))
        f.create_dataset("lengths", data=np.array(lengths, dtype=np.int32))
        f.create_dataset("tags", data=_rows(tags, info.num_classes))
        counts = np.array(segment_counts, dtype=np.int32)
        f.create_dataset("segment_offsets", data=(np.cumsum(counts) - counts).astype(np.int64))
        f.create_dataset("segment_counts", data=counts)
        f.create_dataset("segment_spans", data=np.array(segment_spans, dtype=np.int32).reshape(-1, 2))
        f.create_dataset("segment_tags", data=_rows(segment_tags, info.num_classes))
    return len(items)


def _long_segments(clip: ClipEmbedding, info: CacheInfo) -> list[Segment]:
    """The segments to store for a clip: [] when the grid keeps it whole, else
    its segments, which must be exactly the grid's spans."""
    spans = info.segments.spans(clip.frames.shape[0], info.frames_per_window, info.window_seconds)
    segments = clip.segments or []
    given = [(segment.start, segment.end) for segment in segments]
    if len(spans) == 1:
        if given not in ([], spans):
            raise ValueError(f"clip {clip.item.id}: a clip the grid keeps whole has one segment {spans[0]}, got {given}")
        return []
    if given != spans:
        raise ValueError(f"clip {clip.item.id}: {clip.frames.shape[0]} frames need the segments {spans} of the grid, got {given}")
    if any(segment.tags.shape != (info.num_classes,) for segment in segments):
        raise ValueError(f"clip {clip.item.id}: segment tags must have shape ({info.num_classes},)")
    return segments


def _rows(rows: list[np.ndarray], width: int) -> np.ndarray:
    """(len(rows), width) float16."""
    return np.stack(rows) if rows else np.zeros((0, width), np.float16)


def _append(frames: h5py.Dataset, augmented: h5py.Dataset | None, pending: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
    """Append the buffered clips' frames (and views) in one write each, and empty the buffer."""
    if not pending:
        return
    start = frames.shape[0]
    block = np.concatenate([clip_frames for clip_frames, _ in pending])
    frames.resize(start + len(block), axis=0)
    frames[start:] = block
    if augmented is not None:
        augmented.resize(start + len(block), axis=0)
        augmented[start:] = np.concatenate([views for _, views in pending])
    pending.clear()


class EmbeddingCache:
    """Read access to a cache file. Item order is storage order."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = _open(self.path)
        f = self._file
        self.info = _info_from_attrs(self.path, f)
        self.items: list[Item] = [Item.from_json(s) for s in f["items"].asstr()[:]]
        self.offsets: np.ndarray = f["offsets"][:]
        self.lengths: np.ndarray = f["lengths"][:]
        self.tags: np.ndarray = f["tags"][:].astype(np.float32)
        self._segment_offsets: np.ndarray = f["segment_offsets"][:]
        self._segment_counts: np.ndarray = f["segment_counts"][:]
        self._segment_spans: np.ndarray = f["segment_spans"][:]
        self._position = {item.id: i for i, item in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def index_of(self, item_id: str) -> int:
        try:
            return self._position[item_id]
        except KeyError:
            raise AmrError(f"{self.path}: no item with id {item_id!r}") from None

    def sequence(self, i: int, view: int | None = None) -> np.ndarray:
        """The (T, C) float32 frame sequence of item i; ``view`` k picks the
        k-th SpecAugmented version instead of the clean one."""
        start, n = int(self.offsets[i]), int(self.lengths[i])
        if view is None:
            return self._file["frames"][start : start + n].astype(np.float32)
        if not 0 <= view < self.info.augment_views:
            raise AmrError(f"{self.path}: has {self.info.augment_views} augmented views, asked for view {view}")
        return self._file["augmented"][start : start + n, view].astype(np.float32)

    def stored(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Item i's sequence and augmented views exactly as stored (float16)."""
        start, n = int(self.offsets[i]), int(self.lengths[i])
        views = self._file["augmented"][start : start + n] if self.info.augment_views else None
        return self._file["frames"][start : start + n], views

    @property
    def segments_per_item(self) -> np.ndarray:
        """(N,) int: each item's number of segments (1 for a clip the grid keeps whole), without reading tags."""
        return np.maximum(self._segment_counts, 1)

    def segments(self, i: int) -> list[Segment]:
        """Item i's segments in time order, each with its tag probabilities
        (float32): a clip the grid (``info.segments``) keeps whole is one
        segment, the whole clip with the clip's tags."""
        count = int(self._segment_counts[i])
        if count == 0:
            return [Segment(0, int(self.lengths[i]), self.tags[i])]
        start = int(self._segment_offsets[i])
        tags = self._file["segment_tags"][start : start + count].astype(np.float32)
        return [Segment(int(a), int(b), row) for (a, b), row in zip(self._segment_spans[start : start + count], tags)]

    def all_frames(self, augmented: bool = False) -> np.ndarray:
        """Every sequence at once, float16, indexed by offsets/lengths: one
        contiguous read, for training. (F, C), or (F, K, C) when augmented."""
        name = "augmented" if augmented else "frames"
        if name not in self._file:
            raise AmrError(f"{self.path}: holds no augmented views (extract with --augment-views K)")
        return self._file[name][:]


def open_caches(paths: Sequence[Path]) -> list[EmbeddingCache]:
    """Open several caches that must hold embeddings of the same audio model."""
    caches = [EmbeddingCache(p) for p in paths]
    for cache in caches[1:]:
        caches[0].info.require_compatible(cache.info, str(cache.path))
    return caches


def _open(path: Path) -> h5py.File:
    try:
        return open_versioned(path, FORMAT, VERSION, "embedding cache")
    except AmrError as e:
        version = _stored_version(path)
        if version in _OLDER_VERSIONS:
            raise AmrError(
                f"{path}: an embedding cache of an older amr (format version {version}), {_OLDER_VERSIONS[version]}; "
                "delete it and extract again"
            ) from e
        raise


def _stored_version(path: Path) -> int | None:
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs["version"]) if f.attrs.get("format") == FORMAT else None
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _info_from_attrs(path: Path, f: h5py.File) -> CacheInfo:
    try:
        values = {field.name: f.attrs[field.name] for field in fields(CacheInfo)}
    except KeyError as e:
        raise AmrError(f"{path}: cache attribute {e} is missing") from e
    return CacheInfo(
        audio_model=str(values["audio_model"]),
        weights_sha256=str(values["weights_sha256"]),
        embed_dim=int(values["embed_dim"]),
        num_classes=int(values["num_classes"]),
        sample_rate=int(values["sample_rate"]),
        frame_rate=float(values["frame_rate"]),
        window_seconds=float(values["window_seconds"]),
        augment_views=int(values["augment_views"]),
        amr_version=str(values["amr_version"]),
        segment_seconds=float(values["segment_seconds"]),
        segment_hop=float(values["segment_hop"]),
        long_clip_seconds=float(values["long_clip_seconds"]),
    )
