"""KServe v2 REST: server and model metadata, health, repository, statistics, config.

The infer route is here for the OpenAPI docs and for clients that go through the
framework; the same ``InferHandler`` also serves it on the fast path in ``app.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from dataclasses import replace
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from modelport.api.http.bodies import RepositoryIndexRequest, RepositoryLoadRequest, V2InferRequest
from modelport.api.http.errors import error_parts, error_responses
from modelport.api.http.openapi import Responses, answers, json_body
from modelport.codecs.compression import ENCODINGS, InflatedTooLarge, inflate
from modelport.codecs.v2_json import DecodedRequest, decode_request, encode_response
from modelport.core.service import InferenceService
from modelport.core.stats import Duration, ModelStats
from modelport.core.triton_config import TritonConfig, triton_json
from modelport.errors import InvalidInput, ModelportError, TooLarge, Unsupported
from modelport.numbers import natural, parse_seconds, shown
from modelport.spec import TensorSpec
from modelport.tensors import InferenceResponse

EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "statistics",
    "model_configuration",
    "parameters",
    "system_shared_memory",
    "classification",
]
HEADER_LENGTH = "inference-header-content-length"
# Seconds the client waits (KServe v2 HTTP): a request still queued after them is
# dropped with 504.
HEADER_TIMEOUT = "request-timeout"
# The infer route reads its body raw; this tells the OpenAPI page what it takes: the JSON
# request, or (Triton's binary tensor data) its JSON part, of HEADER_LENGTH bytes, and the
# tensors' bytes after it.
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_INFER_BODY_DOC = json_body(V2InferRequest, also={"application/octet-stream": _BINARY})
_INFER_ANSWER = {
    "content": {"application/json": {"schema": {}}, "application/octet-stream": _BINARY}
}
# Health and readiness answer with a status and no body.
_NO_BODY: Responses = {200: answers(None), 503: {"description": "Not live, or not ready"}}

# A compressed body up to this size is inflated on the event loop: deflate tops out near
# 1032:1, so that is at most about a megabyte of output, a millisecond's work. A larger
# one may inflate to max_request_bytes (tens of milliseconds): in a worker thread.
INLINE_INFLATE_BYTES = 1024


class InferHandler:
    """Body bytes and headers in, (status, body, headers) out: the v2 infer route."""

    def __init__(self, service: InferenceService, max_body: int) -> None:
        self.service = service
        self.max_body = max_body  # max_request_bytes: bodies inflate to at most this

    async def __call__(
        self, model: str, version: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        try:
            if inflates_off_loop(body, headers):
                body = await self.inflate_off_loop(body, headers)
                decoded = self.decode(model, version, body, headers)
            else:
                decoded = self.parse(model, version, body, headers)
            response = await self.service.infer(decoded.request)
            return self.reply(response, decoded, headers)
        except ModelportError as exc:
            return error_parts(exc)

    def parse(
        self, model: str, version: str, body: bytes, headers: dict[str, str]
    ) -> DecodedRequest:
        """The request in a body as sent: decompressed, split at the JSON part, decoded.
        Inflates here, on the caller's thread: a body for which ``inflates_off_loop``
        holds goes through ``inflate_off_loop`` and ``decode`` instead."""
        encoding = headers.get("content-encoding", "")
        if encoding:
            body = inflate_body(body, encoding, self.max_body)
        return self.decode(model, version, body, headers)

    async def inflate_off_loop(self, body: bytes, headers: dict[str, str]) -> bytes:
        """A compressed body, inflated in a worker thread so the event loop goes on."""
        encoding = headers.get("content-encoding", "")
        return await asyncio.to_thread(inflate_body, body, encoding, self.max_body)

    def decode(
        self, model: str, version: str, body: bytes, headers: dict[str, str]
    ) -> DecodedRequest:
        """The request in an uncompressed body: split at the JSON part, decoded."""
        length = headers.get(HEADER_LENGTH)
        json_length = None
        if length is not None:
            json_length = natural(length.strip())
            if json_length is None:
                raise InvalidInput(
                    f"Inference-Header-Content-Length {shown(length)} is not a number"
                )
        decoded = decode_request(
            body,
            json_length,
            model,
            version,
            self.service.max_tensor_elements,
            regions=self.service.shared_memory,
        )
        timeout = headers.get(HEADER_TIMEOUT)
        if timeout is not None:  # the client stops waiting after this many seconds
            seconds = parse_seconds(timeout, what=HEADER_TIMEOUT)
            deadline_ns = time.monotonic_ns() + int(seconds * 1e9)
            decoded = replace(decoded, request=replace(decoded.request, deadline_ns=deadline_ns))
        return decoded

    def reply(
        self, response: InferenceResponse, decoded: DecodedRequest, headers: dict[str, str]
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Status, body and headers for a response, encoded as the request asked."""
        out, out_json_length = encode_response(
            response, decoded.binary_output, regions=self.service.shared_memory
        )
        reply_headers: list[tuple[bytes, bytes]]
        if out_json_length is None:
            reply_headers = [(b"content-type", b"application/json")]
        else:
            reply_headers = [
                (b"content-type", b"application/octet-stream"),
                (HEADER_LENGTH.encode(), str(out_json_length).encode()),
            ]
        accept = headers.get("accept-encoding", "")
        if accept and len(out) > 1024:
            out, used = _compress(out, accept)
            if used:
                reply_headers.append((b"content-encoding", used.encode()))
        return 200, out, reply_headers


