"""The models' metrics under Triton's and TF Serving's own names, so the dashboards and
alerts written for those servers keep working against modelport.

:func:`triton_metrics` is what ``tritonserver``'s metrics port answers (``--metrics-port``,
``/metrics``): per model version (labels ``model``, ``version``) the counters
``nv_inference_request_success``, ``nv_inference_request_failure`` (with Triton's
``reason``: REJECTED, CANCELED, BACKEND, OTHER), ``nv_inference_count``,
``nv_inference_exec_count``, the cumulative microseconds
``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
``nv_inference_compute_{input,infer,output}_duration_us``, the gauge
``nv_inference_pending_request_count``; and, where NVML runs, per GPU (``gpu_uuid``)
``nv_gpu_utilization`` (0..1), ``nv_gpu_memory_total_bytes``, ``nv_gpu_memory_used_bytes``.

:func:`tfserving_metrics` is what TF Serving answers on its monitoring path: per model
(``model_name``, every version together) ``:tensorflow:serving:request_count``
(``status``: OK or the gRPC code of the failure), the histograms (in microseconds)
``:tensorflow:serving:request_latency`` (``API`` Predict, ``entrypoint`` ALL: modelport
counts REST and gRPC together), ``:tensorflow:serving:runtime_latency`` (``runtime``:
the model's runtime) and, per loaded SavedModel folder (``model_path``, ``status``),
``:tensorflow:serving:model_warmup_latency``.

Both read the core's counters at scrape time, as ``metrics.py`` does; the text is
written here, since Prometheus' client library would rename counters to ``..._total``,
which these servers' metrics are not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from modelport.core.entries import LoadedVersion
from modelport.core.service import InferenceService
from modelport.core.stats import Histogram
from modelport.errors import ErrorKind
from modelport.observability.gpus import Nvml
from modelport.runtimes.tensorflow import TensorflowRuntime

Labels = tuple[tuple[str, str], ...]

# Triton's failure reasons, for modelport's error kinds (anything else is OTHER).
TRITON_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
_TRITON_REASON = {
    ErrorKind.OVERLOADED.value: "REJECTED",
    ErrorKind.TOO_MANY_REQUESTS.value: "REJECTED",
    ErrorKind.CANCELLED.value: "CANCELED",
    ErrorKind.INTERNAL.value: "BACKEND",
}
# TF Serving's request status: the gRPC code its Predict answered with.
_TF_STATUS = {
    ErrorKind.NOT_FOUND.value: "NOT_FOUND",
    ErrorKind.INVALID_INPUT.value: "INVALID_ARGUMENT",
    ErrorKind.TOO_LARGE.value: "INVALID_ARGUMENT",
    ErrorKind.UNAVAILABLE.value: "UNAVAILABLE",
    ErrorKind.OVERLOADED.value: "RESOURCE_EXHAUSTED",
    ErrorKind.TOO_MANY_REQUESTS.value: "RESOURCE_EXHAUSTED",
    ErrorKind.UNSUPPORTED.value: "UNIMPLEMENTED",
    ErrorKind.FORBIDDEN.value: "PERMISSION_DENIED",
    ErrorKind.UNAUTHENTICATED.value: "UNAUTHENTICATED",
    ErrorKind.CANCELLED.value: "CANCELLED",
}
# TF Serving's latency buckets: 10 us times powers of 1.8, 33 of them (about 20 minutes).
TF_LATENCY_BUCKETS_US = tuple(round(10 * 1.8**i, 6) for i in range(33))


@dataclass(frozen=True, slots=True)
class Sample:
    """One line: the family's name plus ``suffix`` (``_bucket``...), labels, value."""

    suffix: str
    labels: Labels
    value: float


@dataclass(slots=True)
class Family:
    """A metric family in Prometheus' text format (version 0.0.4)."""

    name: str
    help: str
    kind: Literal["counter", "gauge", "histogram"]
    samples: list[Sample] = field(default_factory=list)

    def add(self, labels: Labels, value: float, suffix: str = "") -> None:
        self.samples.append(Sample(suffix, labels, value))

    def add_histogram(
        self, labels: Labels, buckets: Iterable[tuple[float, int]], total: float
    ) -> None:
        """``buckets``: (upper bound, cumulative count), the last one +Inf."""
        count = 0
        for bound, count in buckets:
            le = "+Inf" if bound == float("inf") else _number(bound)
            self.add((*labels, ("le", le)), count, "_bucket")
        self.add(labels, total, "_sum")
        self.add(labels, count, "_count")


