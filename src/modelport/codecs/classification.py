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


def triton_classes(
    scores: np.ndarray, count: int, labels: Sequence[str], *, batched: bool
) -> np.ndarray:
    """Triton's classification extension: the ``count`` highest values of each row (the
    whole tensor, for a model that does not batch), best first, as BYTES
    ``"<value>:<index>[:<label>]"``, shaped ``[batch, count]`` (``[count]`` unbatched).
    ``count`` is cut to the number of classes; ``labels`` name indexes where they can."""
    array = np.asarray(scores)
    rows = array.reshape(array.shape[0] if batched and array.ndim else 1, -1)
    count = min(count, rows.shape[1])
    # Compared as float64 so unsigned values sort too; a stable sort keeps ties in index order.
    best = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    floats = rows.dtype.kind == "f"
    out = np.empty(best.shape, dtype=np.object_)
    for r, row in enumerate(best):
        for c, index in enumerate(row):
            value = rows[r, index]
            text = f"{float(value):f}" if floats else str(int(value))
            text += f":{int(index)}"
            if int(index) < len(labels):
                text += f":{labels[int(index)]}"
            out[r, c] = text.encode()
    return out if batched else out.reshape(count)
