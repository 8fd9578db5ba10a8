"""The gRPC server: KServe v2, TF Serving and gRPC health on one port, in the HTTP
server's loop.

``grpc.aio`` runs its calls as coroutines on the running event loop, so the gRPC and
HTTP adapters share one loop, one :class:`InferenceService` and its batchers: requests
from both protocols batch together.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2_grpc

from modelport.api.grpc.health import HealthServicer
from modelport.api.grpc.protos import grpc_service_pb2_grpc as pb_grpc
from modelport.api.grpc.servicer import InferenceServicer
from modelport.api.grpc.tfserving import add_tfserving_services
from modelport.core.service import InferenceService

log = logging.getLogger("modelport.grpc")

STOP_GRACE_S = 5.0


class GrpcListenError(OSError):
    """The gRPC port cannot be had (in use, or not allowed)."""


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc_server(
    service: InferenceService,
    host: str,
    port: int,
    max_message_bytes: int,
    max_concurrent_rpcs: int = 0,
) -> grpc.aio.Server:
    """Bind and start the server; GrpcListenError if the port cannot be had.

    ``max_message_bytes`` bounds messages both ways (a larger request fails with
    RESOURCE_EXHAUSTED); past ``max_concurrent_rpcs`` calls in progress (0: no limit) a
    new call fails at once with RESOURCE_EXHAUSTED.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # gRPC sets SO_REUSEPORT by default, which would let a second server share
            # the port silently instead of failing to start.
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs or None,
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    add_tfserving_services(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(service), server)
    address = listen_address(host, port)
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise GrpcListenError(
            f"cannot listen for gRPC on {address} ({exc}); is the port in use? "
            "Choose another with --grpc-port, or 0 to turn gRPC off"
        ) from None
    await server.start()
    log.info("gRPC listening on %s", address)
    return server
