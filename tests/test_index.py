"""The index: build, append, replace, refuse another model, exact and approximate search.

A small fake Retriever (late fusion, a fixed random audio projection and a
hashed bag-of-words text tower) over synthetic caches keeps these tests fast;
it lives in tests/support/words.py, shared with the query, serve and CLI tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from support.words import LIBRARY, MORE, D, VectorRetriever, WordsRetriever, clustered, make_cache

from amr.cache import EmbeddingCache
from amr.errors import AmrError
from amr.index.build import build_index
from amr.index.format import TAGS_STORED, sidecar_path
from amr.index.reader import open_index
from amr.index.search import exact_search, explain, machine_tags, search
from amr.items import Item


@pytest.fixture
def library(tmp_path: Path) -> Path:
    return make_cache(tmp_path / "library.h5", LIBRARY)


def test_build_stores_one_vector_per_item_with_everything_to_show_it(library: Path, tmp_path: Path) -> None:
    retriever = WordsRetriever()
    report = build_index(retriever, [library], tmp_path / "index.h5", show_progress=False)
    assert (report.items, report.added, report.replaced, report.ann) == (5, 5, 0, None)
    index = open_index(tmp_path / "index.h5")
    assert index.ids() == [item.id for item in LIBRARY]
    assert [index.item(r) for r in range(index.items_count)] == LIBRARY
    with EmbeddingCache(library) as cache:
        expected = retriever.encode_items(cache, range(len(cache)))
        np.testing.assert_allclose(index.vectors, expected, rtol=1e-6)
        top = np.argsort(-cache.tags, axis=1, kind="stable")[:, :TAGS_STORED]
        np.testing.assert_array_equal(index.tags, top)
        info = cache.info
    header = index.header
    assert (header.fingerprint, header.kind, header.fusion, header.parts) == ("fake-1", "fake", "late", [("audio", D), ("metadata", D)])
    assert header.retriever == {"kind": "fake", "fingerprint": "fake-1"}
    assert header.audio == info  # what query by example needs to load the same audio model
    assert header.sources == [str(library.resolve())]
    assert isinstance(index.vectors.base, np.memmap) and not index.vectors.flags.writeable  # mapped, not loaded


def test_an_item_without_metadata_gets_an_audio_only_vector(library: Path, tmp_path: Path) -> None:
    build_index(WordsRetriever(), [library], tmp_path / "index.h5", show_progress=False)
    index = open_index(tmp_path / "index.h5")
    engine = index.vectors[3]
    assert index.item(3).metadata == {}
    np.testing.assert_allclose(np.linalg.norm(engine), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(engine[D:], 0)


def test_auto_tags_give_items_without_metadata_their_machine_tags(library: Path, tmp_path: Path) -> None:
    output = tmp_path / "index.h5"
    build_index(WordsRetriever(), [library], output, auto_tags=3, show_progress=False)
    index = open_index(output)
    assert index.header.auto_tags == 3
    assert np.linalg.norm(index.vectors[3][D:]) > 0  # "engine" has no metadata, but tags now
    more = make_cache(tmp_path / "more.h5", MORE)
    with pytest.raises(AmrError, match="auto tags 3, not 0"):
        build_index(WordsRetriever(), [more], output, append=True, auto_tags=0, show_progress=False)
    build_index(WordsRetriever(), [more], output, append=True, show_progress=False)
    assert open_index(output).header.auto_tags == 3


def test_split_selects_the_items_indexed(library: Path, tmp_path: Path) -> None:
    report = build_index(WordsRetriever(), [library], tmp_path / "eval.h5", splits=["test"], show_progress=False)
    assert report.items == 2
    assert open_index(tmp_path / "eval.h5").ids() == ["rain", "engine"]
    with pytest.raises(AmrError, match="no items in split"):
        build_index(WordsRetriever(), [library], tmp_path / "none.h5", splits=["nope"], show_progress=False)


def test_append_encodes_only_the_new_cache_and_a_repeated_id_replaces_the_old(library: Path, tmp_path: Path) -> None:
    output = tmp_path / "index.h5"
    build_index(WordsRetriever(), [library], output, show_progress=False)
    before = open_index(output)
    old_vectors = {item_id: before.vectors[r].copy() for r, item_id in enumerate(before.ids())}

    retriever = WordsRetriever()
    more = make_cache(tmp_path / "more.h5", MORE, seed=1)
    report = build_index(retriever, [more], output, append=True, show_progress=False)
    assert retriever.encoded == ["thunder", "dog"]  # nothing of the old index was encoded again
    assert (report.items, report.added, report.replaced) == (6, 2, 1)
    index = open_index(output)
    ids = index.ids()
    assert sorted(ids) == sorted(["dog", "cat", "rain", "engine", "birds", "thunder"])
    for item_id in ("cat", "rain", "engine", "birds"):
        np.testing.assert_array_equal(index.vectors[ids.index(item_id)], old_vectors[item_id])
    dog = ids.index("dog")
    assert index.item(dog).audio == "/more/dog2.wav"
    assert not np.allclose(index.vectors[dog], old_vectors["dog"])
    assert index.header.sources == [str(library.resolve()), str(more.resolve())]


def test_append_refuses_an_index_of_another_checkpoint(library: Path, tmp_path: Path) -> None:
    output = tmp_path / "index.h5"
    build_index(WordsRetriever("fake-1"), [library], output, show_progress=False)
    more = make_cache(tmp_path / "more.h5", MORE)
    with pytest.raises(AmrError, match=r"built with .*fake-1.*not .*fake-2"):
        build_index(WordsRetriever("fake-2"), [more], output, append=True, show_progress=False)
    assert len(open_index(output)) == 5  # untouched


def test_append_refuses_caches_of_another_audio_model(library: Path, tmp_path: Path) -> None:
    output = tmp_path / "index.h5"
    build_index(WordsRetriever(), [library], output, show_progress=False)
    other = make_cache(tmp_path / "other.h5", MORE, weights_sha256="b" * 64)
    with pytest.raises(AmrError, match="holds embeddings of"):
        build_index(WordsRetriever(), [other], output, append=True, show_progress=False)


def test_append_needs_an_existing_index(library: Path, tmp_path: Path) -> None:
    with pytest.raises(AmrError, match="no index to append to"):
        build_index(WordsRetriever(), [library], tmp_path / "missing.h5", append=True, show_progress=False)


def test_a_file_that_is_not_an_index_is_refused(library: Path, tmp_path: Path) -> None:
    with pytest.raises(AmrError, match="not an amr index"):
        open_index(library)
    with pytest.raises(AmrError, match="no such index file"):
        open_index(tmp_path / "nothing.h5")
    build_index(WordsRetriever(), [library], tmp_path / "index.h5", show_progress=False)
    with h5py.File(tmp_path / "index.h5", "a") as f:
        f.attrs["version"] = 99
    with pytest.raises(AmrError, match="version 99"):
        open_index(tmp_path / "index.h5")


def test_exact_search_matches_brute_force_and_breaks_ties_by_row() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((1000, 8)).astype(np.float32)
    vectors[500] = vectors[20]  # a tie
    queries = np.concatenate([rng.standard_normal((4, 8)), vectors[20:21]]).astype(np.float32)
    rows, scores = exact_search(vectors, queries, 7, block=128)  # several blocks
    brute = queries @ vectors.T
    for q in range(len(queries)):
        expected = sorted(range(1000), key=lambda r: (-brute[q, r], r))[:7]
        assert rows[q].tolist() == expected
        np.testing.assert_allclose(scores[q], brute[q, expected], rtol=1e-5)
    assert rows[4][:2].tolist() == [20, 500]


def test_search_asks_no_more_than_the_index_holds(library: Path, tmp_path: Path) -> None:
    build_index(WordsRetriever(), [library], tmp_path / "index.h5", show_progress=False)
    index = open_index(tmp_path / "index.h5")
    rows, scores = search(index, WordsRetriever().encode_queries(["dog barking"]), top=50)
    assert rows.shape == (1, 5) and sorted(rows[0].tolist()) == list(range(5))
    assert index.item(int(rows[0, 0])).id == "dog"
    assert np.all(np.diff(scores[0]) <= 0)


def test_explain_splits_the_score_into_audio_and_metadata(library: Path, tmp_path: Path) -> None:
    build_index(WordsRetriever(), [library], tmp_path / "index.h5", show_progress=False)
    index = open_index(tmp_path / "index.h5")
    query = WordsRetriever().encode_queries(["dog barking in the rain"])
    rows, scores = search(index, query, top=5)
    for row, score in zip(rows[0], scores[0]):
        parts = explain(index, query[0], int(row))
        assert set(parts) == {"audio", "metadata"}
        assert parts["audio"] + parts["metadata"] == pytest.approx(float(score), abs=1e-5)
    dog = explain(index, query[0], 0)
    assert dog["metadata"] > 0.5 > abs(dog["audio"])
    assert explain(index, query[0], 3)["metadata"] == 0.0  # no metadata, no metadata share
    tags = machine_tags(index, 0)
    assert len(tags) == TAGS_STORED and all(isinstance(name, str) for name, _ in tags)
    assert [p for _, p in tags] == sorted((p for _, p in tags), reverse=True)


def test_a_part_search_ranks_by_cosine_within_the_part(library: Path, tmp_path: Path) -> None:
    build_index(WordsRetriever(), [library], tmp_path / "index.h5", show_progress=False)
    index = open_index(tmp_path / "index.h5")
    query = np.random.default_rng(1).standard_normal((1, 2 * D)).astype(np.float32)
    rows, scores = search(index, query, top=5, part="audio")
    audio = index.vectors[:, :D]
    cosines = audio @ query[0, :D] / np.linalg.norm(audio, axis=1)
    assert rows[0].tolist() == np.argsort(-cosines).tolist()
    np.testing.assert_allclose(scores[0], np.sort(cosines)[::-1], rtol=1e-5)
    assert explain(index, query[0], int(rows[0, 0]), "audio") == {"audio": pytest.approx(float(scores[0, 0]), abs=1e-6)}
    with pytest.raises(AmrError, match="has no tags part"):
        search(index, query, top=5, part="tags")


# --- approximate index ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    items = [Item(str(i), f"/x/{i}.wav", "test") for i in range(4000)]
    return make_cache(tmp_path_factory.mktemp("big") / "big.h5", items)


def test_ann_index_reaches_its_recall_and_is_rebuilt_on_append(big_cache: Path, tmp_path: Path) -> None:
    vectors = clustered(4200, 2 * D, seed=5)  # the last 100 are held-out queries
    output = tmp_path / "big.h5"
    report = build_index(VectorRetriever(vectors), [big_cache], output, ann=True, show_progress=False)
    info = report.ann
    assert info is not None and info.nlist == min(round(2 * np.sqrt(4000)), 4000 // 39) and info.recall_at_10 >= 0.97
    index = open_index(output)
    assert index.ann is not None and index.ann.nprobe == info.nprobe
    queries = vectors[4100:]
    approx, approx_scores = search(index, queries, 10)
    exact, _ = search(index, queries, 10, exact=True)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.tolist(), exact.tolist())])
    assert recall >= 0.9
    # candidates are re-ranked by their exact scores: the same numbers exact search gives
    np.testing.assert_allclose(approx_scores, np.einsum("qd,qkd->qk", queries, vectors[approx]), rtol=1e-5)
    assert np.all(np.diff(approx_scores, axis=1) <= 0)
    by_audio, cosines = search(index, queries, 10, part="audio")
    truth, exact_cosines = search(index, queries, 10, exact=True, part="audio")
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(by_audio.tolist(), truth.tolist())]) >= 0.8
    assert np.all(cosines <= exact_cosines + 1e-6)  # exact cosines, of rows at most as good
    assert np.mean(np.isclose(cosines[:, 0], exact_cosines[:, 0], rtol=1e-5)) >= 0.95  # the best is usually found

    extra = make_cache(tmp_path / "extra.h5", [Item(str(i), f"/x/{i}.wav", "test") for i in range(4000, 4100)])
    report = build_index(VectorRetriever(vectors), [extra], output, append=True, show_progress=False)
    assert report.ann is not None and report.ann.token != info.token  # kept, and rebuilt over 4100 items
    assert not sidecar_path(output, info).exists()
    assert open_index(output).ann.ntotal == 4100
    sidecar_path(output, report.ann).unlink()
    with pytest.raises(AmrError, match="approximate index .* is missing"):
        open_index(output)


def test_small_indexes_are_exact_unless_asked(library: Path, tmp_path: Path) -> None:
    report = build_index(WordsRetriever(), [library], tmp_path / "index.h5", show_progress=False)
    assert report.ann is None and open_index(tmp_path / "index.h5").ann is None
    assert list(tmp_path.glob("*.faiss")) == []


def test_items_whose_file_changed_or_vanished_since_extraction_are_counted_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deleted file stayed searchable and edited audio kept its old vectors, without a word."""
    files = {name: tmp_path / f"{name}.wav" for name in ("same", "edited", "deleted", "touched")}
    for path in files.values():
        path.write_bytes(b"RIFF" + bytes(40))
    items = []
    for name, path in files.items():
        stat = path.stat()
        items.append(Item(name, str(path), "train", {"title": name}, audio_size=stat.st_size, audio_mtime_ns=stat.st_mtime_ns))
    items.append(Item("unknown", "/nowhere/unknown.wav", "train", {"title": "recorded nothing"}))  # no size or time: not counted
    cache = make_cache(tmp_path / "library.h5", items)
    build_index(WordsRetriever(), [cache], tmp_path / "clean.h5", show_progress=False)
    assert "since extraction" not in capsys.readouterr().err
    files["edited"].write_bytes(b"RIFF" + bytes(80))
    files["deleted"].unlink()
    os.utime(files["touched"], ns=(0, 0))
    build_index(WordsRetriever(), [cache], tmp_path / "index.h5", show_progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert f"{cache}: 3 item(s) changed (2) or vanished (1) on disk since extraction" in err and "run `amr extract` again" in err
