"""The ``python`` runtime: a class named ``Model`` in ``model.py``.

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
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.runtime import RuntimeContext, Signature
from modelport.errors import SpecError

MODEL_FILE = "model.py"
CLASS_NAME = "Model"


class PythonRuntime:
    def __init__(self, context: RuntimeContext) -> None:
        self.context = context
        self.model: Any = None
        self._with_parameters = True

    def _find(self) -> Path:
        for folder in (self.context.version_dir, self.context.model_dir):
            if (folder / MODEL_FILE).is_file():
                return folder / MODEL_FILE
        raise SpecError(
            f"{self.context.version_dir / MODEL_FILE}: missing; a python model needs a "
            f"{MODEL_FILE} with a class {CLASS_NAME} (in the version or the model folder)"
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
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise SpecError(f"{path}: importing it raised {type(exc).__name__}: {exc}") from exc
        cls = getattr(module, CLASS_NAME, None)
        if cls is None or not callable(getattr(cls, "predict", None)):
            raise SpecError(f"{path}: needs a class {CLASS_NAME} with a predict method")
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

    def signature(self) -> Signature:
        return Signature((), ())

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
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
        if self.model is not None and hasattr(self.model, "teardown"):
            self.model.teardown()
        self.model = None
        ctx = self.context
        sys.modules.pop(f"modelport_user.{ctx.spec.name}.v{ctx.version}.i{ctx.instance}", None)
