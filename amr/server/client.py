"""`amr query --server URL`: queries sent to a running `amr serve`, answered
as records the same as a local search's (amr.results), with nothing but the
standard library: a loop of queries pays neither the start-up nor the
loading of the model and index, which the server did once.

HTTP/1.1 is spoken over a plain socket (`Connection` below) rather than with
http.client, whose import (with email, ssl and their parsers) costs a client
process 20 ms, as much as the rest of it: the server's answers are JSON of a
known length, so a status line, headers and a body are all there is to read.

Text queries go to ``POST /api/search/batch`` a batch at a time, example
clips to ``POST /api/search/audio`` (amr.server.app), over one kept-alive
connection. A query the server refuses (HTTP
400: no words, an undecodable clip) is a Failure, as it would be locally; a
server that cannot be reached or answers otherwise is an AmrError.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Iterator
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from amr.errors import AmrError
from amr.results import QUERY_BATCH, Failure, QueryInput, Result

TIMEOUT = 600  # seconds: a query by example of a long clip takes a while


class Client:
    """A connection to the server at ``url``. Its index's parts (``parts``) and page size are asked
    when first needed (for --explain and example clips): a text query is one round trip."""

    def __init__(self, url: str):
        split = urlsplit(url if "://" in url else f"http://{url}")
        try:
            port = split.port  # a ValueError for a port that is not a number in 0-65535
        except ValueError:
            port = -1
        if split.scheme not in ("http", "https") or not split.hostname or port == -1:
            raise AmrError(f"--server {url}: not an http://HOST:PORT address of an `amr serve`")
        self.url = url
        self.prefix = split.path.rstrip("/")
        self.answered = False  # whether the server has answered a request yet
        self.connection = Connection(split.hostname, port or (443 if split.scheme == "https" else 80), tls=split.scheme == "https")

    @cached_property
    def _info(self) -> dict[str, Any]:
        return self._request("GET", "/api/info", expect=("parts", "page_limit"))

    @property
    def parts(self) -> list[str]:
        return self._info["parts"]

    @property
    def page_limit(self) -> int:
        return self._info["page_limit"]

    def run_queries(
        self,
        queries: Iterable[QueryInput | Failure],
        top: int = 10,
        *,
        explain_scores: bool = False,
        exact: bool = False,
        all_segments: bool = False,
    ) -> Iterator[Result | Failure]:
        """What amr.query.run_queries yields for these queries, from the server: the text
        queries of each QUERY_BATCH of the input go in one request, encoded together as
        run_queries encodes them (so the vectors, and the scores, are the same to the last digit)."""
        stream = iter(queries)
        while chunk := list(islice(stream, QUERY_BATCH)):
            texts = [q.text for q in chunk if isinstance(q, QueryInput) and q.example is None]
            answers = iter(self._batch(texts, top, exact, all_segments) if texts else [])
            for q in chunk:
                if isinstance(q, Failure):
                    yield q
                    continue
                try:
                    answer = self._example(q.example, top) if q.example is not None else next(answers)
                except _Refused as e:
                    answer = {"error": str(e)}
                if "error" in answer:
                    yield Failure(q.text, q.id, answer["error"])
                    continue
                for r in answer["results"]:
                    yield Result(
                        query=q.text,
                        query_id=q.id,
                        rank=r["rank"],
                        score=r["score"],
                        id=r["id"],
                        audio=r["audio"],
                        metadata=r["metadata"],
                        start=r["start"],
                        end=r["end"],
                        explain=r["explain"] if explain_scores else None,
                        tags=[(name, p) for name, p in r["tags"]] if explain_scores else None,
                    )
        if not self.answered:
            self._info  # noqa: B018  (no query reached the server: whether it is there is still an error or not)

    def _batch(self, texts: list[str], top: int, exact: bool, all_segments: bool) -> list[dict[str, Any]]:
        body = json.dumps({"queries": texts, "top": top, "exact": exact, "all_segments": all_segments}).encode()
        return self._request("POST", "/api/search/batch", body, {"Content-Type": "application/json"}, expect=("answers",))["answers"]

    def _example(self, clip: Path, top: int) -> dict[str, Any]:
        """The results for an example clip, uploaded (page by page past the server's page size)."""
        records: list[dict[str, Any]] = []
        while len(records) < top:
            page = {"offset": len(records), "limit": min(self.page_limit, top - len(records))}
            found = self._upload(clip, page)["results"]
            records += found
            if len(found) < page["limit"]:
                break
        return {"results": records}

    def _upload(self, clip: Path, page: dict[str, int]) -> dict[str, Any]:
        try:
            data = clip.read_bytes()
        except OSError as e:
            raise _Refused(f"{clip}: {e.strerror}") from None
        boundary = os.urandom(16).hex()
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{clip.name}"\r\n\r\n'.encode()
        body = head + data + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self._request("POST", "/api/search/audio?" + urlencode(page), body, headers, expect=("results",))

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, expect: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The JSON object the server answers, holding the fields ``expect`` names."""
        try:
            status, payload = self.connection.request(method, self.prefix + path, body, headers or {})
        except (OSError, ValueError) as e:
            self.connection.close()
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise AmrError(f"{self.url}: cannot reach an amr server there ({reason}); start one with `amr serve`") from None
        try:
            answer = json.loads(payload)
        except ValueError:
            raise AmrError(f"{self.url}: answered HTTP {status}, not with JSON: not an amr server?") from None
        self.answered = True
        detail = answer.get("detail") if isinstance(answer, dict) else None
        if status in (400, 413):  # this query: another one may run
            raise _Refused(str(detail))
        if status != 200:
            raise AmrError(f"{self.url}: HTTP {status}: {detail or payload[:200]!r}")
        if not isinstance(answer, dict) or any(name not in answer for name in expect):
            raise AmrError(f"{self.url}: answered {path.split('?')[0]} without {', '.join(expect)}: not an amr server?")
        return answer


class Connection:
    """One kept-alive HTTP/1.1 connection to ``host:port`` (TLS with ``tls``), opened when first used
    and opened again when the server has closed it between two requests (its idle timeout)."""

    def __init__(self, host: str, port: int, *, tls: bool = False, timeout: float = TIMEOUT):
        self.host, self.port, self.tls, self.timeout = host, port, tls, timeout
        self.socket: socket.socket | None = None
        self.stream: Any = None  # the socket's buffered reader, while open

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        """The status and body of the answer to one request. A ValueError: the answer is not HTTP."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body or b'')}"]
        message = "\r\n".join(lines + [f"{k}: {v}" for k, v in headers.items()]).encode() + b"\r\n\r\n" + (body or b"")
        reused = self.socket is not None
        try:
            return self._exchange(message)
        except ConnectionError:
            if not reused:
                raise
            self.close()  # the server closed the kept-alive connection: once more on a new one
            return self._exchange(message)

    def _exchange(self, message: bytes) -> tuple[int, bytes]:
        self._opened().sendall(message)
        status_line = self.stream.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        version, _, rest = status_line.decode("latin-1").partition(" ")
        if not version.startswith("HTTP/") or not rest[:3].isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:40]!r}")
        fields: dict[str, str] = {}
        while (line := self.stream.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        if fields.get("transfer-encoding", "").lower() == "chunked":
            body = b"".join(iter(self._chunk, b""))
        elif "content-length" in fields:
            body = self._read(int(fields["content-length"]))
        else:
            body, fields["connection"] = self.stream.read(), "close"
        if fields.get("connection", "").lower() == "close":
            self.close()
        return int(rest[:3]), body

    def _opened(self) -> socket.socket:
        """The connection's socket, connected now if it is not (its reader in ``stream``)."""
        if self.socket is None:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self.tls:
                import ssl  # only for https: its import is a third of http.client's

                raw = ssl.create_default_context().wrap_socket(raw, server_hostname=self.host)
            self.socket, self.stream = raw, raw.makefile("rb")
        return self.socket

    def _chunk(self) -> bytes:
        size = int(self.stream.readline().split(b";")[0], 16)
        data = self._read(size)
        self.stream.readline()  # the CRLF after each chunk (and after the last, empty one)
        return data

    def _read(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) < size:
            raise ConnectionError("the server closed the connection in an answer")
        return data

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self.socket is not None:
            self.socket.close()
            self.socket = None


class _Refused(Exception):
    """The server refused one query (its reason)."""
