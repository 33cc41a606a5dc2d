"""UCS, the Universal Category System (version 8.2.1): the category list and
file-naming convention professional sound effects libraries use.

The list (amr/resources/ucs-8.2.1-en.json, CC0, its licence beside it) has
752 entries, one per CatID, each with a Category, SubCategory, explanation
and synonyms. A UCS file name is, in blocks separated by ``_``::

    CatID(-UserCategory)_(VendorCategory-)FXName_CreatorID_SourceID(_UserData)

Only the CatID is required. A name is UCS when its first block, without a
``-UserCategory`` tail, is a CatID of the list, compared case-sensitively as
the convention requires (``doorwood_...`` and ``DOORWOOD_...`` are not). How
the blocks are read, where the convention leaves a choice:

- the FXName is the second block; text before its first ``-`` (when there is
  text on both sides) is the VendorCategory;
- CreatorID and SourceID are the third and fourth blocks; everything after
  them (``_`` kept) is the UserData;
- an empty block is no value (``DOORWood__TN_DORY`` has no FXName).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from amr.errors import AmrError

UCS_VERSION = "8.2.1"
UCS_LIST = Path(__file__).parent / "resources" / f"ucs-{UCS_VERSION}-en.json"
UCS_ENTRIES = 752  # in the list, one per CatID: the most CatIDs `amr categorize --top` can give (known without reading it)
# The metadata fields a UCS name gives, besides ``title`` and ``keywords``.
UCS_FIELDS = ("ucs_catid", "category", "subcategory", "category_full", "vendor_category", "creator", "source", "user_category", "user_data")
# What a block of a generated name may not hold: the block separator and characters file systems refuse.
_NOT_IN_BLOCK = re.compile(r'[_/\\:*?"<>|\x00-\x1f]+')


@dataclass(frozen=True)
class Category:
    """One entry of the list."""

    catid: str
    category: str
    subcategory: str
    explanation: str
    synonyms: tuple[str, ...]

    @property
    def full(self) -> str:
        """CategoryFull, e.g. "DOORS-WOOD"."""
        return f"{self.category}-{self.subcategory}"

    @property
    def text(self) -> str:
        """What the entry says about a sound, as one text for a text encoder."""
        return f"{self.category.lower()} {self.subcategory.lower()}. {self.explanation} {' '.join(self.synonyms)}"


@dataclass(frozen=True)
class UcsName:
    """The blocks of a UCS file name (None where the name has none)."""

    category: Category
    fx_name: str | None = None
    vendor_category: str | None = None
    user_category: str | None = None
    creator: str | None = None
    source: str | None = None
    user_data: str | None = None

    def metadata(self) -> dict[str, str | list[str]]:
        """The item metadata the name gives: its fields (UCS_FIELDS), the
        FXName as ``title``, and keywords that the encoders see: the category,
        subcategory, the CatID's synonyms, and the vendor and user categories."""
        cat = self.category
        fields = {
            "ucs_catid": cat.catid,
            "category": cat.category,
            "subcategory": cat.subcategory,
            "category_full": cat.full,
            "vendor_category": self.vendor_category,
            "creator": self.creator,
            "source": self.source,
            "user_category": self.user_category,
            "user_data": self.user_data,
            "title": self.fx_name,
        }
        metadata: dict[str, str | list[str]] = {name: value for name, value in fields.items() if value}
        words = [cat.category, cat.subcategory, *cat.synonyms, self.vendor_category, self.user_category]
        metadata["keywords"] = [word for word in words if word]
        return metadata


@cache
def categories() -> dict[str, Category]:
    """CatID → entry, in the list's order."""
    try:
        entries = json.loads(UCS_LIST.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise AmrError(f"{UCS_LIST}: the UCS list cannot be read ({e}); reinstall amr") from e
    return {
        e["CatID"]: Category(e["CatID"], e["Category"], e["SubCategory"], e.get("Explanations") or "", tuple(e.get("Synonyms") or ()))
        for e in entries
    }


def parse_name(stem: str) -> UcsName | None:
    """The UCS blocks of a file name without its suffix, or None if it is not a UCS name."""
    blocks = [block.strip() or None for block in stem.split("_")]
    head = blocks[0] or ""
    catid, _, user_category = head.partition("-")
    category = categories().get(catid)
    if category is None:
        return None
    fx_name = vendor = None
    if len(blocks) > 1 and blocks[1]:
        fx_name = blocks[1]
        before, dash, after = fx_name.partition("-")
        if dash and before.strip() and after.strip():
            vendor, fx_name = before.strip(), after.strip()
    rest = blocks[2:] + [None, None]
    user_data = "_".join(block or "" for block in blocks[4:]).strip("_") or None
    return UcsName(category, fx_name, vendor, user_category.strip() or None, rest[0], rest[1], user_data)


def ucs_file_name(catid: str, fx_name: str, creator: str, source: str, suffix: str) -> str:
    """``CatID_FXName_CreatorID_SourceID<suffix>``, each block cleaned of
    ``_`` and characters file systems refuse (made spaces, then collapsed);
    AmrError if a block is left empty or the CatID is not in the list."""
    if catid not in categories():
        raise AmrError(f"{catid!r} is not a UCS {UCS_VERSION} CatID")
    blocks = []
    for what, value in (("FXName", fx_name), ("CreatorID", creator), ("SourceID", source)):
        cleaned = " ".join(_NOT_IN_BLOCK.sub(" ", value).split())
        if not cleaned:
            raise AmrError(f"the {what} {value!r} is empty once '_' and characters file names cannot hold are removed")
        blocks.append(cleaned)
    return "_".join([catid, *blocks]) + suffix
