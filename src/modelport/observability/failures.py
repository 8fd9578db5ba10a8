"""Failed answers in the log, at a rate the log can take.

Under overload every request may fail the same way; a line per 503 wrote 228,578
lines in 20 s. :class:`FailureLog` writes the first few failures of each model and
kind in full, then, per interval, one line counting the rest: "1,234 more overloaded
answers for slow in the last 10 s". Both HTTP doors and gRPC log through one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

BURST = 5  # failures logged in full per model and kind and interval
INTERVAL_S = 10.0


@dataclass(slots=True)
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0


class FailureLog:
    """Logs failed answers to ``log`` at WARNING: per model and kind, the first
    ``burst`` of each ``interval_s`` in full, the rest as one counting line when the
    interval is over (written by the next failure, or :meth:`flush`)."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        burst: int = BURST,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.burst, self.interval_s, self.clock = log, burst, interval_s, clock
        self._windows: dict[tuple[str, str], _Window] = {}
        # Answers are tagged on the event loop and by batch callbacks in other threads.
        self._lock = threading.Lock()

    def failed(
        self,
        model: str,
        kind: str,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> None:
        """One failed answer for ``model`` of ``kind`` (``overloaded``, ``internal``...);
        ``message % args`` is the line written when it is written in full."""
        now = self.clock()
        with self._lock:
            self._flush_due(now)
            window = self._windows.setdefault((model, kind), _Window(now))
            full = window.logged < self.burst
            if full:
                window.logged += 1
            else:
                window.suppressed += 1
        if full:
            self.log.warning(message, *args, exc_info=exc_info)

    def flush(self) -> None:
        """Write the count of every interval that is over."""
        with self._lock:
            self._flush_due(self.clock())

    def _flush_due(self, now: float) -> None:
        due = [k for k, w in self._windows.items() if now - w.started >= self.interval_s]
        for key in due:
            window = self._windows.pop(key)
            if window.suppressed:
                model, kind = key
                self.log.warning(
                    "%s more %s answers for %s in the last %g s",
                    f"{window.suppressed:,}",
                    kind,
                    model or "the server",
                    self.interval_s,
                )