def inflates_off_loop(body: bytes, headers: dict[str, str]) -> bool:
    """Whether a body is compressed and too large to inflate on the event loop."""
    return len(body) > INLINE_INFLATE_BYTES and bool(headers.get("content-encoding"))


def inflate_body(body: bytes, encoding: str, limit: int) -> bytes:
    """A body decompressed by its Content-Encoding, at most ``limit`` bytes
    (max_request_bytes): TooLarge as soon as it passes them, InvalidInput if it is not
    valid, Unsupported for an encoding other than gzip or deflate."""
    if encoding not in ENCODINGS:
        raise Unsupported(f"Content-Encoding '{encoding}' is not supported; use gzip or deflate")
    try:
        return inflate(body, encoding, limit)
    except InflatedTooLarge:
        raise inflated_too_large(limit) from None
    except ValueError as exc:
        raise InvalidInput(f"the body does not match its Content-Encoding: {exc}") from None


def inflated_too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"the decompressed request body is over the limit of {limit} bytes "
        "(max_request_bytes); send smaller batches, or the operator can raise the limit"
    )


def _compress(body: bytes, accept: str) -> tuple[bytes, str]:
    offered = {part.split(";")[0].strip() for part in accept.split(",")}
    if "gzip" in offered:
        return gzip.compress(body, compresslevel=1), "gzip"
    if "deflate" in offered:
        return zlib.compress(body, 1), "deflate"
    return body, ""


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def config_json(config: TritonConfig) -> dict[str, Any]:
    """Triton's model configuration as its HTTP API answers it (:func:`triton_json`),
    and modelport's own spec of the model under ``modelport``."""
    return {**triton_json(config), "modelport": config.spec.model_dump(mode="json")}


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def stats_json(name: str, version: str, s: ModelStats) -> dict[str, Any]:
    """One entry of Triton's ``model_stats`` list."""
    return {
        "name": name,
        "version": version,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": _duration(s.success),
            "fail": _duration(s.fail),
            "queue": _duration(s.queue),
            "compute_input": _duration(s.compute_input),
            "compute_infer": _duration(s.compute_infer),
            "compute_output": _duration(s.compute_output),
            "cache_hit": {"count": 0, "ns": 0},
            "cache_miss": {"count": 0, "ns": 0},
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(b.compute_input),
                "compute_infer": _duration(b.compute_infer),
                "compute_output": _duration(b.compute_output),
            }
            for size, b in sorted(s.batches.items())
        ],
        "warmup_ns": s.warmup_ns,
    }


# A model route's errors: a bad version (400), no such model or version (404), a model
# that is not loaded (503).
MODEL_ERRORS = error_responses(400, 404, 503)


