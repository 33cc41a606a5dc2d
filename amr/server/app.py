"""`amr serve`: a local web page and JSON API to search an index and listen to what it finds.

A thin layer over amr.query: the index and its retriever are loaded once (a
`Searcher`), and text and clip queries rank through `run_queries`, with the
score split and machine tags of ``amr query --explain``. Endpoints (JSON unless said)::

    GET  /                          the page (amr/resources/web: one HTML file, its script and style)
    GET  /api/info                  the index: items, segments, kind of model, fusion, parts
    GET  /api/search?q=&offset=&limit=&exact=&all_segments=   ranked results of a text query
    POST /api/search/audio?offset=&limit=      results for a clip sent as multipart field "file"
    POST /api/search/batch          JSON {"queries": [text, ...], "top", "exact", "all_segments"}: each
                                    query's results, or its "error" (`amr query --server`)
    GET  /api/similar?id=&start=&offset=&limit= items that sound like one segment of an indexed item
    GET  /api/item?id=              one item: metadata, captions, segments with machine tags
    GET  /api/audio?id=             the item's audio file (HTTP Range requests: 206 partial content)
    GET  /api/browse?q=&folder=&cat=&min_duration=&max_duration=&has_metadata=&offset=&limit=
                                    a text query's results (or, without q, the items in index
                                    order) that pass the filters (amr.server.browse), each with the
                                    UCS category its model suggests when its name gives none
    GET  /api/facets                the folders, UCS categories and duration range to filter by
    GET  /api/peaks?id=             the waveform overview of the item's file (amr.audio.peaks)

The queries of a batch are encoded together, as `amr query` encodes the
queries of one batch of its input (amr.query.QUERY_BATCH), so that `amr query
--server` prints what a local search prints, to the last digit.

A result is a record of ``amr query --format jsonl --explain`` without the
query fields (those head the response) plus ``audio_url``: its ``explain``
splits the score into what the audio and the metadata part contributed
(part-wise inner products that add up to the score; for a clip or "similar",
the one audio cosine), ``start``/``end`` are the matching segment in seconds
(with ``amr serve --moments``, a text result's refined moment: amr.moments).
Results are paged by ``offset`` and ``limit``: a page is the ranks
offset+1 … offset+limit of one ranking of every item.

"Similar" ranks by the item's own vector, not its audio file: the index
stores each segment's audio-part vector, which is what query by example
computes from the file (the same direction for zero-shot and late fusion; a
mid-fusion item's audio part also saw its metadata token). So it answers in
one matrix product, per segment (the one the page is playing), without
decoding the file or loading the audio model, and the item itself scores
exactly 1; it is left out of its own results.

Only files that are in the index are streamed, looked up by item id: no
request names a path. The server binds to 127.0.0.1 unless told otherwise.

On a loopback address a request whose ``Host`` header is not that address,
``localhost``, ``127.0.0.1`` or ``[::1]`` with the server's port is refused
(400): a web page the browser shows could otherwise point a name of its own
at 127.0.0.1 (DNS rebinding) and read the API as if it were the same site.
On any other address (``--host``) the check is off, since clients may reach
the machine by any of its names; there anyone who can reach it can search.

An uploaded clip is decoded and embedded in a worker thread, never on the
event loop, one upload at a time, under its own lock: text searches (and
everything else) are answered meanwhile. It is limited by size
(``upload_limit`` bytes) and by its decoded duration (the searcher's
``max_example_seconds``): a header that states a longer clip is refused
before anything is decoded, and decoding stops at the limit, so a small file
of hours of silence costs nothing.
"""

from __future__ import annotations

import ipaddress
import mimetypes
import shutil
import socket
import tempfile
import threading
from bisect import bisect_right
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from amr.audio.formats import MEDIA_TYPES
from amr.audio.peaks import PeakCache, peaks_folder
from amr.config import MAX_EXAMPLE_SECONDS, SERVE_HOST, SERVE_PORT, UPLOAD_LIMIT
from amr.console import console, warn
from amr.errors import AmrError
from amr.index.search import machine_tags, search
from amr.query import EXAMPLE_PART, Searcher, open_searcher, ranked_result, run_queries, shown_span
from amr.results import QUERY_BATCH, Failure, QueryInput, Result
from amr.server.browse import Filters, Library

if TYPE_CHECKING:
    import torch

WEB = Path(__file__).parents[1] / "resources" / "web"
PAGE_LIMIT = 100  # results per page at most

Offset = Annotated[int, Query(ge=0, description="Ranks skipped: the page starts at rank offset + 1.")]
BATCH_TOP = 100_000  # results per query of a batch at most


