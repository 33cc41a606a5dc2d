"""amr.server.client's HTTP/1.1 over a plain socket, against a scripted server: the answers of a
real `amr serve` are tested in tests/test_query_encoder.py; here the framings and the
closed connections that uvicorn may also send."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from amr.errors import AmrError
from amr.results import QueryInput
from amr.server.client import Client, Connection

INFO = json.dumps({"parts": ["audio"], "page_limit": 100}).encode()


def read_request(stream) -> tuple[str, bytes]:
    """The request line and body of one request read from ``stream`` ('' at the end of the connection)."""
    request_line = stream.readline().decode()
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return request_line.strip(), stream.read(length)


@contextmanager
def scripted(answers: list[bytes], close_after_each: bool = False) -> Iterator[tuple[int, list[str]]]:
    """A server on 127.0.0.1 sending ``answers`` in turn, one a request; its port and the request lines it got."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve() -> None:
        pending = list(answers)
        while pending:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection, connection.makefile("rb") as stream:
                while pending:
                    request_line, _ = read_request(stream)
                    if not request_line:
                        break
                    seen.append(request_line)
                    connection.sendall(pending.pop(0))
                    if close_after_each:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        listener.close()
        thread.join(timeout=10)


def sized(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def chunked(body: bytes) -> bytes:
    halves = [body[: len(body) // 2], body[len(body) // 2 :]]
    chunks = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in halves)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


def test_sized_and_chunked_answers_on_one_kept_alive_connection() -> None:
    answer = json.dumps({"answers": [{"results": []}]}).encode()
    with scripted([sized(INFO), chunked(answer), sized(answer)]) as (port, seen):
        client = Client(f"http://127.0.0.1:{port}")
        assert client.parts == ["audio"] and client.page_limit == 100
        assert client._batch(["dog"], 3, False, False) == [{"results": []}]
        assert client._batch(["cat"], 3, False, False) == [{"results": []}]
    assert seen == ["GET /api/info HTTP/1.1", "POST /api/search/batch HTTP/1.1", "POST /api/search/batch HTTP/1.1"]


def test_a_connection_the_server_closed_between_requests_is_opened_again() -> None:
    """uvicorn closes a kept-alive connection idle past its timeout: the next request goes on a new one."""
    with scripted([sized(INFO), sized(b'{"answers": []}')], close_after_each=True) as (port, seen):
        connection = Connection("127.0.0.1", port)
        assert connection.request("GET", "/api/info", None, {}) == (200, INFO)
        assert connection.request("POST", "/api/search/batch", b"{}", {}) == (200, b'{"answers": []}')
    assert len(seen) == 2


def test_an_answer_with_connection_close_is_read_whole_and_the_next_request_reconnects() -> None:
    with scripted([sized(INFO, extra="Connection: close\r\n"), sized(b"{}")], close_after_each=True) as (port, _):
        connection = Connection("127.0.0.1", port)
        assert connection.request("GET", "/", None, {}) == (200, INFO)
        assert connection.stream is None
        assert connection.request("GET", "/", None, {}) == (200, b"{}")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "cannot reach an amr server there (not an HTTP answer"),
        (sized(b"<html>hello</html>", "404 Not Found"), "answered HTTP 404, not with JSON: not an amr server?"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{}", "(the server closed the connection in an answer)"),
    ],
)
def test_a_server_that_is_not_amr_is_one_line(answer: bytes, expected: str) -> None:
    with scripted([answer]) as (port, _), pytest.raises(AmrError) as refused:
        Client(f"127.0.0.1:{port}").parts  # noqa: B018
    assert expected in str(refused.value) and "\n" not in str(refused.value)


def test_a_json_answer_without_the_fields_of_amr_is_one_line() -> None:
    with scripted([sized(b'{"status": "ok"}')]) as (port, _), pytest.raises(AmrError) as refused:
        list(Client(f"127.0.0.1:{port}").run_queries([QueryInput("1", "dog")]))
    assert str(refused.value).endswith("answered /api/search/batch without answers: not an amr server?")


def test_a_text_query_is_one_round_trip() -> None:
    """The index's parts and page size are asked only for --explain and example clips."""
    record = {"rank": 1, "score": 0.5, "id": "a", "audio": "a.wav", "metadata": {}, "start": 0.0, "end": 1.0, "explain": {}, "tags": []}
    with scripted([sized(json.dumps({"answers": [{"results": [record]}]}).encode())]) as (port, seen):
        found = list(Client(f"http://127.0.0.1:{port}").run_queries([QueryInput("1", "dog")], top=1))
    assert seen == ["POST /api/search/batch HTTP/1.1"] and [r.id for r in found] == ["a"]
