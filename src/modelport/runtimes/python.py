"""The ``python`` runtime: a class named ``Model`` in ``model.py`` (or Triton's
``TritonPythonModel``, run unchanged by ``runtimes/triton_python.py``).

The contract is small. ``predict`` is required; ``setup`` and ``teardown`` are optional::

    # models/reverse/1/model.py
    import numpy as np

    class Model:
        def setup(self, context):
            # context.spec (the model.yaml), context.version_dir (this folder),
            # context.models.infer(name, {input: array}) calls another served model.
            self.scale = context.spec.parameters.get("scale", 1.0)

        def predict(self, inputs, parameters):
            # inputs: {name: numpy array}, batched when max_batch_size > 0.
            return {"OUTPUT0": inputs["INPUT0"][:, ::-1] * self.scale}

        def teardown(self):
            pass

The model's inputs and outputs are declared in its model.yaml. ``model.py`` is looked
for in the version folder first, then in the model folder. ``predict`` may take just
``inputs`` if it needs no parameters.

A model whose ``predict`` may run on several threads at once (its libraries release the
GIL, as Pillow, OpenCV and ONNX Runtime do, and it keeps no state per call) says so with
a class attribute, ``thread_safe = True``. A batch of several requests is then not
merged: each request's ``predict`` runs on its own thread, up to one per core (and
``max_batch_size``), side by side, and a request that fails fails alone. A pipeline that
decodes pictures itself gains the most.

A model.py written for Triton's python backend (``class TritonPythonModel`` with
``initialize``/``execute``/``finalize``, ``import triton_python_backend_utils``) runs as
it is: its ``execute`` gets the requests the batcher gathered, one per client request.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.runtime import (
    GatheredRequest,
    RequestOutcome,
    RuntimeContext,
    Signature,
    available_cores,
)
from modelport.errors import InferenceFailed, ModelportError, SpecError
from modelport.runtimes.triton_python import (
    TRITON_CLASS_NAME,
    TritonPythonModelRunner,
    register_utils_module,
)

MODEL_FILE = "model.py"
CLASS_NAME = "Model"
THREAD_SAFE = "thread_safe"  # the class attribute a thread-safe Model sets


class PythonRuntime:
    def __init__(self, context: RuntimeContext) -> None:
        self.context = context
        self.model: Any = None
        self._with_parameters = True
        self._triton: TritonPythonModelRunner | None = None
        self._requests: ThreadPoolExecutor | None = None  # a thread-safe Model's

    def _find(self) -> Path:
        for folder in (self.context.version_dir, self.context.model_dir):
            if (folder / MODEL_FILE).is_file():
                return folder / MODEL_FILE
        raise SpecError(
            f"{self.context.version_dir / MODEL_FILE}: missing; a python model needs a "
            f"{MODEL_FILE} with a class {CLASS_NAME} or {TRITON_CLASS_NAME} (in the version "
            "or the model folder)"
        )

    def load(self) -> None:
        path = self._find()
        ctx = self.context
        module_name = f"modelport_user.{ctx.spec.name}.v{ctx.version}.i{ctx.instance}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise SpecError(f"{path}: cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        register_utils_module()  # before the import: a Triton model.py imports it at once
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise SpecError(f"{path}: importing it raised {type(exc).__name__}: {exc}") from exc
        triton_class = getattr(module, TRITON_CLASS_NAME, None)
        if isinstance(triton_class, type):
            runner = TritonPythonModelRunner(triton_class, ctx, path)
            self.model = runner.model
            runner.initialize()
            self._triton = runner
            return
        cls = getattr(module, CLASS_NAME, None)
        if cls is None or not callable(getattr(cls, "predict", None)):
            raise SpecError(
                f"{path}: needs a class {CLASS_NAME} with a predict method (or Triton's "
                f"{TRITON_CLASS_NAME} with an execute method)"
            )
        self._with_parameters = len(inspect.signature(cls.predict).parameters) >= 3
        model = cls()
        if hasattr(model, "setup"):
            try:
                model.setup(ctx)
            except Exception as exc:
                raise SpecError(
                    f"{path}: {CLASS_NAME}.setup raised {type(exc).__name__}: {exc}"
                ) from exc
        self.model = model
        threads = min(available_cores(), ctx.spec.max_batch_size)
        if getattr(cls, THREAD_SAFE, False) is True and threads > 1:
            self._requests = ThreadPoolExecutor(threads, thread_name_prefix=module_name)

    def signature(self) -> Signature:
        return Signature((), ())

    @property
    def takes_requests(self) -> bool:
        """True for a TritonPythonModel (its execute wants the requests, unmerged) and
        for a thread-safe Model (its requests run side by side)."""
        return self._triton is not None or self._requests is not None

    def infer_requests(self, requests: Sequence[GatheredRequest]) -> list[RequestOutcome]:
        if self._triton is not None:
            return self._triton.execute(requests)
        if self._requests is None:
            raise TypeError(f"{CLASS_NAME}.predict takes a batch, not requests; call infer")
        if len(requests) == 1:
            return [self._outcome(requests[0])]
        return list(self._requests.map(self._outcome, requests))

    def _outcome(self, request: GatheredRequest) -> RequestOutcome:
        """One request of a thread-safe Model: its outputs, or the error that fails it."""
        try:
            return self.infer(request.inputs, request.parameters)
        except ModelportError as exc:
            return exc
        except Exception as exc:
            name = self.context.spec.name
            return InferenceFailed(f"model '{name}' failed: {type(exc).__name__}: {exc}")

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        if self._triton is not None:  # one request (a warm-up sample)
            (outcome,) = self._triton.execute([GatheredRequest(inputs, parameters)])
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        if self._with_parameters:
            result = self.model.predict(inputs, dict(parameters))
        else:
            result = self.model.predict(inputs)
        if not isinstance(result, Mapping):
            raise TypeError(
                f"{CLASS_NAME}.predict must return a dict of output name -> array, "
                f"got {type(result).__name__}"
            )
        return {name: np.asarray(value) for name, value in result.items()}

    def unload(self) -> None:
        if self._requests is not None:
            self._requests.shutdown(wait=True)
            self._requests = None
        if self._triton is not None:
            self._triton.finalize()
            self._triton = None
        elif self.model is not None and hasattr(self.model, "teardown"):
            self.model.teardown()
        self.model = None
        ctx = self.context
        sys.modules.pop(f"modelport_user.{ctx.spec.name}.v{ctx.version}.i{ctx.instance}", None)
