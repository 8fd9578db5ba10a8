"""Compressed request bodies (``Content-Encoding: gzip`` / ``deflate``) on the v2 infer
route, against a server process with ``max_request_bytes`` = 8 MiB.

A decompression bomb (1 GiB of zeros in about 1 MiB) is refused with 413 as soon as its
output passes the limit, and is inflated off the event loop: a health probe sent while
it is being inflated is answered at once, and the server's memory grows by less than
twice the limit. Before, the whole gigabyte was inflated on the event loop: seconds
without an answer to anyone, and gigabytes of memory.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelport.codecs.compression import InflatedTooLarge, inflate

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20
LIMIT = 8 * MIB  # the server's max_request_bytes
BOMB_BYTES = 1 << 30
ENCODINGS = ("gzip", "deflate")
INFER = "/v2/models/identity_uint8/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
# The bomb is answered within this of its last byte sent.
BOMB_ANSWER_S = 1.0
# A health probe sent while a bomb is being inflated is answered within this. On an idle
# machine it takes about a millisecond; the bound leaves room for a busy CI runner.
# Inflating on the event loop (as before) held probes for the whole inflation: seconds.
PROBE_S = 0.1
PATTERN = random.Random(0).randbytes(4096)


def zeros_bomb(encoding: str, size: int = BOMB_BYTES) -> bytes:
    """``size`` zeros, gzip or deflate (zlib-wrapped), in about size / 1030 bytes, built
    without ever holding ``size`` bytes.

    One segment of 8 MiB of zeros is deflated by a fresh ``compressobj`` and ended with a
    full flush: byte-aligned, no block final, nothing referring to data before it. So
    the segment repeated is a valid deflate stream of the zeros, and costs one segment's
    compression instead of a gigabyte's (seconds). The header and trailer (the CRC-32 or
    Adler-32 of the zeros, counted a chunk at a time) wrap it as gzip or zlib data.
    """
    chunk = bytes(8 * MIB)
    segment = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    repeated = segment.compress(chunk) + segment.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # an empty final block
    count, rest = divmod(size, len(chunk))
    assert rest == 0
    stream = repeated * count + last
    if encoding == "gzip":
        crc = 0
        for _ in range(count):
            crc = zlib.crc32(chunk, crc)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        return header + stream + struct.pack("<II", crc, size & 0xFFFFFFFF)
    adler = 1
    for _ in range(count):
        adler = zlib.adler32(chunk, adler)
    return b"\x78\xda" + stream + struct.pack(">I", adler)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    built = {encoding: zeros_bomb(encoding) for encoding in ENCODINGS}
    for encoding, bomb in built.items():
        assert len(bomb) <= 1.02 * MIB, len(bomb)  # "1 GiB in 1 MiB"
        with pytest.raises(InflatedTooLarge):  # and it is one: more than the limit comes out
            inflate(bomb, encoding, LIMIT)
    return built


@pytest.fixture(scope="module")
def server(server_factory: Any) -> Iterator[Any]:
    started = server_factory(env={"MODELPORT_MAX_REQUEST_BYTES": str(LIMIT)})
    yield started
    started.stop()


# -- raw HTTP/1.1 over a socket: the test knows exactly when the bomb is sent ------------


def connect(server: Any) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: test", f"content-length: {len(body)}"]
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of an answer"
        body += chunk
    return int(status_line.split()[1]), headers, body


def answered(sock: socket.socket) -> bool:
    """Whether an answer has started to arrive on ``sock`` (without reading it)."""
    return bool(select.select([sock], [], [], 0)[0])


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS; False where Linux does
    not let us (then the test looks at VmRSS after the fact)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    return False


def uint8_body(size: int) -> tuple[bytes, dict[str, str]]:
    """An identity_uint8 request whose whole body (JSON header + binary tensor) is
    exactly ``size`` bytes uncompressed. Its data repeats 4 KiB of random bytes: a body of
    a few hundred bytes stays under a kilobyte compressed (inflated on the event loop),
    larger ones go over (inflated in a worker thread), and 8 MiB compress to ~100 KiB."""

    def head_for(n: int) -> bytes:
        doc = {"inputs": [{"name": "INPUT0", "shape": [1, n], "datatype": "UINT8",
                           "parameters": {"binary_data_size": n}}],
               "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}  # fmt: skip
        return json.dumps(doc).encode()

    n = size - len(head_for(size))
    head = head_for(n)
    n = size - len(head)  # the header's length may have changed with n's digits
    head = head_for(n)
    assert len(head) + n == size
    data = (PATTERN * (n // len(PATTERN) + 1))[:n]
    return head + data, {HEADER_LENGTH: str(len(head))}


def compress(data: bytes, encoding: str) -> bytes:
    return gzip.compress(data, 6) if encoding == "gzip" else zlib.compress(data, 6)


# -- the tests ---------------------------------------------------------------------------


@dataclass
class BombRound:
    status: int
    answer: bytes
    seconds: float  # from its last byte sent to its answer
    probes: list[tuple[float, bool]]  # (seconds, answered before the bomb was)
    grown: int  # the server's peak RSS (or RSS after, where the peak cannot be reset), bytes


def bomb_round(
    pid: int, bomb_sock: socket.socket, probe_sock: socket.socket, bomb: bytes, encoding: str
) -> BombRound:
    """Send the bomb; probe health on the other connection until it is answered."""
    peak_known = reset_peak(pid)
    rss_before = memory_kib(pid, "VmRSS")
    bomb_sock.sendall(request("POST", INFER, bomb, {"content-encoding": encoding}))
    sent = time.monotonic()
    probes: list[tuple[float, bool]] = []
    while not answered(bomb_sock) and time.monotonic() - sent < BOMB_ANSWER_S:
        started = time.monotonic()
        probe_sock.sendall(request("GET", "/v2/health/live"))
        assert read_response(probe_sock)[0] == 200
        probes.append((time.monotonic() - started, not answered(bomb_sock)))
    status, _, answer = read_response(bomb_sock)
    seconds = time.monotonic() - sent
    peak = memory_kib(pid, "VmHWM" if peak_known else "VmRSS")
    return BombRound(status, answer, seconds, probes, (peak - rss_before) * 1024)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_bomb_is_413_off_the_event_loop_in_bounded_memory(
    server: Any, bombs: dict[str, bytes], encoding: str
) -> None:
    pid = server.process.pid
    rounds: list[BombRound] = []
    with connect(server) as bomb_sock, connect(server) as probe_sock:
        # Warm up: a compressed body inflated off the loop, so the worker thread exists.
        body, headers = uint8_body(64 * 1024)
        bomb_sock.sendall(request("POST", INFER, compress(body, encoding),
                                  {"content-encoding": encoding, **headers}))  # fmt: skip
        assert read_response(bomb_sock)[0] == 200
        # The bomb takes ~20 ms here, a probe's answer ~1 ms: the first probe is answered
        # while the bomb is still inflating. A busy runner may reorder one round; three
        # rounds in which the bomb always answers first would mean a loop held by it.
        while len(rounds) < 3 and not any(during for r in rounds for _, during in r.probes):
            rounds.append(bomb_round(pid, bomb_sock, probe_sock, bombs[encoding], encoding))

    for r in rounds:
        assert r.status == 413, r.answer
        message = json.loads(r.answer)["error"]
        assert "max_request_bytes" in message and str(LIMIT) in message, message
        assert r.seconds < BOMB_ANSWER_S, f"the bomb was answered after {r.seconds:.3f} s"
        # Every probe went out while the bomb was unanswered.
        assert r.probes, "the bomb was answered before a probe could be sent"
        slowest = max(seconds for seconds, _ in r.probes)
        assert slowest < PROBE_S, f"a probe sent during the bomb took {slowest:.3f} s: {r.probes}"
        assert r.grown < 2 * LIMIT, f"RSS grew by {r.grown / MIB:.1f} MiB (limit 8 MiB)"
    # A probe's answer came back before the bomb's: answered while the bomb inflated.
    assert any(during for r in rounds for _, during in r.probes), rounds

    # The server goes on.
    with connect(server) as sock:
        sock.sendall(request("GET", "/v2/health/live"))
        assert read_response(sock)[0] == 200


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_compressed_bodies_up_to_the_limit_are_served(server: Any, encoding: str) -> None:
    """Tiny bodies (inflated on the loop), larger ones (in a worker thread) and one that
    inflates to exactly max_request_bytes are served; one byte more is 413."""
    with connect(server) as sock:
        for size in (300, 200_000, LIMIT):
            body, headers = uint8_body(size)
            packed = compress(body, encoding)
            sock.sendall(request("POST", INFER, packed, {"content-encoding": encoding, **headers}))
            status, reply_headers, answer = read_response(sock)
            assert status == 200, answer[:300]
            json_length = int(reply_headers[HEADER_LENGTH.lower()])
            assert answer[json_length:] == body[int(headers[HEADER_LENGTH]) :]

        body, headers = uint8_body(LIMIT + 1)
        packed = compress(body, encoding)
        sock.sendall(request("POST", INFER, packed, {"content-encoding": encoding, **headers}))
        status, _, answer = read_response(sock)
        assert status == 413, answer[:300]
        assert "max_request_bytes" in json.loads(answer)["error"]


@pytest.mark.parametrize("size", [300, 200_000])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_invalid_compressed_data_is_400(server: Any, encoding: str, size: int) -> None:
    """Data that is not gzip/deflate, or is cut short, is 400 whether it is inflated on
    the loop or in a worker thread; the connection goes on."""
    body, headers = uint8_body(size)
    packed = compress(body, encoding)
    other = "deflate" if encoding == "gzip" else "gzip"
    cases = [
        bytes(range(256)) * (size // 256 + 1),  # not compressed at all
        packed[: len(packed) // 2],  # cut short
        compress(body, other),  # the other encoding
    ]
    with connect(server) as sock:
        for case in cases:
            sock.sendall(request("POST", INFER, case, {"content-encoding": encoding, **headers}))
            status, _, answer = read_response(sock)
            assert status == 400, answer[:300]
            assert "Content-Encoding" in json.loads(answer)["error"]
        sock.sendall(request("POST", INFER, packed, {"content-encoding": encoding, **headers}))
        assert read_response(sock)[0] == 200


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_in_process_app_refuses_a_bomb(
    inproc_factory: Any, bombs: dict[str, bytes], encoding: str
) -> None:
    """The same through the ASGI app (InferFastPath, then InferHandler), as any ASGI
    server would serve it."""
    async with inproc_factory(max_request_bytes=LIMIT) as client:
        headers = {"content-encoding": encoding}
        started = time.monotonic()
        response = await client.post(INFER, content=bombs[encoding], headers=headers)
        assert response.status_code == 413, response.text
        assert "max_request_bytes" in response.json()["error"]
        assert time.monotonic() - started < BOMB_ANSWER_S
        response = await client.post(INFER, content=b"not compressed" * 100, headers=headers)
        assert response.status_code == 400, response.text
        body, body_headers = uint8_body(50_000)
        response = await client.post(
            INFER, content=compress(body, encoding), headers={**headers, **body_headers}
        )
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_client_gone_while_its_body_inflates(
    server: Any, bombs: dict[str, bytes], encoding: str
) -> None:
    """Clients that close their connection right after sending a body that takes a
    while to inflate (a bomb, a large valid body) are dropped quietly."""
    body, headers = uint8_body(LIMIT)
    valid = request(
        "POST", INFER, compress(body, encoding), {"content-encoding": encoding, **headers}
    )
    bomb = request("POST", INFER, bombs[encoding], {"content-encoding": encoding})
    for payload in (valid, bomb, valid, bomb):
        with connect(server) as sock:
            sock.sendall(payload)
    time.sleep(0.3)
    with connect(server) as sock:
        sock.sendall(request("GET", "/v2/health/live"))
        assert read_response(sock)[0] == 200
        sock.sendall(request("POST", INFER, compress(body, encoding),
                             {"content-encoding": encoding, **headers}))  # fmt: skip
        assert read_response(sock)[0] == 200
    log = server.log()
    assert "Traceback" not in log and "crashed" not in log, log