class Batch(BaseModel):
    """Text queries ranked together (POST /api/search/batch)."""

    queries: list[str] = Field(max_length=QUERY_BATCH)
    top: int = Field(10, ge=1, le=BATCH_TOP)
    exact: bool = False
    all_segments: bool = False


Limit = Annotated[int, Query(ge=1, le=PAGE_LIMIT, description="Results on the page.")]


def create_app(searcher: Searcher, upload_limit: int = UPLOAD_LIMIT, moments: bool = False) -> FastAPI:
    """The page and the JSON API over ``searcher``; uploads above ``upload_limit`` bytes are refused;
    ``moments``: text results in long recordings span their refined moment (`amr.query.run_queries`)."""
    index = searcher.index
    text_lock = threading.Lock()  # one text query at a time through the text model
    upload_lock = threading.Lock()  # one uploaded clip at a time through the (lazily loaded) audio model
    # No /docs: its page loads scripts from a CDN, and amr works offline; the schema is at /api/openapi.json.
    app = FastAPI(title="amr", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.hosts = None  # the Host headers accepted (LocalServer sets them on a loopback address); None: any
    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.middleware("http")
    async def known_host_only(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        hosts = request.app.state.hosts
        if hosts is not None and request.headers.get("host", "").lower() not in hosts:
            return JSONResponse({"detail": "unknown Host header: this server answers only to its own address"}, status_code=400)
        return await call_next(request)

    def item_number(item_id: str) -> int:
        number = index.number(item_id)
        if number is None:
            raise HTTPException(404, f"no item {item_id!r} in {index.path.name}")
        return number

    def ranked(
        queries: list[QueryInput],
        offset: int,
        limit: int,
        lock: threading.Lock = text_lock,
        exact: bool = False,
        all_segments: bool = False,
    ) -> list[Result]:
        with lock:
            try:
                found = run_queries(
                    searcher, queries, offset + limit, explain_scores=True, exact=exact, all_segments=all_segments, moments=moments
                )
                outcomes = list(found)
            except AmrError as e:  # the audio model could not be loaded: no query by example on this server
                raise HTTPException(503, str(e)) from None
        failed = [o for o in outcomes if isinstance(o, Failure)]
        if failed:
            raise HTTPException(400, failed[0].error)
        return [o for o in outcomes if isinstance(o, Result)][offset:]

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        header = index.header
        return {
            "index": str(index.path),
            "items": index.items_count,
            "segments": len(index),
            "kind": header.kind,
            "fusion": header.fusion.value,
            "parts": [name for name, _ in header.parts],
            "audio_model": header.audio.audio_model,
            "upload_limit": upload_limit,
            "page_limit": PAGE_LIMIT,
        }

    @app.get("/api/search")
    def search_text(
        q: Annotated[str, Query(description="The query text.")],
        offset: Offset = 0,
        limit: Limit = 10,
        exact: Annotated[bool, Query(description="Exact search even where the index has an approximate one.")] = False,
        all_segments: Annotated[bool, Query(description="Every matching segment of a long recording, not only its best.")] = False,
    ) -> dict[str, Any]:
        results = ranked([QueryInput("1", q)], offset, limit, exact=exact, all_segments=all_segments)
        return _page(q, offset, limit, index.items_count, results)

    @app.post("/api/search/batch")
    def search_batch(batch: Batch) -> dict[str, Any]:
        queries = [QueryInput(str(i), text) for i, text in enumerate(batch.queries)]  # numbered: results are grouped by position
        answers: list[dict[str, Any]] = [{"results": []} for _ in queries]
        with text_lock:
            outcomes = list(
                run_queries(searcher, queries, batch.top, explain_scores=True, exact=batch.exact, all_segments=batch.all_segments)
            )
        for outcome in outcomes:
            answer = answers[int(outcome.query_id)]
            if isinstance(outcome, Failure):
                answer["error"] = outcome.error
            else:
                answer["results"].append(_record(outcome))
        return {"answers": answers}

    @app.post("/api/search/audio")
    async def search_audio(request: Request, offset: Offset = 0, limit: Limit = 10) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is None:
            raise HTTPException(411, "an upload needs a Content-Length")
        if not declared.isdigit() or int(declared) > upload_limit:
            raise HTTPException(413, f"the upload is over the limit of {upload_limit / 2**20:g} MiB")
        form = await request.form(max_files=1, max_fields=0)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, 'send the clip as a multipart/form-data file field named "file"')
        name = Path(upload.filename or "upload").name
        try:
            results = await run_in_threadpool(rank_upload, upload.file, name, offset, limit)
        finally:
            await upload.close()
        return _page(name, offset, limit, index.items_count, results)

    def rank_upload(source: IO[bytes], name: str, offset: int, limit: int) -> list[Result]:
        """The work of an upload, in a worker thread: copy it to a file, decode and embed it, rank."""
        with tempfile.TemporaryDirectory(prefix="amr-serve-") as folder:
            clip = Path(folder) / ("example" + _safe_suffix(name))
            with open(clip, "wb") as out:
                shutil.copyfileobj(source, out)
            try:
                return ranked([QueryInput("1", name, example=clip)], offset, limit, upload_lock)
            except HTTPException as e:  # name the file as the user knows it, not the temporary copy
                raise HTTPException(e.status_code, str(e.detail).replace(str(clip), name)) from None

    @app.get("/api/similar")
    def similar(
        id: Annotated[str, Query(description="An indexed item's id.")],
        start: Annotated[float, Query(ge=0, description="A time in the item (s): its segment that starts last at or before it.")] = 0.0,
        offset: Offset = 0,
        limit: Limit = 10,
    ) -> dict[str, Any]:
        number = item_number(id)
        rows = _rows_of(searcher, number)
        starts = [_span(searcher, int(r))["start"] for r in rows]  # as results show them
        row = int(rows[max(0, bisect_right(starts, start) - 1)])
        try:
            results = _similar(searcher, row, offset + limit)[offset:]
        except AmrError as e:  # an index without an audio part
            raise HTTPException(400, str(e)) from None
        return {**_page(f"sounds like {id}", offset, limit, index.items_count - 1, results), "like": {"id": id, **_span(searcher, row)}}

    @app.get("/api/item")
    def item(id: Annotated[str, Query(description="An indexed item's id.")]) -> dict[str, Any]:
        number = item_number(id)
        found = index.item(number)
        segments = [{**_span(searcher, int(r)), "tags": machine_tags(index, int(r))} for r in _rows_of(searcher, number)]
        return {
            "id": found.id,
            "audio": found.audio,
            "audio_url": _audio_url(found.id),
            "split": found.split,
            "metadata": found.metadata,
            "captions": found.captions,
            "segments": segments,
        }

    @app.get("/api/audio")
    @app.head("/api/audio", include_in_schema=False)
    def audio(id: Annotated[str, Query(description="An indexed item's id.")]) -> FileResponse:
        path = Path(index.item(item_number(id)).audio)
        if not path.is_file():
            raise HTTPException(404, f"the audio file of {id!r} is not on disk: {path}")
        suffix = path.suffix.lower()
        media_type = MEDIA_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type)

    library = Library(searcher)
    overviews = PeakCache(peaks_folder(index.path))

    @app.get("/api/browse")
    def browse(
        q: Annotated[str | None, Query(description="The query text; none: the items in index order.")] = None,
        folder: Annotated[str | None, Query(description="Only items in this folder (of their ids) or below it.")] = None,
        cat: Annotated[str | None, Query(description="Only items of this UCS Category or CatID.")] = None,
        min_duration: Annotated[float | None, Query(ge=0, description="Only items at least this long (s).")] = None,
        max_duration: Annotated[float | None, Query(ge=0, description="Only items at most this long (s).")] = None,
        has_metadata: Annotated[bool | None, Query(description="Only items with (true) or without (false) metadata.")] = None,
        offset: Offset = 0,
        limit: Limit = 10,
    ) -> dict[str, Any]:
        filters = Filters(folder or None, cat or None, min_duration, max_duration, has_metadata)
        text = q if q and q.strip() else None
        with text_lock:
            try:
                results, passing = library.search(text, filters, offset, limit)
                suggested = [library.suggestion(r.id, r.start) for r in results]
            except AmrError as e:
                raise HTTPException(400, str(e)) from None
        page = _page(text or "", offset, limit, passing, results)
        for record, suggestion in zip(page["results"], suggested):
            record["suggested"] = suggestion
        return {**page, "filters": {name: value for name, value in vars(filters).items() if value is not None}}

    @app.get("/api/facets")
    def facets() -> dict[str, Any]:
        with text_lock:
            return library.facets()

    @app.get("/api/peaks")
    def peaks(id: Annotated[str, Query(description="An indexed item's id.")]) -> dict[str, Any]:
        path = Path(index.item(item_number(id)).audio)
        try:
            overview = overviews.get(path)
        except AmrError as e:
            raise HTTPException(404 if not path.is_file() else 422, str(e)) from None
        return {"id": id, **{k: overview[k] for k in ("duration", "frames", "sample_rate", "peaks")}}

    return app


