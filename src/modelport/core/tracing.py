"""What the core and its adapters ask of a tracer, without knowing OpenTelemetry.

``observability/tracing.py`` implements :class:`Tracer` with OpenTelemetry (the ``otel``
extra); without ``otel_endpoint`` there is none, and every holder of a tracer holds
None: the hot paths (the HTTP fast path, the gRPC call, the batcher) then pay one None
check. The spans:

- a request (HTTP or gRPC; a request read from a cluster stream): :meth:`Tracer.request`,
  its parent the W3C ``traceparent`` the caller sent. It rides in
  :attr:`InferenceRequest.trace <modelport.tensors.InferenceRequest>` to the batcher;
- its queue wait, and the batch it ran in (child of the batch's first traced request,
  linked to every one): :meth:`Tracer.batch`, whose :meth:`BatchSpan.run` makes the
  batch the current span on the instance's thread while the runtime runs;
- a hop to another server (a remote model, the cluster's Redis stream):
  :meth:`Tracer.hop`, which gives the ``traceparent`` to send along;
- a task: :meth:`Tracer.task`, its parent the context the task was submitted in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


class RequestSpan(Protocol):
    def end(self, error: str = "", *, status: int | str | None = None) -> None:
        """End the request's span: ``error`` says why it failed ("" : it did not);
        ``status``: its HTTP status or gRPC code."""


class BatchSpan(Protocol):
    def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` (on the instance's thread) with the batch as the current span."""

    def end(self, *, rows: int, error: BaseException | None) -> None:
        """End the batch's span: its rows, and the error that failed it (None: ran)."""


class TaskSpan(Protocol):
    @property
    def traceparent(self) -> str:
        """The task span's W3C ``traceparent``, given to its container as TRACEPARENT."""

    def end(self, outcome: str, *, failed: bool) -> None:
        """End the task's span with how the run ended."""


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A request of a batch: its span (``InferenceRequest.trace``, None when it has
    none) and when it was queued (``time.perf_counter_ns()``)."""

    trace: object | None
    enqueued_ns: int


class Tracer(Protocol):
    def request(
        self, *, kind: str, name: str, model: str, carrier: Mapping[str, str]
    ) -> RequestSpan:
        """A span for one request received over ``kind`` (``http``, ``grpc``,
        ``cluster``), named ``name``, for ``model``; its parent from ``carrier``'s
        ``traceparent`` (and ``tracestate``) when it has one."""

    def batch(
        self, *, model: str, members: Sequence[QueuedRequest], started_ns: int
    ) -> BatchSpan | None:
        """The queue-wait span of each traced member (from its queueing to
        ``started_ns``) and the batch's span, or None when no member is traced."""

    def hop(self, name: str, *, peer: str) -> AbstractContextManager[dict[str, str]]:
        """A client span for a call to ``peer`` (a child of the current span), giving
        the headers (``traceparent``, ``tracestate``) to send with it."""

    def current_traceparent(self) -> str:
        """The current span's ``traceparent`` ("" outside any span)."""

    def task(self, *, task_id: str, model: str, attempt: int, traceparent: str) -> TaskSpan:
        """A span for one run of a task, its parent ``traceparent`` ("" : a new trace)."""
