"""The ``torch`` runtime: PyTorch models on the CPU or a CUDA GPU (the ``torch`` extra).

The version folder holds one model file:

- ``model.pt2``: a ``torch.export`` archive (``torch.export.save``), run with
  ``.module()``. Its inputs and outputs are read from the archive unless model.yaml
  declares them: inputs are named after ``forward``'s arguments, outputs after the keys
  of a returned dict, else ``output_0``, ``output_1``... When the model batches, the
  archive's first dimension must be dynamic (``dynamic_shapes``).
- ``model.pt``: TorchScript (``torch.jit.script`` or ``trace``, then ``torch.jit.save``).
  TorchScript does not say what its tensors are, so model.yaml must declare its inputs
  and outputs.
- ``model.pth`` or ``model.pkl``: a whole module saved with ``torch.save``. Unpickling
  runs whatever code the file names, so such a model is refused (UNAVAILABLE) unless
  the operator sets ``allow_pickled_models``; model.yaml declares its tensors.

Any of them may be encrypted (``model.pt2.enc``...; ``modelport encrypt``): it is
decrypted in memory and loaded from those bytes, as the onnx runtime does.

Inputs are passed to ``forward`` positionally, in the signature's input order. The
result may be one tensor (the one output), a tuple or list of tensors (the outputs in
order) or a dict of tensors by output name. Batches run under ``torch.inference_mode``.

Threads: PyTorch's intra-op thread count is process-wide in name but, with the OpenMP
backend of PyTorch's wheels, it takes effect per calling thread. So ``threads.intra_op``
is set on the instance's own thread before its first batch, and models with different
counts each keep theirs (``0`` leaves PyTorch's default). Threads that have not yet run
PyTorch start from the last count set. ``threads.inter_op`` is not applied: PyTorch's
inter-op pool is shared by the process, fixed at its first use, and serves only
TorchScript's ``fork``.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.runtime import RuntimeContext, Signature
from modelport.errors import InferenceFailed, ModelUnavailable, SpecError
from modelport.spec import TensorSpec
from modelport.supply.encryption import CryptoError, KeyProvider, decrypt_bytes, encrypted_path

log = logging.getLogger("modelport.torch")
# torch.export.load keeps its deserializer in a module global and fails when two threads
# load at once (models load concurrently), so loads of model files take turns.
_LOAD_LOCK = threading.Lock()

EXPORT, TORCHSCRIPT, PICKLE = "torch.export archive", "TorchScript model", "pickled module"
# One kind per file name; a version folder holds one of them, plain or encrypted.
MODEL_FILES = {
    "model.pt2": EXPORT,
    "model.pt": TORCHSCRIPT,
    "model.pth": PICKLE,
    "model.pkl": PICKLE,
}
PICKLE_REFUSED = (
    "pickled models can run arbitrary code; save with torch.jit.script/torch.export, "
    "or set allow_pickled_models"
)
INSTALL = "pip install 'modelport[torch]'"

# v2 datatype -> the name of its torch dtype (names, so torch is imported only at load).
TORCH_DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}


@dataclass(frozen=True, slots=True)
class ModelFile:
    """The model file found in a version folder: where, what kind, encrypted or not."""

    path: Path
    kind: str
    encrypted: bool


class TorchRuntime:
    def __init__(
        self,
        context: RuntimeContext,
        model_key: KeyProvider | None = None,
        allow_pickled: bool = False,
    ) -> None:
        """``model_key`` gives the key of encrypted files; ``allow_pickled`` (the
        ``allow_pickled_models`` setting) lets ``model.pth``/``model.pkl`` load."""
        self.context = context
        self.model_key = model_key
        self.allow_pickled = allow_pickled
        self.module: Any = None
        self.device = "cpu"
        self._torch: Any = None
        self._signature = Signature((), ())
        self._threads_set_on: int | None = None

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> None:
        torch = self._torch = _import_torch(self.context.spec.name)
        found = self._find()
        if found.kind == PICKLE and not self.allow_pickled:
            raise ModelUnavailable(f"{found.path}: a pickled module, refused: {PICKLE_REFUSED}")
        self._check_declared(found)
        self.device = self._choose_device(torch)
        source = self._read(found)
        try:
            with _LOAD_LOCK:
                self._load_file(torch, found, source)
        except (SpecError, ModelUnavailable):
            raise
        except Exception as exc:
            raise SpecError(
                f"{found.path}: PyTorch cannot load it as a {found.kind}: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None

    def _load_file(self, torch: Any, found: ModelFile, source: str | io.BytesIO) -> None:
        if found.kind == EXPORT:
            self._load_export(torch, source, found.path)
        elif found.kind == TORCHSCRIPT:
            # PyTorch 2.10+ deprecates TorchScript, but it still loads and runs.
            warnings.filterwarnings(
                "ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning
            )
            self.module = torch.jit.load(source, map_location=self.device).eval()
            self._signature = Signature(self.context.spec.inputs, self.context.spec.outputs)
        else:
            self._load_pickle(torch, source, found.path)

    def _find(self) -> ModelFile:
        folder = self.context.version_dir
        found: list[ModelFile] = []
        named = self.context.spec.model_file
        # A file named by model_file (Triton's default_model_filename) is TorchScript
        # unless its suffix says otherwise, as Triton's pytorch backend reads it.
        choices = {named: MODEL_FILES.get("model" + Path(named).suffix, TORCHSCRIPT)}
        for name, kind in (choices if named else MODEL_FILES).items():
            plain = folder / name
            if plain.is_file():
                found.append(ModelFile(plain, kind, False))
            elif encrypted_path(plain).is_file():
                found.append(ModelFile(encrypted_path(plain), kind, True))
        if not found:
            raise SpecError(
                f"{folder}: no torch model file; expected model.pt2 (torch.export.save), "
                "model.pt (TorchScript, torch.jit.save) or model.pth (torch.save of a whole "
                "module, with allow_pickled_models), each possibly encrypted (.enc)"
            )
        if len(found) > 1:
            names = ", ".join(f.path.name for f in found)
            raise SpecError(f"{folder}: holds {names}; keep one torch model file per version")
        return found[0]

    def _check_declared(self, found: ModelFile) -> None:
        spec = self.context.spec
        where = self.context.model_dir / "model.yaml"
        if found.kind != EXPORT and not (spec.inputs and spec.outputs):
            missing = "inputs" if not spec.inputs else "outputs"
            raise SpecError(
                f"{where}: field '{missing}': a {found.kind} ({found.path.name}) does not say "
                "what its tensors are; declare its inputs and outputs (name, datatype, "
                "shape), in the order forward takes and returns them"
            )
        for field_name, tensors in (("inputs", spec.inputs), ("outputs", spec.outputs)):
            for t in tensors:
                if t.datatype not in TORCH_DTYPES:
                    raise SpecError(
                        f"{where}: field '{field_name}': '{t.name}' is {t.datatype}, which "
                        "the torch runtime cannot pass (PyTorch has no string tensors); "
                        f"use one of {', '.join(TORCH_DTYPES)}, or a python model in front"
                    )

    def _choose_device(self, torch: Any) -> str:
        device = self.context.device
        if not device.startswith("cuda"):
            return "cpu"
        index = int(device.partition(":")[2] or "0")
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            return device
        spec = self.context.spec
        if not torch.backends.cuda.is_built():
            why = f"this PyTorch ({torch.__version__}) is a CPU-only build"
        else:
            why = f"PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)"
        if spec.instances.device == "auto":
            log.warning("model %s: placed on %s, but %s; on the CPU", spec.name, device, why)
            return "cpu"
        raise ModelUnavailable(
            f"model '{spec.name}' is placed on {device} (instances.device: gpu), but {why}; "
            "install a CUDA build of PyTorch on the GPU host, or set instances.device: "
            "auto or cpu"
        )

    def _read(self, found: ModelFile) -> str | io.BytesIO:
        if not found.encrypted:
            return str(found.path)
        where = f"model '{self.context.spec.name}': {found.path}"
        if self.model_key is None:
            raise ModelUnavailable(f"{where}: encrypted, and this server has no model key")
        try:
            return io.BytesIO(decrypt_bytes(found.path.read_bytes(), self.model_key()))
        except CryptoError as exc:
            raise ModelUnavailable(f"{where}: {exc}") from None

    def _load_export(self, torch: Any, source: str | io.BytesIO, path: Path) -> None:
        program = torch.export.load(source)
        if self.device != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self.device)
        found = _program_signature(
            torch, program, path=path, max_batch_size=self.context.spec.max_batch_size
        )
        spec = self.context.spec
        where = self.context.model_dir / "model.yaml"
        for field_name, declared, actual in (
            ("inputs", spec.inputs, found.inputs),
            ("outputs", spec.outputs, found.outputs),
        ):
            if declared and len(declared) != len(actual):
                raise SpecError(
                    f"{where}: field '{field_name}': declares {len(declared)}, but {path.name} "
                    f"has {len(actual)} ({', '.join(t.name for t in actual)}); declare them "
                    "all, in order, or none to use the archive's"
                )
        self._signature = Signature(spec.inputs or found.inputs, spec.outputs or found.outputs)
        self.module = program.module()

    def _load_pickle(self, torch: Any, source: str | io.BytesIO, path: Path) -> None:
        # The operator allowed it (allow_pickled_models): this runs the file's code.
        loaded = torch.load(source, map_location=self.device, weights_only=False)
        if not isinstance(loaded, torch.nn.Module):
            raise SpecError(
                f"{path}: holds a {type(loaded).__name__}, not a torch.nn.Module (a "
                "state_dict has no model in it); save the module with torch.export.save"
            )
        self.module = loaded.eval()
        self._signature = Signature(self.context.spec.inputs, self.context.spec.outputs)

    def signature(self) -> Signature:
        return self._signature

    # -- running ----------------------------------------------------------------------------

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        torch = self._torch
        self._set_threads(torch)
        args = [self._tensor(torch, inputs[t.name]) for t in self._signature.inputs]
        with torch.inference_mode():
            result = self.module(*args)
            return self._outputs(torch, result)

    def _set_threads(self, torch: Any) -> None:
        ident = threading.get_ident()
        intra = self.context.spec.threads.intra_op
        if intra > 0 and self._threads_set_on != ident:
            # Reading the count first makes this thread take PyTorch's settings now, so
            # they cannot later override the count set here (see the module docstring).
            torch.get_num_threads()
            torch.set_num_threads(intra)
            self._threads_set_on = ident

    def _tensor(self, torch: Any, array: np.ndarray) -> Any:
        # torch.from_numpy shares memory, and warns about (and cannot take) read-only or
        # negatively strided arrays, such as those decoded from a request's bytes.
        if not (array.flags.writeable and array.flags.c_contiguous):
            array = np.array(array, order="C")
        tensor = torch.from_numpy(array)
        return tensor if self.device == "cpu" else tensor.to(self.device)

    def _outputs(self, torch: Any, result: Any) -> dict[str, np.ndarray]:
        specs = self._signature.outputs
        names = [t.name for t in specs]
        if isinstance(result, torch.Tensor) and len(names) == 1:
            by_name = {names[0]: result}
        elif isinstance(result, tuple | list) and len(result) == len(names):
            by_name = dict(zip(names, result, strict=True))
        elif isinstance(result, dict) and all(n in result for n in names):
            by_name = {n: result[n] for n in names}
        else:
            raise InferenceFailed(
                f"model '{self.context.spec.name}' returned {_describe(result)}, but its "
                f"outputs are {names}: return one tensor per output, as a tuple in that "
                "order or a dict by name"
            )
        out: dict[str, np.ndarray] = {}
        for spec in specs:
            tensor = by_name[spec.name]
            if not isinstance(tensor, torch.Tensor):
                raise InferenceFailed(
                    f"model '{self.context.spec.name}' returned {_describe(tensor)} for "
                    f"output '{spec.name}', not a tensor"
                )
            # Cast on the device, before the copy: the service would cast anyway.
            tensor = tensor.to(getattr(torch, TORCH_DTYPES[spec.datatype]))
            out[spec.name] = tensor.cpu().numpy()
        return out

    def unload(self) -> None:
        self.module = None
        if self._torch is not None and self.device != "cpu":
            self._torch.cuda.empty_cache()


def _import_torch(model: str) -> Any:
    try:
        import torch  # lazy: only servers with torch models need PyTorch, or pay its import
    except ImportError as exc:
        raise ModelUnavailable(
            f"model '{model}': the torch runtime needs PyTorch, which is not installed here "
            f"({exc}); {INSTALL}"
        ) from None
    return torch


def _program_signature(torch: Any, program: Any, *, path: Path, max_batch_size: int) -> Signature:
    """Inputs and outputs of an exported program, from its graph's example values."""
    nodes = {n.name: n for n in program.graph.nodes}
    graph = program.graph_signature
    inputs = tuple(
        _tensor_spec(
            torch, name, nodes[name], path=path, max_batch_size=max_batch_size, is_input=True
        )
        for name in graph.user_inputs
    )
    out_spec = program.call_spec.out_spec
    keys = out_spec.context if out_spec is not None and out_spec.type is dict else None
    outputs = []
    for i, name in enumerate(graph.user_outputs):
        label = str(keys[i]) if keys and i < len(keys) else f"output_{i}"
        outputs.append(
            _tensor_spec(
                torch,
                label,
                nodes.get(name),
                path=path,
                max_batch_size=max_batch_size,
                is_input=False,
            )
        )
    return Signature(inputs, tuple(outputs))


