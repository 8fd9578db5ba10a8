"""What every remote client shares: the metadata it reads, the protocol it speaks to
the ``remote`` runtime, the messages of its errors, and a gRPC channel whose status
codes become modelport errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np

from modelport.errors import (
    InferenceFailed,
    InvalidInput,
    ModelportError,
    ModelUnavailable,
    Overloaded,
)
from modelport.redaction import redact_text, redact_url
from modelport.spec import RemoteSpec

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True, slots=True)
class RemoteTensor:
    """A tensor as the remote's metadata describes it (batch dimension included)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RemoteMetadata:
    inputs: tuple[RemoteTensor, ...]
    outputs: tuple[RemoteTensor, ...]


class RemoteClient(Protocol):
    """One connection to the remote, speaking one protocol."""

    def metadata(self) -> RemoteMetadata:
        """The remote model's metadata; ModelUnavailable when it is not there or not ready."""

    def infer(
        self,
        inputs: Mapping[str, tuple[str, np.ndarray]],
        parameters: Mapping[str, Any],
        trace_headers: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one batch remotely; ``inputs`` maps a name to (datatype, array);
        ``trace_headers`` (W3C ``traceparent``...) go with it as headers or metadata."""

    def close(self) -> None: ...


class RemoteErrors:
    """The messages every remote error shares: which model, which URL."""

    def __init__(self, remote: RemoteSpec, model: str) -> None:
        self.remote, self.model = remote, model
        version = f" version {v}" if (v := remote.pinned_version) else ""
        self.what = f"remote model '{model}'{version} at {redact_url(remote.url)}"

    def _scrub(self, detail: str) -> str:
        # A client library's message may quote the URL with its user info.
        return redact_text(detail.replace(self.remote.url, redact_url(self.remote.url)))

    def timed_out(self) -> ModelUnavailable:
        return ModelUnavailable(f"{self.what} timed out after {self.remote.timeout:g} s")

    def unreachable(self, detail: str) -> ModelUnavailable:
        return ModelUnavailable(f"{self.what} cannot be reached: {self._scrub(detail)}")

    def not_ready(self, detail: str) -> ModelUnavailable:
        return ModelUnavailable(f"{self.what} is not ready: {self._scrub(detail)}")

    def missing(self, detail: str) -> ModelUnavailable:
        return ModelUnavailable(
            f"{self.what} was not found: {self._scrub(detail)}; check 'remote.model' in model.yaml"
        )

    def rejected(self, detail: str) -> InvalidInput:
        return InvalidInput(f"{self.what} rejected the request: {self._scrub(detail)}")

    def overloaded(self, detail: str, retry_after: float = 1.0) -> Overloaded:
        return Overloaded(f"{self.what} is overloaded: {self._scrub(detail)}", retry_after)

    def failed(self, detail: str) -> InferenceFailed:
        return InferenceFailed(f"{self.what} failed: {self._scrub(detail)}")


class GrpcChannel:
    """A sync channel to ``grpc://host:port`` that sends the configured metadata, with
    the timeout, and turns a failed call's status into a modelport error."""

    def __init__(self, remote: RemoteSpec, errors: RemoteErrors) -> None:
        self.errors, self.timeout = errors, remote.timeout
        # gRPC metadata keys are lower case.
        self.metadata = tuple((k.lower(), v) for k, v in remote.headers.items())
        self.channel = grpc.insecure_channel(
            remote.url.removeprefix("grpc://"), options=GRPC_OPTIONS
        )

    def call(
        self,
        method: Callable[..., Any],
        request: Any,
        loading: bool = False,
        extra: Mapping[str, str] | None = None,
    ) -> Any:
        """``loading``: any refusal means the model is not there to be served;
        ``extra``: metadata sent besides the configured one (a trace's)."""
        metadata = self.metadata if not extra else (*self.metadata, *extra.items())
        try:
            return method(request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise self._error(exc, loading) from None

    def _error(self, exc: grpc.RpcError, loading: bool) -> ModelportError:
        code: grpc.StatusCode = exc.code()
        details = str(exc.details())
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return self.errors.timed_out()
        if code is grpc.StatusCode.UNAVAILABLE:
            return self.errors.unreachable(details)
        if code is grpc.StatusCode.NOT_FOUND or loading:
            return self.errors.missing(f"{code.name} {details}")
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            return self.errors.rejected(details)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            retry = dict(exc.trailing_metadata() or ()).get("retry-after")
            return self.errors.overloaded(details, retry_seconds(retry))
        return self.errors.failed(f"{code.name} {details}")

    def close(self) -> None:
        self.channel.close()


def retry_seconds(value: str | None) -> float:
    try:
        return max(float(value or 1.0), 0.0)
    except ValueError:
        return 1.0
