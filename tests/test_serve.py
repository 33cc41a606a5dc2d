"""`amr serve`: the JSON API, through HTTP requests to a live server on 127.0.0.1.

Most tests run against an index of the fake retriever of tests/support/words.py
whose items point at real audio files of shared/data/sounds (so streamed
bytes can be compared with the files); one item stands for a long recording
indexed as two segments. The last tests use a real zero-shot index of the
sounds set and the real audio model for a query by an uploaded clip.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import soundfile as sf
from conftest import SHARED
from support.serving import UPLOAD_LIMIT, running, split_in_two
from support.words import WordsRetriever, checkpoint_retriever, make_cache

from amr.cache import EmbeddingCache
from amr.errors import AmrError
from amr.files import sha256_file
from amr.index.build import build_index
from amr.index.reader import Index
from amr.items import Item
from amr.model.retrievers import RETRIEVER_KINDS
from amr.query import MAX_EXAMPLE_SECONDS, open_searcher
from amr.server.app import LocalServer, create_app, is_loopback, serve

SOUNDS = SHARED / "data" / "sounds" / "audio"


def library(sounds: Path) -> list[Item]:
    return [
        Item("dog", str(sounds / "bigsoundbank-dog.mp3"), "train", {"title": "dog barking in the rain"}),
        Item("cat", str(sounds / "bigsoundbank-cat.mp3"), "train", {"tags": ["cat", "meowing"]}),
        Item("rain", str(sounds / "esc50-3-132852-A-10.wav"), "train", {"description": "heavy rain on a tin roof"}),
        Item("engine", str(sounds / "freesound-car_engine.wav"), "train", {}),
        Item("birds", str(sounds / "freesound-birds1.wav"), "train", {"keywords": ["birds", "singing", "morning"]}),
        Item("field/train passing 1", str(sounds / "freesound-train.wav"), "train", {"title": "a train passing by"}),
        Item("gone", str(sounds / "no-such-file.wav"), "train", {"title": "a deleted recording"}),
    ]


class ContentEmbedder:
    """Stands in for the audio model: an uploaded file whose bytes are those of
    an item's audio file gets that item's cached frames and tags."""

    def __init__(self, cache: Path):
        self.cache = EmbeddingCache(cache)
        self.row = {sha256_file(Path(item.audio)): i for i, item in enumerate(self.cache.items) if Path(item.audio).is_file()}

    def embed(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        row = self.row.get(sha256_file(path))
        if row is None:
            raise AmrError(f"{path}: not an audio file: libsndfile recognises no audio format in it")
        return self.cache.sequence(row), self.cache.tags[row]


@pytest.fixture(scope="module")
def fake_index(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    folder = tmp_path_factory.mktemp("serve")
    cache = make_cache(folder / "library.h5", library(shared / "data" / "sounds" / "audio"))
    build_index(WordsRetriever(), [cache], folder / "index.h5", show_progress=False)
    split_in_two(folder / "index.h5", "field/train passing 1", "birds")
    return folder / "index.h5"


@pytest.fixture(scope="module")
def api(fake_index: Path) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(RETRIEVER_KINDS, "fake", lambda spec, device: WordsRetriever(spec["fingerprint"]))
        searcher = open_searcher(fake_index)
        searcher.clip_embedder = ContentEmbedder(fake_index.with_name("library.h5"))
        with running(searcher) as url:
            yield url


def get(url: str, **params) -> requests.Response:
    return requests.get(url, params=params, timeout=60)


def test_text_search_ranks_with_the_score_split_tags_and_segment(api: str) -> None:
    page = get(f"{api}/api/search", q="dog barking", limit=3).json()
    assert (page["query"], page["offset"], page["limit"], page["total"]) == ("dog barking", 0, 3, 7)
    first, *rest = page["results"]
    assert first["id"] == "dog" and [r["rank"] for r in page["results"]] == [1, 2, 3]
    assert set(first) == {"rank", "score", "id", "audio", "metadata", "start", "end", "explain", "tags", "audio_url"}
    assert first["metadata"] == {"title": "dog barking in the rain"} and first["audio_url"] == "/api/audio?id=dog"
    assert first["explain"]["audio"] + first["explain"]["metadata"] == pytest.approx(first["score"], abs=1e-5)
    assert len(first["tags"]) == 5 and first["start"] == 0.0 and first["end"] > 0
    assert first["score"] >= rest[0]["score"] >= rest[1]["score"]


def test_pages_are_slices_of_one_ranking(api: str) -> None:
    whole = get(f"{api}/api/search", q="rain on the roof", limit=7).json()["results"]
    pages = [get(f"{api}/api/search", q="rain on the roof", offset=offset, limit=2).json()["results"] for offset in (0, 2, 4, 6)]
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [(r["rank"], r["id"]) for p in pages for r in p] == [(r["rank"], r["id"]) for r in whole]
    assert get(f"{api}/api/search", q="rain", offset=7).json()["results"] == []


def test_a_long_recording_is_found_by_its_segment(api: str) -> None:
    found = get(f"{api}/api/search", q="a train passing by", limit=1).json()["results"][0]
    item = get(f"{api}/api/item", id="field/train passing 1").json()
    assert [(s["start"], s["end"]) for s in item["segments"]] == [(0.0, found["start"]), (found["start"], found["end"])]
    assert found["id"] == "field/train passing 1" and found["start"] > 0  # its own vector is in the second segment
    assert item["metadata"] == {"title": "a train passing by"} and all(len(s["tags"]) == 5 for s in item["segments"])
    assert item["audio_url"] == "/api/audio?id=field%2Ftrain+passing+1"


def test_similar_ranks_other_items_by_the_cosine_of_their_audio_parts(api: str, fake_index: Path) -> None:
    page = get(f"{api}/api/similar", id="dog", limit=10).json()
    index = Index(fake_index)
    audio = np.asarray(index.vectors[:, : index.part("audio")[0].stop], np.float64)
    cosines = audio @ audio[0] / np.linalg.norm(audio, axis=1) / np.linalg.norm(audio[0])
    best = {}  # each item by its best segment
    for row, item in enumerate(index.row_item):
        best[int(item)] = max(best.get(int(item), -2.0), cosines[row])
    expected = sorted((i for i in best if i != 0), key=lambda i: -best[i])
    assert page["query"] == "sounds like dog" and page["like"]["id"] == "dog" and page["total"] == 6
    assert [r["id"] for r in page["results"]] == [index.item(i).id for i in expected]  # the dog itself left out
    for r, i in zip(page["results"], expected):
        assert r["score"] == pytest.approx(best[i], abs=1e-5) and r["explain"] == {"audio": pytest.approx(best[i], abs=1e-5)}
    assert [r["rank"] for r in page["results"]] == list(range(1, 7))
    second = get(f"{api}/api/similar", id="dog", offset=2, limit=2).json()["results"]
    assert [r["id"] for r in second] == [index.item(i).id for i in expected[2:4]]


def test_similar_compares_the_segment_playing_at_the_start_time(api: str) -> None:
    first, second = get(f"{api}/api/item", id="field/train passing 1").json()["segments"]
    half = second["start"]
    like = {t: get(f"{api}/api/similar", id="field/train passing 1", start=t, limit=1).json() for t in (0, 0.9 * half, half, 1.5 * half)}
    assert like[0]["like"] == like[0.9 * half]["like"] == {"id": "field/train passing 1", "start": 0.0, "end": half}
    assert like[half]["like"] == like[1.5 * half]["like"] == {"id": "field/train passing 1", "start": half, "end": second["end"]}
    assert like[0]["results"][0]["id"] == "birds"  # the first segment holds the birds' vector
    assert like[half]["results"][0]["id"] != "birds"


def test_an_uploaded_clip_ranks_by_audio_and_finds_its_own_item(api: str, shared: Path) -> None:
    clip = shared / "data" / "sounds" / "audio" / "bigsoundbank-dog.mp3"
    with open(clip, "rb") as f:
        response = requests.post(f"{api}/api/search/audio", params={"limit": 2}, files={"file": (clip.name, f, "audio/mpeg")}, timeout=60)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["query"] == "bigsoundbank-dog.mp3" and len(page["results"]) == 2
    dog = page["results"][0]
    assert dog["id"] == "dog" and dog["score"] == pytest.approx(1.0, abs=1e-5) and set(dog["explain"]) == {"audio"}


def test_uploads_that_are_too_large_missing_or_not_audio_are_refused(api: str) -> None:
    url = f"{api}/api/search/audio"
    too_large = requests.post(url, files={"file": ("big.wav", b"\0" * (UPLOAD_LIMIT + 1))}, timeout=60)
    assert too_large.status_code == 413 and "1 MiB" in too_large.json()["detail"]
    no_file = requests.post(url, files={"other": ("a.wav", b"RIFF")}, timeout=60)
    assert no_file.status_code == 400 and '"file"' in no_file.json()["detail"]
    not_multipart = requests.post(url, json={"file": "x"}, timeout=60)
    assert not_multipart.status_code == 400
    not_audio = requests.post(url, files={"file": ("notes.txt", b"not a sound")}, timeout=60)
    assert not_audio.status_code == 400
    detail = not_audio.json()["detail"]
    assert detail.startswith("notes.txt: not an audio file") and "amr-serve-" not in detail  # names the upload, not the temporary copy


@pytest.mark.usefixtures("words_kind")
def test_an_upload_to_a_server_without_the_index_audio_model_says_which_weights(fake_index: Path, mn04_weights: Path) -> None:
    searcher = open_searcher(fake_index, audio_weights=mn04_weights)  # the fake caches record other weights
    with running(searcher) as url:
        clip = (SOUNDS / "bigsoundbank-dog.mp3").read_bytes()
        response = requests.post(f"{url}/api/search/audio", files={"file": ("dog.mp3", clip)}, timeout=60)
        assert response.status_code == 503 and "pass the original weights file with --audio-weights" in response.json()["detail"]
        assert get(f"{url}/api/search", q="dog").status_code == 200  # text queries still work


def test_audio_is_streamed_with_ranges_and_its_content_type(api: str, shared: Path) -> None:
    sounds = shared / "data" / "sounds" / "audio"
    data = (sounds / "bigsoundbank-dog.mp3").read_bytes()
    whole = get(f"{api}/api/audio", id="dog")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "audio/mpeg" and whole.headers["accept-ranges"] == "bytes"
    part = requests.get(f"{api}/api/audio", params={"id": "dog"}, headers={"Range": "bytes=1000-1999"}, timeout=60)
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = requests.get(f"{api}/api/audio", params={"id": "dog"}, headers={"Range": "bytes=-100"}, timeout=60)
    assert tail.status_code == 206 and tail.content == data[-100:]
    beyond = requests.get(f"{api}/api/audio", params={"id": "dog"}, headers={"Range": f"bytes={len(data)}-"}, timeout=60)
    assert beyond.status_code == 416
    wav = requests.head(f"{api}/api/audio", params={"id": "field/train passing 1"}, timeout=60)
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    assert int(wav.headers["content-length"]) == (sounds / "freesound-train.wav").stat().st_size


def raw_get(base: str, target: str) -> int:
    """The status of a GET of ``target`` exactly as written (no client normalises its dots)."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", target)
        return connection.getresponse().status
    finally:
        connection.close()