def _tensor_spec(
    torch: Any, name: str, node: Any, *, path: Path, max_batch_size: int, is_input: bool
) -> TensorSpec:
    value = None if node is None else node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        raise SpecError(f"{path}: '{name}' is not a tensor; the torch runtime serves tensors")
    by_dtype = {getattr(torch, t): v2 for v2, t in TORCH_DTYPES.items()}
    datatype = by_dtype.get(value.dtype)
    if datatype is None:
        raise SpecError(f"{path}: tensor '{name}' has dtype {value.dtype}, not served")
    dims = [d if isinstance(d, int) else -1 for d in value.shape]
    if max_batch_size > 0:
        if not dims:
            raise SpecError(
                f"{path}: tensor '{name}' is a scalar, so it has no batch dimension; "
                "set max_batch_size: 0"
            )
        if is_input and dims[0] != -1 and not dims[0] == max_batch_size == 1:
            raise SpecError(
                f"{path}: tensor '{name}' was exported with a fixed first dimension of "
                f"{dims[0]}, so it cannot take batches of other sizes; export with "
                f"dynamic_shapes={{'{name}': {{0: torch.export.Dim('batch')}}}}, or set "
                "max_batch_size: 0"
            )
        dims = dims[1:]
    return TensorSpec(name=name, datatype=datatype, shape=tuple(dims))


def _describe(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    return f"a {type(value).__name__}"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
