"""Build the bundled example repository that a bare ``modelport serve`` serves.

Trains a small digit classifier on scikit-learn's bundled ``load_digits`` (8x8 images,
0..16 ink counts a cell), exports it to ONNX with ``onnx.helper`` from the trained
weights, and renders held-out digits as sample images for the ``digit-reader`` pipeline::

    .venv/bin/python scripts/build_examples.py

Writes ``src/modelport/examples/digits/1/model.onnx`` and
``src/modelport/examples/digit-reader/samples/digit-<d>.png``. Same seed, same files:
running it twice changes nothing.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "src" / "modelport" / "examples"
MODEL_FILE = EXAMPLES / "digits" / "1" / "model.onnx"
SAMPLES = EXAMPLES / "digit-reader" / "samples"
READER = EXAMPLES / "digit-reader" / "1" / "model.py"

SEED = 0
HIDDEN = 64
FULL_INK = 16.0  # load_digits cells count 0..16 inked pixels
SAMPLE_SIDE = 64  # the 8x8 digit drawn at 64x64 ...
SAMPLE_PAD = 16  # ... on white paper with this margin


@dataclass(frozen=True, slots=True)
class DigitSplit:
    """load_digits split once, stratified: images are [n, 64] floats 0..16."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_split(seed: int = SEED) -> DigitSplit:
    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float32),
        data.target,
        test_size=0.25,
        random_state=seed,
        stratify=data.target,
    )
    return DigitSplit(x_train, y_train, x_test, y_test)


def train(split: DigitSplit, seed: int = SEED) -> MLPClassifier:
    """One hidden ReLU layer; inputs scaled to 0..1 (the export folds the scale in)."""
    classifier = MLPClassifier(
        hidden_layer_sizes=(HIDDEN,),
        activation="relu",
        alpha=1e-3,
        max_iter=1000,
        random_state=seed,
    )
    # One BLAS thread: matrices this small train far slower with more (and always alike).
    with threadpool_limits(limits=1):
        classifier.fit(split.train_images / FULL_INK, split.train_labels)
    return classifier


def to_onnx(classifier: MLPClassifier) -> onnx.ModelProto:
    """``pixels`` FP32 [batch, 64] (0..16) -> Gemm, Relu, Gemm, Softmax ->
    ``probabilities`` FP32 [batch, 10]."""
    (w1, w2), (b1, b2) = classifier.coefs_, classifier.intercepts_
    classes = len(classifier.classes_)
    weights = [
        numpy_helper.from_array((w1 / FULL_INK).astype(np.float32), "hidden.weight"),
        numpy_helper.from_array(b1.astype(np.float32), "hidden.bias"),
        numpy_helper.from_array(w2.astype(np.float32), "output.weight"),
        numpy_helper.from_array(b2.astype(np.float32), "output.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["pixels", "hidden.weight", "hidden.bias"], ["hidden.linear"]),
        helper.make_node("Relu", ["hidden.linear"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "output.weight", "output.bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", w1.shape[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        weights,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="modelport scripts/build_examples.py",
        doc_string="8x8 handwritten digits (sklearn load_digits, values 0..16) -> 10 classes",
    )
    model.ir_version = 8  # readable by every onnxruntime modelport supports
    onnx.checker.check_model(model)
    return model


def render(cells: np.ndarray) -> Image.Image:
    """An 8x8 grid of 0..16 as a picture of a written digit: dark ink on white paper."""
    ink = np.asarray(cells, dtype=np.float32).reshape(8, 8) / FULL_INK
    small = Image.fromarray(np.round(255 * (1 - ink)).astype(np.uint8), mode="L")
    digit = small.resize((SAMPLE_SIDE, SAMPLE_SIDE), Image.Resampling.BILINEAR)
    paper = Image.new("L", (SAMPLE_SIDE + 2 * SAMPLE_PAD,) * 2, 255)
    paper.paste(digit, (SAMPLE_PAD, SAMPLE_PAD))
    return paper


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def load_reader() -> ModuleType:
    """The digit-reader's model.py, for its image preprocessing (``to_grid``)."""
    spec = importlib.util.spec_from_file_location("digit_reader_model", READER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_back(classifier: MLPClassifier, reader: ModuleType, images: np.ndarray) -> np.ndarray:
    """Labels the whole pipeline gives: rendered PNG -> reader's to_grid -> classifier."""
    grids = np.stack([reader.to_grid(png_bytes(render(cells))) for cells in images])
    return np.asarray(classifier.predict(grids / FULL_INK))


def main() -> int:
    split = load_split()
    classifier = train(split)
    accuracy = classifier.score(split.test_images / FULL_INK, split.test_labels)
    print(f"held-out accuracy (8x8 grids): {accuracy:.4f} on {len(split.test_labels)} digits")

    model = to_onnx(classifier)
    MODEL_FILE.parent.mkdir(parents=True, exist_ok=True)
    MODEL_FILE.write_bytes(model.SerializeToString())
    print(f"wrote {MODEL_FILE.relative_to(ROOT)} ({MODEL_FILE.stat().st_size} bytes)")

    # Samples: per digit, the first held-out image the full pipeline reads right.
    read = read_back(classifier, load_reader(), split.test_images)
    pipeline = float(np.mean(read == split.test_labels))
    print(f"held-out accuracy (rendered PNG through digit-reader's preprocessing): {pipeline:.4f}")
    SAMPLES.mkdir(parents=True, exist_ok=True)
    for digit in range(10):
        right = np.flatnonzero((split.test_labels == digit) & (read == digit))
        if not len(right):
            print(f"no held-out {digit} is read right; no sample written", file=sys.stderr)
            return 1
        path = SAMPLES / f"digit-{digit}.png"
        path.write_bytes(png_bytes(render(split.test_images[right[0]])))
    print(f"wrote {SAMPLES.relative_to(ROOT)}/digit-0..9.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
