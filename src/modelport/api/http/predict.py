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

import base64
import binascii
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile

from modelport.api.http.errors import error_parts
from modelport.codecs.classification import top_k
from modelport.codecs.detections import Detection, decode_detections
from modelport.codecs.image import ImageFrame, encode_image_input
from modelport.core.registry import LoadedVersion
from modelport.core.service import PLATFORMS, InferenceService
from modelport.errors import InvalidInput, ModelNotFound, ModelportError
from modelport.spec import ClassificationSpec, DetectionsSpec, TensorSpec
from modelport.tensors import InferenceRequest, InferenceResponse, Tensor, numpy_dtype

PARAMETERS = ("score_threshold", "top_k")
SAMPLES_DIR = "samples"
SAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass(slots=True)
class PredictCall:
    """What a friendly request carries: values by input name (or unnamed), parameters."""

    named: dict[str, Any] = field(default_factory=dict)
    unnamed: list[Any] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prediction:
    """A friendly answer before it is written as JSON."""

    response: InferenceResponse
    frame: ImageFrame | None
    detections: list[Detection] | None
    body: dict[str, Any]


class FriendlyPredictor:
    """Parses friendly requests into the core's, and its answers into friendly JSON."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def predict(self, model: str, version: str, call: PredictCall) -> Prediction:
        loaded = self.service.get_version(model, version)
        params = _parameters(call.parameters)
        tensors, frame = _inputs(loaded, call)
        response = await self.service.infer(InferenceRequest(model, tensors, version))
        body: dict[str, Any] = {"model_name": response.model_name,
                                "model_version": response.model_version}  # fmt: skip
        if frame is not None:
            body["image"] = {"width": frame.width, "height": frame.height}
        specs = {t.name: t for t in loaded.signature.outputs}
        outputs: dict[str, Any] = {}
        detections: list[Detection] | None = None
        for tensor in response.outputs:
            spec = specs.get(tensor.name)
            data = tensor.data[0] if loaded.spec.batches else tensor.data
            codec = spec.codec if spec is not None else None
            value: Any
            if codec == "detections" and spec is not None:
                found = decode_detections(
                    data, frame, loaded.labels, spec.detections or DetectionsSpec(),
                    params.get("score_threshold"), tensor.name,
                )  # fmt: skip
                value = [d.to_json() for d in found]
                if detections is None:
                    detections = found
            elif codec == "classification" and spec is not None:
                value = top_k(data, loaded.labels, spec.classification or ClassificationSpec(),
                              params.get("top_k"), tensor.name)  # fmt: skip
            else:
                codec, value = None, _plain(data)
            if codec is not None and codec not in body:
                body[codec] = value
            else:
                outputs[tensor.name] = value
        body["outputs"] = outputs
        return Prediction(response, frame, detections, body)


def _parameters(given: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if "score_threshold" in given:
        try:
            threshold = float(given["score_threshold"])
        except (TypeError, ValueError):
            threshold = -1.0
        if not 0.0 <= threshold <= 1.0:
            raise InvalidInput(
                f"score_threshold must be a number from 0 to 1, got {given['score_threshold']!r}"
            )
        params["score_threshold"] = threshold
    if "top_k" in given:
        raw = given["top_k"]
        if not str(raw).isdigit() or int(raw) < 1:
            raise InvalidInput(f"top_k must be a positive integer, got {raw!r}")
        params["top_k"] = int(raw)
    return params


def _inputs(
    loaded: LoadedVersion, call: PredictCall
) -> tuple[tuple[Tensor, ...], ImageFrame | None]:
    specs = loaded.inputs_by_name
    values = dict(call.named)
    unknown = [n for n in values if n not in specs]
    if unknown:
        raise InvalidInput(
            f"model '{loaded.name}' has no input(s) {unknown}; its inputs are {list(specs)}"
        )
    missing = [n for n in specs if n not in values]
    if call.unnamed:
        if len(missing) != 1 or len(call.unnamed) != 1:
            raise InvalidInput(
                f"cannot tell which input the file is for; name the form field after one of "
                f"model '{loaded.name}''s inputs {list(specs)}"
            )
        values[missing.pop()] = call.unnamed[0]
    if missing:
        raise InvalidInput(
            f"model '{loaded.name}' needs input(s) {missing}; send a form field or JSON "
            "'inputs' entry for each"
        )
    tensors: list[Tensor] = []
    frame: ImageFrame | None = None
    for name, spec in specs.items():
        array, seen = _value(spec, values[name])
        if frame is None:
            frame = seen
        if loaded.spec.batches:
            array = array[np.newaxis]
        tensors.append(Tensor(name, spec.datatype, array))
    return tuple(tensors), frame


def _as_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict) and isinstance(value.get("b64"), str):
        value = value["b64"]
    if isinstance(value, str):
        text = value.partition("base64,")[2] if value.startswith("data:") else value
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                f"input '{name}': expected a file, base64 text or a data: URL"
            ) from None
    raise InvalidInput(f"input '{name}': expected a file, base64 text or a data: URL")


def _value(spec: TensorSpec, value: Any) -> tuple[np.ndarray, ImageFrame | None]:
    """One input's value (batch dimension excluded) and, for an image, its frame."""
    if spec.codec == "image":
        return encode_image_input(_as_bytes(value, spec.name), spec)
    if spec.datatype == "BYTES":
        items = value if isinstance(value, list) else [value]
        array = np.empty(len(items), dtype=np.object_)
        for i, item in enumerate(items):
            array[i] = item if isinstance(item, bytes) else str(item).encode()
        return _fit(array, spec), None
    if isinstance(value, bytes):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise InvalidInput(
                f"input '{spec.name}' takes {spec.datatype} numbers; send them as JSON"
            ) from None
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise InvalidInput(
                f"input '{spec.name}': {value[:40]!r} is not a number or a JSON list"
            ) from None
    try:
        array = np.asarray(value, dtype=numpy_dtype(spec.datatype))
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(
            f"input '{spec.name}' takes {spec.datatype} numbers, got {str(value)[:60]}"
        ) from None
    return _fit(array, spec), None


