"""Statistics counters added up across server processes (``ModelStats.counters`` /
``add_counters``, which the peers exchange as JSON): the sum of two processes' counters
is what one process would have counted had it seen every request and batch."""

from __future__ import annotations

import json

from modelport.core.stats import ModelStats


def _record(stats: ModelStats, events: list[tuple[str, int]]) -> None:
    for kind, n in events:
        if kind == "batch":
            stats.record_batch(n, 10 * n, 100 * n, 5 * n)
        elif kind == "ok":
            stats.record_request(True, 1000 * n, 200 * n)
        else:
            stats.record_request(False, 500 * n, 0, kind)


def test_counters_of_two_processes_add_up_to_one_seeing_everything() -> None:
    first = [("batch", 4), ("ok", 1), ("ok", 2), ("overloaded", 1), ("batch", 1)]
    second = [("batch", 4), ("ok", 3), ("cancelled", 2), ("batch", 8), ("ok", 1)]
    a, b, everything = ModelStats(), ModelStats(), ModelStats()
    _record(a, first)
    _record(b, second)
    _record(everything, first + second)
    a.warmup_ns, b.warmup_ns = 7, 9

    total = ModelStats()
    for part in (a, b):
        total.add_counters(json.loads(json.dumps(part.counters())))  # as the peers send it

    expected = everything.counters()
    got = total.counters()
    assert got["last_inference_ms"] >= a.last_inference_ms
    for key in ("durations", "inference_count", "execution_count", "failures_by_reason"):
        assert got[key] == expected[key], key
    assert {int(k): v for k, v in got["batches"].items()} == {
        int(k): v for k, v in expected["batches"].items()
    }
    assert total.warmup_ns == 9  # the longest warm-up, not a sum
    assert total.failures_by_reason == {"overloaded": 1, "cancelled": 1}
