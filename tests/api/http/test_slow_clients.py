"""Clients that hold an HTTP connection without sending a request, against a server
process with ``request_header_timeout_s = 1`` and ``request_body_timeout_s = 1``: a
connection that sends nothing is closed (after uvicorn's 5 s keep-alive timeout),
headers trickled in byte by byte get 408 and a closed connection, so does a body that
stops halfway, and a client that is merely slow within the limits is served. The server
serves others throughout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(60)

BODY = b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}, {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}'  # noqa: E501
REQUEST = (
    b"POST /v2/models/add_sub/infer HTTP/1.1\r\nhost: test\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


@pytest.fixture(scope="module")
def server(server_factory: Any) -> Iterator[Any]:
    started = server_factory(
        env={"MODELPORT_REQUEST_HEADER_TIMEOUT_S": "1", "MODELPORT_REQUEST_BODY_TIMEOUT_S": "1"}
    )
    yield started
    started.stop()


def connect(server: Any) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=15)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def assert_serving(server: Any) -> None:
    answer = httpx.post(f"{server.url}/v2/models/add_sub/infer", content=BODY, timeout=10)
    assert answer.status_code == 200, answer.text


def test_a_connection_that_sends_nothing_is_closed(server: Any) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""  # closed without a word
        assert time.monotonic() - started < 10
    assert_serving(server)


def test_headers_trickled_in_get_408(server: Any) -> None:
    with connect(server) as sock:
        for byte in REQUEST[:40]:  # a byte every 0.2 s: the data keeps coming, slowly
            try:
                sock.sendall(bytes((byte,)))
            except OSError:
                break  # closed on us
            time.sleep(0.2)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer
    assert b"request_header_timeout_s" in answer
    assert_serving(server)


def test_a_client_slow_within_the_limit_is_served(server: Any) -> None:
    with connect(server) as sock:
        sock.sendall(REQUEST[:30])
        time.sleep(0.5)
        sock.sendall(REQUEST[30:])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_a_body_that_stops_halfway_gets_408(server: Any) -> None:
    head = REQUEST.index(b"\r\n\r\n") + 4
    with connect(server) as sock:
        sock.sendall(REQUEST[: head + 20])  # the headers and 20 bytes of the body
        started = time.monotonic()
        answer = read_all(sock)
        assert time.monotonic() - started < 10
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"request_body_timeout_s" in answer
    assert_serving(server)


def test_a_body_that_keeps_moving_is_served_however_long_it_takes(server: Any) -> None:
    """The limit is on a pause, not on the whole body: four parts 0.6 s apart (2.4 s
    in all, past the 1 s limit) are answered."""
    head = REQUEST.index(b"\r\n\r\n") + 4
    body = REQUEST[head:]
    quarter = len(body) // 4
    with connect(server) as sock:
        sock.sendall(REQUEST[:head])
        for start in range(0, len(body), quarter):
            time.sleep(0.6)
            sock.sendall(body[start : start + quarter])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
