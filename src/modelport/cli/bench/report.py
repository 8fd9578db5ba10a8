"""What ``modelport bench`` shows: a table, a JSON file, a latency-throughput plot.

The plot needs matplotlib, an optional extra (``pip install 'modelport[bench]'``),
imported only when a plot is asked for.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from modelport.cli.bench.inputs import InputTensor
from modelport.cli.bench.load import LoadResult


@dataclass(frozen=True, slots=True)
class BenchReport:
    """Every run of one ``modelport bench``, and what was sent how, to whom."""

    model: str
    version: str
    protocol: str
    url: str
    encoding: str
    generator: str
    latency_source: str
    duration_s: int
    inputs: tuple[InputTensor, ...]
    results: tuple[LoadResult, ...]

    @property
    def title(self) -> str:
        version = f" v{self.version}" if self.version else ""
        protocol = {"http": "HTTP", "grpc": "gRPC"}.get(self.protocol, self.protocol)
        return f"{self.model}{version} over {protocol} ({self.encoding})"

    @property
    def sources(self) -> str:
        """Which tool measured what: said under the table and in the plot."""
        return (
            f"load: {self.generator}, {self.duration_s} s per row; latency: "
            f"{self.latency_source}, over every answer (error answers too, not timeouts); "
            "req/s: answers without error"
        )


def table(report: BenchReport) -> Table:
    """One row per concurrency: req/s, latency percentiles, errors (print
    ``report.sources`` with it: the table alone does not say who measured)."""
    grid = Table(title=report.title)
    for column in ("concurrency", "req/s", "p50 ms", "p90 ms", "p99 ms", "mean ms", "errors"):
        grid.add_column(column, justify="right")
    for run in report.results:
        lat = run.latency
        times = ["-"] * 4 if lat is None else [
            f"{ms:.3f}" for ms in (lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.mean_ms)
        ]  # fmt: skip
        errors = str(run.errors) + (f" ({run.error_detail})" if run.error_detail else "")
        grid.add_row(str(run.concurrency), f"{run.requests_per_s:.1f}", *times, errors)
    return grid


def _result_json(run: LoadResult) -> dict[str, Any]:
    lat = run.latency
    return {
        "concurrency": run.concurrency,
        "seconds": run.seconds,
        "answered": run.answered,
        "requests_per_s": run.requests_per_s,
        "errors": run.errors,
        "error_detail": run.error_detail,
        "latency_ms": None if lat is None else
        {"mean": lat.mean_ms, "p50": lat.p50_ms, "p90": lat.p90_ms, "p99": lat.p99_ms},
    }  # fmt: skip


def write_json(path: Path, report: BenchReport) -> None:
    """The report as JSON: the setup, then one object per concurrency."""
    document = {
        "model": report.model,
        "version": report.version,
        "protocol": report.protocol,
        "url": report.url,
        "encoding": report.encoding,
        "generator": report.generator,
        "latency_source": report.latency_source,
        "duration_s": report.duration_s,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape}
                   for t in report.inputs],
        "results": [_result_json(run) for run in report.results],
    }  # fmt: skip
    path.write_text(json.dumps(document, indent=2) + "\n")


def plotting_available() -> bool:
    """Whether ``--plot`` can draw (matplotlib is installed)."""
    return importlib.util.find_spec("matplotlib") is not None


def write_plot(path: Path, report: BenchReport) -> None:
    """Latency percentiles against throughput, one point per concurrency, as an image."""
    # The object API, not pyplot: no global figure state and no GUI backend chosen.
    from matplotlib.figure import Figure

    points = [(run, run.latency) for run in report.results if run.latency is not None]
    figure = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    throughput = [run.requests_per_s for run, _ in points]
    axes.plot(throughput, [lat.p50_ms for _, lat in points], marker="o", label="p50")
    axes.plot(throughput, [lat.p90_ms for _, lat in points], marker="o", label="p90")
    axes.plot(throughput, [lat.p99_ms for _, lat in points], marker="o", label="p99")
    for run, lat in points:
        axes.annotate(
            f"c={run.concurrency}",
            (run.requests_per_s, lat.p50_ms),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    axes.set_xlabel("throughput (req/s without error)")
    axes.set_ylabel("latency (ms)")
    axes.set_title(f"{report.title}\nload: {report.generator}; latency: {report.latency_source}",
                   fontsize=10)  # fmt: skip
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.savefig(path)
