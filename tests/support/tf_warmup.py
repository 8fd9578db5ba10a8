"""TF Serving warm-up files (``<version>/assets.extra/tf_serving_warmup_requests``), written
by TensorFlow's own ``tf.io.TFRecordWriter`` in a child process, as TF Serving's users
write them: a TFRecord of ``PredictionLog`` protos whose requests' tensors come from
``tf.make_tensor_proto``. The PredictionLog is modelport's own generated message (its
protos register in a pool of their own, beside TensorFlow's); the test process never
imports TensorFlow (see tf_builders.py).

``python tests/support/tf_warmup.py VERSION_DIR KIND``: KIND ``good`` writes two
``serving_default`` requests (X, and its first row) and one for the ``doubled``
signature; ``bad`` writes one whose input is named ``nope``, which the model lacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

WARMUP_FILE = Path("assets.extra", "tf_serving_warmup_requests")
GOOD_RECORDS = 3
BUILD_TIMEOUT_S = 100
SRC = Path(__file__).resolve().parents[2] / "src"


def write_warmup_file(version_dir: Path, kind: str = "good") -> Path:
    """Write the warm-up file of the SavedModel in ``version_dir``; its path."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    subprocess.run(
        [sys.executable, __file__, str(version_dir), kind],
        check=True,
        timeout=BUILD_TIMEOUT_S,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": path},
    )
    return version_dir / WARMUP_FILE


def _write(version_dir: Path, kind: str) -> None:
    import tensorflow as tf

    from modelport.protos.tensorflow_serving.apis import prediction_log_pb2

    x = np.array([[1.0, 2.0, 3.0, 4.0], [-1.5, 0.0, 2.25, 8.0]], dtype=np.float32)
    if kind == "good":
        requests = [("", {"x": x}), ("serving_default", {"x": x[:1]}), ("doubled", {"x": x})]
    else:
        requests = [("serving_default", {"nope": x})]
    target = version_dir / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for signature, inputs in requests:
            log = prediction_log_pb2.PredictionLog()
            request = log.predict_log.request
            request.model_spec.name = "ignored"
            request.model_spec.signature_name = signature
            for name, array in inputs.items():
                # TensorFlow's TensorProto, carried over as bytes into modelport's.
                proto = tf.make_tensor_proto(array)
                request.inputs[name].ParseFromString(proto.SerializeToString())
            writer.write(log.SerializeToString())


if __name__ == "__main__":
    _write(Path(sys.argv[1]), sys.argv[2])
