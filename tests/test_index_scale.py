"""Indexes past RAM: the on-disk ivf-pq tier, streaming appends, dead rows and
their compaction, the id lookup, damaged files, kills and concurrent runs.

Small sizes (a few thousand 64-dim vectors) with the fake retrievers of
tests/support/words.py; the thresholds that pick a tier by size are bypassed
with ``ann_kind`` (and TIDY_LIMIT, which otherwise compacts small indexes at
every replacement).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from support.words import D, VectorRetriever, WordsRetriever, clustered, make_cache

import amr.index.ann
import amr.index.build
import amr.index.format
import amr.index.kinds
import amr.index.store
import amr.index.tune
from amr.errors import AmrError
from amr.index.ann import load_faiss
from amr.index.build import add_ann, build_index
from amr.index.format import data_folder, lists_path, sidecar_path
from amr.index.kinds import PQ_RECALL_TARGET
from amr.index.reader import Index, open_index
from amr.index.search import exact_search, search
from amr.index.store import Rows, write_index
from amr.index.tune import PQ_RERANKS
from amr.items import Item

faiss = load_faiss()

N = 4000
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def items(first: int, stop: int) -> list[Item]:
    return [Item(str(i), f"/x/{i}.wav", "test") for i in range(first, stop)]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    """Item i's vector is row i; rows N … N+199 are held-out queries."""
    return clustered(N + 200, 2 * D, seed=5)


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("caches")
    return {
        "base": make_cache(folder / "base.h5", items(0, N)),
        "extra": make_cache(folder / "extra.h5", items(N, N + 100)),
        "again": make_cache(folder / "again.h5", items(0, 100)),  # ids of the base set, indexed anew
        "again-more": make_cache(folder / "again-more.h5", items(100, 1400)),
        "large": make_cache(folder / "large.h5", items(N, N + 1500)),
    }


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def lists_of(index: Index):
    return faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.ann).invlists)


# --- the on-disk tier -----------------------------------------------------------------------


def test_an_on_disk_index_is_built_searched_and_reopened(
    caches: dict[str, Path], vectors: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amr.index.ann, "SHARD_ROWS", 1500)  # three shards (the last partial), merged into one lists file
    output = tmp_path / "index.h5"
    report = build_index(VectorRetriever(vectors), [caches["base"]], output, ann_kind="ivf-pq", show_progress=False)
    info = report.ann
    assert info is not None and info.kind == "ivf-pq" and info.rerank in PQ_RERANKS and info.trained_rows == N
    assert info.recall_at_10 >= PQ_RECALL_TARGET  # measured on perturbed item vectors at the chosen nprobe
    index = open_index(output)
    assert isinstance(lists_of(index), faiss.OnDiskInvertedLists)  # the codes stay in a file, mapped
    assert sidecar_path(output, info).exists() and lists_path(sidecar_path(output, info)).exists()
    assert index.vectors.dtype == np.float16  # the on-disk tier stores half precision only
    np.testing.assert_allclose(index.vectors, vectors[:N], atol=2**-11)  # |x| < 1: float16 rounds to within 2^-12

    queries = vectors[N:]
    approx, scores = search(index, queries, 10)
    exact, _ = search(index, queries, 10, exact=True)
    assert recall(approx, exact) >= 0.9
    # re-ranked by exact scores from the stored (float16) vectors: float32 sums of 64 products agree to ~1e-6
    stored = np.asarray(index.vectors[approx], np.float32)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, stored), rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    again = open_index(output)
    np.testing.assert_array_equal(search(again, queries, 10)[0], approx)  # reopened: the same answers
    sidecar = sidecar_path(output, info)
    expected = ["index.h5", sidecar.name, lists_path(sidecar).name, data_folder(output, index.state.token).name]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == sorted(expected)  # no shard or temporary left


