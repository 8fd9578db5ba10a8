"""The compiled load generators: wrk for HTTP, h2load for gRPC.

Both are C programs that can out-run the server, which a Python client on the same
machine cannot. wrk posts one body over ``concurrency`` keep-alive connections and
reports its latency percentiles from a Lua ``done`` hook. h2load posts one gRPC-framed
ModelInferRequest over ``concurrency`` HTTP/2 connections (one stream each, as
perf_analyzer's clients do) and logs every request's time to a file, the percentiles'
source.

h2load does not read gRPC trailers, where a failed call's status travels (with HTTP
200). So a failure is told by its size: a probe request first measures the bytes of one
good answer, and every answer short of those bytes is counted as a gRPC error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from modelport.cli.bench.errors import BenchError
from modelport.cli.bench.load import Latency, LoadResult, error_detail

# Past the run's own length: connections are set up and closed, and the tools report.
TOOL_GRACE_S = 60

# wrk prints its own report; this done() adds one machine-readable line (times in us).
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = io.open(os.getenv("MODELPORT_BENCH_BODY"), "rb"):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MODELPORT_BENCH %d %d %.1f %.1f %.1f %.1f %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency.mean, latency:percentile(50),
    latency:percentile(90), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def installed(tool: str) -> bool:
    """Whether ``tool`` (wrk, h2load) is on the PATH."""
    return shutil.which(tool) is not None


def _threads(concurrency: int) -> int:
    # One tool thread a core at most, and never more threads than connections.
    return max(1, min(concurrency, os.cpu_count() or 1))


def _header_flags(headers: Mapping[str, str]) -> list[str]:
    return [flag for name, value in headers.items() for flag in ("-H", f"{name}: {value}")]


def _run_tool(command: list[str], timeout_s: float, env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{command[0]} did not finish within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"{command[0]} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


class WrkGenerator:
    """HTTP load from wrk: latency percentiles over every request it timed."""

    name = "wrk"
    latency_source = "wrk --latency"

    def __init__(
        self, *, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float, workdir: Path
    ) -> None:
        self.url, self.headers, self.timeout_s = url, dict(headers), timeout_s
        self.body_path, self.script_path = workdir / "body.bin", workdir / "post.lua"
        self.body_path.write_bytes(body)
        self.script_path.write_text(WRK_SCRIPT)

    def run(self, concurrency: int, duration_s: int) -> LoadResult:
        command = [
            "wrk",
            f"-t{_threads(concurrency)}",
            f"-c{concurrency}",
            f"-d{duration_s}s",
            "--timeout",
            f"{self.timeout_s:g}s",
            "--latency",
            "-s",
            str(self.script_path),
            *_header_flags(self.headers),
            self.url,
        ]
        out = _run_tool(
            command,
            duration_s + self.timeout_s + TOOL_GRACE_S,
            {"MODELPORT_BENCH_BODY": str(self.body_path)},
        )
        line = next((ln for ln in out.splitlines() if ln.startswith("MODELPORT_BENCH ")), None)
        if line is None:
            raise BenchError(f"wrk printed no report:\n{out}")
        fields = line.split()[1:]
        requests, duration_us = int(fields[0]), int(fields[1])
        mean, p50, p90, p99 = (float(v) / 1000 for v in fields[2:6])
        status, connect, read, write, timeout = (int(v) for v in fields[6:11])
        answered = max(0, requests - status)
        counts = {"non-2xx": status, "timeout": timeout,
                  "connection error": connect + read + write}  # fmt: skip
        return LoadResult(
            concurrency=concurrency,
            seconds=duration_us / 1e6,
            answered=answered,
            errors=sum(counts.values()),
            latency=Latency(mean, p50, p90, p99) if answered else None,
            error_detail=error_detail(counts),
        )


_FINISHED = re.compile(r"finished in ([\d.]+)(s|ms|us),")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done")
_STATUS = re.compile(r"status codes: (\d+) 2xx")
_DATA = re.compile(r"\((\d+)\) data")


def _h2load_summary(out: str) -> dict[str, float]:
    found = [p.search(out) for p in (_FINISHED, _REQUESTS, _STATUS, _DATA)]
    finished, requests, status, data = found
    if not (finished and requests and status and data):
        raise BenchError(f"cannot read h2load's report:\n{out}")
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[finished.group(2)]
    return {
        "seconds": float(finished.group(1)) * scale,
        "done": int(requests.group(3)),
        "ok_status": int(status.group(1)),
        "data_bytes": int(data.group(1)),
    }


class H2loadGenerator:
    """gRPC load from h2load: latency percentiles from its per-request log."""

    name = "h2load"
    latency_source = "h2load --log-file"

    def __init__(
        self, *, url: str, framed: bytes, headers: Mapping[str, str], workdir: Path
    ) -> None:
        self.url, self.workdir = url, workdir
        self.body_path = workdir / "request.grpc"
        self.body_path.write_bytes(framed)
        grpc_headers = {"content-type": "application/grpc", "te": "trailers", **headers}
        self.header_flags = _header_flags(grpc_headers)
        self.answer_bytes = 0

    def _command(self, *extra: str) -> list[str]:
        return ["h2load", self.url, "-d", str(self.body_path), *self.header_flags, *extra]

    def _probe(self) -> int:
        """The bytes of one good answer (the request was just checked to succeed)."""
        out = _run_tool(self._command("-n", "1", "-c", "1", "-m", "1", "-t", "1"), TOOL_GRACE_S)
        size = int(_h2load_summary(out)["data_bytes"])
        if size == 0:
            raise BenchError(f"h2load got an empty answer from {self.url}: {out}")
        return size

    def run(self, concurrency: int, duration_s: int) -> LoadResult:
        if not self.answer_bytes:
            self.answer_bytes = self._probe()
        log = self.workdir / f"h2load-c{concurrency}.log"
        threads = str(_threads(concurrency))
        command = self._command("-c", str(concurrency), "-m", "1", "-t", threads,
                                "-D", f"{duration_s}s", "--log-file", str(log))  # fmt: skip
        summary = _h2load_summary(_run_tool(command, duration_s + TOOL_GRACE_S))
        done, ok_status = int(summary["done"]), int(summary["ok_status"])
        whole_answers = int(summary["data_bytes"]) // self.answer_bytes
        grpc_errors = max(0, ok_status - whole_answers)
        counts = {"non-2xx or broken": done - ok_status,
                  "gRPC error (short answer)": grpc_errors}  # fmt: skip
        return LoadResult(
            concurrency=concurrency,
            seconds=summary["seconds"],
            answered=ok_status - grpc_errors,
            errors=sum(counts.values()),
            latency=Latency.of(_logged_ms(log)),
            error_detail=error_detail(counts),
        )


def _logged_ms(log: Path) -> np.ndarray:
    """Each request's time from h2load's log (start us, status, duration us per line)."""
    if not log.is_file() or log.stat().st_size == 0:
        return np.empty(0)
    table = np.loadtxt(log, dtype=np.int64, ndmin=2, usecols=(1, 2))
    return table[:, 1] / 1000.0
