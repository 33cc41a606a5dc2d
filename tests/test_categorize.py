"""`amr categorize`: zero-shot UCS suggestions for real clips, the audio check
of UCS-named files, and rename plans that change nothing until applied."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amr.categorize import UcsScorer, apply_renames, categorize, plan_renames, read_undo, undo_renames, write_results
from amr.config import CategorizeFormat, CategorizeSource
from amr.errors import AmrError

NAMES = {
    "ANMLDog_Two Dogs Barking_BSB_FARM.mp3": "bigsoundbank-dog.mp3",  # UCS-named, and the audio is a dog
    "ANMLCat_Purring_XX_LIB.wav": "freesound-typing.wav",  # UCS-named as a cat, but the audio is typing
    "Storms/thunder far.wav": "freesound-thunder.wav",
    "clip01.wav": "freesound-applause.wav",  # no metadata but its name
}


@pytest.fixture(scope="module")
def library_cache(tmp_path_factory, shared: Path, mn04_weights: Path) -> tuple[Path, Path]:
    from amr.audio.weights import resolve_weights
    from amr.datasets import load_dataset
    from amr.extraction import extract

    root = tmp_path_factory.mktemp("categorize") / "lib"
    (root / "Storms").mkdir(parents=True)
    for name, clip in NAMES.items():
        shutil.copy(shared / "data" / "sounds" / "audio" / clip, root / name)
    out = root.parent / "lib.h5"
    report = extract(load_dataset(root).items, out, resolve_weights("mn04_as", mn04_weights), workers=1, progress=False)
    assert not report.failures
    return root, out


@pytest.fixture(scope="module")
def scorer(text_encoder) -> UcsScorer:
    return UcsScorer(text_encoder)


def _by_id(cache: Path, scorer: UcsScorer, source: CategorizeSource = CategorizeSource.fused, top: int = 3) -> dict:
    return {r.id: r for r in categorize(cache, top, source, scorer)}


def test_top_three_from_audio_and_metadata(library_cache: tuple[Path, Path], scorer: UcsScorer) -> None:
    results = _by_id(library_cache[1], scorer)
    assert sorted(results) == sorted(NAMES)
    for r in results.values():
        assert len(r.suggestions) == 3 and r.source == "fused"
        scores = [s.score for s in r.suggestions]
        assert scores == sorted(scores, reverse=True) and len({s.catid for s in r.suggestions}) == 3
    assert results["Storms/thunder far.wav"].suggestions[0].catid == "THUN"
    assert "CRWDApls" in [s.catid for s in results["clip01.wav"].suggestions]
    assert results["Storms/thunder far.wav"].ucs_catid is None and results["Storms/thunder far.wav"].audio_agrees is None


def test_ucs_named_files_report_whether_their_audio_agrees(library_cache: tuple[Path, Path], scorer: UcsScorer) -> None:
    results = _by_id(library_cache[1], scorer)
    dog, cat = results["ANMLDog_Two Dogs Barking_BSB_FARM.mp3"], results["ANMLCat_Purring_XX_LIB.wav"]
    assert (dog.ucs_catid, dog.audio_agrees) == ("ANMLDog", True) and dog.audio_rank <= 3
    assert (cat.ucs_catid, cat.audio_agrees) == ("ANMLCat", False) and cat.audio_rank > 3
    audio_only = _by_id(library_cache[1], scorer, CategorizeSource.audio)
    assert dog.audio_rank == audio_only[dog.id].audio_rank  # the check is the audio's, whatever the suggestions use
    assert "ANMLDog" in [s.catid for s in audio_only[dog.id].suggestions]


def test_metadata_only_leaves_out_the_words_the_catid_gave(library_cache: tuple[Path, Path], scorer: UcsScorer) -> None:
    """The cat-named file's metadata is its FXName "Purring" without the cat synonyms its CatID added."""
    results = _by_id(library_cache[1], scorer, CategorizeSource.metadata)
    assert all(r.source == "metadata" for r in results.values())  # every item here has a title at least
    from amr.categorize import without_own_category
    from amr.datasets import load_dataset

    cat = next(item for item in load_dataset(library_cache[0]).items if item.id == "ANMLCat_Purring_XX_LIB.wav")
    assert "kitten" in cat.metadata["keywords"] and "kitten" not in without_own_category(cat).metadata.get("keywords", [])


