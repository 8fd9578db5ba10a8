"""Traces over OpenTelemetry: the :class:`~modelport.core.tracing.Tracer` the core asks for.

With the ``otel`` extra installed and ``otel_endpoint`` set (``MODELPORT_OTEL_ENDPOINT``),
:func:`start_tracing` exports spans over OTLP/HTTP (protobuf) to
``<otel_endpoint>/v1/traces`` in batches; without ``otel_endpoint`` there is no tracer
and OpenTelemetry is never imported, so modelport runs without it. A
``TracerProvider`` may be given instead (embedding modelport, or a test reading the
SDK's in-memory exporter): spans then go wherever its processors send them.

The spans (names as an OpenTelemetry backend shows them):

``POST /v2/models/{model}/infer`` and ``inference.GRPCInferenceService/ModelInfer``
    SERVER spans, children of the W3C ``traceparent`` (and ``tracestate``) the client
    sent, with the model, the HTTP status or gRPC code, and the error of a failed one.
``queue wait``
    a child of each traced request: from its queueing to the start of its batch.
``batch {model}``
    the run of one batch: a child of its first traced request and linked to every
    request in it, with its rows and requests.
``remote infer``, ``cluster infer``
    CLIENT spans under the batch for the hop to another server; the ``traceparent``
    sent along (HTTP header, gRPC metadata, or the Redis stream message) makes the
    other side's request span their child.
``task {model}``
    a CONSUMER span for each run of a task, a child of the request that submitted it;
    the container gets its ``traceparent`` as the ``TRACEPARENT`` environment variable.

Spans use no global provider or propagator: modelport's own tracer and the W3C trace
context propagator, so an application embedding modelport keeps its own.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from modelport import __version__
from modelport.core.tracing import QueuedRequest
from modelport.settings import SettingsError

log = logging.getLogger("modelport.tracing")

T = TypeVar("T")
TRACES_PATH = "/v1/traces"
# Span kinds by what a request came over: a request read from a stream is consumed.
_REQUEST_KINDS = {"http": "SERVER", "grpc": "SERVER", "cluster": "CONSUMER"}


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's endpoint (``http://host:4318``)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def start_tracing(
    endpoint: str, *, service_name: str, provider: Any = None
) -> OpenTelemetryTracer | None:
    """The tracer: through ``provider`` when one is given, else exporting to
    ``endpoint`` over OTLP/HTTP; None when neither is (tracing off). SettingsError when
    ``endpoint`` is set and the ``otel`` extra is missing."""
    if provider is not None:
        return OpenTelemetryTracer(provider, owned=False)
    if not endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise SettingsError(
            f"otel_endpoint is set, but OpenTelemetry is missing ({exc}); install "
            "modelport[otel], or unset otel_endpoint"
        ) from None
    made = TracerProvider(resource=Resource.create({"service.name": service_name}))
    made.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    log.info("tracing: spans exported to %s", traces_url(endpoint))
    return OpenTelemetryTracer(made, owned=True)


class OpenTelemetryTracer:
    """Makes the spans the module docstring lists through ``provider``; ``owned``: it
    made the provider, so :meth:`close` shuts it down (else only flushes it)."""

    def __init__(self, provider: Any, *, owned: bool) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider, self.owned = provider, owned
        self._tracer = provider.get_tracer("modelport", __version__)
        self._trace, self._context = trace, context
        self._propagator = TraceContextTextMapPropagator()
        # perf_counter_ns (the batcher's clock) to the epoch nanoseconds spans carry.
        self._epoch_offset_ns = time.time_ns() - time.perf_counter_ns()

    def close(self) -> None:
        """Send the spans not yet exported; shut the provider down if it is ours."""
        if self.owned:
            self.provider.shutdown()
        else:
            self.provider.force_flush()

    def _kind(self, name: str) -> Any:
        return getattr(self._trace.SpanKind, name)

    def request(
        self, *, kind: str, name: str, model: str, carrier: Mapping[str, str]
    ) -> _RequestSpan:
        parent = self._propagator.extract(carrier) if "traceparent" in carrier else None
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=self._kind(_REQUEST_KINDS.get(kind, "SERVER")),
            attributes={"modelport.model": model, "modelport.protocol": kind},
        )
        return _RequestSpan(span, self._trace)

    def batch(
        self, *, model: str, members: Sequence[QueuedRequest], started_ns: int
    ) -> _BatchSpan | None:
        traced = [m for m in members if isinstance(m.trace, _RequestSpan)]
        if not traced:
            return None
        started = started_ns + self._epoch_offset_ns
        spans = [m.trace.span for m in traced if isinstance(m.trace, _RequestSpan)]
        for member, request in zip(traced, spans, strict=True):
            wait = self._tracer.start_span(
                "queue wait",
                context=self._trace.set_span_in_context(request),
                start_time=member.enqueued_ns + self._epoch_offset_ns,
                attributes={"modelport.model": model},
            )
            wait.end(end_time=max(started, member.enqueued_ns + self._epoch_offset_ns))
        span = self._tracer.start_span(
            f"batch {model}",
            context=self._trace.set_span_in_context(spans[0]),
            links=[self._trace.Link(s.get_span_context()) for s in spans],
            start_time=started,
            attributes={"modelport.model": model, "modelport.batch.requests": len(members)},
        )
        return _BatchSpan(span, self._trace, self._context)

    @contextlib.contextmanager
    def hop(self, name: str, *, peer: str) -> Iterator[dict[str, str]]:
        span = self._tracer.start_span(
            name, kind=self._kind("CLIENT"), attributes={"server.address": peer}
        )
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=self._trace.set_span_in_context(span))
        try:
            yield headers
        except BaseException as exc:
            _failed(span, self._trace, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            span.end()

    def current_traceparent(self) -> str:
        headers: dict[str, str] = {}
        self._propagator.inject(headers)
        return headers.get("traceparent", "")

    def task(self, *, task_id: str, model: str, attempt: int, traceparent: str) -> _TaskSpan:
        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        span = self._tracer.start_span(
            f"task {model}",
            context=parent,
            kind=self._kind("CONSUMER"),
            attributes={
                "modelport.model": model,
                "modelport.task.id": task_id,
                "modelport.task.attempt": attempt,
            },
        )
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=self._trace.set_span_in_context(span))
        return _TaskSpan(span, self._trace, headers.get("traceparent", ""))


def _failed(span: Any, trace: Any, error: str) -> None:
    span.set_status(trace.Status(trace.StatusCode.ERROR, error))
    span.set_attribute("error.type", error.split(":", 1)[0])


class _RequestSpan:
    __slots__ = ("span", "trace")

    def __init__(self, span: Any, trace: Any) -> None:
        self.span, self.trace = span, trace

    def end(self, error: str = "", *, status: int | str | None = None) -> None:
        if status is not None:
            # An HTTP status, or a gRPC code's (or core error kind's) name.
            key = "http.response.status_code" if isinstance(status, int) else "modelport.status"
            self.span.set_attribute(key, status)
        if error:
            _failed(self.span, self.trace, error)
        self.span.end()


class _BatchSpan:
    __slots__ = ("context", "span", "trace")

    def __init__(self, span: Any, trace: Any, context: Any) -> None:
        self.span, self.trace, self.context = span, trace, context

    def run(self, work: Callable[[], T]) -> T:
        token = self.context.attach(self.trace.set_span_in_context(self.span))
        try:
            return work()
        finally:
            self.context.detach(token)

    def end(self, *, rows: int, error: BaseException | None) -> None:
        self.span.set_attribute("modelport.batch.rows", rows)
        if error is not None:
            _failed(self.span, self.trace, f"{type(error).__name__}: {error}")
        self.span.end()


class _TaskSpan:
    __slots__ = ("_traceparent", "span", "trace")

    def __init__(self, span: Any, trace: Any, traceparent: str) -> None:
        self.span, self.trace, self._traceparent = span, trace, traceparent

    @property
    def traceparent(self) -> str:
        return self._traceparent

    def end(self, outcome: str, *, failed: bool) -> None:
        self.span.set_attribute("modelport.task.outcome", outcome)
        if failed:
            _failed(self.span, self.trace, outcome)
        self.span.end()
