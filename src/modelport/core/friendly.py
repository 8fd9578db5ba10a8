"""The friendly layer: files and plain values in, readable answers out, per the codecs a
model declares (an ``image`` input decoded and resized; ``detections`` as boxes in the
original picture's pixels; ``classification`` as top-k labels). Transport-free, so the
HTTP routes, the page and the CLI share it. Pictures are prepared off the event loop, on
a :class:`~modelport.core.pictures.PicturePool`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelport.codecs.classification import top_k
from modelport.codecs.detections import Detection, decode_detections
from modelport.codecs.image import ImageFrame
from modelport.core.entries import LoadedVersion
from modelport.core.pictures import PicturePool
from modelport.core.service import InferenceService
from modelport.errors import InvalidInput
from modelport.numbers import natural, shown
from modelport.spec import ClassificationSpec, DetectionsSpec, TensorSpec
from modelport.tensors import InferenceRequest, InferenceResponse, Tensor, numpy_dtype


@dataclass(slots=True)
class PredictCall:
    """What a friendly request carries: values by input name (or unnamed), parameters."""

    named: dict[str, Any] = field(default_factory=dict)
    unnamed: list[Any] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """A friendly answer before it is written as JSON."""

    response: InferenceResponse
    frame: ImageFrame | None
    detections: list[Detection] | None
    body: dict[str, Any]


class FriendlyPredictor:
    """Parses friendly requests into the core's, and its answers into friendly JSON.
    ``pictures``: where image inputs are prepared (a pool of its own when not given)."""

    def __init__(self, service: InferenceService, pictures: PicturePool | None = None) -> None:
        self.service = service
        self.pictures = pictures or PicturePool()

    async def predict(self, model: str, version: str, call: PredictCall) -> Prediction:
        loaded = self.service.get_version(model, version)
        params = _parameters(call.parameters)
        tensors, frame = await self._inputs(loaded, call)
        response = await self.service.infer(InferenceRequest(model, tensors, version))
        body: dict[str, Any] = {
            "model_name": response.model_name,
            "model_version": response.model_version,
        }
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
                    data,
                    frame,
                    loaded.labels,
                    options=spec.detections or DetectionsSpec(),
                    score_threshold=params.get("score_threshold"),
                    name=tensor.name,
                )
                value = [d.to_json() for d in found]
                if detections is None:
                    detections = found
            elif codec == "classification" and spec is not None:
                value = top_k(
                    data,
                    loaded.labels,
                    options=spec.classification or ClassificationSpec(),
                    k=params.get("top_k"),
                    name=tensor.name,
                )
            else:
                codec, value = None, _plain(data)
            if codec is not None and codec not in body:
                body[codec] = value
            else:
                outputs[tensor.name] = value
        body["outputs"] = outputs
        return Prediction(response=response, frame=frame, detections=detections, body=body)

    async def _inputs(
        self, loaded: LoadedVersion, call: PredictCall
    ) -> tuple[tuple[Tensor, ...], ImageFrame | None]:
        values = _values_by_input(loaded, call)
        specs = loaded.inputs_by_name
        # The cheap inputs first (a bad one fails before any picture is decoded), then
        # the pictures, side by side on the pool.
        plain = {n: _value(s, values[n]) for n, s in specs.items() if s.codec != "image"}
        files = {n: _as_bytes(values[n], n) for n, s in specs.items() if s.codec == "image"}
        jobs = [self.pictures.encode(data, specs[name]) for name, data in files.items()]
        done = [await jobs[0]] if len(jobs) == 1 else await asyncio.gather(*jobs)
        prepared: dict[str, tuple[np.ndarray, ImageFrame | None]] = {
            **plain,
            **dict(zip(files, done, strict=True)),
        }
        tensors: list[Tensor] = []
        frame: ImageFrame | None = None
        for name, spec in specs.items():
            array, seen = prepared[name]
            if frame is None:
                frame = seen
            if loaded.spec.batches:
                array = array[np.newaxis]
            tensors.append(Tensor(name, spec.datatype, array))
        return tuple(tensors), frame


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
        top_k = raw if type(raw) is int else natural(str(raw))
        if top_k is None or top_k < 1:
            raise InvalidInput(f"top_k must be a positive integer, got {shown(str(raw))}")
        params["top_k"] = top_k
    return params


def _values_by_input(loaded: LoadedVersion, call: PredictCall) -> dict[str, Any]:
    """The request's value of each of the model's inputs (an unnamed file to the one
    input left without a value)."""
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
    return values


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


def _value(spec: TensorSpec, value: Any) -> tuple[np.ndarray, None]:
    """One input's value (batch dimension excluded), for an input that is no image."""
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
        items = [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
            for x in data.reshape(-1)
        ]
        return items[0] if len(items) == 1 else np.asarray(items).reshape(data.shape).tolist()
    return data.reshape(-1)[0].item() if data.size == 1 else data.tolist()
