"""The fallback load generators: Python clients on one asyncio loop.

``concurrency`` workers each send the request, wait for the answer and send again
until the time is up, over a connection of its own (a lean HTTP/1.1 keep-alive client
on asyncio streams, or a grpc.aio channel). A Python client spends far more CPU per
request than wrk or h2load, so on the server's machine it can be the limit: the report
says which measured.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import grpc

from modelport.cli.bench.load import Latency, LoadResult, error_detail
from modelport.protos import grpc_service_pb2 as pb
from modelport.protos import grpc_service_pb2_grpc as pb_grpc

# An answer's status line and header fields must fit in this many bytes.
HEADER_LIMIT = 1 << 20

# Errors that end a request without an answer: no latency to count (as wrk does).
TIMEOUT, BROKEN = "timeout", "connection error"


@dataclass
class _Tally:
    """What the workers of one run saw, added up as they go (one event loop: no lock).

    Latencies are those of every answer, error answers too, as wrk and h2load time them.
    """

    answered: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, failure: str | None, seconds: float) -> None:
        if failure is None:
            self.answered += 1
        else:
            self.errors[failure] = self.errors.get(failure, 0) + 1
        if failure not in (TIMEOUT, BROKEN):
            self.latencies_ms.append(seconds * 1000)


# One request: None when answered without error, else the kind of error it ended with.
SendOnce = Callable[[], Awaitable[str | None]]


async def _drive(senders: list[SendOnce], duration_s: int) -> tuple[_Tally, float]:
    tally = _Tally()
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker(send: SendOnce) -> None:
        while (began := time.perf_counter()) < deadline:
            failure = await send()
            tally.record(failure, time.perf_counter() - began)

    await asyncio.gather(*(worker(send) for send in senders))
    return tally, time.perf_counter() - start


def _result(concurrency: int, tally: _Tally, seconds: float) -> LoadResult:
    return LoadResult(
        concurrency=concurrency,
        seconds=seconds,
        answered=tally.answered,
        errors=sum(tally.errors.values()),
        latency=Latency.of(tally.latencies_ms),
        error_detail=error_detail(tally.errors),
    )


class _KeepAlive:
    """One HTTP/1.1 keep-alive connection that posts the same request again and again.

    The request's bytes are built once; an answer is read by its Content-Length (or its
    chunks) and dropped. A general client (httpx) spends so much CPU per request that it
    measured itself, not the server: tens of times slower than wrk here.
    """

    def __init__(self, *, url: str, request: bytes, context: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.request, self.context = request, context
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        """Send the request and read the whole answer; its status code."""
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.context, limit=HEADER_LIMIT
            )
        self.writer.write(self.request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head[9:12])
        fields = dict(line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line)
        if "chunked" in fields.get("transfer-encoding", ""):
            await self._skip_chunks(self.reader)
        else:
            await self.reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").strip() == "close":
            self.close()
        return status

    @staticmethod
    async def _skip_chunks(reader: asyncio.StreamReader) -> None:
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # trailer fields, then the blank line

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def http_request_bytes(url: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """The whole HTTP/1.1 POST of ``body`` to ``url``, ready to write."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class AsyncioHttpGenerator:
    """HTTP load from asyncio streams, one keep-alive connection a worker."""

    name = "asyncio"
    latency_source = "asyncio client (HTTP/1.1 keep-alive)"

    def __init__(
        self,
        *,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
        context: ssl.SSLContext | None,
    ) -> None:
        self.url, self.timeout_s, self.context = url, timeout_s, context
        self.request = http_request_bytes(url, body, headers)

    def run(self, concurrency: int, duration_s: int) -> LoadResult:
        return asyncio.run(self._run(concurrency, duration_s))

    async def _run(self, concurrency: int, duration_s: int) -> LoadResult:
        connections = [
            _KeepAlive(url=self.url, request=self.request, context=self.context)
            for _ in range(concurrency)
        ]
        try:
            tally, seconds = await _drive([self._sender(c) for c in connections], duration_s)
        finally:
            for connection in connections:
                connection.close()
        return _result(concurrency, tally, seconds)

    def _sender(self, connection: _KeepAlive) -> SendOnce:
        async def send() -> str | None:
            try:
                status = await asyncio.wait_for(connection.post(), self.timeout_s)
            except TimeoutError:
                connection.close()  # an answer may still come: never read it as the next
                return TIMEOUT
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                connection.close()
                return BROKEN
            return None if 200 <= status < 300 else "non-2xx"

        return send


class AsyncioGrpcGenerator:
    """gRPC load from grpc.aio, one channel (so one HTTP/2 connection) a worker."""

    name = "asyncio (grpc.aio)"
    latency_source = "asyncio client (grpc.aio)"

    def __init__(
        self,
        *,
        address: str,
        request: pb.ModelInferRequest,
        metadata: tuple[tuple[str, str], ...],
        timeout_s: float,
    ) -> None:
        self.address, self.request = address, request
        self.metadata, self.timeout_s = metadata, timeout_s

    def run(self, concurrency: int, duration_s: int) -> LoadResult:
        return asyncio.run(self._run(concurrency, duration_s))

    async def _run(self, concurrency: int, duration_s: int) -> LoadResult:
        # A local subchannel pool keeps channels to one address from sharing a connection.
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [
            grpc.aio.insecure_channel(self.address, options=options) for _ in range(concurrency)
        ]
        try:
            senders = [self._sender(pb_grpc.GRPCInferenceServiceStub(c)) for c in channels]
            tally, seconds = await _drive(senders, duration_s)
        finally:
            await asyncio.gather(*(c.close() for c in channels))
        return _result(concurrency, tally, seconds)

    def _sender(self, stub: pb_grpc.GRPCInferenceServiceStub) -> SendOnce:
        async def send() -> str | None:
            try:
                await stub.ModelInfer(self.request, metadata=self.metadata, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return TIMEOUT
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    return BROKEN
                return f"gRPC {exc.code().name}"
            return None

        return send
