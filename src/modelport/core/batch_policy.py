"""The batcher's scheduling decisions, as pure functions of what the batcher sees.

:class:`DynamicBatcher` (``batcher.py``) owns the queue, the instances and the timer;
each time a free instance could take a batch it describes the moment in a
:class:`Snapshot` and asks :meth:`BatchPolicy.decide` what to do with it:

- :class:`Take`: run the batch on the instance's thread now (work-conserving: a free
  instance takes whatever waits, so batches grow with load by themselves);
- :class:`WaitUntil`: hold the batch back for company until a time, by one of two rules:

  * ``max_queue_delay_us``: a batch formed from several waiting requests and still
    below its target size waits up to this long for more (never a lone request);
  * the echo rule: right after a batch of several requests finishes, their clients are
    about to send again. If fewer rows wait than that batch had, the instance waits up
    to a quarter of that batch's compute time (at most ``echo_cap_s``) for them.
    Without it, a model whose cost is mostly fixed per batch alternates a batch of 1
    with a batch of 63 at c=64 and serves half the rows it could;

- :class:`RunInline`: run a lone request on the event loop's own thread. A thread hop,
  with the GIL handed over twice, costs 100-300 µs on a loaded VM, as much as a small
  model's whole compute. So when the runtime allows it (``InlineRuntime``), every
  instance is idle, nothing else waits, and the measured one-request compute is under
  ``inline_budget_ns`` (the longest other requests may wait for it), it runs inline; and
  through the runtime's lone path (``lone``: ONNX Runtime's spinning threads) only when
  no batch of several requests ran in the last ``QUIET_S``, since spinning threads pay
  only while nothing else wants the CPU.

What the policy remembers of past batches is a :class:`History`, given back changed by
:meth:`BatchPolicy.decide` and :meth:`BatchPolicy.learn`. :meth:`BatchPolicy.cut`
applies ``preferred_batch_sizes``. Nothing here touches the event loop, so
``tests/core/test_batch_policy.py`` drives every rule from a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelport.spec import BatchingSpec

INLINE_BUDGET_NS = 500_000
ECHO_FRACTION = 0.25
ECHO_CAP_S = 0.010
QUIET_S = 0.1  # after a multi-request batch, lone requests skip the runtime's lone path


@dataclass(frozen=True, slots=True)
class History:
    """What the policy remembers. Times are the loop's clock, in seconds."""

    deadline: float = 0.0  # when a partial batch held for company stops waiting; 0: none
    echo_until: float = 0.0  # the echo window's end (0: closed) ...
    echo_rows: int = 0  # ... and the rows of the batch that opened it
    busy_until: float = 0.0  # lone requests take the lone path from then on
    single_ns: float = -1.0  # moving average of a one-request compute; -1: unknown


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The moment a free instance could take ``requests`` requests of ``rows`` rows."""

    now: float
    requests: int
    rows: int
    waiting: int  # requests still queued behind this batch
    idle: bool  # every instance is free
    inline: bool  # the instance's runtime may run on the loop's thread
    history: History


@dataclass(frozen=True, slots=True)
class Take:
    """Run the batch on the instance's thread now."""

    history: History


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Put the batch back and look again at ``until`` (or when more arrives)."""

    until: float
    history: History


@dataclass(frozen=True, slots=True)
class RunInline:
    """Run the lone request on the loop's thread now; through the runtime's lone path
    (``infer_inline``) when ``lone``, else through its ``infer``."""

    lone: bool
    history: History


Decision = Take | WaitUntil | RunInline


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """The scheduling rules of one model version (see the module's docstring)."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()  # sorted, as BatchingSpec keeps them
    max_queue_delay_s: float = 0.0
    inline_budget_ns: int = INLINE_BUDGET_NS
    echo_cap_s: float = ECHO_CAP_S

    @classmethod
    def of(
        cls,
        max_batch_size: int,
        batching: BatchingSpec,
        *,
        inline_budget_ns: int = INLINE_BUDGET_NS,
        echo_cap_s: float = ECHO_CAP_S,
    ) -> BatchPolicy:
        """The policy model.yaml's ``max_batch_size`` and ``batching`` declare."""
        return cls(
            max_batch_size=max_batch_size,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            max_queue_delay_s=batching.max_queue_delay_us / 1e6,
            inline_budget_ns=inline_budget_ns,
            echo_cap_s=echo_cap_s,
        )

    @property
    def target(self) -> int:
        """The batch size worth waiting for: the largest preferred size, else the max."""
        return max(self.preferred_batch_sizes or (self.max_batch_size,))

    def decide(self, moment: Snapshot) -> Decision:
        """What the free instance does with the batch it was offered."""
        history, now, rows = moment.history, moment.now, moment.rows
        deadline, echo_until = history.deadline, history.echo_until
        until = 0.0
        if self.max_queue_delay_s and moment.requests > 1 and rows < self.target:
            if not deadline:
                deadline = now + self.max_queue_delay_s
            until = deadline
        else:
            deadline = 0.0
        if echo_until:
            if echo_until > now and rows < history.echo_rows and rows < self.target:
                until = max(until, echo_until)
            else:
                echo_until = 0.0
        if until > now:
            return WaitUntil(until, _with_windows(history, deadline, echo_until))
        history = _with_windows(history, 0.0, echo_until)
        if (
            moment.inline
            and moment.idle
            and moment.requests == 1
            and not moment.waiting
            and 0 <= history.single_ns < self.inline_budget_ns
        ):
            return RunInline(now >= history.busy_until, history)
        return Take(history)

    def learn(
        self, history: History, *, requests: int, rows: int, compute_ns: int, now: float
    ) -> History:
        """What a finished batch teaches: after several requests, an echo window (their
        clients are about to send again) and a busy spell; after one, its compute."""
        if requests > 1:
            window = min(ECHO_FRACTION * compute_ns / 1e9, self.echo_cap_s)
            return History(history.deadline, now + window, rows, now + QUIET_S, history.single_ns)
        average = history.single_ns
        average = compute_ns if average < 0 else 0.8 * average + 0.2 * compute_ns
        return History(
            history.deadline, history.echo_until, history.echo_rows, history.busy_until, average
        )

    def cut(self, rows: Sequence[int]) -> int:
        """How many of a batch's requests (``rows`` each, in order) to run now: all of
        them, or as many as fit the largest preferred size that fits, when more rows
        wait than the smallest preferred size and a full batch cannot be formed."""
        total = sum(rows)
        preferred = [p for p in self.preferred_batch_sizes if p <= total]
        if not preferred or total >= self.max_batch_size:
            return len(rows)
        limit, kept, used = preferred[-1], 0, 0
        for count in rows:
            if used + count > limit:
                break
            kept += 1
            used += count
        return kept or len(rows)


def _with_windows(history: History, deadline: float, echo_until: float) -> History:
    if deadline == history.deadline and echo_until == history.echo_until:
        return history  # the usual case: nothing to copy
    return History(deadline, echo_until, history.echo_rows, history.busy_until, history.single_ns)