def render(families: Sequence[Family]) -> bytes:
    """The families as Prometheus' text format."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels)
            where = f"{{{labels}}}" if labels else ""
            lines.append(f"{family.name}{sample.suffix}{where} {_number(sample.value)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _versions(service: InferenceService) -> Iterable[LoadedVersion]:
    for model in service.models():
        yield from model.versions


# -- Triton ---------------------------------------------------------------------------------


def triton_metrics(service: InferenceService, nvml: Nvml | None = None) -> bytes:
    """The metrics as ``tritonserver`` names them (see the module docstring)."""
    success = Family(
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        "counter",
    )
    failure = Family(
        "nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
        "counter",
    )  # fmt: skip
    count = Family(
        "nv_inference_count", "Number of inferences performed (does not include cached requests)",
        "counter",
    )  # fmt: skip
    executions = Family(
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        "counter",
    )
    durations = {
        "success": Family(
            "nv_inference_request_duration_us",
            "Cumulative inference request duration in microseconds (includes cached requests)",
            "counter",
        ),
        "queue": Family(
            "nv_inference_queue_duration_us",
            "Cumulative inference queuing duration in microseconds (includes cached requests)",
            "counter",
        ),
        **{
            f"compute_{part}": Family(
                f"nv_inference_compute_{part}_duration_us",
                f"Cumulative compute {part} duration in microseconds (does not include "
                "cached requests)",
                "counter",
            )
            for part in ("input", "infer", "output")
        },
    }
    pending = Family(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        "gauge",
    )
    for loaded in _versions(service):
        labels: Labels = (("model", loaded.name), ("version", str(loaded.version)))
        stats = loaded.stats
        success.add(labels, stats.success.count)
        reasons = dict.fromkeys(TRITON_REASONS, 0)
        for kind, failed in stats.failures_by_reason.items():
            reasons[_TRITON_REASON.get(kind, "OTHER")] += failed
        for reason, failed in reasons.items():
            failure.add((*labels, ("reason", reason)), failed)
        count.add(labels, stats.inference_count)
        executions.add(labels, stats.execution_count)
        for name, family in durations.items():
            family.add(labels, getattr(stats, name).ns // 1000)
        pending.add(labels, loaded.batcher.queue_depth)
    families = [success, failure, count, executions, *durations.values(), pending]
    if nvml is not None and nvml.available:
        families += _triton_gpus(nvml)
    return render(families)


def _triton_gpus(nvml: Nvml) -> list[Family]:
    utilization = Family("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gauge")
    total = Family("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge")
    used = Family("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge")
    for gpu in nvml.read():
        labels: Labels = (("gpu_uuid", gpu.uuid or f"GPU-{gpu.index}"),)
        utilization.add(labels, gpu.utilization_percent / 100)
        total.add(labels, gpu.memory_total_bytes)
        used.add(labels, gpu.memory_used_bytes)
    return [utilization, total, used] if utilization.samples else []


# -- TF Serving -----------------------------------------------------------------------------


def tfserving_metrics(service: InferenceService) -> bytes:
    """The metrics as TF Serving names them (see the module docstring)."""
    requests = Family(
        ":tensorflow:serving:request_count", "The total number of requests.", "counter"
    )
    request_latency = Family(
        ":tensorflow:serving:request_latency",
        "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
        "histogram",
    )
    runtime_latency = Family(
        ":tensorflow:serving:runtime_latency",
        "Distribution of wall time (in microseconds) for Tensorflow runtime.",
        "histogram",
    )
    warmup = Family(
        ":tensorflow:serving:model_warmup_latency",
        "Distribution of wall time (in microseconds) for warming up the model.",
        "histogram",
    )
    by_model: dict[str, list[LoadedVersion]] = {}
    for loaded in _versions(service):
        by_model.setdefault(loaded.name, []).append(loaded)
    for name, versions in sorted(by_model.items()):
        statuses: dict[str, int] = {"OK": sum(v.stats.success.count for v in versions)}
        for loaded in versions:
            for kind, failed in loaded.stats.failures_by_reason.items():
                status = _TF_STATUS.get(kind, "INTERNAL")
                statuses[status] = statuses.get(status, 0) + failed
        for status, total in sorted(statuses.items()):
            requests.add((("model_name", name), ("status", status)), total)
        predict = (("model_name", name), ("API", "Predict"))
        _add_seconds(
            request_latency,
            (*predict, ("entrypoint", "ALL")),
            [v.stats.request_latency for v in versions],
        )
        _add_seconds(
            runtime_latency,
            (*predict, ("runtime", versions[0].spec.runtime)),
            [v.stats.compute_latency for v in versions],
        )
        for loaded in versions:
            for instance in loaded.instances:
                runtime = instance.runtime
                if isinstance(runtime, TensorflowRuntime) and runtime.warmup is not None:
                    micros = runtime.warmup.elapsed_ns / 1000
                    warmup.add_histogram(
                        (("model_path", str(runtime.warmup.path.parent.parent)), ("status", "OK")),
                        [(b, int(micros <= b)) for b in (*TF_LATENCY_BUCKETS_US, float("inf"))],
                        micros,
                    )
    return render([requests, request_latency, runtime_latency, warmup])


def _add_seconds(family: Family, labels: Labels, histograms: list[Histogram]) -> None:
    """Histograms of seconds (one per version) as one of microseconds."""
    bounds = [*histograms[0].buckets, float("inf")]
    counts = [0] * len(bounds)
    for histogram in histograms:
        for i, (_, cumulative) in enumerate(histogram.cumulative()):
            counts[i] += cumulative
    buckets = [
        (round(bound * 1e6, 6) if bound != float("inf") else bound, n)
        for bound, n in zip(bounds, counts, strict=True)
    ]
    family.add_histogram(labels, buckets, sum(h.total for h in histograms) * 1e6)
