"""gRPC over modelport's own HTTP/2 (``h2.py``): the default gRPC transport.

grpcio's server accepts about one call per turn of the event loop and spends most of
its time handing calls between its core's thread and the loop (``bench/README.md``:
~3,000 calls/s here whatever the handler does). This transport parses HTTP/2 on the
loop itself, so a call costs what its handler costs. It serves the same servicers
grpcio would: the generated ``add_*_to_server`` functions register their method
handlers with :class:`NativeGrpcServer` as with a ``grpc.aio.Server``, interceptors
(API keys, malformed requests) wrap them once at start, and each call gets a
``call.CallContext`` with the part of ``grpc.aio.ServicerContext`` the servicers use.

A call's life, from its HEADERS to its trailers, is ``call.py``; what its headers say
and how its messages and trailers are written is ``wire.py``.

``grpc_transport = "grpcio"`` in the settings serves the same services with
grpcio's server instead (``server.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc

from modelport.api.grpc.call import Admit, Call, FastUnary
from modelport.api.grpc.h2 import H2Connection
from modelport.api.grpc.h2_flow import PROTOCOL_ERROR, Stream
from modelport.api.grpc.wire import Metadata

log = logging.getLogger("modelport.grpc")

PREFACE_S = 10.0  # a connection must start speaking HTTP/2 within this


class NativeGrpcServer:
    """The method table, the limits, and the connections of one gRPC port.

    ``fast`` methods skip the interceptors, so ``admit`` checks their API key.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int,
        max_concurrent_rpcs: int = 0,
        admit: Admit | None = None,
        max_idle_s: float = 0.0,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.admit = admit
        self.max_idle_s = max_idle_s
        self._sweeper: asyncio.Task[None] | None = None
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.fast: dict[str, FastUnary] = {}
        self.connections: set[H2Connection] = set()
        self.calls: set[Call] = set()
        self.servers: list[asyncio.Server] = []

    # What the generated add_*_to_server functions call.
    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # they also register each method by name, below

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler

    async def intercept(self, interceptors: Sequence[grpc.aio.ServerInterceptor]) -> None:
        """Wrap every method's handler in ``interceptors`` (the first outermost), once."""
        for path, handler in list(self.handlers.items()):
            self.handlers[path] = await _intercepted(path, handler, list(interceptors))

    def connection(self) -> H2Connection:
        """The protocol factory to give ``loop.create_server``."""
        conn = H2Connection(self.open, self.connections.discard)
        self.connections.add(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        return conn

    async def _sweep(self) -> None:
        """Close connections that hold a socket for nothing: no HTTP/2 preface within
        PREFACE_S of connecting, or no call for ``max_idle_s`` (GOAWAY, NO_ERROR: gRPC
        clients connect again when they next call)."""
        every = min(1.0, self.max_idle_s / 4) if self.max_idle_s else 1.0
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for conn in list(self.connections):
                if not conn.preface_seen:
                    if now - conn.opened_at > PREFACE_S:
                        conn.close(PROTOCOL_ERROR, "no HTTP/2 preface")
                elif (
                    self.max_idle_s
                    and not conn.streams
                    and not conn.orphans
                    and now - conn.idle_since > self.max_idle_s
                ):
                    conn.go_away()

    def open(self, conn: H2Connection, stream: Stream, headers: list[tuple[bytes, bytes]]) -> Call:
        return Call(self, conn=conn, stream=stream, headers=headers)

    async def stop(self, grace: float | None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.go_away()
        deadline = time.monotonic() + (grace or 0.0)
        while self.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for call in list(self.calls):
            call.cancel()
        for conn in list(self.connections):
            conn.close()
        for server in self.servers:
            await server.wait_closed()


async def _intercepted(
    path: str, handler: grpc.RpcMethodHandler, interceptors: list[grpc.aio.ServerInterceptor]
) -> grpc.RpcMethodHandler:
    details = _Details(path, ())
    if not interceptors:
        return handler
    first, rest = interceptors[0], interceptors[1:]

    async def continuation(_: Any) -> grpc.RpcMethodHandler:
        return await _intercepted(path, handler, rest)

    return await first.intercept_service(continuation, details)


class _Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str, invocation_metadata: Metadata) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata
