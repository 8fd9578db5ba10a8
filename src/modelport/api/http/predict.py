"""The friendly API: files in, readable JSON out, per the codecs a model declares.

``POST /api/models/{m}/predict`` takes a multipart form (a file per image input; the
field may be named after the input, or anything when the model has one input), a JSON
body ``{"inputs": {name: value}, "parameters": {...}}`` (images as base64 or data
URLs), or the bytes of one image as the body. It answers::

    {"model_name": "faces", "model_version": "1", "image": {"width": 640, "height": 480},
     "detections": [{"box": [x1, y1, x2, y2], "label": "face", "score": 0.93}],
     "outputs": {...every output without a codec, by name...}}

with ``classification: [{"label", "score"}]`` (top-k) for a classification output.
Parameters: ``score_threshold`` (detections) and ``top_k`` (classification), in the
query, the form or the JSON ``parameters``. ``POST /predictor/`` (form fields
``model_type`` and ``file``) answers as the FastAPI + Redis detector server did.
``GET /api/models`` and ``GET /api/models/{m}`` describe the models for the web page.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile

from modelport.api.http.bodies import PredictRequest
from modelport.api.http.errors import ERROR_SCHEMA, error_response, error_responses
from modelport.api.http.openapi import json_body
from modelport.core.entries import LoadedVersion
from modelport.core.friendly import FriendlyPredictor, PredictCall
from modelport.core.service import InferenceService
from modelport.errors import InvalidInput, ModelNotFound, ModelportError
from modelport.numbers import declared_over
from modelport.spec import TensorSpec

PARAMETERS = ("score_threshold", "top_k")
SAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
IMAGE_TYPES = ("image/", "application/octet-stream")

# What the predict routes take besides JSON: a form with a file per image input (or
# ``file`` when the model has one), or the bytes of one image as the body.
_FILE = {"type": "string", "format": "binary"}
_PREDICT_FORM = {
    "type": "object",
    "description": "a file per image input, named after it (or 'file' for a model with "
    "one input), other inputs as text fields, and the parameters",
    "properties": {
        "file": _FILE,
        "score_threshold": {"type": "number"},
        "top_k": {"type": "integer"},
    },
}
_IMAGE = {"schema": _FILE}
PREDICT_BODY = json_body(
    PredictRequest,
    also={
        "multipart/form-data": {"schema": _PREDICT_FORM},
        "image/*": _IMAGE,
        "application/octet-stream": _IMAGE,
    },
)
PREDICT_ERRORS = error_responses(400, 404, 413, 500, 501, 503)
# The detector server's route: form fields model_type and file; its errors' own body.
_DETECTOR_FORM = {
    "type": "object",
    "properties": {"model_type": {"type": "string", "minLength": 1}, "file": _FILE},
    "required": ["model_type", "file"],
}
_DETECTOR_ERROR = {
    "type": "object",
    "properties": {"success": {"const": False}, **ERROR_SCHEMA["properties"]},
    "required": ["success", "error"],
}
DETECTOR_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": _DETECTOR_FORM}},
    }
}
# (A body over the limit is refused before the route runs, in modelport's own shape.)
DETECTOR_ERRORS = {
    **error_responses(400, 404, 500, 503, body=_DETECTOR_ERROR),
    **error_responses(413),
}
SAMPLE = {"content": {"image/*": _IMAGE}}


# -- describing models for the page -------------------------------------------------------


def _tensor_json(spec: TensorSpec, batches: bool) -> dict[str, Any]:
    out = spec.model_dump(mode="json", exclude_none=True)
    out["shape"] = [-1, *spec.shape] if batches else list(spec.shape)
    return out


def _stats(loaded: LoadedVersion) -> dict[str, Any]:
    s = loaded.stats
    return {
        "success": s.success.count,
        "fail": s.fail.count,
        "success_ns": s.success.ns,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "last_inference": s.last_inference_ms,
    }


def model_summary(service: InferenceService, name: str) -> dict[str, Any]:
    """One model as the page's list shows it: state, runtime, devices, counters."""
    rows = service.model_status(name)
    row = rows[0]
    summary: dict[str, Any] = {
        "name": name,
        "versions": [r.version for r in rows if r.version],
        "state": row.state,
        "reason": row.reason,
        "runtime": "",
        "platform": "",
        "devices": [],
        "description": "",
        "stats": None,
    }
    model = service.model(name)
    if model.spec is not None:
        summary.update(
            runtime=model.spec.runtime, description=model.spec.description, platform=model.platform
        )
    loaded = model.latest
    if loaded is not None:
        summary["devices"] = sorted(set(loaded.devices))
        summary["stats"] = _stats(loaded)
        summary["image_input"] = any(t.codec == "image" for t in loaded.signature.inputs)
        summary["codecs"] = sorted({t.codec for t in loaded.signature.outputs if t.codec})
    return summary


def model_card(service: InferenceService, name: str, version: str = "") -> dict[str, Any]:
    """One model in full for the page: its summary, signature, labels and samples."""
    card = model_summary(service, name)
    loaded = service.get_version(name, version)
    batches = loaded.spec.batches
    card.update(
        version=str(loaded.version),
        max_batch_size=loaded.spec.max_batch_size,
        inputs=[_tensor_json(t, batches) for t in loaded.signature.inputs],
        outputs=[_tensor_json(t, batches) for t in loaded.signature.outputs],
        labels=list(loaded.labels),
        samples=[p.name for p in _samples(service, name)],
    )
    return card


