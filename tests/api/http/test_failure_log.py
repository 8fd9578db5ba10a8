"""Failed answers are logged at a rate the log can take, and a client's request id is
kept only when it cannot forge a log line (issue 20, item 4)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest

from modelport.api.http.asgi import MAX_REQUEST_ID, request_id_for
from modelport.observability.failures import FailureLog
from support.builders import write_slow_model

OVERLOAD_S = 11.0  # past one 10 s interval, so its count line is written


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_few_in_full_then_a_count_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    failures = FailureLog(logging.getLogger("test.failures"), burst=3, interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, "test.failures"):
        for _ in range(1500):
            failures.failed("slow", "overloaded", "infer %s failed", "slow")
        failures.failed("other", "unavailable", "infer %s failed", "other")
        clock.now = 10.5
        failures.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        *["infer slow failed"] * 3,
        "infer other failed",
        "1,497 more overloaded answers for slow in the last 10 s",
    ]


def test_request_ids_that_could_forge_a_line_are_replaced() -> None:
    assert request_id_for("abc-123_X.y:z") == "abc-123_X.y:z"
    for forged in ("a\nINFO forged", "a b", "x" * (MAX_REQUEST_ID + 1), "é", "", None):
        replaced = request_id_for(forged)
        assert replaced != forged and replaced and len(replaced) <= MAX_REQUEST_ID


@pytest.fixture(scope="module")
def overloadable(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    repo = tmp_path_factory.mktemp("overload")
    write_slow_model(repo, "slow", delay_ms=200, max_queue_size=1)
    return server_factory(repo=repo)


async def _hammer(url: str, seconds: float) -> dict[int, int]:
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    counts: dict[int, int] = {}
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < stop:
                answer = await client.post("/v2/models/slow/infer", json=body)
                counts[answer.status_code] = counts.get(answer.status_code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(32)))
        # One more after the interval: it writes the interval's count.
        await client.post("/v2/models/slow/infer", json=body)
    return counts


def test_an_overload_writes_few_log_lines(overloadable: Any) -> None:
    before = len(overloadable.log().splitlines())
    counts = asyncio.run(_hammer(overloadable.url, OVERLOAD_S))
    assert counts.get(503, 0) > 1000, counts  # a real flood of refusals
    log = overloadable.log()
    lines = log.splitlines()[before:]
    assert len(lines) < 1000, (len(lines), counts)
    assert "more overloaded answers for slow in the last 10 s" in log, lines[-20:]


def test_forged_request_ids_are_not_echoed(overloadable: Any) -> None:
    with httpx.Client(base_url=overloadable.url) as client:
        fine = client.get("/v2/models/slow", headers={"x-request-id": "trace-42"})
        assert fine.headers["x-request-id"] == "trace-42"
        for forged in ("x" * 200, "a b INFO forged", "a\tb"):
            for answer in (
                client.get("/v2/models/slow", headers={"x-request-id": forged}),
                client.post("/v2/models/slow/infer", json={}, headers={"x-request-id": forged}),
            ):
                assert answer.headers["x-request-id"] != forged
                assert len(answer.headers["x-request-id"]) <= MAX_REQUEST_ID
