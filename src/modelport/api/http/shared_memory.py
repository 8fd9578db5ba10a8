"""Triton's shared-memory extensions over HTTP: ``/v2/systemsharedmemory/...`` (status,
register, unregister) as ``tritonclient.http`` calls them, and
``/v2/cudasharedmemory/...`` answering 501 with the reason until a GPU data path
exists. Register and unregister are admin calls (``api/http/auth.py``)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from modelport.api.http.bodies import SharedMemoryRegisterRequest
from modelport.api.http.errors import error_responses
from modelport.api.http.openapi import Responses, answers, json_body
from modelport.core.service import InferenceService
from modelport.core.shared_memory import RegionStatus, refuse_cuda
from modelport.errors import InvalidInput

SYSTEM = "/v2/systemsharedmemory"
_REGION = {
    "type": "object",
    "required": ["name", "key", "offset", "byte_size"],
    "properties": {
        "name": {"type": "string"},
        "key": {"type": "string"},
        "offset": {"type": "integer"},
        "byte_size": {"type": "integer"},
    },
}
_STATUS: Responses = {200: answers("application/json", {"type": "array", "items": _REGION})}
_DONE: Responses = {200: answers("application/json", {"type": "object"})}
CUDA = "/v2/cudasharedmemory"


def _status_json(regions: list[RegionStatus]) -> Response:
    return Response(
        orjson.dumps(
            [
                {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in regions
            ]
        ),
        media_type="application/json",
    )


async def _register_body(request: Request) -> SharedMemoryRegisterRequest:
    body = await request.body()
    try:
        return SharedMemoryRegisterRequest.model_validate_json(body or b"{}")
    except ValueError as exc:
        raise InvalidInput(
            'register needs a JSON body {"key": "/name", "offset": 0, "byte_size": N}: '
            f"{str(exc).splitlines()[0]}"
        ) from None


def build_shared_memory_router(service: InferenceService) -> APIRouter:
    router = APIRouter(tags=["shared memory (Triton)"])
    memory = service.shared_memory

    @router.get(f"{SYSTEM}/status", summary="Every registered region", responses=_STATUS)
    async def status_all() -> Response:
        return _status_json(memory.status())

    @router.get(
        f"{SYSTEM}/region/{{region}}/status",
        summary="One registered region",
        responses={**_STATUS, **error_responses(404)},
    )
    async def status_one(region: str) -> Response:
        return _status_json(memory.status(region))

    @router.post(
        f"{SYSTEM}/region/{{region}}/register",
        summary="Map a region of a POSIX shared memory object",
        responses={**_DONE, **error_responses(400, 403, 409, 503)},
        openapi_extra=json_body(SharedMemoryRegisterRequest),
    )
    async def register(region: str, request: Request) -> Response:
        body = await _register_body(request)
        await service.register_region(RegionStatus(region, body.key, body.offset, body.byte_size))
        return Response(b"{}", media_type="application/json")

    @router.post(
        f"{SYSTEM}/unregister",
        summary="Forget every region",
        responses={**_DONE, **error_responses(403, 503)},
    )
    async def unregister_all() -> Response:
        await service.unregister_region()
        return Response(b"{}", media_type="application/json")

    @router.post(
        f"{SYSTEM}/region/{{region}}/unregister",
        summary="Forget one region",
        responses={**_DONE, **error_responses(403, 503)},
    )
    async def unregister_one(region: str) -> Response:
        await service.unregister_region(region)
        return Response(b"{}", media_type="application/json")

    async def cuda(request: Request) -> Response:
        raise refuse_cuda()

    for path, method in (
        (f"{CUDA}/status", "GET"),
        (f"{CUDA}/region/{{region}}/status", "GET"),
        (f"{CUDA}/region/{{region}}/register", "POST"),
        (f"{CUDA}/unregister", "POST"),
        (f"{CUDA}/region/{{region}}/unregister", "POST"),
    ):
        router.add_api_route(
            path,
            cuda,
            methods=[method],
            summary="CUDA shared memory: not supported yet",
            responses=error_responses(501),
        )
    return router
