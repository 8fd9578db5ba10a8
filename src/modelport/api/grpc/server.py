"""The gRPC server: KServe v2, TF Serving and gRPC health on one port, in the HTTP
server's loop, so requests from both protocols share one :class:`InferenceService` and
batch together.

Two transports serve the same servicers (``grpc_transport``):

``native`` (the default)
    modelport's own HTTP/2 (``native.py``, ``h2.py``) on the loop: one asyncio server
    for the port; calls cost what their handlers cost.

``grpcio``
    ``grpc.aio``. It accepts one new call per turn of the loop (it asks the gRPC core
    for the next call only once the last has been handed over), which caps it near
    3,000 calls/s on two cores whatever the handler does, and feeds the batcher one
    request at a time. So ``listeners`` servers share the port (``SO_REUSEPORT``; the
    kernel spreads connections over them), each accepting on its own.

The port is probed first without ``SO_REUSEPORT``, so a port that another process
holds still fails to start (``shared_port``: the other server processes of this
server bind it too, ``processes`` > 1).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Literal, Protocol

import grpc
from grpc_health.v1 import health_pb2_grpc

from modelport.api.grpc.auth import AuthInterceptor, admit_call
from modelport.api.grpc.health import HealthServicer
from modelport.api.grpc.malformed import RefuseMalformed
from modelport.api.grpc.native import NativeGrpcServer
from modelport.api.grpc.servicer import MODEL_INFER, InferenceServicer
from modelport.api.grpc.tfserving import add_tfserving_services
from modelport.core.service import InferenceService
from modelport.protos import grpc_service_pb2_grpc as pb_grpc
from modelport.security.access import Guard
from modelport.security.tls import TlsFiles

log = logging.getLogger("modelport.grpc")

STOP_GRACE_S = 5.0
DEFAULT_LISTENERS = 16


class GrpcListenError(OSError):
    """The gRPC port cannot be had (in use, or not allowed)."""


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def probe_port(host: str, port: int) -> None:
    """Bind ``host:port`` the plain way (no ``SO_REUSEPORT``) and let go; OSError if
    another process holds it, even one that set ``SO_REUSEPORT`` itself."""
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)


Transport = Literal["native", "grpcio"]


class GrpcServer(Protocol):
    @property
    def port(self) -> int: ...

    async def stop(self, grace: float | None) -> None: ...


@dataclass(frozen=True)
class GrpcioServer:
    """The ``grpc.aio`` servers that share the gRPC port; stopped together."""

    servers: tuple[grpc.aio.Server, ...]
    port: int

    async def stop(self, grace: float | None) -> None:
        await asyncio.gather(*(s.stop(grace) for s in self.servers))


@dataclass(frozen=True)
class NativeServer:
    server: NativeGrpcServer
    port: int

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)


async def start_grpc_server(
    service: InferenceService,
    *,
    host: str,
    port: int,
    max_message_bytes: int,
    max_concurrent_rpcs: int = 0,
    listeners: int = DEFAULT_LISTENERS,
    guard: Guard | None = None,
    tls: TlsFiles | None = None,
    shared_port: bool = False,
    transport: Transport = "native",
    max_idle_s: float = 0.0,
) -> GrpcServer:
    """Bind and start the server; GrpcListenError if the port cannot be had.

    ``max_message_bytes`` bounds messages both ways (a larger request fails with
    RESOURCE_EXHAUSTED); past ``max_concurrent_rpcs`` calls in progress (0: no limit) a
    new call fails at once with RESOURCE_EXHAUSTED. ``listeners``: grpcio servers
    sharing the port (see the module's docstring); with a ``max_concurrent_rpcs`` limit
    there is one, as grpc.aio counts calls per server and the limit must hold for the
    port. ``guard`` checks every call's API key (api/grpc/auth.py); with ``tls``
    the port speaks TLS only. ``shared_port``: other server processes of this server
    bind the same port (``processes`` > 1), so it is neither probed nor exclusive.
    ``max_idle_s`` (native transport): a connection with no call for this long is
    closed (0: never).
    """
    address = listen_address(host, port)
    if not shared_port:
        try:
            probe_port(host, port)
        except OSError as exc:
            raise _listen_error(address, exc) from None
    interceptors = [AuthInterceptor(guard)] if guard is not None else []
    if transport == "native":
        return await _start_native(
            service,
            host=host,
            port=port,
            max_message_bytes=max_message_bytes,
            max_concurrent_rpcs=max_concurrent_rpcs,
            guard=guard,
            tls=tls,
            shared_port=shared_port,
            max_idle_s=max_idle_s,
        )
    if max_concurrent_rpcs:
        listeners = 1
    credentials = _credentials(tls)
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if listeners > 1 or shared_port else 0),
    ]
    servicer = InferenceServicer(service)
    health = HealthServicer(service)
    servers: list[grpc.aio.Server] = []
    for _ in range(max(1, listeners)):
        server = grpc.aio.server(
            options=options,
            maximum_concurrent_rpcs=max_concurrent_rpcs or None,
            # Unparsable messages get INVALID_ARGUMENT, not grpc.aio's UNKNOWN.
            interceptors=(*interceptors, RefuseMalformed()),
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        add_tfserving_services(service, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        try:
            if credentials is None:
                port = server.add_insecure_port(listen_address(host, port))
            else:
                port = server.add_secure_port(listen_address(host, port), credentials)
        except RuntimeError as exc:
            await asyncio.gather(*(s.stop(None) for s in servers))
            raise _listen_error(address, exc) from None
        await server.start()
        servers.append(server)
    log.info("gRPC (grpcio) listening on %s%s", address, " (TLS)" if credentials else "")
    return GrpcioServer(tuple(servers), port)


async def _start_native(
    service: InferenceService,
    *,
    host: str,
    port: int,
    max_message_bytes: int,
    max_concurrent_rpcs: int,
    guard: Guard | None,
    tls: TlsFiles | None,
    shared_port: bool,
    max_idle_s: float,
) -> NativeServer:
    admit = None if guard is None else functools.partial(admit_call, guard, "infer")
    native = NativeGrpcServer(
        max_message_bytes=max_message_bytes,
        max_concurrent_rpcs=max_concurrent_rpcs,
        admit=admit,
        max_idle_s=max_idle_s,
    )
    servicer = InferenceServicer(service)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, native)
    add_tfserving_services(service, native)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(service), native)
    interceptors = [AuthInterceptor(guard)] if guard is not None else []
    await native.intercept((*interceptors, RefuseMalformed()))
    # ModelInfer, the hot call, answers from the batch's callback: no task per call.
    native.fast[MODEL_INFER] = servicer.start_infer
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            native.connection,
            host.strip("[]"),
            port,
            reuse_port=shared_port or None,
            ssl=_ssl_context(tls),
            backlog=2048,
        )
    except OSError as exc:
        raise _listen_error(listen_address(host, port), exc) from None
    native.servers.append(server)
    bound = int(server.sockets[0].getsockname()[1]) if server.sockets else port
    log.info("gRPC listening on %s%s", listen_address(host, bound), " (TLS)" if tls else "")
    return NativeServer(native, bound)


def _credentials(tls: TlsFiles | None) -> grpc.ServerCredentials | None:
    if tls is None:
        return None
    return grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_pem)],
        root_certificates=tls.client_ca_pem,
        require_client_auth=tls.client_ca_pem is not None,
    )


def _ssl_context(tls: TlsFiles | None) -> ssl.SSLContext | None:
    """TLS for the native transport: HTTP/2 negotiated by ALPN, as gRPC clients ask."""
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    context.set_alpn_protocols(["h2"])
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _listen_error(address: str, exc: Exception) -> GrpcListenError:
    return GrpcListenError(
        f"cannot listen for gRPC on {address} ({exc}); is the port in use? "
        "Choose another with --grpc-port, or 0 to turn gRPC off"
    )
