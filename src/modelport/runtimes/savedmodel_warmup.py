"""TF Serving's warm-up records, run as a SavedModel loads (``runtimes/tensorflow.py``).

A SavedModel's ``assets.extra/tf_serving_warmup_requests`` is a TFRecord file of
``PredictionLog`` protos; each ``predict_log`` holds a ``PredictRequest`` whose
``model_spec.signature_name`` picks the signature (``serving_default`` when empty) and
whose ``inputs`` are TensorProtos, with their batch dimension. Each record runs once,
at most :data:`MAX_WARMUP_RECORDS` of them, as in TF Serving; a record that cannot run
fails the load, naming the file and the record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import ModelportError, SpecError
from modelport.protos.tensorflow_serving.apis import prediction_log_pb2

log = logging.getLogger("modelport.tensorflow")

# TF Serving's warm-up file in a SavedModel, and the most records it reads from one.
WARMUP_FILE = Path("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000

SignatureCall = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True, slots=True)
class SavedModelWarmup:
    """The warm-up records a SavedModel ran as it loaded: the file, how many, how long."""

    path: Path
    records: int
    elapsed_ns: int


def run_warmup_file(
    path: Path,
    *,
    tf: Any,
    call: SignatureCall,
    signatures: list[str],
    default: str,
    model: str,
) -> SavedModelWarmup:
    """Run every record of ``path`` through ``call(signature, inputs)``; ``tf`` is the
    TensorFlow module, ``signatures`` the SavedModel's, ``default`` the served one."""
    # TensorFlow's own TensorProto, which tf.make_ndarray reads (modelport's protos
    # register in a pool of their own, so a record's tensors pass between them as bytes).
    from tensorflow.core.framework import tensor_pb2

    start = time.perf_counter_ns()
    count = 0
    try:
        for count, record in enumerate(tf.data.TFRecordDataset(str(path)), 1):
            if count > MAX_WARMUP_RECORDS:
                raise SpecError(
                    f"{path}: more than {MAX_WARMUP_RECORDS} warm-up records, the most TF "
                    "Serving reads; keep a few typical requests"
                )
            request = _predict_request(path, count, record.numpy())
            name = request.model_spec.signature_name or default
            if name not in signatures:
                raise SpecError(
                    f"{path}: record {count}: the SavedModel has no signature {name!r}; "
                    f"its signatures are {signatures}"
                )
            inputs = {
                key: tf.make_ndarray(tensor_pb2.TensorProto.FromString(t.SerializeToString()))
                for key, t in request.inputs.items()
            }
            try:
                call(name, inputs)
            except ModelportError as exc:
                raise SpecError(f"{path}: record {count}: {exc.message}") from None
    except tf.errors.OpError as exc:
        raise SpecError(
            f"{path}: not a TFRecord file of PredictionLog records ({exc.message}); "
            "write it with tf.io.TFRecordWriter"
        ) from None
    elapsed = time.perf_counter_ns() - start
    log.info(
        "model '%s': %d warm-up records of %s run in %.1f ms", model, count, path, elapsed / 1e6
    )
    return SavedModelWarmup(path, count, elapsed)


def _predict_request(path: Path, index: int, record: bytes) -> Any:
    """The PredictRequest of a warm-up record; SpecError when it holds none."""
    try:
        entry = prediction_log_pb2.PredictionLog.FromString(record)
    except Exception as exc:  # protobuf's DecodeError
        raise SpecError(f"{path}: record {index} is not a PredictionLog: {exc}") from None
    if entry.WhichOneof("log_type") != "predict_log":
        raise SpecError(
            f"{path}: record {index} holds no predict_log (a classify, regress or "
            "multi-inference log?); modelport's models answer Predict, so their warm-up "
            "records are PredictionLog {predict_log {request {...}}}"
        )
    return entry.predict_log.request