def test_searching_an_on_disk_index_maps_none_of_its_vectors(caches: dict[str, Path], vectors: np.ndarray, tmp_path: Path) -> None:
    """Its candidates' vectors are read, not touched through the memory map:
    mapped pages (and the neighbours the kernel maps with them) would stay in
    the process's RSS until it held the whole vector file."""
    output = tmp_path / "index.h5"
    build_index(VectorRetriever(vectors), [caches["base"]], output, ann_kind="ivf-pq", show_progress=False)
    gc.collect()  # the building's own maps of the file are gone
    index = open_index(output)
    search(index, vectors[N:], 10)
    vector_file = str(index.store.folder / "vectors")
    resident, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0]:  # a mapping's first line: address range, ..., path
                inside = line.rstrip("\n").endswith(vector_file)
            elif inside and line.startswith("Rss:"):
                resident += int(line.split()[1])
    assert resident == 0


def test_tuning_that_misses_its_recall_probes_at_most_the_largest_nprobe_and_says_so(
    caches: dict[str, Path], vectors: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(amr.index.tune, "NPROBES", (1, 2))  # the index has 64 lists: probing all is not among them
    monkeypatch.setattr(amr.index.kinds, "PQ_RECALL_TARGET", 1.01)  # out of reach
    info = build_index(VectorRetriever(vectors), [caches["base"]], tmp_path / "index.h5", ann_kind="ivf-pq").ann
    assert info is not None and info.nlist == 64 and info.nprobe == 2 and info.rerank == PQ_RERANKS[-1]
    assert f"recall@10 {info.recall_at_10:.3f} is below the 1.01" in " ".join(capsys.readouterr().err.split())


def test_append_to_an_on_disk_index_writes_only_the_new_rows(caches: dict[str, Path], vectors: np.ndarray, tmp_path: Path) -> None:
    output = tmp_path / "index.h5"
    first = build_index(VectorRetriever(vectors), [caches["base"]], output, ann_kind="ivf-pq", show_progress=False).ann
    column = data_folder(output, open_index(output).state.token) / "vectors"
    inode, head = column.stat().st_ino, column.read_bytes()
    report = build_index(VectorRetriever(vectors), [caches["extra"]], output, append=True, show_progress=False)
    info = report.ann
    assert (report.items, report.added, report.replaced) == (N + 100, 100, 0)
    assert info is not None and info.token != first.token
    assert (info.kind, info.nlist, info.nprobe, info.trained_rows) == ("ivf-pq", first.nlist, first.nprobe, N)  # not retrained
    for old in (sidecar_path(output, first), lists_path(sidecar_path(output, first))):
        assert not old.exists()
    # the old vectors were neither read into a new file nor rewritten: the same file, grown
    assert column.stat().st_ino == inode and column.read_bytes()[: len(head)] == head
    assert column.stat().st_size == (N + 100) * 2 * D * 2
    index = open_index(output)
    assert index.ann.ntotal == N + 100 and index.ids()[N:] == [str(i) for i in range(N, N + 100)]
    rows, _ = search(index, vectors[N : N + 100], 1)
    assert np.mean(rows[:, 0] == np.arange(N, N + 100)) >= 0.95  # an appended item is found by its own vector


def test_an_index_grown_past_the_large_limit_moves_to_the_on_disk_tier(
    caches: dict[str, Path], vectors: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amr.index.kinds, "LARGE_LIMIT", N + 1000)
    output = tmp_path / "index.h5"
    assert build_index(VectorRetriever(vectors), [caches["base"]], output, ann=True, show_progress=False).ann.kind == "ivf-sq8"
    before = open_index(output).state.token
    big = np.concatenate([vectors, clustered(1500, 2 * D, seed=6)])
    report = build_index(VectorRetriever(big), [caches["large"]], output, append=True, show_progress=False)
    assert report.ann.kind == "ivf-pq" and report.ann.trained_rows == N + 1500  # trained anew
    index = open_index(output)
    assert index.vectors.dtype == np.float16 and index.state.token != before  # the columns rewritten in half precision
    assert not data_folder(output, before).exists()
    np.testing.assert_allclose(index.vectors, big[: N + 1500], atol=2**-11)


# --- replacement, dead rows, compaction ------------------------------------------------------


@pytest.mark.parametrize("kind", [None, "ivf-sq8", "ivf-pq"])
def test_replaced_rows_are_dead_until_compacted(
    kind: str | None, caches: dict[str, Path], vectors: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amr.index.build, "TIDY_LIMIT", 0)  # keep dead rows in an index this small
    output = tmp_path / "index.h5"
    options = {"ann_kind": kind} if kind else {"ann": False}
    build_index(VectorRetriever(vectors), [caches["base"]], output, show_progress=False, **options)
    token = open_index(output).state.token
    new = vectors.copy()
    new[:1400] = clustered(1400, 2 * D, seed=9)  # ids 0 … 1399 get new vectors
    report = build_index(VectorRetriever(new), [caches["again"]], output, append=True, show_progress=False)
    assert (report.items, report.added, report.replaced) == (N, 100, 100)
    index = open_index(output)
    assert (index.items_count, index.live_items, len(index), index.live_rows) == (N + 100, N, N + 100, N)
    assert index.state.token == token  # appended, not rewritten
    ids = index.ids()
    assert ids[:100] == [None] * 100 and ids[N:] == [str(i) for i in range(100)]
    np.testing.assert_array_equal(index.find(["0", "99", "100", str(N - 1), "nope"]), [N, N + 99, 100, N - 1, -1])
    for exact in (True, False):
        rows, _ = search(index, vectors[:100], 10, exact=exact)
        assert not np.any((rows >= 0) & (rows < 100))  # the replaced rows are never returned
        rows, _ = search(index, new[:100], 1, exact=exact)
        assert np.mean(rows[:, 0] == np.arange(N, N + 100)) >= 0.95
    assert search(index, vectors[:1], N + 50, exact=True)[0].shape == (1, N)  # k counts live rows

    build_index(VectorRetriever(new), [caches["again-more"]], output, append=True, show_progress=False)  # 1400 dead of 5400: compacted
    index = open_index(output)
    assert (index.items_count, index.live_items, len(index), index.state.dead_rows) == (N, N, N, 0)
    assert index.state.token != token and not data_folder(output, token).exists()
    assert sorted(index.ids(), key=int) == [str(i) for i in range(N)]
    replaced = index.find([str(i) for i in range(1400)])
    np.testing.assert_allclose(np.asarray(index.vectors[replaced], np.float32), new[:1400], atol=2**-11)
    if kind is not None:
        assert index.ann.ntotal == N and index.ann_info.trained_rows == N  # rebuilt over the renumbered rows


def test_ids_seen_twice_in_one_run_keep_the_last_through_many_lookup_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amr.index.store, "LOOKUP_CHUNK", 7)  # merge the lookup every 7 items…
    monkeypatch.setattr(amr.index.store, "_LOOKUP_BLOCK", 5)  # …5 entries of the old one at a time
    retriever = WordsRetriever()
    header = amr.index.format.IndexHeader.of(retriever, make_cache_info(), [])
    ids = [f"clip-{i % 40}" for i in range(60)]  # clip-0 … clip-19 come twice; the second one counts
    batches = [batch_of(ids[a : a + 9], a) for a in range(0, 60, 9)]
    write_index(tmp_path / "index.h5", header, batches)
    index = open_index(tmp_path / "index.h5")
    assert (index.items_count, index.live_items, index.state.dead_rows) == (60, 40, 20)
    expected = [40 + i if i < 20 else i for i in range(40)]
    np.testing.assert_array_equal(index.find([f"clip-{i}" for i in range(40)]), expected)
    assert index.ids()[:20] == [None] * 20 and index.ids()[40:] == [f"clip-{i}" for i in range(20)]
    hashes = index.store.lookup_hashes
    assert len(hashes) == 60 and np.all(hashes[:-1] <= hashes[1:])  # one sorted lookup of every item slot
    assert len(list(data_folder(tmp_path / "index.h5", index.state.token).glob("lookup.*"))) == 1  # merged ones removed


