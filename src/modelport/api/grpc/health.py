"""The standard gRPC health service (``grpc.health.v1.Health``), answered from the core.

``grpc_health_probe`` and Kubernetes ask for the service ``""`` (the whole server):
SERVING once every model has finished loading, as ``/v2/health/ready``, and NOT_SERVING
from the moment the server starts to drain (SIGTERM). A service name of
``inference.GRPCInferenceService`` means the same; a model's name asks whether that
model is ready (NOT_SERVING too while draining). Any other name is NOT_FOUND (Check)
or SERVICE_UNKNOWN (Watch), as the health protocol says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelport.core.service import InferenceService
from modelport.errors import ModelNotFound

SERVER_NAMES = frozenset({"", "inference.GRPCInferenceService"})
WATCH_INTERVAL_S = 0.5

Status = health_pb2.HealthCheckResponse


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def status(self, name: str) -> int:
        if name in SERVER_NAMES:
            ready = self.service.ready()
        else:
            try:
                ready = self.service.model_ready(name)
            except ModelNotFound:
                return int(Status.SERVICE_UNKNOWN)
        # Draining (shutting down): every known name says NOT_SERVING.
        serving = ready and not self.service.draining
        return int(Status.SERVING if serving else Status.NOT_SERVING)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status == Status.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return Status(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            status = self.status(request.service)
            if status != last:
                yield Status(status=status)
                last = status
            await asyncio.sleep(WATCH_INTERVAL_S)
