"""Zero-shot UCS categorisation: the CatIDs a cache's items most likely belong to.

Each of the 752 UCS entries becomes one text — its category and subcategory,
explanation and synonyms (`amr.ucs.Category.text`) — embedded once per run
by the zero-shot retriever's text encoder. An item is scored against every
entry with the zero-shot machinery (`amr.model.zeroshot`): cosine between the
entry's embedding and the item's fused vector α·a + β·m, a the label–text
bridge of its tag probabilities (what the tagger hears), m its metadata text.
``audio`` and ``metadata`` use one half only; an item without metadata is
scored from its audio (``source`` says which was used).

An item whose file name is UCS already carries its CatID's category,
subcategory and synonyms as keywords: those words are left out of the
metadata it is scored on (what would be left is the name's own answer), and
the item reports whether its audio agrees — its CatID among the audio's top
``k`` — and that CatID's rank by the audio among all 752.

Rename plans (`plan_renames`, `apply_renames`, `undo_renames`) give each
item whose name is not UCS the name ``CatID_FXName_CreatorID_SourceID.ext``
in its own folder, the CatID its top suggestion, the FXName its title (else
its cleaned file name). Applying refuses any plan where two files would get
one name or a target exists, before it changes anything; it never replaces a
file (a hard link then unlink, where the file system has links), and writes
an undo file (format ``amr-rename-undo``, version 1, one JSON line per
rename after a header line) line by line before each rename, so an
interrupted run is undone too.
"""

from __future__ import annotations

import csv
import errno
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from amr.cache import EmbeddingCache
from amr.config import CategorizeFormat, CategorizeSource
from amr.datasets.folder import clean_name
from amr.errors import AmrError
from amr.items import Item
from amr.model.text import TextEncoder
from amr.model.zeroshot import ZeroShotConfig, ZeroShotRetriever
from amr.ucs import UCS_VERSION, categories, ucs_file_name

UNDO_FORMAT = "amr-rename-undo"
UNDO_VERSION = 1


@dataclass(frozen=True)
class Suggestion:
    catid: str
    category_full: str
    score: float


@dataclass
class Categorized:
    """One item's suggestions; ``ucs_catid`` its name's CatID (None if not UCS-named)."""

    id: str
    audio: str
    source: str  # what the suggestions come from: fused, audio, metadata, or none (metadata only, and the item has none)
    suggestions: list[Suggestion]
    ucs_catid: str | None = None
    audio_agrees: bool | None = None  # its CatID among the audio's top k
    audio_rank: int | None = None  # its CatID's rank (1 = first) by the audio among all entries
    rename: str | None = None  # the planned path, if a rename plan was made for it
    title: str | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        record = {
            "id": self.id,
            "audio": self.audio,
            "ucs_catid": self.ucs_catid,
            "source": self.source,
            "suggestions": [vars(s) for s in self.suggestions],
            "audio_agrees": self.audio_agrees,
            "audio_rank": self.audio_rank,
        }
        if self.rename is not None:
            record["rename"] = self.rename
        return record


class UcsScorer:
    """The UCS entries embedded once, and items scored against them."""

    def __init__(self, text: TextEncoder | None = None, audio_weight: float = 1.0, metadata_weight: float = 1.0):
        self.retriever = ZeroShotRetriever(ZeroShotConfig(audio_weight=audio_weight, metadata_weight=metadata_weight), text)
        self.entries = list(categories().values())
        self.embeddings = self.retriever.text.encode([entry.text for entry in self.entries], pooling=self.retriever.pooling, normalize=True)

    def scores(self, tags: np.ndarray, items: Sequence[Item], source: CategorizeSource) -> tuple[np.ndarray, np.ndarray]:
        """(n, 752) cosine of each item's vector with each entry, and (n,) whether the item had a vector for ``source``."""
        audio = self.retriever.audio_vectors(tags)
        metadata, present = self.retriever.metadata_vectors([without_own_category(item) for item in items])
        if source is CategorizeSource.audio:
            vectors, usable = audio, np.ones(len(items), bool)
        elif source is CategorizeSource.metadata:
            vectors, usable = metadata, present
        else:
            fused = self.retriever.fuse(audio, metadata)
            vectors, usable = fused[:, : audio.shape[1]] + fused[:, audio.shape[1] :], np.ones(len(items), bool)
        return vectors @ self.embeddings.T, usable

    def top(self, row: np.ndarray, k: int) -> list[Suggestion]:
        order = np.argsort(-row, kind="stable")[:k]
        return [Suggestion(self.entries[j].catid, self.entries[j].full, round(float(row[j]), 6)) for j in order]

    def rank_of(self, row: np.ndarray, catid: str) -> int:
        position = next(j for j, entry in enumerate(self.entries) if entry.catid == catid)
        return int((row > row[position]).sum()) + 1


