"""The batcher's scheduling rules, as tables: a snapshot in, a decision out.

No event loop and no batcher: each row names a moment and what the policy must do
with it. ``tests/core/test_batcher_scheduling.py`` checks the same rules end to end.
"""

from __future__ import annotations

import pytest

from modelport.core.batch_policy import (
    QUIET_S,
    BatchPolicy,
    Decision,
    History,
    RunInline,
    Snapshot,
    Take,
    WaitUntil,
)
from modelport.spec import BatchingSpec

NOW = 100.0
PLAIN = BatchPolicy(max_batch_size=8)
DELAYED = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.002)
PREFERRED = BatchPolicy(max_batch_size=64, preferred_batch_sizes=(4, 16))
ECHOING = History(echo_until=NOW + 0.005, echo_rows=6)
SMALL = History(single_ns=100_000)  # a one-request compute well under the budget


def moment(
    *,
    requests: int = 1,
    rows: int | None = None,
    waiting: int = 0,
    idle: bool = True,
    inline: bool = False,
    history: History = History(),
) -> Snapshot:
    return Snapshot(
        now=NOW,
        requests=requests,
        rows=requests if rows is None else rows,
        waiting=waiting,
        idle=idle,
        inline=inline,
        history=history,
    )


DECISIONS: dict[str, tuple[BatchPolicy, Snapshot, Decision]] = {
    "a lone request on an idle model runs at once": (
        PLAIN,
        moment(),
        Take(History()),
    ),
    "a full batch runs at once": (
        PLAIN,
        moment(requests=8),
        Take(History()),
    ),
    "a partial batch waits out the queue delay": (
        DELAYED,
        moment(requests=3),
        WaitUntil(NOW + 0.002, History(deadline=NOW + 0.002)),
    ),
    "the queue delay never holds a lone request": (
        DELAYED,
        moment(requests=1),
        Take(History()),
    ),
    "the queue delay ends at the first deadline, not a new one": (
        DELAYED,
        moment(requests=3, history=History(deadline=NOW + 0.001)),
        WaitUntil(NOW + 0.001, History(deadline=NOW + 0.001)),
    ),
    "a passed deadline runs the batch and forgets it": (
        DELAYED,
        moment(requests=3, history=History(deadline=NOW - 0.001)),
        Take(History()),
    ),
    "the queue delay does not hold a batch at its target": (
        DELAYED,
        moment(requests=8),
        Take(History()),
    ),
    "fewer rows than the last batch wait for its clients": (
        PLAIN,
        moment(requests=2, history=ECHOING),
        WaitUntil(NOW + 0.005, ECHOING),
    ),
    "the echo window holds a lone request too": (
        PLAIN,
        moment(requests=1, history=ECHOING),
        WaitUntil(NOW + 0.005, ECHOING),
    ),
    "as many rows as the last batch close the echo window": (
        PLAIN,
        moment(requests=6, history=ECHOING),
        Take(History(echo_rows=6)),
    ),
    "a past echo window closes": (
        PLAIN,
        moment(history=History(echo_until=NOW - 0.001, echo_rows=6)),
        Take(History(echo_rows=6)),
    ),
    "the later of the two windows wins": (
        DELAYED,
        moment(requests=2, history=ECHOING),
        WaitUntil(NOW + 0.005, History(NOW + 0.002, NOW + 0.005, 6)),
    ),
    "a small lone request on a quiet model takes the lone path": (
        PLAIN,
        moment(inline=True, history=SMALL),
        RunInline(True, SMALL),
    ),
    "right after a batch it runs inline through infer": (
        PLAIN,
        moment(inline=True, history=History(busy_until=NOW + QUIET_S, single_ns=100_000)),
        RunInline(False, History(busy_until=NOW + QUIET_S, single_ns=100_000)),
    ),
    "an unknown compute goes to the thread": (
        PLAIN,
        moment(inline=True),
        Take(History()),
    ),
    "a compute over the budget goes to the thread": (
        PLAIN,
        moment(inline=True, history=History(single_ns=900_000)),
        Take(History(single_ns=900_000)),
    ),
    "a runtime that calls back never runs inline": (
        PLAIN,
        moment(inline=False, history=SMALL),
        Take(SMALL),
    ),
    "company waiting sends it to the thread": (
        PLAIN,
        moment(inline=True, waiting=1, history=SMALL),
        Take(SMALL),
    ),
    "another instance busy sends it to the thread": (
        PLAIN,
        moment(inline=True, idle=False, history=SMALL),
        Take(SMALL),
    ),
}


@pytest.mark.parametrize(
    ("policy", "snapshot", "expected"), DECISIONS.values(), ids=list(DECISIONS)
)
def test_decide(policy: BatchPolicy, snapshot: Snapshot, expected: Decision) -> None:
    assert policy.decide(snapshot) == expected


LESSONS: dict[str, tuple[int, int, int, History, History]] = {
    # requests, rows, compute ns, before, after
    "a batch of several opens an echo window of a quarter of its compute": (
        4,
        4,
        8_000_000,
        History(),
        History(0.0, NOW + 0.002, 4, NOW + QUIET_S),
    ),
    "the echo window is capped": (
        4,
        6,
        400_000_000,
        History(),
        History(0.0, NOW + 0.010, 6, NOW + QUIET_S),
    ),
    "a first lone request sets the compute": (
        1,
        1,
        200_000,
        History(),
        History(single_ns=200_000),
    ),
    "later ones move it a fifth of the way": (
        1,
        1,
        200_000,
        History(single_ns=100_000),
        History(single_ns=120_000),
    ),
}


@pytest.mark.parametrize(
    ("requests", "rows", "compute_ns", "before", "after"), LESSONS.values(), ids=list(LESSONS)
)
def test_learn(requests: int, rows: int, compute_ns: int, before: History, after: History) -> None:
    learnt = PLAIN.learn(before, requests=requests, rows=rows, compute_ns=compute_ns, now=NOW)
    assert learnt == after


CUTS: dict[str, tuple[BatchPolicy, list[int], int]] = {
    "no preferred sizes: everything": (PLAIN, [1, 1, 1], 3),
    "cut to the largest preferred size that fits": (PREFERRED, [1] * 20, 16),
    "below the smallest preferred size: everything": (PREFERRED, [1, 1, 1], 3),
    "a full max batch beats the preferred sizes": (PREFERRED, [32, 32], 2),
    "requests are never split": (PREFERRED, [3, 3, 3], 1),
    "nothing fits whole: everything": (PREFERRED, [5, 1], 2),
}


@pytest.mark.parametrize(("policy", "rows", "kept"), CUTS.values(), ids=list(CUTS))
def test_cut(policy: BatchPolicy, rows: list[int], kept: int) -> None:
    assert policy.cut(rows) == kept


def test_the_policy_model_yaml_declares() -> None:
    batching = BatchingSpec(max_queue_delay_us=1500, preferred_batch_sizes=(8, 4))
    policy = BatchPolicy.of(16, batching, echo_cap_s=0.5)
    assert policy == BatchPolicy(16, (4, 8), 0.0015, echo_cap_s=0.5)
    assert policy.target == 8
    assert BatchPolicy(max_batch_size=16).target == 16
