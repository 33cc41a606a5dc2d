"""What the page filters and labels results by: each indexed item's folder,
UCS category, duration and whether it has metadata; and the UCS category the
index's own model suggests for an item that has none.

Facts are read from the index once (the first time they are needed): an
item's folder is the folder part of its id (``Doors/Wood/x.wav`` is in
``Doors/Wood`` and, for the folder filter, in ``Doors`` too); its category the
``category`` and ``ucs_catid`` its UCS name gave (`amr.ucs`); its duration the
end of its last segment (the file's length rounded up to the audio model's
frame, 0.32 s for mn04); it has metadata when any text field the encoders
read (`amr.items.METADATA_FIELDS`) is set.

A filtered text search ranks more and more of the index (four times the
page, then doubling) until the page is full of items that pass or every item
was ranked: a filter that most items pass costs about one search; a rare one
up to ranking the whole index.

Suggestions score the item's vector (its best segment's row) against the
752 UCS entries' texts encoded as queries by the index's retriever (the
texts of `amr.ucs.Category.text`, encoded once per server): the ranking
`amr query` would give for each entry, read the other way round; with a
zero-shot index, what ``amr categorize`` computes for fused audio and
metadata (without leaving out the words of an item's own CatID, which an
item with a suggestion does not have).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from amr.errors import AmrError
from amr.items import METADATA_FIELDS
from amr.query import Failure, QueryInput, Result, Searcher, run_queries
from amr.ucs import categories


@dataclass(frozen=True)
class Filters:
    """None: not filtered by it."""

    folder: str | None = None
    category: str | None = None  # a UCS Category ("DOORS") or CatID ("DOORWood")
    min_duration: float | None = None
    max_duration: float | None = None
    has_metadata: bool | None = None

    def __bool__(self) -> bool:
        return any(value is not None and value != "" for value in vars(self).values())


class Library:
    """The facts of an index's items, and the filters and suggestions over them."""

    def __init__(self, searcher: Searcher):
        self.searcher = searcher
        self.index = searcher.index

    @cached_property
    def facts(self) -> list[dict[str, Any] | None]:
        """Per item slot: its folder, category, catid, duration and has_metadata (None for a replaced item)."""
        index = self.index
        ends = np.zeros(index.items_count, np.float64)
        np.maximum.at(ends, index.row_item, index.spans[:, 1])
        facts: list[dict[str, Any] | None] = []
        for number, item_id in enumerate(index.ids()):
            if item_id is None:
                facts.append(None)
                continue
            metadata = index.item(number).metadata
            facts.append(
                {
                    "folder": item_id.rpartition("/")[0],
                    "category": metadata.get("category"),
                    "catid": metadata.get("ucs_catid"),
                    "duration": float(ends[number]),
                    "has_metadata": any(metadata.get(name) for name in METADATA_FIELDS),
                }
            )
        return facts

    def passes(self, number: int, filters: Filters) -> bool:
        fact = self.facts[number]
        if fact is None:
            return False
        if filters.folder and not (fact["folder"] == filters.folder or fact["folder"].startswith(filters.folder.rstrip("/") + "/")):
            return False
        if filters.category and filters.category not in (fact["category"], fact["catid"]):
            return False
        if filters.min_duration is not None and fact["duration"] < filters.min_duration:
            return False
        if filters.max_duration is not None and fact["duration"] > filters.max_duration:
            return False
        return filters.has_metadata is None or fact["has_metadata"] == filters.has_metadata

    def facets(self) -> dict[str, Any]:
        """The folders (each with its parents) and UCS categories of the items, with counts, and the range of durations."""
        folders: dict[str, int] = {}
        found: dict[str, int] = {}
        durations = []
        for fact in self.facts:
            if fact is None:
                continue
            parts = fact["folder"].split("/") if fact["folder"] else []
            for depth in range(1, len(parts) + 1):
                name = "/".join(parts[:depth])
                folders[name] = folders.get(name, 0) + 1
            if fact["category"]:
                found[fact["category"]] = found.get(fact["category"], 0) + 1
            durations.append(fact["duration"])
        return {
            "folders": [{"folder": name, "items": n} for name, n in sorted(folders.items())],
            "categories": [{"category": name, "items": n} for name, n in sorted(found.items())],
            "duration": [min(durations, default=0.0), max(durations, default=0.0)],
            "ucs": [{"catid": c.catid, "category": c.category, "category_full": c.full} for c in categories().values()],
        }

    def search(self, text: str | None, filters: Filters, offset: int, limit: int) -> tuple[list[Result], int]:
        """One page of the items that pass ``filters``, ranked by ``text``
        (None: in index order, scored 0, each its whole length), and how many
        pass (for a ranked search: a lower bound when not every item was ranked)."""
        passing = [n for n in range(self.index.items_count) if self.passes(n, filters)]
        if text is None:
            results = [self._unranked(rank, n) for rank, n in enumerate(passing[offset : offset + limit], start=offset + 1)]
            return results, len(passing)
        wanted, top = offset + limit, 4 * (offset + limit)
        while True:
            top = min(top, self.index.live_items)
            outcomes = list(run_queries(self.searcher, [QueryInput("1", text)], top, explain_scores=True))
            if outcomes and isinstance(outcomes[0], Failure):
                raise AmrError(outcomes[0].error)
            kept = [r for r in outcomes if isinstance(r, Result) and self.passes(self.index.number(r.id), filters)]
            if len(kept) >= wanted or top >= self.index.live_items:
                break
            top *= 2
        ranked = [result._replace(rank=rank) for rank, result in enumerate(kept, start=1)]
        return ranked[offset:wanted], len(passing)

    def _unranked(self, rank: int, number: int) -> Result:
        item = self.index.item(number)
        duration = round(float(self.facts[number]["duration"]), 3)  # type: ignore[index]
        return Result("", "", rank, 0.0, item.id, item.audio, item.metadata, 0.0, duration)

    @cached_property
    def ucs_queries(self) -> np.ndarray:
        """(752, dim) the UCS entries' texts encoded as queries of this index."""
        return self.searcher.text_encoder().encode_queries([entry.text for entry in categories().values()])

    def suggestion(self, item_id: str, start: float) -> dict[str, Any] | None:
        """The UCS category this index's model ranks first for the item's segment at ``start``; None for a UCS-named item."""
        number = self.index.number(item_id)
        if number is None or (self.facts[number] or {}).get("catid"):
            return None
        rows = np.flatnonzero(self.index.row_item == number)
        row = int(rows[np.argmin(np.abs(self.index.spans[rows, 0] - start))])
        scores = self.ucs_queries @ np.asarray(self.index.vectors[row], np.float32)
        best = int(np.argmax(scores))
        entry = list(categories().values())[best]
        return {"catid": entry.catid, "category": entry.category, "category_full": entry.full, "score": round(float(scores[best]), 6)}
