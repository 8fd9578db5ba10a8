"""What ``modelport bench`` asks a server before the load: metadata, config, one request.

Any KServe v2 server answers the metadata (modelport, Triton, MLServer). Triton's model
configuration, where the server has it, says whether dimension 0 is a batch
(``max_batch_size`` > 0); without it a leading -1 is taken to be one.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import httpx

from modelport.cli.bench.errors import BenchError
from modelport.cli.bench.inputs import ModelSignature, TensorSpec
from modelport.protos import grpc_service_pb2 as pb
from modelport.protos import grpc_service_pb2_grpc as pb_grpc

QUESTION_TIMEOUT_S = 30.0
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """A model behind a v2 HTTP server."""

    base_url: str
    model: str
    version: str
    headers: Mapping[str, str]
    verify: ssl.SSLContext | bool = True

    @property
    def model_url(self) -> str:
        version = f"/versions/{self.version}" if self.version else ""
        return f"{self.base_url}/v2/models/{self.model}{version}"

    @property
    def infer_url(self) -> str:
        return f"{self.model_url}/infer"


@dataclass(frozen=True, slots=True)
class GrpcTarget:
    """A model behind a v2 gRPC server (plain text, ``host:port``)."""

    address: str
    model: str
    version: str
    metadata: tuple[tuple[str, str], ...]

    @property
    def infer_url(self) -> str:
        """The ModelInfer call as an HTTP/2 URL (what h2load posts to)."""
        return f"http://{self.address}{INFER_METHOD}"


def _signature(name: str, inputs: list[TensorSpec], max_batch_size: int | None) -> ModelSignature:
    if max_batch_size is None:
        batches = bool(inputs) and inputs[0].shape[:1] == (-1,)
    else:
        batches = max_batch_size > 0
    return ModelSignature(name, tuple(inputs), batches)


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)


def http_signature(target: HttpTarget) -> ModelSignature:
    """The model's inputs from ``GET /v2/models/<m>`` (and its config, if served)."""
    with httpx.Client(timeout=QUESTION_TIMEOUT_S, verify=target.verify) as client:
        try:
            meta = client.get(target.model_url, headers=dict(target.headers))
            config = client.get(target.model_url + "/config", headers=dict(target.headers))
        except httpx.HTTPError as exc:
            raise BenchError(f"cannot reach {target.base_url}: {exc}") from None
    if meta.status_code != 200:
        raise BenchError(f"model '{target.model}': {meta.status_code} {_error_text(meta)}")
    document: dict[str, Any] = meta.json()
    inputs = [
        TensorSpec(item["name"], item["datatype"], tuple(item["shape"]))
        for item in document.get("inputs", [])
    ]
    max_batch = config.json().get("max_batch_size") if config.status_code == 200 else None
    return _signature(target.model, inputs, max_batch if isinstance(max_batch, int) else None)


def check_http(target: HttpTarget, body: bytes, headers: Mapping[str, str]) -> None:
    """One request must succeed before any load: else BenchError with the server's words."""
    try:
        answer = httpx.post(
            target.infer_url,
            content=body,
            headers={**target.headers, **headers},
            timeout=QUESTION_TIMEOUT_S,
            verify=target.verify,
        )
    except httpx.HTTPError as exc:
        raise BenchError(f"cannot reach {target.base_url}: {exc}") from None
    if not 200 <= answer.status_code < 300:
        raise BenchError(f"the check request failed, {answer.status_code}: {_error_text(answer)}")


def _rpc_failure(target: GrpcTarget, exc: grpc.RpcError) -> BenchError:
    code, details = exc.code(), exc.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        return BenchError(f"cannot reach {target.address}: {details}")
    return BenchError(f"model '{target.model}': {code.name} {details}")


def grpc_signature(target: GrpcTarget) -> ModelSignature:
    """The model's inputs from ModelMetadata (and ModelConfig, if served)."""
    with grpc.insecure_channel(target.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            meta = stub.ModelMetadata(
                pb.ModelMetadataRequest(name=target.model, version=target.version),
                metadata=target.metadata,
                timeout=QUESTION_TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            raise _rpc_failure(target, exc) from None
        try:
            config = stub.ModelConfig(
                pb.ModelConfigRequest(name=target.model, version=target.version),
                metadata=target.metadata,
                timeout=QUESTION_TIMEOUT_S,
            )
            max_batch: int | None = config.config.max_batch_size
        except grpc.RpcError:
            max_batch = None  # not every v2 server has Triton's model configuration
    inputs = [TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs]
    return _signature(target.model, inputs, max_batch)


def check_grpc(target: GrpcTarget, request: pb.ModelInferRequest) -> None:
    """One ModelInfer must succeed before any load: else BenchError with its status."""
    with grpc.insecure_channel(target.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(request, metadata=target.metadata, timeout=QUESTION_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise BenchError(f"the check request failed: {_rpc_failure(target, exc)}") from None
