"""Make the sample pictures of the bundled detector examples, and the boxes they hold.

    .venv/bin/python scripts/build_detector_samples.py

text-detector/samples/sign.png: lines of text drawn with Pillow's bundled font at known
places; their boxes go to samples/sign.boxes.json, which the tests hold the detector's
answer to. face-detector/samples/astronaut.jpg: Eileen Collins, a NASA portrait in the
public domain, as scikit-image ships it (``skimage.data.astronaut()``; pip install
scikit-image to rebuild it); its face box, read off the picture by hand, is in
samples/astronaut.boxes.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "modelport" / "examples"
TEXT_SAMPLES = EXAMPLES / "text-detector" / "samples"
FACE_SAMPLES = EXAMPLES / "face-detector" / "samples"

SIGN_SIZE = (800, 480)
# (text, left, top, font size, colour): lines far enough apart to be told apart.
SIGN_LINES = (
    ("modelport", 48, 40, 72, (20, 20, 20)),
    ("Boxes in original pixels", 60, 170, 40, (30, 40, 120)),
    ("STOP 42", 470, 270, 56, (150, 20, 20)),
    ("drag the score slider", 70, 390, 32, (40, 40, 40)),
)
# The astronaut's face (hairline to chin, cheek to cheek) in the 512x512 picture, by eye.
ASTRONAUT_FACE = (180, 62, 270, 160)


def draw_sign() -> tuple[Image.Image, list[dict[str, object]]]:
    """The text sample and its line boxes (x1, y1, x2, y2 of the ink)."""
    image = Image.new("RGB", SIGN_SIZE, (246, 243, 235))
    draw = ImageDraw.Draw(image)
    # A faint frame and rule, so the page is not blank paper around the text.
    draw.rectangle((10, 10, SIGN_SIZE[0] - 11, SIGN_SIZE[1] - 11), outline=(210, 205, 195), width=2)
    draw.line((48, 140, 752, 140), fill=(215, 210, 200), width=2)
    boxes = []
    for text, left, top, size, colour in SIGN_LINES:
        font = ImageFont.load_default(size)
        draw.text((left, top), text, font=font, fill=colour)
        x1, y1, x2, y2 = draw.textbbox((left, top), text, font=font)
        boxes.append({"text": text, "box": [x1, y1, x2, y2]})
    return image, boxes


def build_text_sample() -> None:
    image, boxes = draw_sign()
    TEXT_SAMPLES.mkdir(parents=True, exist_ok=True)
    image.save(TEXT_SAMPLES / "sign.png", optimize=True)
    (TEXT_SAMPLES / "sign.boxes.json").write_text(json.dumps(boxes, indent=2) + "\n")


def build_face_sample() -> None:
    try:
        from skimage import data
    except ImportError:
        print("scikit-image is not installed; keeping the committed astronaut.jpg")
        return
    FACE_SAMPLES.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).save(FACE_SAMPLES / "astronaut.jpg", quality=88)
    boxes = [{"label": "face", "box": list(ASTRONAUT_FACE)}]
    (FACE_SAMPLES / "astronaut.boxes.json").write_text(json.dumps(boxes, indent=2) + "\n")


if __name__ == "__main__":
    build_text_sample()
    build_face_sample()