def test_only_indexed_files_are_served(api: str) -> None:
    for item_id in ("nope", "../../../../etc/passwd", "/etc/passwd", str(SOUNDS / "bigsoundbank-dog.mp3"), "dog/../cat"):
        response = get(f"{api}/api/audio", id=item_id)
        assert response.status_code == 404 and "no item" in response.json()["detail"]
    assert get(f"{api}/api/item", id="../dog").status_code == 404
    assert get(f"{api}/api/similar", id="nope").status_code == 404
    gone = get(f"{api}/api/audio", id="gone")
    assert gone.status_code == 404 and "not on disk" in gone.json()["detail"]
    for target in ("/static/../serve.py", "/static/..%2fserve.py", "/static/%2e%2e/%2e%2e/pyproject.toml", "/api/audio/../../etc/passwd"):
        assert raw_get(api, target) == 404, target


def test_bad_requests_are_refused_with_a_reason(api: str) -> None:
    no_words = get(f"{api}/api/search", q="?!")
    assert no_words.status_code == 400 and no_words.json()["detail"] == "the query has no words"
    for path, params in [
        ("/api/search", {}),
        ("/api/search", {"q": "dog", "limit": 0}),
        ("/api/search", {"q": "dog", "limit": 101}),
        ("/api/search", {"q": "dog", "offset": -1}),
        ("/api/search", {"q": "dog", "offset": "two"}),
        ("/api/similar", {}),
        ("/api/similar", {"id": "dog", "start": -1}),
        ("/api/audio", {}),
    ]:
        assert get(api + path, **params).status_code == 422, (path, params)


