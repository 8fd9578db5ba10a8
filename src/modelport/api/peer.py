"""What a server process answers its peers on its private Unix socket (``--processes N``;
see ``modelport.server.peers``): loads and unloads applied here, metrics, statistics,
readiness. No keys: the socket is mode 0600, only this user reaches it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelport.core.service import InferenceService
from modelport.errors import ModelportError


def peer_app(service: InferenceService, metrics: CollectorRegistry) -> Starlette:
    """What a process answers its peers on its Unix socket (no keys: mode 0600)."""

    async def load(request: Request) -> Response:
        return await _apply(service.load_here, request.path_params["model"])

    async def unload(request: Request) -> Response:
        return await _apply(service.unload_here, request.path_params["model"])

    async def local_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": service.ready()}, status_code=200 if service.ready() else 503)

    async def region(request: Request) -> Response:
        query = request.query_params
        try:
            if query.get("key"):
                service.shared_memory.register(
                    query.get("name", ""),
                    query["key"],
                    offset=int(query.get("offset", "0")),
                    byte_size=int(query.get("byte_size", "0")),
                )
            else:
                service.shared_memory.unregister(query.get("name", ""))
        except ModelportError as exc:
            return JSONResponse({"error": exc.message}, status_code=409)
        return JSONResponse({})

    async def stats(request: Request) -> Response:
        model = request.query_params.get("model", "")
        version = request.query_params.get("version", "")
        try:
            found = service.statistics(model, version)
        except ModelportError as exc:
            return JSONResponse({"error": exc.message}, status_code=404)
        return JSONResponse(
            [{"name": s.name, "version": s.version, "counters": s.stats.counters()} for s in found]
        )

    return Starlette(
        routes=[
            Route("/peer/load/{model}", load, methods=["POST"]),
            Route("/peer/unload/{model}", unload, methods=["POST"]),
            Route("/peer/metrics", local_metrics),
            Route("/peer/stats", stats),
            Route("/peer/region", region, methods=["POST"]),
            Route("/peer/ready", ready),
        ]
    )


async def _apply(action: Callable[[str], Awaitable[Any]], model: str) -> Response:
    try:
        await action(model)
    except ModelportError as exc:
        return JSONResponse({"error": exc.message}, status_code=409)
    return JSONResponse({})
