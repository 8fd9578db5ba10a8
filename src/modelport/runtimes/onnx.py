"""The ``onnx`` runtime: ONNX Runtime on CPU, or CUDA with the ``gpu`` extra.

The model file is ``<version>/model.onnx``. Its inputs and outputs are read from the
file, so ``runtime: onnx`` and ``max_batch_size`` are all model.yaml needs; when the
model batches, the file's first dimension is the batch dimension.

A lone request (the batcher runs one on the event loop's thread when the model is idle
and fast: core/batcher.py) goes to a second session of the same model tuned for
latency: ``parameters.lone_request_threads`` intra-op threads (default: the cores this
process may use, at most 4) that spin while waiting for work instead of sleeping.
Waking a sleeping thread costs about what a small model's row does, so this halves a
lone row's compute; batches keep the main session, whose threads never spin (spinning
threads would take the CPU from the event loop under load). Only CPU models of at most
64 MiB get one (0 turns it off); it costs one more copy of the weights.

Threads, when model.yaml says nothing of them: a small model keeps one intra-op thread
per instance (waking a second thread costs about what a small model's batch does), and
a model whose file holds at least ``AUTO_THREADS_BYTES`` (16 MiB of weights: its batches
are compute- or memory-bound) gets the cores this process may use, shared among its
instances (``cores // instances.count``, at least 1). A user who writes the two-line
model.yaml of a big model thus gets the machine, not one core of it; ``threads:`` in
model.yaml always wins. bench/README.md ("Compute-bound models") has the numbers.

In place of ``model.onnx`` the folder may hold ``model.onnx.enc`` (``modelport
encrypt``): it is decrypted in memory with the key from the runtime's ``model_key``
provider and the session is built from those bytes, so the plain model never touches the
disk. Without a usable key the model is UNAVAILABLE with the reason. When both files are
there, the plain one is served.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.runtime import RuntimeContext, Signature, available_cores
from modelport.errors import ModelUnavailable, SpecError
from modelport.spec import TensorSpec
from modelport.supply.encryption import CryptoError, KeyProvider, decrypt_bytes, encrypted_path

MODEL_FILE = "model.onnx"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

log = logging.getLogger("modelport.onnx")

LONE_THREADS_MAX = 4
LONE_MODEL_BYTES_MAX = 64 * 1024 * 1024
AUTO_THREADS_BYTES = 16 * 1024 * 1024

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
    """An ONNX model, and an :class:`~modelport.core.runtime.InlineRuntime`: a session
    never calls back into the server, so the batcher may run a lone small request on
    the event loop's thread, saving a thread hop (see core/batch_policy.py)."""

    def __init__(self, context: RuntimeContext, model_key: KeyProvider | None = None) -> None:
        """``model_key`` gives the key of encrypted model files (app.py passes one built
        from the settings); without it an encrypted model is UNAVAILABLE."""
        self.context = context
        self.model_key = model_key
        self.session: Any = None
        self.lone_session: Any = None  # for lone requests on the loop's thread (see above)
        self._outputs: list[str] = []
        self._strings: set[str] = set()

    def load(self) -> None:
        import onnxruntime as ort  # lazy: only servers with ONNX models pay for the import

        path = self.context.model_path(MODEL_FILE)
        model: str | bytes = str(path)
        if not path.is_file():
            if not encrypted_path(path).is_file():
                raise SpecError(f"{path}: missing; an onnx model's file is {path.name}")
            path = encrypted_path(path)
            model = self._decrypt(path)
        spec = self.context.spec
        choice = choose_providers(
            spec.name, self.context.device, spec.instances.device, ort.get_available_providers()
        )
        threads = spec.threads
        intra_op = self._intra_op(path, choice)
        # Spinning threads would steal the CPU from the event loop between batches.
        options = _options(ort, intra_op, threads.inter_op, spin=False)
        lone = self._lone_threads(path, choice)
        try:
            self.session = ort.InferenceSession(
                model, options, providers=choice.names, provider_options=choice.options
            )
            if lone:
                self.lone_session = ort.InferenceSession(
                    model, _options(ort, lone, 1, spin=True), providers=[CPU]
                )
        except Exception as exc:
            raise SpecError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
        self._check_cuda_started(choice)
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._strings = {i.name for i in self.session.get_inputs() if i.type == "tensor(string)"}

    def _intra_op(self, path: Path, choice: ProviderChoice) -> int:
        """The main session's intra-op threads: model.yaml's, else chosen by the model's
        size (see the module's docstring)."""
        spec = self.context.spec
        if "intra_op" in spec.threads.model_fields_set or choice.names != [CPU]:
            return spec.threads.intra_op
        if path.stat().st_size < AUTO_THREADS_BYTES:
            return spec.threads.intra_op
        return max(1, available_cores() // spec.instances.count)

    def _lone_threads(self, path: Path, choice: ProviderChoice) -> int:
        """Threads of the lone-request session; 0: none (see the module's docstring)."""
        spec = self.context.spec
        value = spec.parameters.get("lone_request_threads")
        if value is None:
            small = path.stat().st_size <= LONE_MODEL_BYTES_MAX
            cpu_only = choice.names == [CPU]
            value = min(LONE_THREADS_MAX, available_cores()) if small and cpu_only else 0
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpecError(
                f"{self.context.model_dir / 'model.yaml'}: field "
                f"'parameters.lone_request_threads': {value!r} is not a whole number >= 0 "
                "(0: no session of its own for lone requests)"
            )
        return value if value >= 2 else 0  # one thread: the main session does the same

    def _check_cuda_started(self, choice: ProviderChoice) -> None:
        # ONNX Runtime falls back to the CPU, with only a log line, when its CUDA provider
        # cannot start (CUDA or cuDNN libraries missing): a GPU model must not hide that.
        if CUDA not in choice.names or CUDA in self.session.get_providers():
            return
        spec = self.context.spec
        if spec.instances.device == "auto":
            log.warning(
                "model %s: ONNX Runtime's CUDA provider did not start on %s; on the CPU",
                spec.name, self.context.device,
            )  # fmt: skip
            return
        self.session = None
        raise ModelUnavailable(
            f"model '{spec.name}': ONNX Runtime's CUDA provider did not start on "
            f"{self.context.device} (are the CUDA and cuDNN libraries that onnxruntime-gpu "
            "needs installed?); set instances.device: auto to fall back to the CPU"
        )

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
        where = self.context.model_path(MODEL_FILE)
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

    def infer_inline(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """A lone request, on the event loop's thread: the lone session when there is one."""
        session = self.lone_session
        if session is None:
            return self.infer(inputs, parameters)
        if self._strings:
            inputs = {n: (_to_str(a) if n in self._strings else a) for n, a in inputs.items()}
        return dict(zip(self._outputs, session.run(self._outputs, inputs), strict=True))

    def unload(self) -> None:
        self.session = None
        self.lone_session = None


def _options(ort: Any, intra_op: int, inter_op: int, spin: bool) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op
    options.inter_op_num_threads = inter_op
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    """ONNX Runtime execution providers, best first, with the options of each."""

    names: list[str]
    options: list[dict[str, str]]


def choose_providers(
    model: str, device: str, wanted: str, available: Sequence[str]
) -> ProviderChoice:
    """The providers of an instance placed on ``device`` ("cpu" or "cuda:N").

    On a GPU: CUDA on GPU N, with the CPU behind it for operators CUDA lacks. Where this
    ONNX Runtime has no CUDA provider, ``wanted`` (instances.device) ``auto`` settles for
    the CPU and ``gpu`` makes the model UNAVAILABLE, saying what to install.
    """
    cpu = ProviderChoice([CPU], [{}])
    if not device.startswith("cuda"):
        return cpu
    if CUDA not in available:
        if wanted == "auto":
            log.warning("model %s: ONNX Runtime has no CUDA provider; on the CPU", model)
            return cpu
        raise ModelUnavailable(
            f"model '{model}' is placed on {device} (instances.device: gpu), but this ONNX "
            f"Runtime has no CUDA provider (it has {', '.join(available)}); "
            "pip install 'modelport[gpu]' for onnxruntime-gpu (and pip uninstall onnxruntime, "
            "whose CPU-only copy hides it), or set instances.device: auto or cpu"
        )
    return ProviderChoice([CUDA, CPU], [{"device_id": device.partition(":")[2] or "0"}, {}])


def _to_str(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.object_)
    flat = out.reshape(-1)
    for i, item in enumerate(array.flat):
        flat[i] = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    return out