def without_own_category(item: Item) -> Item:
    """A UCS-named item without the keywords its CatID gave it (see the module docstring)."""
    catid = item.metadata.get("ucs_catid")
    entry = categories().get(catid) if isinstance(catid, str) else None
    if entry is None:
        return item
    given = {word.lower() for word in (entry.category, entry.subcategory, *entry.synonyms)}
    keywords = [word for word in item.metadata.get("keywords", []) if word.lower() not in given]
    metadata = {name: value for name, value in item.metadata.items() if name != "keywords"}
    if keywords:
        metadata["keywords"] = keywords
    return replace(item, metadata=metadata)


def categorize(
    cache_path: Path, top: int = 3, source: CategorizeSource = CategorizeSource.fused, scorer: UcsScorer | None = None, batch: int = 1024
) -> Iterable[Categorized]:
    """Every item of the cache with its top ``top`` CatIDs, in cache order."""
    scorer = scorer or UcsScorer()
    with EmbeddingCache(cache_path) as cache:
        items, all_tags = cache.items, cache.tags
    for start in range(0, len(items), batch):
        chunk, tags = items[start : start + batch], all_tags[start : start + batch]
        scores, usable = scorer.scores(tags, chunk, source)
        audio_scores = scores if source is CategorizeSource.audio else scorer.scores(tags, chunk, CategorizeSource.audio)[0]
        for item, row, has, heard in zip(chunk, scores, usable, audio_scores, strict=True):
            catid = item.metadata.get("ucs_catid")
            result = Categorized(
                item.id,
                item.audio,
                source.value if has else "none",
                scorer.top(row, top) if has else [],
                title=_as_text(item.metadata.get("title")),
            )
            if isinstance(catid, str) and catid in categories():
                result.ucs_catid = catid
                result.audio_rank = scorer.rank_of(heard, catid)
                result.audio_agrees = result.audio_rank <= top
            yield result


def plan_renames(results: Iterable[Categorized], creator: str, source: str) -> Iterable[Categorized]:
    """The results, each not yet UCS-named one with a suggestion given the path it would be renamed to."""
    for result in results:
        if result.ucs_catid is None and result.suggestions:
            path = Path(result.audio)
            fx_name = result.title or clean_name(path.stem) or path.stem
            result.rename = str(path.with_name(ucs_file_name(result.suggestions[0].catid, fx_name, creator, source, path.suffix)))
        yield result


def apply_renames(renames: Sequence[tuple[str, str]], undo_path: Path) -> int:
    """Rename each (old, new) path; refuses collisions before any change (see
    the module docstring). Returns the number renamed."""
    _refuse_collisions(renames)
    undo_path.parent.mkdir(parents=True, exist_ok=True)
    with open(undo_path, "x", encoding="utf-8") as undo:
        undo.write(json.dumps({"format": UNDO_FORMAT, "version": UNDO_VERSION, "ucs": UCS_VERSION}) + "\n")
        for old, new in renames:
            undo.write(json.dumps({"from": new, "to": old}, ensure_ascii=False) + "\n")
            undo.flush()
            os.fsync(undo.fileno())
            _rename_no_replace(Path(old), Path(new))
    return len(renames)


