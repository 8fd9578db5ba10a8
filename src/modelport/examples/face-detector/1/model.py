"""face-detector: a photo in, a box around each frontal face out.

A ``python`` runtime model around OpenCV's frontal-face Haar cascade, the XML file the
``opencv-python`` package ships in ``cv2.data.haarcascades`` (``pip install
'modelport[examples]'``); nothing is downloaded.

A cascade gives no probability, only how many overlapping windows agreed on a face
(its "neighbours"). The score is ``n / (n + 2 * min_neighbors)``: a face barely kept
(``n = min_neighbors``) scores 0.33, one that a dozen windows agree on scores 0.7, so
the ``detections`` codec's threshold and the page's slider work as for other models.

``thread_safe``: the pictures of a batch are searched side by side, one thread each. An
OpenCV cascade keeps the picture it searches inside it, so each thread has its own.

Try it, with a bare ``modelport serve`` running::

    curl -F file=@samples/astronaut.jpg http://127.0.0.1:8000/api/models/face-detector/predict
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from PIL import Image

from modelport.codecs.detections import detection_rows
from modelport.codecs.image import decode_image
from modelport.errors import SpecError

FACE = 0  # the one class: labels: [face]


class Model:
    thread_safe = True

    def setup(self, context: Any) -> None:
        try:
            import cv2  # lazy: a server without this example never loads OpenCV
        except ImportError as exc:
            raise SpecError(
                f"this example needs OpenCV ({exc}); pip install 'modelport[examples]'"
            ) from None

        self.cv2 = cv2
        params = context.spec.parameters
        path = cv2.data.haarcascades + str(
            params.get("cascade", "haarcascade_frontalface_default.xml")
        )
        self.path = path
        self.local = threading.local()
        self.cascade()  # fails now, not on the first picture, if OpenCV cannot read it
        self.scale_factor = float(params.get("scale_factor", 1.1))
        self.min_neighbors = int(params.get("min_neighbors", 3))
        self.min_size = int(params.get("min_size", 24))

    def cascade(self) -> Any:
        """This thread's cascade."""
        cascade = getattr(self.local, "cascade", None)
        if cascade is None:
            cascade = self.local.cascade = self.cv2.CascadeClassifier(self.path)
            if cascade.empty():
                raise SpecError(f"OpenCV cannot read the cascade {self.path}")
        return cascade

    def detect(self, data: bytes) -> np.ndarray:
        """One encoded photo's faces: rows of x1, y1, x2, y2, score, class."""
        return self.detect_picture(decode_image(data, "image"))

    def detect_picture(self, image: Image.Image) -> np.ndarray:
        """The faces of a decoded RGB picture (see :meth:`detect`)."""
        gray = np.asarray(image.convert("L"))
        gray = self.cv2.equalizeHist(gray)
        rects, neighbours = self.cascade().detectMultiScale2(
            gray, self.scale_factor, self.min_neighbors, minSize=(self.min_size,) * 2
        )
        rows = [
            [x, y, x + w, y + h, n / (n + 2.0 * self.min_neighbors), FACE]
            for (x, y, w, h), n in zip(rects, np.reshape(neighbours, -1), strict=True)
        ]
        return np.array(rows, dtype=np.float32).reshape(-1, 6)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs["image"].reshape(-1)  # [batch, 1] of bytes
        found = [self.detect(bytes(item)) for item in images]
        rows = max(1, *(len(f) for f in found))
        return {"detections": np.stack([detection_rows(f, rows) for f in found])}
