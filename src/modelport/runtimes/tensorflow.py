"""The ``tensorflow`` runtime: a TensorFlow SavedModel (``pip install 'modelport[tensorflow]'``).

The model files are TF Serving's: ``<version>/saved_model.pb`` and ``<version>/variables/``,
as ``tf.saved_model.save`` writes them, so a TF Serving model folder serves unchanged (with
no model.yaml it is read as ``runtime: tensorflow`` with ``max_batch_size: 128``; see
``core/repository.py``).

Signatures
    The served signature is ``parameters: {signature_name: ...}`` in model.yaml, else
    ``serving_default`` (or the SavedModel's only signature). Its inputs and outputs (names,
    datatypes, shapes) are read from the SavedModel unless model.yaml declares them; when
    the model batches, each input's first dimension must be ``None`` in the signature and
    is the batch dimension. A request picks another signature with the request parameter
    ``signature_name`` (TF Serving's ``signature_name`` over REST and gRPC, or v2
    ``parameters``); the core checks requests against the served signature, so another
    signature is run only when it has the same inputs and outputs (names and datatypes),
    and an unknown or different one is refused with the signatures the model has.

Threads
    ``threads.intra_op`` and ``threads.inter_op`` set TensorFlow's thread pools, which are
    one per process: the first TensorFlow model loaded sets them, and a later model asking
    for other numbers is served with the first ones (a warning says so).

Warm-up records
    As TF Serving does, a version folder's ``assets.extra/tf_serving_warmup_requests``
    (a TFRecord file of ``PredictionLog`` protos, each a ``predict_log`` whose request
    names the signature and holds the inputs) is run record by record as the SavedModel
    loads, on every instance, before the version serves; a record that fails fails the
    load, naming the record. The ``savedmodel_warmup`` setting turns it off
    (tensorflow_model_server's ``--enable_model_warmup=false``); what it took is kept
    in :attr:`TensorflowRuntime.warmup` (TF Serving's ``model_warmup_latency`` metric).

Device
    ``cpu`` pins the model to the CPU; a GPU (``instances.device: gpu``) needs a TensorFlow
    build with CUDA, which the ``tensorflow`` extra (``tensorflow-cpu``) is not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelport.codecs.tfserving_json import DEFAULT_SIGNATURE, SIGNATURE_PARAMETER
from modelport.core.repository import SAVED_MODEL_FILES
from modelport.core.runtime import RuntimeContext, Signature
from modelport.errors import InvalidInput, ModelUnavailable, SpecError
from modelport.runtimes.savedmodel_warmup import WARMUP_FILE, SavedModelWarmup, run_warmup_file
from modelport.spec import SPEC_FILE, TensorSpec

log = logging.getLogger("modelport.tensorflow")

# TensorFlow dtype name -> v2 datatype.
_TF_TYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "string": "BYTES",
}


class _ProcessThreads:
    """TensorFlow's intra/inter-op pools exist once per process and are fixed before its
    first operation runs: the first model's ``threads`` win; later ones are told so."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set: tuple[int, int] | None = None

    def configure(self, tf: Any, *, model: str, intra: int, inter: int) -> None:
        with self._lock:
            if self._set is None:
                try:
                    tf.config.threading.set_intra_op_parallelism_threads(intra)
                    tf.config.threading.set_inter_op_parallelism_threads(inter)
                except RuntimeError as exc:  # TensorFlow already ran something here
                    log.warning("model '%s': threads not applied: %s", model, exc)
                self._set = (intra, inter)
            elif self._set != (intra, inter):
                log.warning(
                    "model '%s': threads intra_op=%d inter_op=%d ignored: TensorFlow's thread "
                    "pools are process-wide and already set to intra_op=%d inter_op=%d",
                    model,
                    intra,
                    inter,
                    *self._set,
                )


_THREADS = _ProcessThreads()