def undo_renames(undo_path: Path) -> int:
    """Put back every name an undo file records (those already back are
    passed over, so an undo can be run again); returns the number renamed."""
    renames = [(old, new) for old, new in read_undo(undo_path) if Path(old).exists() or not Path(new).exists()]
    _refuse_collisions(renames)
    for old, new in renames:
        _rename_no_replace(Path(old), Path(new))
    return len(renames)


def read_undo(path: Path) -> list[tuple[str, str]]:
    """The (current, original) paths of an undo file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]) if lines else {}
        if not isinstance(header, dict) or header.get("format") != UNDO_FORMAT:
            raise AmrError(f"{path}: not an amr rename undo file")
        if header.get("version") != UNDO_VERSION:
            raise AmrError(f"{path}: undo file version {header.get('version')}, this amr reads version {UNDO_VERSION}")
        records = [json.loads(line) for line in lines[1:] if line.strip()]
        return [(str(r["from"]), str(r["to"])) for r in records]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise AmrError(f"{path}: cannot read the undo file ({e})") from e


def _refuse_collisions(renames: Sequence[tuple[str, str]]) -> None:
    targets: dict[str, str] = {}
    for old, new in renames:
        if not Path(old).exists():
            raise AmrError(f"{old}: no such file to rename; nothing was renamed")
        if new in targets:
            raise AmrError(f"{old} and {targets[new]} would both be renamed to {new}; nothing was renamed")
        if os.path.lexists(new):
            raise AmrError(f"{new} exists already ({old} would be renamed to it); nothing was renamed")
        targets[new] = old


def _rename_no_replace(old: Path, new: Path) -> None:
    try:
        os.link(old, new)  # fails if `new` exists: never replaces a file
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        if os.path.lexists(new):  # a file system without hard links: check, then rename
            raise AmrError(f"{new} appeared while renaming; {old} is left as it is") from None
        os.rename(old, new)
    else:
        os.unlink(old)


def write_results(results: Iterable[Categorized], fmt: CategorizeFormat, out: IO[str], top: int) -> list[Categorized]:
    """Each result as a JSON line, a CSV row (columns catid_1, score_1, ... up
    to ``top``) or a table row (printed at the end); returns them."""
    written = []
    columns = ["id", "audio", "ucs_catid", "source"]
    columns += [f"{name}_{k}" for k in range(1, top + 1) for name in ("catid", "score")] + ["audio_agrees", "audio_rank", "rename"]
    rows = csv.writer(out) if fmt is CategorizeFormat.csv else None
    if rows is not None:
        rows.writerow(columns)
    for result in results:
        written.append(result)
        if fmt is CategorizeFormat.jsonl:
            out.write(json.dumps(result.record(), ensure_ascii=False) + "\n")
        elif rows is not None:
            rows.writerow(_cells(result, top))
    if fmt is CategorizeFormat.table:
        _table(written, out)
    out.flush()
    return written


def _cells(result: Categorized, top: int) -> list[str]:
    cells = [result.id, result.audio, result.ucs_catid or "", result.source]
    for k in range(top):
        found = result.suggestions[k] if k < len(result.suggestions) else None
        cells += [found.catid, f"{found.score:.6f}"] if found else ["", ""]
    agrees = "" if result.audio_agrees is None else str(result.audio_agrees).lower()
    return cells + [agrees, "" if result.audio_rank is None else str(result.audio_rank), result.rename or ""]


def _table(results: list[Categorized], out: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"UCS {UCS_VERSION} suggestions", title_justify="left")
    for column in ("id", "ucs_catid", "suggestions", "audio agrees", "rename"):
        table.add_column(column, overflow="fold")
    for r in results:
        suggestions = ", ".join(f"{s.catid} {s.score:.2f}" for s in r.suggestions) or f"(no {r.source})"
        agrees = "" if r.audio_agrees is None else f"{'yes' if r.audio_agrees else 'no'} (rank {r.audio_rank})"
        table.add_row(r.id, r.ucs_catid or "", suggestions, agrees, Path(r.rename).name if r.rename else "")
    Console(file=out, highlight=False, width=None if out.isatty() else 200).print(table)


def _as_text(value: object) -> str | None:
    return value if isinstance(value, str) else None
