"""Why ``modelport bench`` cannot go on: printed as one line, and the command exits 1."""

from __future__ import annotations


class BenchError(Exception):
    """A problem the user can fix: a wrong model name, a missing ``--shape``, a failed check."""
