r"""digit-reader: a picture of one handwritten digit in, the digit out.

A ``python`` runtime pipeline in front of the ``digits`` classifier. It decodes each
image (PNG, JPEG, anything Pillow reads), finds the ink, crops a square around it,
shrinks it to the 8x8 grid of 0..16 ink counts ``digits`` was trained on, and calls
``digits`` through the server, so the classifier batches and is counted as usual.

Try it on a bundled sample (from this model's folder), with a bare ``modelport serve`` running::

    modelport predict digit-reader samples/digit-3.png

or with curl, sending the file as binary tensor data (a BYTES element is a 4-byte
little-endian length, then the bytes)::

    f=samples/digit-3.png; n=$(stat -c %s "$f")
    head='{"inputs":[{"name":"image","datatype":"BYTES","shape":[1,1],
      "parameters":{"binary_data_size":'$((n + 4))'}}]}'
    { printf %s "$head"
      printf "$(printf '\\x%02x' $((n & 255)) $((n >> 8 & 255)) $((n >> 16 & 255)) $((n >> 24)))"
      cat "$f"; } |
    curl -s --data-binary @- -H "Inference-Header-Content-Length: ${#head}" \
      http://127.0.0.1:8000/v2/models/digit-reader/infer

The answer's ``label`` is the digit as text, ``scores`` the ten class probabilities.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modelport.errors import InvalidInput

GRID = 8  # the classifier sees 8x8 cells ...
FULL_INK = 16.0  # ... each counting 0..16 inked pixels of a 4x4 block (sklearn's load_digits)
INK_THRESHOLD = 0.35  # ink level, 0..1, that counts towards the digit's bounding box


def to_grid(data: bytes, margin: float = 0.0) -> np.ndarray:
    """One encoded image as the classifier's input: 64 floats, 0 (paper) to 16 (ink).

    ``margin`` widens the square crop around the ink, as a fraction of its side.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        why = "" if isinstance(exc, UnidentifiedImageError) else f": {exc}"
        raise InvalidInput(
            f"input 'image': {len(data)} bytes that are not an image "
            f"(send the bytes of a PNG or JPEG file){why}"
        ) from None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent pixels are paper, whatever colour they store.
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0

    # Ink is what differs from the paper; the border tells which one is light.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    paper_level = float(np.median(border))
    ink = paper_level - gray if paper_level >= 0.5 else gray - paper_level
    ink = np.clip(ink, 0.0, None)
    if float(ink.max()) <= 0.1:
        raise InvalidInput("input 'image': the image is blank; no digit to read")
    ink /= float(ink.max())

    rows = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(bottom - top, right - left) * (1.0 + 2.0 * margin)
    cy, cx = (top + bottom) / 2.0, (left + right) / 2.0
    # A square crop keeps the digit's proportions (a '1' stays thin); outside is paper.
    box = (cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0)
    square = Image.fromarray(ink.astype(np.float32), mode="F").transform(
        (max(GRID, round(side)),) * 2, Image.Transform.EXTENT, box, Image.Resampling.BILINEAR
    )
    cells = square.resize((GRID, GRID), Image.Resampling.BOX)
    return (np.asarray(cells, dtype=np.float32) * FULL_INK).reshape(GRID * GRID)


class Model:
    def setup(self, context: Any) -> None:
        params = context.spec.parameters
        self.models = context.models
        self.classifier = str(params.get("classifier", "digits"))
        self.margin = float(params.get("margin", 0.0))
        labels = context.spec.labels
        self.labels = list(labels) if isinstance(labels, tuple) and labels else None

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs["image"].reshape(-1)  # [batch, 1] of bytes
        pixels = np.stack([to_grid(bytes(item), self.margin) for item in images])
        scores = self.models.infer(self.classifier, {"pixels": pixels})["probabilities"]
        best = np.argmax(scores, axis=1)
        names = [self.labels[i] if self.labels else str(i) for i in best]
        label = np.array([[name.encode()] for name in names], dtype=np.object_)
        return {"label": label, "scores": scores.astype(np.float32)}