def make_cache_info():
    from amr.cache import CacheInfo

    return CacheInfo("mn04_as", "a" * 64, 16, 527, 32000, 3.125, 10.0, 0)


def batch_of(ids: list[str], seed: int) -> Rows:
    rng = np.random.default_rng(seed)
    n = len(ids)
    vectors = rng.standard_normal((n, 2 * D)).astype(np.float32)
    return Rows(
        [Item(i, f"/x/{i}.wav") for i in ids],
        np.arange(n),
        np.zeros((n, 2), np.float32),
        vectors,
        np.zeros((n, 5), np.int16),
        np.zeros((n, 5), np.float16),
    )


def test_items_of_several_rows_are_searched_by_their_best_row_on_disk(tmp_path: Path) -> None:
    retriever = WordsRetriever()
    header = amr.index.format.IndexHeader.of(retriever, make_cache_info(), [])
    vectors = clustered(3000 + 50, 2 * D, seed=11)
    row_item = np.arange(3000) // 2  # 1500 items of two segments each
    spans = np.tile([[0.0, 5.0], [5.0, 10.0]], (1500, 1)).astype(np.float32)
    tags, probs = np.zeros((3000, 5), np.int16), np.zeros((3000, 5), np.float16)
    rows = Rows([Item(str(i), f"/x/{i}.wav") for i in range(1500)], row_item, spans, vectors[:3000], tags, probs)
    path = tmp_path / "index.h5"
    write_index(path, header, rows, "float16")
    assert add_ann(path, "ivf-pq", show_progress=False).kind == "ivf-pq"
    index = open_index(path)
    assert not index.single_rows and (index.items_count, len(index)) == (1500, 3000)
    queries = vectors[3000:]
    found, _ = search(index, queries, 10)
    truth, _ = search(index, queries, 10, exact=True)
    owners = index.row_item[found]
    assert all(len(set(o)) == 10 for o in owners.tolist())  # one row per item
    assert recall(owners, index.row_item[truth]) >= 0.9
    segments, _ = search(index, queries, 10, per_item=False)
    assert recall(segments, search(index, queries, 10, exact=True, per_item=False)[0]) >= 0.9


