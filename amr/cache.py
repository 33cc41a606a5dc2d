"""The embedding cache: one HDF5 file holding what `amr extract` computed.

Layout (format ``amr-embedding-cache``, version 1)::

    attrs      format, version, and every CacheInfo field (model name, weights
               sha256, embedding size, sample and frame rate, augmented views,
               amr version)
    items      (N,)        utf-8 JSON of each amr.items.Item
    offsets    (N,)        int64: first row of the item's sequence in `frames`
    lengths    (N,)        int32: number of frames of the item's sequence
    tags       (N, 527)    float16: AudioSet tag probabilities of the clip
    frames     (F, C)      float16: all frame-embedding sequences, concatenated
    augmented  (F, K, C)   float16: K SpecAugmented views (only when K > 0)

Sequences are concatenated rather than stored one dataset per item, so that a
cache of 100k clips opens in milliseconds and reads in large contiguous chunks.
A cache is written by an extraction run as *parts* (small files, each complete,
renamed into place atomically) that are merged at the end; see amr.extract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from amr import __version__
from amr.errors import AmrError
from amr.hdf5 import open_versioned
from amr.items import Item

FORMAT = "amr-embedding-cache"
VERSION = 1


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

    def require_compatible(self, other: CacheInfo, what: str) -> None:
        """Refuse to mix embeddings of different audio models (or weights)."""
        mine = (self.audio_model, self.weights_sha256, self.embed_dim)
        theirs = (other.audio_model, other.weights_sha256, other.embed_dim)
        if mine != theirs:
            raise AmrError(
                f"{what} holds embeddings of {other.audio_model} (weights sha256 {other.weights_sha256[:12]}, "
                f"{other.embed_dim} dims), not {self.audio_model} ({self.weights_sha256[:12]}, {self.embed_dim} dims); "
                "extract it again with the same model or write to another file"
            )


@dataclass
class ClipEmbedding:
    """One extracted clip, as the extract stage hands it to the writer."""

    item: Item
    frames: np.ndarray  # (T, C)
    tags: np.ndarray  # (num_classes,)
    augmented: np.ndarray | None = None  # (T, K, C)


def read_info(path: Path) -> CacheInfo:
    with _open(path) as f:
        return _info_from_attrs(path, f)


def write_cache(path: Path, info: CacheInfo, clips: Iterable[ClipEmbedding]) -> int:
    """Write clips to a new cache file atomically (temp file, then rename).

    Streams: clips are appended as they come, so memory stays flat."""
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        for name, value in asdict(info).items():
            f.attrs[name] = value
        c, k = info.embed_dim, info.augment_views
        frames = f.create_dataset("frames", (0, c), np.float16, maxshape=(None, c), chunks=(256, c))
        augmented = None
        if k:
            augmented = f.create_dataset("augmented", (0, k, c), np.float16, maxshape=(None, k, c), chunks=(64, k, c))
        items, offsets, lengths, tags = [], [], [], []
        for clip in clips:
            start, n = frames.shape[0], clip.frames.shape[0]
            frames.resize(start + n, axis=0)
            frames[start:] = clip.frames.astype(np.float16)
            if augmented is not None:
                if clip.augmented is None or clip.augmented.shape != (n, k, c):
                    raise ValueError(f"clip {clip.item.id}: expected {k} augmented views of shape {(n, k, c)}")
                augmented.resize(start + n, axis=0)
                augmented[start:] = clip.augmented.astype(np.float16)
            items.append(clip.item.to_json())
            offsets.append(start)
            lengths.append(n)
            tags.append(clip.tags.astype(np.float16))
            count += 1
        f.create_dataset("items", data=np.array(items, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("offsets", data=np.array(offsets, dtype=np.int64))
        f.create_dataset("lengths", data=np.array(lengths, dtype=np.int32))
        tag_array = np.stack(tags) if tags else np.zeros((0, info.num_classes), np.float16)
        f.create_dataset("tags", data=tag_array)
    tmp.replace(path)
    return count


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
    return open_versioned(path, FORMAT, VERSION, "embedding cache")


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
    )