def test_output_formats(library_cache: tuple[Path, Path], scorer: UcsScorer) -> None:
    out = io.StringIO()
    write_results(categorize(library_cache[1], 2, CategorizeSource.fused, scorer), CategorizeFormat.csv, out, 2)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == [
        "id",
        "audio",
        "ucs_catid",
        "source",
        "catid_1",
        "score_1",
        "catid_2",
        "score_2",
        "audio_agrees",
        "audio_rank",
        "rename",
    ]
    assert {row["id"]: row["audio_agrees"] for row in rows}["ANMLCat_Purring_XX_LIB.wav"] == "false"
    out = io.StringIO()
    write_results(categorize(library_cache[1], 3, CategorizeSource.fused, scorer), CategorizeFormat.jsonl, out, 3)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == len(NAMES) and all(len(r["suggestions"]) == 3 for r in records)


def test_rename_plan_apply_and_undo(library_cache: tuple[Path, Path], tmp_path: Path) -> None:
    """The CLI plans without changing anything; applying renames the not-UCS files; undo puts every name back."""
    source_root = library_cache[0]
    root = tmp_path / "lib"
    shutil.copytree(source_root, root)
    cache = tmp_path / "lib.h5"
    _copy_cache_for(library_cache[1], cache, source_root, root)
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "amr", "categorize", str(cache), "-f", "jsonl", "-w", str(tmp_path / "ws")]
    usage = subprocess.run([*command, "--rename-plan"], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "--creator and --source" in usage.stderr
    done = subprocess.run([*command, "--rename-plan", "--creator", "JD", "--source", "MY_LIB"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    records = {r["id"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == before  # a plan changes nothing
    assert "rename" not in records["ANMLDog_Two Dogs Barking_BSB_FARM.mp3"]  # UCS-named already
    thunder = Path(records["Storms/thunder far.wav"]["rename"])
    assert thunder.parent == root / "Storms" and thunder.name == "THUN_thunder far_JD_MY LIB.wav"
    plan = [(r["audio"], r["rename"]) for r in records.values() if "rename" in r]
    assert len(plan) == 2
    undo_file = tmp_path / "undo.jsonl"
    assert apply_renames(plan, undo_file) == 2
    after = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert "Storms/THUN_thunder far_JD_MY LIB.wav" in after and "Storms/thunder far.wav" not in after
    assert sorted(read_undo(undo_file)) == sorted((new, old) for old, new in plan)
    restored = subprocess.run([*command, "--undo", str(undo_file)], capture_output=True, text=True, env=env)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["undone"] == 2
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == before
    assert undo_renames(undo_file) == 0  # undone already: nothing left to do


def test_collisions_are_refused_before_anything_changes(tmp_path: Path) -> None:
    for name in ("a.wav", "b.wav", "taken.wav"):
        (tmp_path / name).write_bytes(name.encode())
    a, b, taken, new = (str(tmp_path / n) for n in ("a.wav", "b.wav", "taken.wav", "new.wav"))
    with pytest.raises(AmrError, match="would both be renamed to"):
        apply_renames([(a, new), (b, new)], tmp_path / "undo1.jsonl")
    with pytest.raises(AmrError, match="exists already"):
        apply_renames([(a, new), (b, taken)], tmp_path / "undo2.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.wav", "taken.wav"]
    assert (tmp_path / "taken.wav").read_bytes() == b"taken.wav"  # never overwritten
    assert apply_renames([(a, new)], tmp_path / "undo3.jsonl") == 1
    with pytest.raises(FileExistsError):  # an undo file is never overwritten either
        apply_renames([(b, str(tmp_path / "other.wav"))], tmp_path / "undo3.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"format": "amr-rename-undo", "version": 9}\n')
    with pytest.raises(AmrError, match="undo file version 9"):
        read_undo(tmp_path / "bad.jsonl")


def test_rename_plan_names(library_cache: tuple[Path, Path], scorer: UcsScorer) -> None:
    planned = {r.id: r.rename for r in plan_renames(categorize(library_cache[1], 3, CategorizeSource.fused, scorer), "JD", "LIB")}
    assert planned["ANMLCat_Purring_XX_LIB.wav"] is None
    assert Path(planned["clip01.wav"]).name.endswith("_clip01_JD_LIB.wav")


def _copy_cache_for(cache: Path, out: Path, old_root: Path, new_root: Path) -> None:
    """The cache with its items' audio paths moved from old_root to new_root (h5py rewrites the items dataset)."""
    import h5py

    shutil.copy(cache, out)
    with h5py.File(out, "r+") as f:
        items = [json.loads(s) for s in f["items"].asstr()[:]]
        for item in items:
            item["audio"] = item["audio"].replace(str(old_root.resolve()), str(new_root.resolve()))
        f["items"][...] = [json.dumps(item, ensure_ascii=False) for item in items]
