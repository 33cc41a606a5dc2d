"""`amr query --server URL`: queries sent to a running `amr serve`, answered
as records the same as a local search's (amr.results), with nothing but the
standard library: a loop of queries pays neither the start-up nor the
loading of the model and index, which the server did once.

Text queries go to ``POST /api/search/batch`` a batch at a time, example
clips to ``POST /api/search/audio`` (amr.serve), over one kept-alive
connection. A query the server refuses (HTTP
400: no words, an undecodable clip) is a Failure, as it would be locally; a
server that cannot be reached or answers otherwise is an AmrError.
"""

from __future__ import annotations

import http.client
import json
import secrets
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from amr.errors import AmrError
from amr.results import QUERY_BATCH, Failure, QueryInput, Result

TIMEOUT = 600  # seconds: a query by example of a long clip takes a while


class Client:
    """A connection to the server at ``url``; its index's parts (``parts``) and page size are asked at once."""

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
        kind = http.client.HTTPSConnection if split.scheme == "https" else http.client.HTTPConnection
        self.connection = kind(split.hostname, port, timeout=TIMEOUT)
        info = self._request("GET", "/api/info")
        self.parts: list[str] = info["parts"]
        self.page_limit: int = info["page_limit"]

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

    def _batch(self, texts: list[str], top: int, exact: bool, all_segments: bool) -> list[dict[str, Any]]:
        body = json.dumps({"queries": texts, "top": top, "exact": exact, "all_segments": all_segments}).encode()
        return self._request("POST", "/api/search/batch", body, {"Content-Type": "application/json"})["answers"]

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
        boundary = secrets.token_hex(16)
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{clip.name}"\r\n\r\n'.encode()
        body = head + data + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self._request("POST", "/api/search/audio?" + urlencode(page), body, headers)

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            self.connection.request(method, self.prefix + path, body, headers or {})
            response = self.connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as e:
            self.connection.close()
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise AmrError(f"{self.url}: cannot reach an amr server there ({reason}); start one with `amr serve`") from None
        try:
            answer = json.loads(payload)
        except ValueError:
            raise AmrError(f"{self.url}: answered HTTP {response.status}, not with JSON: not an amr server?") from None
        detail = answer.get("detail") if isinstance(answer, dict) else None
        if response.status in (400, 413):  # this query: another one may run
            raise _Refused(str(detail))
        if response.status != 200:
            raise AmrError(f"{self.url}: HTTP {response.status}: {detail or payload[:200]!r}")
        return answer


class _Refused(Exception):
    """The server refused one query (its reason)."""
