"""A small TensorFlow SavedModel for the tensorflow runtime's tests, built by TensorFlow
in a child process, with TensorFlow's own outputs for the inputs below.

The test process never imports TensorFlow: TensorFlow registers its protos
(``tensorflow/core/framework/*.proto``) in protobuf's default pool, as the TF Serving
client stubs of ``tests/api/grpc/tfs_client`` do, and one process cannot hold both.

Signatures of the model (``python tests/support/tf_builders.py OUT_DIR EXPECTED_NPZ`` writes it):

- ``serving_default``: ``x`` FP32 [None, 4] -> ``y`` FP32 [None, 3] = x @ W + B
- ``doubled``: the same tensors, ``y`` = 2 (x @ W + B)
- ``text``: ``text`` BYTES [None] -> ``length`` INT32 [None] (bytes), ``upper`` BYTES [None]
- ``half``: ``h`` FP16 [None, 2] -> ``h2`` FP16 [None, 2] = h * 2 + 1
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

W = (np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5).astype(np.float32)
B = np.array([0.5, -1.0, 2.0], dtype=np.float32)
X = np.array([[1.0, 2.0, 3.0, 4.0], [-1.5, 0.0, 2.25, 8.0]], dtype=np.float32)
TEXT = np.array([b"tf", b"modelport", "\u00e9t\u00e9".encode()], dtype=np.object_)
HALF = np.array([[0.5, -2.0], [1.25, 3.0]], dtype=np.float16)
SIGNATURES = ["doubled", "half", "serving_default", "text"]
BUILD_TIMEOUT_S = 100


def build_saved_model(version_dir: Path) -> dict[str, np.ndarray]:
    """Write the SavedModel to ``version_dir``; TensorFlow's outputs for X, TEXT and HALF:
    ``y``, ``doubled``, ``length``, ``upper`` and ``h2``."""
    expected = version_dir.parent / f"{version_dir.name}-expected.npz"
    subprocess.run(
        [sys.executable, __file__, str(version_dir), str(expected)],
        check=True,
        timeout=BUILD_TIMEOUT_S,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    with np.load(expected) as saved:
        found = {name: saved[name] for name in saved.files}
    expected.unlink()
    found["upper"] = found["upper"].astype(np.object_)
    return found


def _build(version_dir: Path, expected: Path) -> None:
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(W)
            self.b = tf.Variable(B)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x @ self.w + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def doubled(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 2.0 * (x @ self.w + self.b)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def text(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"length": tf.strings.length(text), "upper": tf.strings.upper(text)}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float16, name="h")])
        def half(self, h: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"h2": h * tf.constant(2.0, tf.float16) + tf.constant(1.0, tf.float16)}

    model = Model()
    signatures = {
        "serving_default": model.predict,
        "doubled": model.doubled,
        "text": model.text,
        "half": model.half,
    }
    tf.saved_model.save(model, str(version_dir), signatures=signatures)
    # The outputs come from the SavedModel as TensorFlow loads it back, not from Python.
    loaded = tf.saved_model.load(str(version_dir)).signatures
    text = loaded["text"](text=tf.constant(TEXT, dtype=tf.string))
    np.savez(
        expected,
        y=loaded["serving_default"](x=tf.constant(X))["y"].numpy(),
        doubled=loaded["doubled"](x=tf.constant(X))["y"].numpy(),
        length=text["length"].numpy(),
        upper=np.array(list(text["upper"].numpy()), dtype=np.bytes_),
        h2=loaded["half"](h=tf.constant(HALF))["h2"].numpy(),
    )


if __name__ == "__main__":
    _build(Path(sys.argv[1]), Path(sys.argv[2]))