def _fit(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """A flat list fills a fixed shape; anything else is checked by the core."""
    fixed = bool(spec.shape) and -1 not in spec.shape
    if fixed and array.shape != spec.shape and array.size == int(np.prod(spec.shape)):
        return array.reshape(spec.shape)
    return array


def _plain(data: np.ndarray) -> Any:
    if data.dtype == np.object_:
        items = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                 for x in data.reshape(-1)]  # fmt: skip
        return items[0] if len(items) == 1 else np.asarray(items).reshape(data.shape).tolist()
    return data.reshape(-1)[0].item() if data.size == 1 else data.tolist()


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
    entry = service.registry.entries.get(name)
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
    spec = entry.spec if entry is not None else None
    loaded = entry.latest if entry is not None else None
    if spec is None:
        try:
            spec = service.registry.repository.source(name).spec
        except ModelportError:
            spec = None
    if spec is not None:
        summary.update(runtime=spec.runtime, description=spec.description,
                       platform=PLATFORMS.get(spec.runtime, spec.runtime))  # fmt: skip
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
    folder = service.registry.repository.root / name / SAMPLES_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES)


# -- routes -------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _error(exc: ModelportError, extra: dict[str, Any] | None = None) -> Response:
    status, body, headers = error_parts(exc)
    if extra:
        body = orjson.dumps({**extra, **orjson.loads(body)})
    response = Response(body, status, media_type="application/json")
    for key, value in headers:
        response.headers[key.decode()] = value.decode()
    return response


def _too_large(limit: int) -> Response:
    return _json({"error": f"request body is over the limit of {limit} bytes"}, 413)


async def read_call(request: Request, max_body: int) -> PredictCall:
    """A friendly request's values and parameters, whichever way it was sent."""
    call = PredictCall(parameters={k: v for k, v in request.query_params.items()
                                   if k in PARAMETERS})  # fmt: skip
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
        return declared.isdigit() and int(declared) > max_body

    @router.get("/api/models", summary="Every model with its state, runtime and counters")
    async def list_models() -> Response:
        names = sorted({r.name for r in service.index()})
        return _json({"models": [model_summary(service, n) for n in names]})

    @router.get("/api/models/{model}", summary="A model's signature, labels and samples")
    async def describe(model: str, version: str = "") -> Response:
        try:
            return _json(model_card(service, model, version))
        except ModelportError as exc:
            return _error(exc)

    @router.get("/api/models/{model}/samples/{sample}", summary="A sample input file")
    async def sample(model: str, sample: str) -> Response:
        try:
            service.model_status(model)
            found = {p.name: p for p in _samples(service, model)}.get(sample)
            if found is None:
                raise ModelNotFound(f"model '{model}' has no sample '{sample}'")
        except ModelportError as exc:
            return _error(exc)
        media = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        return Response(found.read_bytes(), media_type=media)

    @router.post(
        "/api/models/{model}/predict",
        summary="Run a model on files or JSON; readable answers (boxes, labels)",
    )
    async def predict(model: str, request: Request, version: str = "") -> Response:
        if over_limit(request):
            return _too_large(max_body)
        try:
            call = await read_call(request, max_body)
            result = await predictor.predict(model, version, call)
        except ModelportError as exc:
            return _error(exc)
        return _json(result.body)

    @router.post(
        "/predictor/",
        summary="The FastAPI + Redis detector server's route: form fields model_type, file",
    )
    async def predictor_compat(request: Request) -> Response:
        failed = {"success": False}
        if over_limit(request):
            return _json({**failed, "error": f"request body is over {max_body} bytes"}, 413)
        try:
            call = await read_call(request, max_body)
            model = call.named.pop("model_type", None)
            if not isinstance(model, str) or not model:
                raise InvalidInput("form field 'model_type' (the model's name) is missing")
            if not call.unnamed and "file" not in call.named:
                raise InvalidInput("form field 'file' (the image) is missing")
            result = await predictor.predict(model, "", call)
            if result.detections is None:
                raise InvalidInput(f"model '{model}' has no output with codec 'detections'")
        except ModelportError as exc:
            return _error(exc, failed)
        predictions = [d.to_predictor_json() for d in result.detections]
        return _json({"success": True, "predictions": predictions})

    return router