# --- exact search's tie rule ------------------------------------------------------------------


def test_exact_search_breaks_ties_at_the_cut_off_by_the_lower_row() -> None:
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((1000, 8)).astype(np.float32)
    query = rng.standard_normal((1, 8)).astype(np.float32)
    tied = [3, 200, 450, 700, 999]  # in different blocks of 128 rows
    vectors[tied] = 10 * query  # the five best, exactly equal
    rows, scores = exact_search(vectors, query, 3, block=128)
    assert rows[0].tolist() == [3, 200, 450] and len(set(scores[0].tolist())) == 1
    rows, _ = exact_search(vectors, query, 7, block=128)  # past the ties: the next best by score
    brute = (query @ vectors.T)[0]
    assert rows[0].tolist() == sorted(range(1000), key=lambda r: (-brute[r], r))[:7]
    dead = np.packbits(np.isin(np.arange(1000), [200, 3]), bitorder="little")
    rows, _ = exact_search(vectors, query, 3, block=128, dead=dead)
    assert rows[0].tolist() == [450, 700, 999]  # dead rows give way to the next tied ones


# --- damage, kills, concurrency ---------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated lists", "missing lists", "random sidecar", "random lists"])
def test_a_damaged_on_disk_index_is_a_one_line_error(damage: str, caches: dict[str, Path], vectors: np.ndarray, tmp_path: Path) -> None:
    output = tmp_path / "index.h5"
    info = build_index(VectorRetriever(vectors), [caches["base"]], output, ann_kind="ivf-pq", show_progress=False).ann
    sidecar = sidecar_path(output, info)
    lists = lists_path(sidecar)
    if damage == "truncated lists":
        lists.write_bytes(lists.read_bytes()[: lists.stat().st_size // 2])
    elif damage == "missing lists":
        lists.unlink()
    elif damage == "random sidecar":
        sidecar.write_bytes(os.urandom(sidecar.stat().st_size))
    else:
        lists.write_bytes(os.urandom(lists.stat().st_size))
    with pytest.raises(AmrError) as caught:
        index = open_index(output)
        search(index, vectors[N:], 10)  # random lists open (only their size is checked) and propose rows that do not exist
    message = str(caught.value)
    assert "\n" not in message and (lists.name in message or sidecar.name in message)


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import numpy as np
    from support.words import VectorRetriever, clustered
    from amr.errors import AmrError
    from amr.index.build import build_index

    class Retriever(VectorRetriever):
        calls = 0
        def encode_items(self, cache, indices, auto_tags=0):
            Retriever.calls += 1
            {on_call}
            return super().encode_items(cache, indices, auto_tags)

    vectors = clustered({n}, 2 * {d}, seed=5)
    try:
        build_index(Retriever(vectors), [Path({cache!r})], Path({output!r}), append=True, show_progress=False)
    except AmrError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    """
)


def child(output: Path, cache: Path, on_call: str) -> list[str]:
    script = CHILD.format(tests=str(TESTS), n=N + 1500, d=D, cache=str(cache), output=str(output), on_call=on_call)
    return [sys.executable, "-c", script]


def test_a_killed_append_leaves_the_index_as_it_was(caches: dict[str, Path], vectors: np.ndarray, tmp_path: Path) -> None:
    output = tmp_path / "index.h5"
    build_index(VectorRetriever(vectors), [caches["base"]], output, ann=False, show_progress=False)
    kill = "if Retriever.calls == 3: os.kill(os.getpid(), signal.SIGKILL)"  # after two batches were written
    done = subprocess.run(child(output, caches["large"], kill), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL
    index = open_index(output)
    column = data_folder(output, index.state.token) / "vectors"
    assert len(index) == N and column.stat().st_size > N * 2 * D * 4  # the killed run's rows lie past the recorded end
    assert index.ids() == [str(i) for i in range(N)]
    done = subprocess.run(child(output, caches["large"], "pass"), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    index = open_index(output)
    assert len(index) == N + 1500 and column.stat().st_size == (N + 1500) * 2 * D * 4  # cut back, then appended
    assert index.ids() == [str(i) for i in range(N + 1500)]


def test_a_second_append_on_the_same_index_stops_at_once(caches: dict[str, Path], vectors: np.ndarray, tmp_path: Path) -> None:
    output = tmp_path / "index.h5"
    build_index(VectorRetriever(vectors), [caches["base"]], output, ann=False, show_progress=False)
    holding, go = tmp_path / "holding", tmp_path / "go"
    wait = f"Path({str(holding)!r}).touch()\n        while not Path({str(go)!r}).exists(): time.sleep(0.05)"
    first = subprocess.Popen(child(output, caches["large"], wait), cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        while not holding.exists():
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        second = subprocess.run(child(output, caches["extra"], "pass"), cwd=REPO, capture_output=True, text=True)
        assert first.poll() is None  # the second gave up while the first still held the index
        assert second.returncode == 1
        assert "another amr run is writing this index" in second.stderr and f"pid {first.pid}" in second.stderr
        go.touch()
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        go.touch()
        first.wait(timeout=300)
    index = open_index(output)
    assert index.ids() == [str(i) for i in range(N + 1500)]  # the first run's items, all of them; the second's none
    done = subprocess.run(child(output, caches["extra"], "pass"), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert open_index(output).live_items == N + 1500  # (extra's ids N … N+99 were among large's: replaced)