class TensorflowRuntime:
    """A SavedModel, and an :class:`~modelport.core.runtime.InlineRuntime`: a signature
    never calls back into the server, so the batcher may run a lone small request on the
    event loop's thread (see core/batch_policy.py)."""

    def __init__(self, context: RuntimeContext, *, warmup_records: bool = True) -> None:
        """``warmup_records``: run the SavedModel's TF Serving warm-up file as it loads."""
        self.context = context
        self.warmup_records = warmup_records
        self.warmup: SavedModelWarmup | None = None
        self._tf: Any = None
        self._model: Any = None
        self._device = "/CPU:0"
        self._default = ""
        # Every signature's inputs and outputs as {name: (datatype, shape)}, shape with
        # None for an unknown dimension, or None for an unknown rank.
        self._tensors: dict[str, _Tensors] = {}
        self._runnable: set[str] = set()
        self._known: list[str] = []

    def load(self) -> None:
        spec = self.context.spec
        where = self.context.model_path("")  # the version folder, unless model_file says
        if not any((where / name).is_file() for name in SAVED_MODEL_FILES):
            raise SpecError(
                f"{where}: no saved_model.pb; a tensorflow model's version folder holds a "
                "SavedModel (saved_model.pb and variables/, as tf.saved_model.save writes)"
            )
        # TensorFlow's C++ start-up notices (oneDNN, CPU features) would flood the log.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            import tensorflow as tf  # lazy: only servers with TensorFlow models pay for it
        except ImportError as exc:
            raise ModelUnavailable(
                f"model '{spec.name}' needs TensorFlow, which is not installed here "
                f"({exc}); install it with: pip install 'modelport[tensorflow]'"
            ) from None
        self._tf = tf
        _THREADS.configure(
            tf, model=spec.name, intra=spec.threads.intra_op, inter=spec.threads.inter_op
        )
        self._device = self._pick_device(tf)
        try:
            with tf.device(self._device):
                self._model = tf.saved_model.load(str(where))
        except Exception as exc:
            raise SpecError(f"{where}: TensorFlow cannot load the SavedModel: {exc}") from None
        functions = dict(self._model.signatures)
        if not functions:
            raise SpecError(
                f"{where}: the SavedModel has no signatures; save it with "
                "tf.saved_model.save(model, path, signatures={'serving_default': fn})"
            )
        self._default = self._pick_default(sorted(functions))
        served = _read_tensors(where, self._default, functions[self._default])
        self._tensors = {self._default: served}
        for name, function in functions.items():
            # Another signature the runtime cannot read is only never callable here.
            with contextlib.suppress(SpecError):
                self._tensors.setdefault(name, _read_tensors(where, name, function))
        self._known = sorted(functions)
        self._runnable = {n for n, t in self._tensors.items() if t.same_kinds(served)}
        if self.warmup_records and (where / WARMUP_FILE).is_file():
            self.warmup = run_warmup_file(
                where / WARMUP_FILE,
                tf=tf,
                call=self._call,
                signatures=self._known,
                default=self._default,
                model=spec.name,
            )

    def _pick_device(self, tf: Any) -> str:
        device = self.context.device
        if not device.startswith("cuda"):
            return "/CPU:0"
        if tf.config.list_physical_devices("GPU"):
            return f"/GPU:{device.partition(':')[2] or '0'}"
        if self.context.spec.instances.device == "auto":
            return "/CPU:0"  # auto settles for the CPU where TensorFlow sees no GPU
        raise ModelUnavailable(
            f"model '{self.context.spec.name}' asks for a GPU (instances.device), but this "
            "TensorFlow sees none (the tensorflow extra is tensorflow-cpu); install a CUDA "
            "build ('tensorflow[and-cuda]') on a GPU host or set instances.device: cpu"
        )

    def _pick_default(self, names: list[str]) -> str:
        chosen = self.context.spec.parameters.get(SIGNATURE_PARAMETER)
        where = self.context.model_dir / SPEC_FILE
        if chosen is None:
            if DEFAULT_SIGNATURE in names or len(names) > 1:
                chosen = DEFAULT_SIGNATURE
            else:
                return names[0]  # a SavedModel's one signature, whatever its name
        if not isinstance(chosen, str) or chosen not in names:
            raise SpecError(
                f"{where}: field 'parameters.{SIGNATURE_PARAMETER}': the SavedModel has no "
                f"signature {chosen!r}; its signatures are {names} (name the one to serve "
                f"with parameters: {{{SIGNATURE_PARAMETER}: ...}})"
            )
        return chosen

    def signature(self) -> Signature:
        served = self._tensors[self._default]
        spec = self.context.spec
        inputs = spec.inputs or tuple(
            self._spec(n, *t, is_input=True) for n, t in served.inputs.items()
        )
        outputs = spec.outputs or tuple(
            self._spec(n, *t, is_input=False) for n, t in served.outputs.items()
        )
        return Signature(tuple(inputs), tuple(outputs))

    def _spec(
        self, name: str, datatype: str, dims: tuple[int | None, ...] | None, *, is_input: bool
    ) -> TensorSpec:
        where = f"{self.context.version_dir}: signature '{self._default}'"
        if dims is None:
            raise SpecError(
                f"{where}: tensor '{name}' has an unknown rank; declare the signature's "
                "inputs and outputs (name, datatype, shape) in model.yaml"
            )
        if self.context.spec.batches:
            if not dims or (is_input and dims[0] is not None):
                raise SpecError(
                    f"{where}: tensor '{name}' has shape {_show(dims)}, whose first "
                    "dimension is not a batch dimension (None); set max_batch_size: 0 in "
                    "model.yaml"
                )
            dims = dims[1:]
        shape = tuple(-1 if d is None else d for d in dims)
        return TensorSpec(name=name, datatype=datatype, shape=shape)

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        name = parameters.get(SIGNATURE_PARAMETER) or self._default
        if not isinstance(name, str) or name not in self._runnable:
            raise InvalidInput(self._refusal(name))
        return self._call(name, inputs)

    def _call(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        function = self._model.signatures[name]
        with tf.device(self._device):
            feeds = {
                n: tf.constant(a, dtype=tf.string) if a.dtype == np.object_ else tf.constant(a)
                for n, a in inputs.items()
            }
            try:
                results = function(**feeds)
            except (tf.errors.InvalidArgumentError, TypeError) as exc:
                message = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
                raise InvalidInput(
                    f"model '{self.context.spec.name}' signature '{name}' refused the input: "
                    f"{_op_message(message)}"
                ) from None
        return {n: t.numpy() for n, t in results.items()}

    def infer_inline(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        return self.infer(inputs, parameters)

    def _refusal(self, name: Any) -> str:
        model = self.context.spec.name
        known = self._known
        if name not in known:
            return (
                f"model '{model}' has no signature {name!r}; its signatures are {known} "
                f"(default '{self._default}')"
            )
        return (
            f"model '{model}' signature {name!r} has other inputs or outputs than the served "
            f"signature '{self._default}', so it cannot be called through this model; "
            f"signatures callable here: {sorted(self._runnable)}. Serve it as a model of its "
            f"own: a folder with the same version folders and a model.yaml setting "
            f"parameters: {{{SIGNATURE_PARAMETER}: {name}}}"
        )

    def unload(self) -> None:
        self._model = None
        self._tensors = {}
        self._runnable = set()


class _Tensors:
    """One signature's inputs and outputs as {name: (datatype, dims)}."""

    def __init__(
        self,
        inputs: dict[str, tuple[str, tuple[int | None, ...] | None]],
        outputs: dict[str, tuple[str, tuple[int | None, ...] | None]],
    ) -> None:
        self.inputs, self.outputs = inputs, outputs

    def same_kinds(self, other: _Tensors) -> bool:
        """Whether requests checked against ``other`` can run this signature too."""

        def kinds(tensors: dict[str, tuple[str, Any]]) -> dict[str, str]:
            return {n: datatype for n, (datatype, _) in tensors.items()}

        return kinds(self.inputs) == kinds(other.inputs) and kinds(self.outputs) == kinds(
            other.outputs
        )


def _read_tensors(where: Path, name: str, function: Any) -> _Tensors:
    """A signature's tensors; SpecError where modelport cannot serve them."""
    what = f"{where}: signature '{name}'"
    args, kwargs = function.structured_input_signature
    outputs = function.structured_outputs
    if args or not isinstance(outputs, Mapping):
        raise SpecError(f"{what}: takes positional inputs or returns no dict of named outputs")
    return _Tensors(
        {n: _describe(what, n, spec) for n, spec in kwargs.items()},
        {n: _describe(what, n, spec) for n, spec in outputs.items()},
    )


def _describe(what: str, name: str, spec: Any) -> tuple[str, tuple[int | None, ...] | None]:
    datatype = _TF_TYPES.get(spec.dtype.name)
    if datatype is None:
        raise SpecError(
            f"{what}: tensor '{name}' has dtype {spec.dtype.name}, which modelport does not "
            f"serve; it serves {sorted(_TF_TYPES)}"
        )
    dims = spec.shape.as_list() if spec.shape.rank is not None else None
    return datatype, None if dims is None else tuple(dims)


def _op_message(message: str) -> str:
    """The lines of a TensorFlow op error that say what is wrong, without its trace."""
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [ln.strip() for ln in message.splitlines()]
    return "; ".join(ln for ln in lines if ln and not ln.startswith(noise)) or message


def _show(dims: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in dims) + "]"
