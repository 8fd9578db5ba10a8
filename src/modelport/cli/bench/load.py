"""A load generator, and what one run at one concurrency measured."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class Latency:
    """Request latencies of one run, in milliseconds."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @classmethod
    def of(cls, samples_ms: Sequence[float] | np.ndarray) -> Latency | None:
        """From every request's latency; None when there were none."""
        values = np.asarray(samples_ms, dtype=np.float64)
        if values.size == 0:
            return None
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(float(values.mean()), float(p50), float(p90), float(p99))


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One run: ``concurrency`` requests in flight for ``seconds``.

    ``answered`` counts requests answered without error; ``errors`` the others (an error
    status, a timeout, a broken connection), itemised in ``error_detail``.
    """

    concurrency: int
    seconds: float
    answered: int
    errors: int
    latency: Latency | None
    error_detail: str = ""

    @property
    def requests_per_s(self) -> float:
        """Answers without error per second."""
        return self.answered / self.seconds if self.seconds > 0 else 0.0


class LoadGenerator(Protocol):
    """Something that keeps ``concurrency`` requests in flight and measures them."""

    @property
    def name(self) -> str:
        """The tool, as the report names it (``wrk``, ``h2load``, ``asyncio (httpx)``)."""
        ...

    @property
    def latency_source(self) -> str:
        """Where the latency columns come from, said in the report's header."""
        ...

    def run(self, concurrency: int, duration_s: int) -> LoadResult:
        """Drive the server for ``duration_s`` seconds and return what was measured."""
        ...


def error_detail(counts: dict[str, int]) -> str:
    """``{"non-2xx": 3, "timeout": 0}`` as ``3 non-2xx``: the non-zero counts."""
    return ", ".join(f"{n} {what}" for what, n in counts.items() if n)
