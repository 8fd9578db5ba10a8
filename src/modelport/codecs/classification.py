"""The ``classification`` codec: one score per label in, the top-k labels out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelport.codecs.detections import label_of
from modelport.errors import InferenceFailed
from modelport.spec import ClassificationSpec


def top_k(
    scores: np.ndarray,
    labels: Sequence[str],
    options: ClassificationSpec,
    k: int | None = None,
    name: str = "scores",
) -> list[dict[str, Any]]:
    """``[{"label", "score"}]`` for the ``k`` highest scores of one row, best first."""
    row = np.asarray(scores, dtype=np.float64).reshape(-1)
    if row.size == 0:
        raise InferenceFailed(f"output '{name}' is empty; the classification codec needs scores")
    count = min(k or options.top_k, row.size)
    # A stable sort keeps ties in label order, so answers do not flicker.
    best = np.argsort(-row, kind="stable")[:count]
    return [{"label": label_of(int(i), labels), "score": round(float(row[i]), 6)} for i in best]