class LocalServer:
    """An app on a bound socket, so that a port in use is an AmrError before
    anything runs and ``url`` is known (port 0: a free port) before ``run``."""

    def __init__(self, app: FastAPI, host: str = SERVE_HOST, port: int = SERVE_PORT):
        self.socket = listen(host, port)
        address, bound_port = self.socket.getsockname()[:2]
        shown = f"[{address}]" if ":" in address else address
        self.url = f"http://{shown}:{bound_port}/"
        if is_loopback(address):
            app.state.hosts = local_hosts(shown, bound_port)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))

    def run(self) -> None:
        """Answer requests until Ctrl-C (in the main thread) or `stop`."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def stop(self) -> None:
        self.server.should_exit = True


def serve(
    index_path: Path,
    host: str = SERVE_HOST,
    port: int = SERVE_PORT,
    *,
    checkpoint: Path | None = None,
    audio_weights: Path | None = None,
    device: torch.device | str = "cpu",
    upload_limit: int = UPLOAD_LIMIT,
    moments: bool = False,
    max_query_seconds: float = MAX_EXAMPLE_SECONDS,
    threads: int = 1,
) -> None:
    """Serve the page and the API over the index until Ctrl-C. A missing
    index, one the checkpoint did not build, or a port in use is an AmrError
    before anything listens; a host other than loopback is warned about.
    Uploaded clips longer than ``max_query_seconds`` are refused."""
    searcher = open_searcher(Path(index_path), checkpoint, audio_weights, device, threads, max_query_seconds)
    local = LocalServer(create_app(searcher, upload_limit, moments), host, port)
    if not is_loopback(host):
        warn(f"listening on {host}: anyone who can reach this machine can search the index and play its audio files")
    console.print(f"{index_path}: {searcher.index.items_count} items at {local.url} (Ctrl-C stops)")
    try:
        local.run()
    except KeyboardInterrupt:  # uvicorn has shut down and passes Ctrl-C on: the way a server is meant to stop
        console.print("stopped")


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port``, or an AmrError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise AmrError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind(address)
        sock.listen()
    except OSError as e:
        sock.close()
        raise AmrError(f"{host}:{port}: cannot listen ({e.strerror}); choose another --port or --host") from None
    return sock


def local_hosts(address: str, port: int) -> set[str]:
    """The Host headers a loopback server answers to: its address or a loopback name, with its port
    (and without it on port 80, where browsers leave it out)."""
    names = {address.lower(), "localhost", "127.0.0.1", "[::1]"}
    return {f"{name}:{port}" for name in names} | (names if port == 80 else set())


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves to loopback addresses only."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


# --- internals ----------------------------------------------------------------------------


def _similar(searcher: Searcher, row: int, top: int) -> list[Result]:
    """The ``top`` other items whose audio best matches row ``row``'s stored
    audio part, best first, by cosine (as query by example ranks)."""
    index = searcher.index
    columns, _ = index.part(EXAMPLE_PART)
    query = np.zeros(index.header.dim, np.float32)
    query[columns] = index.vectors[row, columns]
    norm = float(np.linalg.norm(query))
    if norm == 0:
        raise AmrError(f"{index.item_of_row(row).id!r} has no audio vector in {index.path.name} to compare with")
    query /= norm
    rows, scores = search(index, query[None], top + 1, part=EXAMPLE_PART)
    itself = int(index.row_item[row])
    others = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0 and index.row_item[r] != itself]
    return [
        ranked_result(index, None, rank, found, score, query, EXAMPLE_PART, explain_scores=True)
        for rank, (found, score) in enumerate(others[:top], start=1)
    ]


def _span(searcher: Searcher, row: int) -> dict[str, float]:
    """The row's segment, as results show it."""
    start, end = shown_span(*searcher.index.spans[row])
    return {"start": start, "end": end}


def _rows_of(searcher: Searcher, number: int) -> np.ndarray:
    """The rows (segments) of item ``number``: consecutive, in time order."""
    first, end = searcher.index.store.item_rows(np.array([number]))
    return np.arange(int(first[0]), int(end[0]))


def _page(query: str, offset: int, limit: int, total: int, results: list[Result]) -> dict[str, Any]:
    return {"query": query, "offset": offset, "limit": limit, "total": total, "results": [_record(r) for r in results]}


def _record(result: Result) -> dict[str, Any]:
    """A result as the API gives it: without the query fields, with the URL of its audio."""
    record = result.record()
    del record["query"], record["query_id"]
    return {**record, "audio_url": _audio_url(result.id)}


def _audio_url(item_id: str) -> str:
    return "/api/audio?" + urlencode({"id": item_id})


def _safe_suffix(name: str) -> str:
    """The upload's extension if it is a plain one (decoders may look at it), else none."""
    suffix = Path(name).suffix.lower()
    return suffix if suffix[1:].isalnum() and len(suffix) <= 6 else ""
