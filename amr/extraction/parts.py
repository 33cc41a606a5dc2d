"""The resumable part files of a run, what is left to compute, and the merge into the final cache.

A `PartWriter` writes finished clips in *parts* (complete cache files, renamed
into place) every PART_SIZE clips; `pending` skips what the cache and the parts
already hold (by `item_key`), and `merge_parts` writes the final cache from
them and deletes the parts it merged.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from amr.cache import CacheInfo, ClipEmbedding, EmbeddingCache, write_cache
from amr.errors import AmrError
from amr.items import Item
from amr.segments import SegmentGrid

PART_SIZE = 256  # clips per part file


def parts_folder(cache: Path) -> Path:
    """Where a run writes its parts: ``<cache>.parts/``."""
    return cache.with_name(cache.name + ".parts")


ItemKey = tuple[str, str, int | None, int | None]


def item_key(item: Item) -> ItemKey:
    """A clip is done when an earlier run embedded the same id from the same
    path, with the same file size and modification time (None where unknown:
    None matches only None, so a clip is recomputed rather than wrongly reused)."""
    return item.id, item.audio, item.audio_size, item.audio_mtime_ns


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


def remove_stale_temporaries(output: Path, parts: Path) -> None:
    """Temporary files of killed runs (amr.files.temporary_path names): no other
    run can be writing them while this one holds the lock."""
    stale = list(output.parent.glob(f".{output.name}.*.tmp"))
    if parts.is_dir():
        stale += parts.glob(".part-*.tmp")
    for path in stale:
        path.unlink(missing_ok=True)