def _samples(service: InferenceService, name: str) -> list[Path]:
    folder = service.samples_folder(name)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES)


# -- routes -------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


class _DetectorServerRoute(APIRoute):
    """The FastAPI + Redis detector server's errors: its ``{"success": false, "error":
    ...}`` body, with the status and headers of the error's kind."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except ModelportError as exc:
                return error_response(exc, extra={"success": False})

        return answer


def _too_large(limit: int) -> Response:
    return _json({"error": f"request body is over the limit of {limit} bytes"}, 413)


async def read_call(request: Request, max_body: int) -> PredictCall:
    """A friendly request's values and parameters, whichever way it was sent."""
    call = PredictCall(
        parameters={k: v for k, v in request.query_params.items() if k in PARAMETERS}
    )
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_part_size=max_body)
        except Exception as exc:  # Starlette raises its own parse errors
            raise InvalidInput(f"the form cannot be read: {exc}") from None
        try:
            for key, item in form.multi_items():
                if isinstance(item, UploadFile):
                    data = await item.read()
                    if key in call.named or key in ("file", "files", ""):
                        call.unnamed.append(data)
                    else:
                        call.named[key] = data
                elif key in PARAMETERS:
                    call.parameters[key] = item
                else:
                    call.named[key] = item
        finally:
            await form.close()  # uploads are spooled to temporary files
        return call
    body = await request.body()
    if kind == "application/json" or (not kind and body[:1] in (b"{", b"[")):
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidInput("body is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs", {}), dict):
            raise InvalidInput(
                'JSON body must be {"inputs": {"<input>": value}, "parameters": {...}}'
            )
        call.named.update(doc.get("inputs", {}))
        given = doc.get("parameters") or {}
        if not isinstance(given, dict):
            raise InvalidInput("'parameters' must be a JSON object")
        call.parameters.update({k: v for k, v in given.items() if k in PARAMETERS})
        return call
    if kind.startswith(IMAGE_TYPES) or not kind:
        if not body:
            raise InvalidInput("empty body: send an image file, a form or JSON")
        call.unnamed.append(body)
        return call
    raise InvalidInput(
        f"Content-Type '{kind}' is not understood; send multipart/form-data, JSON or an image"
    )


def build_predict_router(service: InferenceService, max_body: int) -> APIRouter:
    router = APIRouter(tags=["friendly API"])
    predictor = FriendlyPredictor(service)

    def over_limit(request: Request) -> bool:
        declared = request.headers.get("content-length", "")
        return declared_over(declared, max_body)

    @router.get("/api/models", summary="Every model with its state, runtime and counters")
    async def list_models() -> Response:
        names = sorted({r.name for r in service.index()})
        return _json({"models": [model_summary(service, n) for n in names]})

    @router.get(
        "/api/models/{model}",
        summary="A model's signature, labels and samples",
        responses=error_responses(400, 404, 503),
    )
    async def describe(model: str, version: str = "") -> Response:
        return _json(model_card(service, model, version))

    @router.get(
        "/api/models/{model}/samples/{sample}",
        summary="A sample input file",
        response_class=Response,
        responses={200: SAMPLE, **error_responses(404)},
    )
    async def sample(model: str, sample: str) -> Response:
        found = {p.name: p for p in _samples(service, model)}.get(sample)
        if found is None:
            raise ModelNotFound(f"model '{model}' has no sample '{sample}'")
        media = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        return Response(found.read_bytes(), media_type=media)

    @router.post(
        "/api/models/{model}/predict",
        summary="Run a model on files or JSON; readable answers (boxes, labels)",
        openapi_extra=PREDICT_BODY,
        responses=PREDICT_ERRORS,
    )
    async def predict(model: str, request: Request, version: str = "") -> Response:
        if over_limit(request):
            return _too_large(max_body)
        call = await read_call(request, max_body)
        result = await predictor.predict(model, version, call)
        return _json(result.body)

    detector_server = APIRouter(tags=["friendly API"], route_class=_DetectorServerRoute)

    @detector_server.post(
        "/predictor/",
        summary="The FastAPI + Redis detector server's route: form fields model_type, file",
        openapi_extra=DETECTOR_BODY,
        responses=DETECTOR_ERRORS,
    )
    async def predictor_compat(request: Request) -> Response:
        failed = {"success": False}
        if over_limit(request):
            return _json({**failed, "error": f"request body is over {max_body} bytes"}, 413)
        call = await read_call(request, max_body)
        model = call.named.pop("model_type", None)
        if not isinstance(model, str) or not model:
            raise InvalidInput("form field 'model_type' (the model's name) is missing")
        if not call.unnamed and "file" not in call.named:
            raise InvalidInput("form field 'file' (the image) is missing")
        result = await predictor.predict(model, "", call)
        if result.detections is None:
            raise InvalidInput(f"model '{model}' has no output with codec 'detections'")
        predictions = [d.to_predictor_json() for d in result.detections]
        return _json({"success": True, "predictions": predictions})

    router.include_router(detector_server)
    return router
