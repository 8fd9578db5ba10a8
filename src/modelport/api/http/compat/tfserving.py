"""TensorFlow Serving's REST API (its port 8501), so TF Serving clients only change the
address: model status, metadata and ``:predict``, at a version or a version label.

Each route parses, calls the core service and encodes with ``codecs/tfserving_json``,
as the v2 routes do; a core error is answered by the app's one handler. TF Serving's
errors have the same ``{"error": "..."}`` body, with the statuses TF Serving answers:
400 a bad request, 404 an unknown model, version or label, 503 a model not loaded or
overloaded.

Labels (``/labels/{l}``) name versions through ``version_labels`` in model.yaml
(``{stable: 1, canary: 2}``); a model without them answers 404 saying so.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.convertors import PathConvertor, register_url_convertor

from modelport.api.http.bodies import (
    TFServingColumnarRequest,
    TFServingExamplesRequest,
    TFServingRowRequest,
)
from modelport.api.http.errors import error_responses
from modelport.api.http.openapi import json_body
from modelport.codecs.tfserving_json import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    TF_DTYPES,
    decode_predict,
    encode_predict,
    version_status,
)
from modelport.core.service import InferenceService
from modelport.errors import ModelNotFound, Unsupported
from modelport.spec import TensorSpec

_PREDICT_PATH = re.compile(
    r"^(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<verb>[a-z]+)$"
)


# TF Serving's errors are {"error": ...} like modelport's: 400 a bad version or body, 404
# an unknown model, version or label, 503 a model not loaded (or overloaded), 501 the
# verbs not offered, 500 a model that failed while running.
MODEL_ERRORS = error_responses(400, 404, 503)
PREDICT_ERRORS = error_responses(400, 404, 413, 500, 501, 503)
PREDICT_BODY = json_body(TFServingRowRequest, TFServingColumnarRequest, TFServingExamplesRequest)


class _AnyPath(PathConvertor):
    """The rest of a path, whatever it holds: the ``path`` convertor's ``.*`` stops at a
    newline (``%0A``), and a model name with one then fell through to the GET routes'
    405 instead of the predict route's 404."""

    regex = r"[\s\S]*"


register_url_convertor("any_path", _AnyPath())


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), 200, media_type="application/json")


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    # int64 fields are strings in protobuf's JSON, which TF Serving's answers keep.
    dims = [{"size": str(d), "name": ""} for d in spec.shape]
    return {
        "dtype": TF_DTYPES[spec.datatype],
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": spec.name,
    }


def build_tfserving_router(service: InferenceService) -> APIRouter:
    router = APIRouter(tags=["TensorFlow Serving"])

    def resolve(model: str, version: str, label: str) -> str:
        return service.version_for_label(model, label) if label else version

    async def status(model: str, version: str = "", label: str = "") -> Response:
        version = resolve(model, version, label)
        rows = service.model_status(model, version)
        statuses = [version_status(r.state, r.reason, r.version or version) for r in rows]
        return _json({"model_version_status": statuses})

    async def metadata(model: str, version: str = "", label: str = "") -> Response:
        version = resolve(model, version, label)
        served = str(service.get_version(model, version).version)
        meta = service.metadata(model, served)
        signature = {
            "inputs": {t.name: _tensor_info(t) for t in meta.inputs},
            "outputs": {t.name: _tensor_info(t) for t in meta.outputs},
            "method_name": PREDICT_METHOD,
        }
        return _json(
            {
                "model_spec": {"name": model, "signature_name": "", "version": served},
                "metadata": {"signature_def": {"signature_def": {DEFAULT_SIGNATURE: signature}}},
            }
        )

    for suffix in ("", "/versions/{version}", "/labels/{label}"):
        prefix = "/v1/models/{model}" + suffix
        router.add_api_route(
            prefix,
            status,
            methods=["GET"],
            summary="Model version status",
            responses=MODEL_ERRORS,
        )
        router.add_api_route(
            prefix + "/metadata",
            metadata,
            methods=["GET"],
            summary="Model signature metadata",
            responses=MODEL_ERRORS,
        )

    @router.post(
        "/v1/models/{rest:any_path}",
        summary="Predict: POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict",
        openapi_extra=PREDICT_BODY,
        responses=PREDICT_ERRORS,
    )
    async def predict(rest: str, request: Request) -> Response:
        match = _PREDICT_PATH.match(rest)
        if match is not None and match["verb"] in ("classify", "regress"):
            raise Unsupported(f"':{match['verb']}' is not supported; use ':predict'")
        if match is None or match["verb"] != "predict":
            raise ModelNotFound(
                f"Malformed request: POST /v1/models/{rest}; expected "
                "/v1/models/<model>[/versions/<version>|/labels/<label>]:predict"
            )
        model = match["model"]
        version = resolve(model, match["version"] or "", match["label"] or "")
        loaded = service.get_version(model, version)
        decoded = decode_predict(
            await request.body(),
            model,
            str(loaded.version),
            inputs=loaded.signature.inputs,
            batched=loaded.spec.batches,
            runtime=loaded.spec.runtime,
        )
        response = await service.infer(decoded.request)
        body = encode_predict(response, decoded)
        return Response(body, 200, media_type="application/json")

    return router
