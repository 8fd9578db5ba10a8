"""KServe v2 remote clients for the ``remote`` runtime: over HTTP with Triton's binary
tensor data extension on a persistent ``httpx.Client``, and over gRPC with
``raw_input_contents`` on a sync channel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np
import orjson

from modelport.codecs.v2_binary import decode_tensor, encode_tensor
from modelport.errors import ModelportError
from modelport.protos import grpc_service_pb2 as pb
from modelport.protos import grpc_service_pb2_grpc as pb_grpc
from modelport.protos.datatypes import V2_CONTENTS
from modelport.protos.parameters import set_parameters
from modelport.runtimes.remote_client import (
    GrpcChannel,
    RemoteErrors,
    RemoteMetadata,
    RemoteTensor,
    retry_seconds,
)
from modelport.spec import RemoteSpec
from modelport.tensors import as_bytes_array, numpy_dtype

JSON_LENGTH = "Inference-Header-Content-Length"


class HttpV2Client:
    """KServe v2 over HTTP with Triton's binary tensor data extension."""

    def __init__(self, remote: RemoteSpec, model: str) -> None:
        self.describe = RemoteErrors(remote, model)
        path = f"/v2/models/{model}" + (f"/versions/{v}" if (v := remote.pinned_version) else "")
        self._metadata_url, self._ready_url = path, f"{path}/ready"
        self._infer_url = f"{path}/infer"
        self._client = httpx.Client(
            base_url=remote.url,
            timeout=remote.timeout,
            headers=remote.headers,
            # One connection: this client serves one instance, one batch at a time.
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise self.describe.timed_out() from None
        except httpx.TransportError as exc:
            raise self.describe.unreachable(str(exc) or type(exc).__name__) from None

    def metadata(self) -> RemoteMetadata:
        response = self._send("GET", self._metadata_url)
        if response.status_code != 200:
            raise self.describe.missing(f"{response.status_code} {_error_text(response)}")
        ready = self._send("GET", self._ready_url)
        if ready.status_code != 200:
            raise self.describe.not_ready(f"{ready.status_code} {_error_text(ready)}")
        try:
            doc = orjson.loads(response.content)
            return RemoteMetadata(
                tuple(_remote_tensor(t) for t in doc.get("inputs") or ()),
                tuple(_remote_tensor(t) for t in doc.get("outputs") or ()),
            )
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            detail = response.text[:200]
            raise self.describe.failed(f"its metadata is not KServe v2: {detail}") from None

    def infer(
        self,
        inputs: Mapping[str, tuple[str, np.ndarray]],
        parameters: Mapping[str, Any],
        trace_headers: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        tensors, chunks = [], []
        for name, (datatype, array) in inputs.items():
            raw = encode_tensor(array, datatype)
            chunks.append(raw)
            tensors.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
        head = orjson.dumps(
            {"inputs": tensors, "parameters": {**parameters, "binary_data_output": True}}
        )
        response = self._send(
            "POST",
            self._infer_url,
            content=b"".join((head, *chunks)),
            headers={
                JSON_LENGTH: str(len(head)),
                "Content-Type": "application/octet-stream",
                **(trace_headers or {}),
            },
        )
        if response.status_code != 200:
            raise self._status_error(response)
        return self._outputs(response)

    def _status_error(self, response: httpx.Response) -> ModelportError:
        status, text = response.status_code, _error_text(response)
        retry_after = response.headers.get("retry-after")
        if status == 400:
            return self.describe.rejected(text)
        if status == 404:
            return self.describe.missing(text)
        if status == 429 or (status == 503 and retry_after):
            return self.describe.overloaded(text, retry_seconds(retry_after))
        if status == 503:
            return self.describe.not_ready(text)
        return self.describe.failed(f"{status} {text}")

    def _outputs(self, response: httpx.Response) -> dict[str, np.ndarray]:
        body = response.content
        length = response.headers.get(JSON_LENGTH)
        try:
            split = int(length) if length is not None else len(body)
            doc = orjson.loads(body[:split])
            outputs, offset = {}, split
            for item in doc["outputs"]:
                name, datatype = item["name"], item["datatype"]
                shape = tuple(int(d) for d in item["shape"])
                size = (item.get("parameters") or {}).get("binary_data_size")
                if size is not None:
                    raw = body[offset : offset + size]
                    offset += size
                    outputs[name] = decode_tensor(name, datatype, shape, raw)
                elif datatype == "BYTES":
                    outputs[name] = as_bytes_array(np.array(item["data"], np.object_)).reshape(
                        shape
                    )
                else:
                    outputs[name] = np.asarray(item["data"], numpy_dtype(datatype)).reshape(shape)
            return outputs
        except (ModelportError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise self.describe.failed(f"its answer is not KServe v2: {exc}") from None

    def close(self) -> None:
        self._client.close()


class GrpcV2Client:
    """KServe v2 over gRPC (``inference.GRPCInferenceService``), tensors raw."""

    def __init__(self, remote: RemoteSpec, model: str) -> None:
        self.describe = RemoteErrors(remote, model)
        self.model, self.version = model, str(remote.pinned_version or "")
        self._grpc = GrpcChannel(remote, self.describe)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._grpc.channel)

    def metadata(self) -> RemoteMetadata:
        found = self._grpc.call(
            self._stub.ModelMetadata,
            pb.ModelMetadataRequest(name=self.model, version=self.version),
            True,
        )
        ready = self._grpc.call(
            self._stub.ModelReady, pb.ModelReadyRequest(name=self.model, version=self.version), True
        )
        if not ready.ready:
            raise self.describe.not_ready("ModelReady answered false")
        return RemoteMetadata(
            tuple(RemoteTensor(t.name, t.datatype, tuple(t.shape)) for t in found.inputs),
            tuple(RemoteTensor(t.name, t.datatype, tuple(t.shape)) for t in found.outputs),
        )

    def infer(
        self,
        inputs: Mapping[str, tuple[str, np.ndarray]],
        parameters: Mapping[str, Any],
        trace_headers: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        request = pb.ModelInferRequest(model_name=self.model, model_version=self.version)
        for name, (datatype, array) in inputs.items():
            request.inputs.add(name=name, datatype=datatype, shape=array.shape)
            request.raw_input_contents.append(encode_tensor(array, datatype))
        set_parameters(request.parameters, parameters)
        response = self._grpc.call(self._stub.ModelInfer, request, extra=trace_headers)
        raw = response.raw_output_contents
        outputs = {}
        try:
            for i, tensor in enumerate(response.outputs):
                shape = tuple(tensor.shape)
                if i < len(raw):
                    array = decode_tensor(tensor.name, tensor.datatype, shape, raw[i])
                    outputs[tensor.name] = array
                else:
                    outputs[tensor.name] = _typed(tensor, shape)
        except (ModelportError, KeyError, ValueError) as exc:
            raise self.describe.failed(f"its answer does not add up: {exc}") from None
        return outputs

    def close(self) -> None:
        self._grpc.close()


def _remote_tensor(item: Mapping[str, Any]) -> RemoteTensor:
    return RemoteTensor(
        str(item["name"]), str(item["datatype"]), tuple(int(d) for d in item["shape"])
    )


def _error_text(response: httpx.Response) -> str:
    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:500] or response.reason_phrase
    if isinstance(doc, dict) and "error" in doc:
        return str(doc["error"])
    return response.text[:500]


def _typed(tensor: pb.ModelInferResponse.InferOutputTensor, shape: tuple[int, ...]) -> np.ndarray:
    field = V2_CONTENTS[tensor.datatype].field
    values = list(getattr(tensor.contents, field))
    if tensor.datatype == "BYTES":
        array = np.empty(len(values), np.object_)
        array[:] = values
        return array.reshape(shape)
    return np.asarray(values, numpy_dtype(tensor.datatype)).reshape(shape)
