"""Metrics (Prometheus) and logging.

The metrics are read from the core's counters at scrape time by a custom collector,
so a request is counted once, in :class:`~modelport.core.stats.ModelStats`, and the
hot path never touches a Prometheus object. GPU utilisation and memory are read from
NVML at scrape time too, where NVML runs (``modelport.observability.gpus``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from modelport.core.entries import LoadedVersion
from modelport.core.runtime import ReportsTargets
from modelport.core.service import InferenceService
from modelport.core.stats import Histogram
from modelport.observability.gpus import Nvml

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class ModelMetrics(Collector):
    """Exports every loaded model version's counters as Prometheus metrics."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        requests = CounterMetricFamily(
            "modelport_requests", "Inference requests by outcome", labels=[*labels, "outcome"]
        )
        inferences = CounterMetricFamily(
            "modelport_inferences", "Rows inferred (a batch of 8 counts 8)", labels=labels
        )
        executions = CounterMetricFamily(
            "modelport_executions", "Batches executed by the runtime", labels=labels
        )
        histograms = {
            "request": HistogramMetricFamily(
                "modelport_request_duration_seconds",
                "Request latency in the server",
                labels=labels,
            ),
            "queue": HistogramMetricFamily(
                "modelport_queue_duration_seconds",
                "Time a request waited for an instance",
                labels=labels,
            ),
            "compute": HistogramMetricFamily(
                "modelport_compute_duration_seconds", "Time a batch took to run", labels=labels
            ),
            "batch": HistogramMetricFamily(
                "modelport_batch_size", "Rows per executed batch", labels=labels
            ),
        }
        depth = GaugeMetricFamily(
            "modelport_queue_depth", "Requests waiting for an instance", labels=labels
        )
        instances = GaugeMetricFamily(
            "modelport_instances", "Model instances loaded", labels=[*labels, "device"]
        )
        busy = GaugeMetricFamily(
            "modelport_instances_busy", "Model instances running a batch now", labels=labels
        )
        ready = GaugeMetricFamily(
            "modelport_model_ready", "1 when the model serves", labels=["model"]
        )
        for model in self.service.models():
            ready.add_metric([model.name], 1.0 if model.versions else 0.0)
            for loaded in model.versions:
                key = [model.name, str(loaded.version)]
                s = loaded.stats
                requests.add_metric([*key, "success"], s.success.count)
                for reason, count in s.failures_by_reason.items():
                    requests.add_metric([*key, reason], count)
                inferences.add_metric(key, s.inference_count)
                executions.add_metric(key, s.execution_count)
                for family, hist in zip(
                    histograms.values(),
                    (s.request_latency, s.queue_latency, s.compute_latency, s.batch_size),
                    strict=True,
                ):
                    _add_histogram(family, key, hist)
                depth.add_metric(key, loaded.batcher.queue_depth)
                busy.add_metric(key, loaded.batcher.busy)
                for device in sorted(set(loaded.devices)):
                    instances.add_metric([*key, device], loaded.devices.count(device))
        yield from (requests, inferences, executions, *histograms.values(), depth, busy)
        yield instances
        yield ready
        yield from self._traffic()
        yield from _replicas(v for m in self.service.models() for v in m.versions)

    def _traffic(self) -> Iterator[Metric]:
        labels = ["model", "version", "target"]
        routed = CounterMetricFamily(
            "modelport_traffic_requests",
            "Requests naming no version, by the target the traffic split sent them to "
            "(a version, or another model) and the version that answered",
            labels=labels,
        )
        compared = CounterMetricFamily(
            "modelport_shadow_comparisons",
            "Shadow copies by the version whose answer was returned, the shadow target, "
            "and outcome (agree, disagree, failed)",
            labels=[*labels, "outcome"],
        )
        for traffic in self.service.traffic():
            for route, count in traffic.routed.items():
                routed.add_metric([traffic.model, str(route.version), route.target], count)
            for comparison, count in traffic.compared.items():
                key = [traffic.model, str(comparison.version), comparison.target]
                compared.add_metric([*key, comparison.outcome], count)
        yield from (routed, compared)


def _replicas(versions: Iterator[LoadedVersion]) -> Iterator[Metric]:
    """A ``remote`` model's replicas (remote.urls), labelled by their URL as target."""
    labels = ["model", "version", "target"]
    up = GaugeMetricFamily(
        "modelport_remote_replica_up", "1 while a replica is in the rotation", labels=labels
    )
    in_flight = GaugeMetricFamily(
        "modelport_remote_replica_in_flight", "Batches a replica is running", labels=labels
    )
    calls = CounterMetricFamily(
        "modelport_remote_replica_calls",
        "A replica's batches answered (success), and its batches and health checks that "
        "failed (failure)",
        labels=[*labels, "outcome"],
    )
    ejections = CounterMetricFamily(
        "modelport_remote_replica_ejections", "Times a replica left the rotation", labels=labels
    )
    for loaded in versions:
        # The instances of a version share their replicas: the first one tells.
        runtime = loaded.instances[0].runtime if loaded.instances else None
        if not isinstance(runtime, ReportsTargets):
            continue
        for target in runtime.targets():
            key = [loaded.name, str(loaded.version), target.target]
            up.add_metric(key, 1.0 if target.up else 0.0)
            in_flight.add_metric(key, target.in_flight)
            calls.add_metric([*key, "success"], target.successes)
            calls.add_metric([*key, "failure"], target.failures)
            ejections.add_metric(key, target.ejections)
    yield from (up, in_flight, calls, ejections)


def _add_histogram(family: HistogramMetricFamily, key: list[str], hist: Histogram) -> None:
    family.add_metric(key, hist.cumulative(), hist.total)


class GpuMetrics(Collector):
    """Each GPU's utilisation and memory, read from NVML at scrape time."""

    def __init__(self, nvml: Nvml) -> None:
        self.nvml = nvml

    def collect(self) -> Iterator[Metric]:
        labels = ["gpu", "name"]
        utilization = GaugeMetricFamily(
            "modelport_gpu_utilization_percent",
            "Percent of the last sample period a kernel ran on the GPU (NVML)",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "modelport_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=labels
        )
        total = GaugeMetricFamily(
            "modelport_gpu_memory_total_bytes", "GPU memory in all (NVML)", labels=labels
        )
        readings = self.nvml.read()
        for gpu in readings:
            key = [str(gpu.index), gpu.name]
            utilization.add_metric(key, gpu.utilization_percent)
            used.add_metric(key, gpu.memory_used_bytes)
            total.add_metric(key, gpu.memory_total_bytes)
        if readings:
            yield from (utilization, used, total)


def metrics_registry(service: InferenceService, nvml: Nvml | None = None) -> CollectorRegistry:
    """The models' metrics, and the GPUs' where NVML runs."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModelMetrics(service))
    if nvml is not None and nvml.available:
        registry.register(GpuMetrics(nvml))
    return registry


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def setup_logging(level: str, fmt: str) -> None:
    """Logs to stderr, as text or one JSON object a line, each with its request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger("modelport")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