def build_router(service: InferenceService, max_body: int) -> APIRouter:
    router = APIRouter(tags=["KServe v2"])
    infer = InferHandler(service, max_body)

    @router.get("/v2", summary="Server metadata")
    async def server_metadata() -> Response:
        return _json({"name": service.name, "version": service.version, "extensions": EXTENSIONS})

    @router.get("/v2/health/live", summary="Liveness", response_class=Response, responses=_NO_BODY)
    async def live() -> Response:
        return Response(status_code=200 if service.live() else 503)

    @router.get(
        "/v2/health/ready",
        summary="Readiness: every model has finished loading",
        response_class=Response,
        responses=_NO_BODY,
    )
    async def ready() -> Response:
        return Response(status_code=200 if service.ready() else 503)

    @router.get("/v2/models/stats", summary="Statistics of every model")
    async def all_stats() -> Response:
        found = await service.gather_statistics()
        return _json({"model_stats": [stats_json(s.name, s.version, s.stats) for s in found]})

    @router.post(
        "/v2/repository/index",
        summary="Every model in the repository and its state",
        openapi_extra=json_body(RepositoryIndexRequest, required=False),
        responses=error_responses(400, 413),
    )
    async def repository_index(request: Request) -> Response:
        body = await request.body()
        ready_only = False
        if body.strip():
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise InvalidInput('body must be JSON, e.g. {"ready": true}') from None
            ready_only = bool(isinstance(doc, dict) and doc.get("ready"))
        rows = service.index(ready_only)
        return _json(
            [
                {
                    "name": r.name,
                    **({"version": r.version} if r.version else {}),
                    "state": r.state,
                    "reason": r.reason,
                }
                for r in rows
            ]
        )

    @router.post(
        "/v2/repository/models/{model}/load",
        summary="Load or reload a model",
        openapi_extra=json_body(RepositoryLoadRequest, required=False),
        responses=error_responses(400, 404, 413, 501, 503),
    )
    async def load(model: str, request: Request) -> Response:
        body = await request.body()
        if body.strip():
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise InvalidInput("body must be JSON") from None
            parameters = doc.get("parameters") if isinstance(doc, dict) else None
            if parameters is not None and not isinstance(parameters, dict):
                raise InvalidInput("'parameters' must be a JSON object")
            if parameters and parameters.get("config"):
                raise Unsupported(
                    "loading with an override config is not supported; "
                    "edit the model's model.yaml and load again"
                )
        await service.load(model)
        return _json({})

    @router.post(
        "/v2/repository/models/{model}/unload",
        summary="Unload a model",
        responses=error_responses(404),
    )
    async def unload(model: str) -> Response:
        await service.unload(model)
        return _json({})

    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        _model_routes(router, service, infer=infer, prefix=prefix)
    return router


def _model_routes(
    router: APIRouter, service: InferenceService, *, infer: InferHandler, prefix: str
) -> None:
    @router.get(prefix, summary="Model metadata", responses=MODEL_ERRORS)
    async def metadata(model: str, version: str = "") -> Response:
        meta = service.metadata(model, version)
        return _json(
            {
                "name": meta.name,
                "versions": list(meta.versions),
                "platform": meta.platform,
                "inputs": [_tensor_metadata(t) for t in meta.inputs],
                "outputs": [_tensor_metadata(t) for t in meta.outputs],
            }
        )

    @router.get(
        prefix + "/ready",
        summary="Model readiness",
        response_class=Response,
        responses={**error_responses(400, 404), **_NO_BODY},
    )
    async def model_ready(model: str, version: str = "") -> Response:
        ok = service.model_ready(model, version)
        return Response(status_code=200 if ok else 503)

    @router.get(
        prefix + "/config",
        summary="Model configuration (Triton's format)",
        responses=MODEL_ERRORS,
    )
    async def config(model: str, version: str = "") -> Response:
        return _json(config_json(service.model_config(model, version)))

    @router.get(
        prefix + "/stats",
        summary="Model statistics (Triton's extension)",
        responses=MODEL_ERRORS,
    )
    async def stats(model: str, version: str = "") -> Response:
        found = await service.gather_statistics(model, version)
        return _json({"model_stats": [stats_json(s.name, s.version, s.stats) for s in found]})

    @router.post(
        prefix + "/infer",
        summary="Run inference (JSON tensors, or JSON + binary tensor data)",
        openapi_extra=_INFER_BODY_DOC,
        responses={
            200: _INFER_ANSWER,
            **error_responses(400, 404, 409, 413, 429, 500, 501, 503, 504),
        },
    )
    async def infer_route(model: str, request: Request, version: str = "") -> Response:
        status, body, headers = await infer(
            model, version, await request.body(), dict(request.headers)
        )
        response = Response(body, status)
        for key, value in headers:
            response.headers[key.decode()] = value.decode()
        return response
