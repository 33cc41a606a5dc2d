"""UCS file names: parsed against the real 8.2.1 list packaged with amr, in the
folder layout, and found by a query for a synonym of their CatID."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from amr.datasets import load_dataset
from amr.errors import AmrError
from amr.ucs import UCS_LIST, categories, parse_name, ucs_file_name

REAL_LIST = json.loads(UCS_LIST.read_text(encoding="utf-8"))


def test_the_packaged_list_is_the_shared_one_with_its_licence(shared: Path) -> None:
    assert UCS_LIST.read_bytes() == (shared / "data" / "ucs" / "ucs-8.2.1-en.json").read_bytes()
    assert (UCS_LIST.parent / "ucs-8.2.1-en.LICENSE").read_text().startswith("Creative Commons Legal Code")
    assert len(categories()) == 752 == len(REAL_LIST)
    assert len({c.category for c in categories().values()}) == 82
    assert sum(len(c.synonyms) for c in categories().values()) == 17835


@pytest.mark.parametrize("entry", REAL_LIST[::47], ids=lambda e: e["CatID"])
def test_every_block_of_names_built_from_the_list(entry: dict) -> None:
    catid = entry["CatID"]
    full = parse_name(f"{catid}-INT_Acme Foley-Heavy Thing Drop_TN_DORY_WideStereo_MKH8020")
    assert full is not None
    assert full.metadata() == {
        "ucs_catid": catid,
        "category": entry["Category"],
        "subcategory": entry["SubCategory"],
        "category_full": f"{entry['Category']}-{entry['SubCategory']}",
        "vendor_category": "Acme Foley",
        "creator": "TN",
        "source": "DORY",
        "user_category": "INT",
        "user_data": "WideStereo_MKH8020",
        "title": "Heavy Thing Drop",
        "keywords": [entry["Category"], entry["SubCategory"], *entry["Synonyms"], "Acme Foley", "INT"],
    }
    only = parse_name(catid)
    assert only is not None and only.metadata() == {
        "ucs_catid": catid,
        "category": entry["Category"],
        "subcategory": entry["SubCategory"],
        "category_full": f"{entry['Category']}-{entry['SubCategory']}",
        "keywords": [entry["Category"], entry["SubCategory"], *entry["Synonyms"]],
    }


@pytest.mark.parametrize(
    ("stem", "fields"),
    [
        ("DOORWood_Front Door Open Close_TN_DORY", {"fx_name": "Front Door Open Close", "creator": "TN", "source": "DORY"}),
        ("DOORWood_Front Door Open Close", {"fx_name": "Front Door Open Close", "creator": None, "source": None}),
        ("DOORWood_Front Door_TN", {"creator": "TN", "source": None, "user_data": None}),
        ("GUNAuto-INT_Rifle Burst_JD_ARMS", {"user_category": "INT", "fx_name": "Rifle Burst", "vendor_category": None}),
        ("GUNAuto_Armoury-Rifle Burst_JD_ARMS", {"vendor_category": "Armoury", "fx_name": "Rifle Burst"}),
        ("GUNAuto_-Rifle Burst_JD_ARMS", {"vendor_category": None, "fx_name": "-Rifle Burst"}),  # no vendor before the dash
        ("DOORWood__TN_DORY", {"fx_name": None, "creator": "TN", "source": "DORY"}),  # an empty block is no value
        ("DOORWood_Door_TN_DORY_WideStereoMKH8020", {"user_data": "WideStereoMKH8020"}),
        ("DOORWood-_Door", {"user_category": None, "fx_name": "Door"}),
    ],
)
def test_optional_blocks(stem: str, fields: dict) -> None:
    parsed = parse_name(stem)
    assert parsed is not None and parsed.category.catid == stem.split("_")[0].split("-")[0]
    assert {name: getattr(parsed, name) for name in fields} == fields


@pytest.mark.parametrize(
    "stem",
    [
        "doorwood_Front Door_TN_DORY",  # CatIDs are case-sensitive
        "DOORWOOD_Front Door_TN_DORY",
        "DOORS_Front Door_TN_DORY",  # a Category is not a CatID
        "DOORWoodX_Front Door",
        "_DOORWood_Front Door",
        "Front Door Open Close",
        "DOOR Wood_Front Door",
        "",
    ],
)
def test_names_that_are_not_ucs(stem: str) -> None:
    assert parse_name(stem) is None


def test_a_rename_target() -> None:
    assert ucs_file_name("DOORWood", "Front door: open/close", "TN", "MY_LIB", ".wav") == "DOORWood_Front door open close_TN_MY LIB.wav"
    with pytest.raises(AmrError, match="not a UCS 8.2.1 CatID"):
        ucs_file_name("doorwood", "Door", "TN", "LIB", ".wav")
    with pytest.raises(AmrError, match="CreatorID '__' is empty"):
        ucs_file_name("DOORWood", "Door", "__", "LIB", ".wav")


@pytest.fixture(scope="module")
def ucs_folder(tmp_path_factory, shared: Path) -> Path:
    root = tmp_path_factory.mktemp("ucs") / "library"
    (root / "Doors").mkdir(parents=True)
    clip = shared / "data" / "sounds" / "audio" / "esc50-2-104952-A-16.wav"
    for name in [
        "Doors/DOORWood_Front Door Open Close_TN_DORY.wav",
        "GUNAuto-INT_Armoury-Rifle Burst_JD_ARMS_MKH416.wav",
        "WATRSurf_Lake Lapping_JD_SHORE.wav",
        "WINDGust_Strong Gusts_JD_STORM.wav",
        "rain on a tin roof_01.wav",
        "guNAuto_lowercase is not ucs.wav",
    ]:
        shutil.copy(clip, root / name)
    return root


def test_a_folder_of_ucs_names(ucs_folder: Path) -> None:
    items = {item.id: item.metadata for item in load_dataset(ucs_folder).items}
    door = items["Doors/DOORWood_Front Door Open Close_TN_DORY.wav"]
    assert door["keywords"][:4] == ["Doors", "WOOD", "apartment", "armoires"]  # the category DOORS is the folder's keyword already
    assert (door["title"], door["ucs_catid"], door["category_full"], door["creator"], door["source"]) == (
        "Front Door Open Close",
        "DOORWood",
        "DOORS-WOOD",
        "TN",
        "DORY",
    )
    gun = items["GUNAuto-INT_Armoury-Rifle Burst_JD_ARMS_MKH416.wav"]
    assert (gun["title"], gun["user_category"], gun["vendor_category"], gun["user_data"]) == ("Rifle Burst", "INT", "Armoury", "MKH416")
    assert items["rain on a tin roof_01.wav"] == {"title": "rain on a tin roof"}
    assert items["guNAuto_lowercase is not ucs.wav"] == {"title": "guNAuto lowercase is not ucs"}


def test_a_query_for_a_synonym_finds_the_files_of_its_catid(ucs_folder: Path, text_encoder) -> None:
    """The zero-shot metadata vectors: synonyms of the CatID that appear nowhere in the FXName."""
    from amr.model.zeroshot import ZeroShotConfig, ZeroShotRetriever

    retriever = ZeroShotRetriever(ZeroShotConfig(audio_weight=0.0), text_encoder)
    items = load_dataset(ucs_folder).items
    vectors, present = retriever.metadata_vectors(items)
    assert present.all()
    for query, expected in [
        ("kalashnikov", "GUNAuto-INT_Armoury-Rifle Burst_JD_ARMS_MKH416.wav"),
        ("armoires", "Doors/DOORWood_Front Door Open Close_TN_DORY.wav"),
    ]:
        assert query not in items[[i.id for i in items].index(expected)].metadata["title"].lower()
        q = retriever.encode_queries([query])[0][: text_encoder.dim]
        assert items[int(np.argmax(vectors @ q))].id == expected