def test_the_page_and_its_assets_are_served(api: str) -> None:
    page = get(api + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<input id="query"' in page.text and '<script src="/static/app.js"' in page.text
    script = get(api + "/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    info = get(api + "/api/info").json()
    assert (info["items"], info["segments"], info["kind"], info["parts"]) == (7, 8, "fake", ["audio", "metadata"])


def test_a_missing_or_mismatched_index_or_a_busy_port_is_one_clear_error(tmp_path: Path, checkpoints: Path) -> None:
    with pytest.raises(AmrError, match=r"none\.h5: no such index file"):
        serve(tmp_path / "none.h5")
    cache = make_cache(tmp_path / "library.h5", library(SOUNDS))
    build_index(checkpoint_retriever(checkpoints / "a.ckpt"), [cache], tmp_path / "index.h5", show_progress=False)
    with pytest.raises(AmrError, match=r"built with checkpoint .*a\.ckpt .*not checkpoint .*b\.ckpt"):
        serve(tmp_path / "index.h5", checkpoint=checkpoints / "b.ckpt")
    searcher = open_searcher(tmp_path / "index.h5")
    with running(searcher) as url:
        with pytest.raises(AmrError, match=rf"127\.0\.0\.1:{urlsplit(url).port}: cannot listen \(Address already in use\)"):
            LocalServer(create_app(searcher), "127.0.0.1", urlsplit(url).port)


def test_requests_for_another_host_name_are_refused_on_loopback(api: str) -> None:
    """DNS rebinding: a page of attacker.example whose name now resolves to 127.0.0.1 sends its own Host."""
    port = urlsplit(api).port
    for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1:{port + 1}", ""):
        refused = requests.get(f"{api}/api/info", headers={"Host": host}, timeout=60)
        assert refused.status_code == 400 and "Host" in refused.json()["detail"], host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert requests.get(f"{api}/api/info", headers={"Host": host}, timeout=60).status_code == 200, host


@pytest.mark.usefixtures("words_kind")
def test_a_server_on_another_address_answers_to_any_host_name(fake_index: Path) -> None:
    """With --host (any address but loopback) clients may use any name of the machine."""
    app = create_app(open_searcher(fake_index))
    local = LocalServer(app, "0.0.0.0", 0)
    try:
        assert app.state.hosts is None
    finally:
        local.socket.close()


class GatedEmbedder:
    """An audio model that holds each clip until the test opens the gate."""

    def __init__(self, inner: ContentEmbedder) -> None:
        self.inner, self.entered, self.gate = inner, threading.Event(), threading.Event()

    def embed(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        self.entered.set()
        assert self.gate.wait(120), "the test never opened the gate"
        return self.inner.embed(path)


@pytest.mark.usefixtures("words_kind")
def test_an_upload_being_embedded_never_blocks_other_requests(fake_index: Path) -> None:
    """The uploaded clip was embedded under the lock text queries take: a long one held them all."""
    searcher = open_searcher(fake_index)
    searcher.clip_embedder = embedder = GatedEmbedder(ContentEmbedder(fake_index.with_name("library.h5")))
    with running(searcher) as url:
        clip = (SOUNDS / "bigsoundbank-dog.mp3").read_bytes()
        uploads: list[requests.Response] = []
        upload = threading.Thread(
            target=lambda: uploads.append(requests.post(f"{url}/api/search/audio", files={"file": ("dog.mp3", clip)}, timeout=300))
        )
        upload.start()
        try:
            assert embedder.entered.wait(60), "the upload did not reach the audio model"
            # while the clip is being embedded: a text search, an item and the page are answered (a timeout here is the failure)
            assert requests.get(f"{url}/api/search", params={"q": "dog"}, timeout=20).json()["results"][0]["id"] == "dog"
            assert requests.get(f"{url}/api/item", params={"id": "dog"}, timeout=20).status_code == 200
            assert requests.get(f"{url}/", timeout=20).status_code == 200
            assert not uploads, "the upload is still being embedded"
        finally:
            embedder.gate.set()
            upload.join(120)
        assert uploads[0].status_code == 200 and uploads[0].json()["results"][0]["id"] == "dog"


def test_only_loopback_hosts_count_as_local() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.20")


# --- real data: a zero-shot index of the sounds set, the real audio model -------------------------


def test_real_text_search_finds_the_clips_it_names(real_api: str) -> None:
    firsts = {q: get(f"{real_api}/api/search", q=q, limit=1).json()["results"][0] for q in ("dog barking", "a train", "thunderstorm")}
    assert firsts["dog barking"]["id"] == "bigsoundbank-dog"
    assert firsts["thunderstorm"]["id"].startswith("esc50-2-104105-")
    train = firsts["a train"]  # no metadata: found by its audio, in its second segment
    second = get(f"{real_api}/api/item", id="freesound-train").json()["segments"][1]
    assert train["id"] == "freesound-train" and (train["start"], train["end"]) == (second["start"], second["end"])
    assert train["start"] > 8 and train["explain"]["metadata"] == 0


def test_real_upload_is_embedded_by_the_audio_model_and_finds_itself(real_api: str, shared: Path) -> None:
    clip = shared / "data" / "sounds" / "audio" / "esc50-2-104105-A-19.wav"
    with open(clip, "rb") as f:
        response = requests.post(f"{real_api}/api/search/audio", params={"limit": 1}, files={"file": (clip.name, f)}, timeout=300)
    assert response.status_code == 200, response.text
    (found,) = response.json()["results"]
    assert found["id"] == "esc50-2-104105-A-19" and found["score"] == pytest.approx(1.0, abs=1e-3)  # the frames `amr extract` computed
    truncated = requests.post(f"{real_api}/api/search/audio", files={"file": ("cut.wav", clip.read_bytes()[:30000])}, timeout=300)
    assert truncated.status_code == 400 and truncated.json()["detail"].startswith("cut.wav: ")


def test_a_small_upload_of_hours_of_audio_is_refused_by_its_duration(real_api: str, tmp_path: Path) -> None:
    """A 1 MB FLAC of 6 h of silence was decoded whole (3 GB, half a minute); its header now refuses it."""
    rate = 1000
    with sf.SoundFile(tmp_path / "six hours.flac", "w", rate, 1, format="FLAC") as f:
        for _ in range(6 * 60):
            f.write(np.zeros(60 * rate, np.float32))
    data = (tmp_path / "six hours.flac").read_bytes()
    assert len(data) < 2 << 20
    response = requests.post(f"{real_api}/api/search/audio", files={"file": ("six hours.flac", data)}, timeout=300)
    assert response.status_code == 400
    assert response.json()["detail"] == f"six hours.flac: 6:00:00 long, over the limit of {MAX_EXAMPLE_SECONDS:g} s"
