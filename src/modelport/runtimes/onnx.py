"""The ``onnx`` runtime: ONNX Runtime on CPU, or CUDA with the ``gpu`` extra.

The model file is ``<version>/model.onnx``. Its inputs and outputs are read from the
file, so ``runtime: onnx`` and ``max_batch_size`` are all model.yaml needs; when the
model batches, the file's first dimension is the batch dimension.

In place of ``model.onnx`` the folder may hold ``model.onnx.enc`` (``modelport
encrypt``): it is decrypted in memory with the key from the runtime's ``model_key``
provider and the session is built from those bytes, so the plain model never touches the
disk. Without a usable key the model is UNAVAILABLE with the reason. When both files are
there, the plain one is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.runtime import RuntimeContext, Signature
from modelport.crypto import CryptoError, KeyProvider, decrypt_bytes, encrypted_path
from modelport.errors import ModelUnavailable, SpecError
from modelport.spec import TensorSpec

MODEL_FILE = "model.onnx"

_ONNX_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class OnnxRuntime:
    # A session never calls back into the server, so the batcher may run a lone small
    # request on the event loop's thread, saving a thread hop (see core/batcher.py).
    runs_inline = True

    def __init__(self, context: RuntimeContext, model_key: KeyProvider | None = None) -> None:
        """``model_key`` gives the key of encrypted model files (app.py passes one built
        from the settings); without it an encrypted model is UNAVAILABLE."""
        self.context = context
        self.model_key = model_key
        self.session: Any = None
        self._outputs: list[str] = []
        self._strings: set[str] = set()

    def load(self) -> None:
        import onnxruntime as ort  # lazy: only servers with ONNX models pay for the import

        path = self.context.version_dir / MODEL_FILE
        model: str | bytes = str(path)
        if not path.is_file():
            if not encrypted_path(path).is_file():
                raise SpecError(f"{path}: missing; an onnx model's file is {MODEL_FILE}")
            path = encrypted_path(path)
            model = self._decrypt(path)
        providers: list[str] = ["CPUExecutionProvider"]
        provider_options: list[dict[str, Any]] = [{}]
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        # device: auto takes a GPU where there is one and settles for the CPU elsewhere.
        settle = self.context.spec.instances.device == "auto" and not has_cuda
        if self.context.device.startswith("cuda") and not settle:
            if not has_cuda:
                raise ModelUnavailable(
                    f"model '{self.context.spec.name}' asks for a GPU (instances.device), but "
                    "ONNX Runtime has no CUDA provider here; install modelport[gpu] on a GPU "
                    "host or set instances.device: cpu"
                )
            gpu = self.context.device.partition(":")[2] or "0"
            providers.insert(0, "CUDAExecutionProvider")
            provider_options.insert(0, {"device_id": gpu})
        threads = self.context.spec.threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads.intra_op
        options.inter_op_num_threads = threads.inter_op
        # Spinning threads would steal the CPU from the event loop between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                model, options, providers=providers, provider_options=provider_options
            )
        except Exception as exc:
            raise SpecError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._strings = {i.name for i in self.session.get_inputs() if i.type == "tensor(string)"}

    def _decrypt(self, path: Path) -> bytes:
        where = f"model '{self.context.spec.name}': {path}"
        if self.model_key is None:
            raise ModelUnavailable(f"{where}: encrypted, and this server has no model key")
        try:
            return decrypt_bytes(path.read_bytes(), self.model_key())
        except CryptoError as exc:
            raise ModelUnavailable(f"{where}: {exc}") from None

    def signature(self) -> Signature:
        batches = self.context.spec.batches
        return Signature(
            tuple(self._tensor(t, batches) for t in self.session.get_inputs()),
            tuple(self._tensor(t, batches) for t in self.session.get_outputs()),
        )

    def _tensor(self, node: Any, batches: bool) -> TensorSpec:
        datatype = _ONNX_TYPES.get(node.type)
        where = self.context.version_dir / MODEL_FILE
        if datatype is None:
            raise SpecError(f"{where}: tensor '{node.name}' has type {node.type}, not served")
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in (node.shape or [])]
        if batches:
            if not dims:
                raise SpecError(
                    f"{where}: tensor '{node.name}' is a scalar, so it has no batch "
                    "dimension; set max_batch_size: 0"
                )
            dims = dims[1:]
        return TensorSpec(name=node.name, datatype=datatype, shape=tuple(dims))

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        if self._strings:
            inputs = {n: (_to_str(a) if n in self._strings else a) for n, a in inputs.items()}
        results = self.session.run(self._outputs, inputs)
        return dict(zip(self._outputs, results, strict=True))

    def unload(self) -> None:
        self.session = None


def _to_str(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.object_)
    flat = out.reshape(-1)
    for i, item in enumerate(array.flat):
        flat[i] = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    return out
