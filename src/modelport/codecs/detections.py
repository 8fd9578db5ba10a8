"""The ``detections`` codec: a model's box rows as boxes in the picture's own pixels.

A detections output holds one row a box: ``x1, y1, x2, y2, score, class`` (further
columns are ignored; a negative class marks a padding row, which lets a batching model
return the same number of rows for every picture). How the coordinates are read is
declared per output (:class:`~modelport.spec.DetectionsSpec`); the answer is always in
the uploaded picture's pixels, clipped to it, best score first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.codecs.image import ImageFrame
from modelport.errors import InferenceFailed
from modelport.spec import DetectionsSpec

COLUMNS = 6


@dataclass(frozen=True, slots=True)
class Detection:
    """One box in picture pixels: ``(x1, y1, x2, y2)``, its label and score."""

    box: tuple[float, float, float, float]
    label: str
    class_id: int
    score: float

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(v, 2) for v in self.box],
            "label": self.label,
            "score": round(self.score, 5),
        }

    def to_predictor_json(self) -> dict[str, Any]:
        """The form the FastAPI + Redis detector server answered with."""
        return {
            "category_id": self.label,
            "scores": [round(self.score, 5)],
            "bbox": [round(v, 2) for v in self.box],
        }


def label_of(class_id: int, labels: Sequence[str]) -> str:
    return labels[class_id] if 0 <= class_id < len(labels) else str(class_id)


def decode_detections(
    rows: np.ndarray,
    frame: ImageFrame | None,
    labels: Sequence[str],
    options: DetectionsSpec,
    score_threshold: float | None = None,
    name: str = "detections",
) -> list[Detection]:
    """Rows of one picture (batch dimension removed) as detections, best first.

    ``frame`` is the picture's size and the size the model saw; without one (a model
    with no image input) coordinates are kept as they are.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        return []
    if rows.ndim != 2 or rows.shape[1] < COLUMNS:
        raise InferenceFailed(
            f"output '{name}' has shape {list(rows.shape)}; the detections codec reads rows "
            "of x1, y1, x2, y2, score, class"
        )
    threshold = options.score_threshold if score_threshold is None else score_threshold
    keep = (rows[:, 5] >= 0) & (rows[:, 4] >= threshold) & np.isfinite(rows[:, :5]).all(axis=1)
    rows = rows[keep]
    boxes = rows[:, :4].copy()
    if frame is not None:
        if options.coordinates == "normalized":
            sx, sy = float(frame.width), float(frame.height)
        elif options.coordinates == "input":
            sx, sy = frame.width / frame.input_width, frame.height / frame.input_height
        else:
            sx = sy = 1.0
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] * sx, 0, frame.width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]] * sy, 0, frame.height)
    found = [
        Detection(
            (float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            label_of(int(r[5]), labels),
            int(r[5]),
            float(r[4]),
        )
        for b, r in zip(boxes, rows, strict=True)
        if b[2] > b[0] and b[3] > b[1]
    ]
    found.sort(key=lambda d: d.score, reverse=True)
    return found


def detection_rows(boxes: Sequence[Detection] | np.ndarray, rows: int | None = None) -> np.ndarray:
    """Detections (or an [N, 6] array) as FP32 rows for a model's output, padded with
    class -1 rows up to ``rows``: what a python pipeline returns for one picture."""
    if isinstance(boxes, np.ndarray):
        array = boxes.astype(np.float32).reshape(-1, COLUMNS)
    else:
        array = np.array([[*d.box, d.score, d.class_id] for d in boxes], dtype=np.float32).reshape(
            -1, COLUMNS
        )
    if rows is not None and rows > len(array):
        pad = np.zeros((rows - len(array), COLUMNS), np.float32)
        pad[:, 5] = -1
        array = np.concatenate([array, pad])
    return array
