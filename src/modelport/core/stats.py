"""Per model version counters: the source of both the v2 statistics extension and the
Prometheus metrics (which read these at scrape time, so the hot path counts once)."""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

# Latency buckets in seconds, shared by every histogram modelport exports.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


@dataclass(slots=True)
class Duration:
    """A count and total nanoseconds, as Triton's statistics report them."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class Histogram:
    """Cumulative-on-export bucket counts for one observed quantity."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    samples: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.samples += 1

    def cumulative(self) -> list[tuple[str, int]]:
        running, out = 0, []
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    """Counters of one model version. Mutated only from the event loop thread."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    request_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    compute_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    warmup_ns: int = 0

    def record_batch(self, size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.execution_count += 1
        self.inference_count += size
        self.batch_size.observe(size)
        self.compute_latency.observe((input_ns + infer_ns + output_ns) / 1e9)
        entry = self.batches.get(size)
        if entry is None:
            entry = self.batches[size] = BatchStats()
        entry.compute_input.add(input_ns)
        entry.compute_infer.add(infer_ns)
        entry.compute_output.add(output_ns)
        # Per-request compute is the batch's, shared among its requests (as Triton does).
        self.compute_input.add(input_ns, 0)
        self.compute_infer.add(infer_ns, 0)
        self.compute_output.add(output_ns, 0)

    def record_request(self, ok: bool, total_ns: int, queue_ns: int, reason: str = "") -> None:
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.request_latency.observe(total_ns / 1e9)
        if ok:
            self.success.add(total_ns)
            self.queue.add(queue_ns)
            self.queue_latency.observe(queue_ns / 1e9)
            self.compute_input.count += 1
            self.compute_infer.count += 1
            self.compute_output.count += 1
        else:
            self.fail.add(total_ns)
            self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1

    # -- several server processes (processes.py) -------------------------------------------

    def counters(self) -> dict[str, Any]:
        """What the statistics extension reports, as JSON data, for :meth:`add_counters`
        in another process (the histograms stay per process: /metrics labels them)."""

        def pair(duration: Duration) -> list[int]:
            return [duration.count, duration.ns]

        return {
            "durations": {name: pair(getattr(self, name)) for name in DURATIONS},
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "last_inference_ms": self.last_inference_ms,
            "warmup_ns": self.warmup_ns,
            "failures_by_reason": dict(self.failures_by_reason),
            "batches": {
                str(size): [pair(getattr(b, n)) for n in BATCH_DURATIONS]
                for size, b in self.batches.items()
            },
        }

    def add_counters(self, counters: dict[str, Any]) -> None:
        """Add another process's :meth:`counters` to these (the latest inference wins;
        warm-up: the longest)."""
        for name, (count, ns) in counters["durations"].items():
            getattr(self, name).add(ns, count)
        self.inference_count += counters["inference_count"]
        self.execution_count += counters["execution_count"]
        self.last_inference_ms = max(self.last_inference_ms, counters["last_inference_ms"])
        self.warmup_ns = max(self.warmup_ns, counters["warmup_ns"])
        for reason, count in counters["failures_by_reason"].items():
            self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + count
        for size, durations in counters["batches"].items():
            entry = self.batches.setdefault(int(size), BatchStats())
            for name, (count, ns) in zip(BATCH_DURATIONS, durations, strict=True):
                getattr(entry, name).add(ns, count)
