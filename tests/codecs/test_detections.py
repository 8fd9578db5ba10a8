"""The detections and classification codecs: boxes back in the picture's pixels,
thresholds, padding rows, labels, top-k."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.codecs.classification import top_k
from modelport.codecs.detections import decode_detections, detection_rows
from modelport.codecs.image import ImageFrame
from modelport.errors import InferenceFailed, SpecError
from modelport.spec import ClassificationSpec, DetectionsSpec, parse_spec

LABELS = ("cat", "dog")
# A 400x200 picture that the model saw as 100x100.
FRAME = ImageFrame(width=400, height=200, input_width=100, input_height=100)
ROWS = np.array(
    [
        [10, 10, 50, 50, 0.4, 0],
        [0, 0, 100, 100, 0.9, 1],
        [20, 30, 40, 60, 0.7, 5],  # a class with no label
        [0, 0, 0, 0, 0.0, -1],  # padding
    ],
    np.float32,
)


def test_input_coordinates_are_mapped_to_the_picture_best_first() -> None:
    found = decode_detections(ROWS, FRAME, LABELS, DetectionsSpec(coordinates="input"))
    assert [d.label for d in found] == ["dog", "5", "cat"]
    assert found[0].box == (0.0, 0.0, 400.0, 200.0)
    assert found[1].box == pytest.approx((80.0, 60.0, 160.0, 120.0))
    assert found[0].to_json() == {"box": [0.0, 0.0, 400.0, 200.0], "label": "dog", "score": 0.9}
    assert found[0].to_predictor_json() == {
        "category_id": "dog", "scores": [0.9], "bbox": [0.0, 0.0, 400.0, 200.0]
    }  # fmt: skip


def test_normalized_and_image_coordinates_are_clipped() -> None:
    rows = np.array([[0.5, 0.5, 1.2, 1.0, 0.8, 0]], np.float32)
    (norm,) = decode_detections(rows, FRAME, LABELS, DetectionsSpec(coordinates="normalized"))
    assert norm.box == (200.0, 100.0, 400.0, 200.0)
    (pixels,) = decode_detections(rows * 300, FRAME, LABELS, DetectionsSpec())
    assert pixels.box == pytest.approx((150.0, 150.0, 360.0, 200.0))


def test_thresholds_declared_and_asked() -> None:
    declared = DetectionsSpec(coordinates="input", score_threshold=0.5)
    assert len(decode_detections(ROWS, FRAME, LABELS, declared)) == 2
    assert len(decode_detections(ROWS, FRAME, LABELS, declared, score_threshold=0.0)) == 3
    assert len(decode_detections(ROWS, FRAME, LABELS, declared, score_threshold=0.95)) == 0


def test_rows_helper_pads_with_negative_classes() -> None:
    rows = detection_rows(ROWS[:2], rows=4)
    assert rows.shape == (4, 6) and list(rows[2:, 5]) == [-1, -1]
    assert decode_detections(rows, None, LABELS, DetectionsSpec()) != []
    assert detection_rows([], rows=1).shape == (1, 6)


def test_wrong_shape_is_the_model_s_fault() -> None:
    with pytest.raises(InferenceFailed, match="rows of x1, y1, x2, y2, score, class"):
        decode_detections(np.zeros((3, 4)), FRAME, LABELS, DetectionsSpec())


def test_top_k_labels_best_first() -> None:
    scores = np.array([0.1, 0.6, 0.3], np.float32)
    assert top_k(scores, ("a", "b", "c"), ClassificationSpec(top_k=2)) == [
        {"label": "b", "score": pytest.approx(0.6)},
        {"label": "c", "score": pytest.approx(0.3)},
    ]
    assert [c["label"] for c in top_k(scores, (), ClassificationSpec(), k=10)] == ["1", "2", "0"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ("{name: y, datatype: FP32, shape: [-1, 4], codec: detections}", "of shape [-1, 6]"),
        ("{name: y, datatype: BYTES, shape: [-1, 6], codec: detections}", "numeric tensor"),
        ("{name: y, datatype: FP32, shape: [2, 10], codec: classification}", "[classes]"),
        ("{name: y, datatype: FP32, shape: [-1, 6], codec: detections, detections: "
         "{coordinates: pixels}}", "coordinates"),
    ],
)  # fmt: skip
def test_bad_output_declarations(tensor: str, message: str) -> None:
    with pytest.raises(SpecError, match=r"field 'outputs\.0") as info:
        parse_spec("m", f"runtime: python\noutputs: [{tensor}]\n", "model.yaml")
    assert message in info.value.message
