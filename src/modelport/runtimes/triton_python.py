"""Triton's python backend, unchanged: a model.py with ``class TritonPythonModel``.

The ``python`` runtime (``runtimes/python.py``) hands such a model here. Triton's
contract holds as Triton documents it::

    # models/add_sub/1/model.py (with inputs and outputs declared in model.yaml)
    import json
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):  # optional
            config = json.loads(args["model_config"])
            out = pb_utils.get_output_config_by_name(config, "OUTPUT0")
            self.dtype = pb_utils.triton_string_to_numpy(out["data_type"])

        def execute(self, requests):  # one InferenceResponse per request, in order
            responses = []
            for request in requests:
                a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtype))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses

        def finalize(self):  # optional
            pass

``execute`` gets the requests the dynamic batcher gathered, one ``InferenceRequest`` per
client request, never one merged batch. A response made with ``error=TritonError(...)``
fails its own request; an exception raised from ``execute`` fails every request of that
call with its message, as does a wrong number of responses. ``async def execute`` runs
on an event loop of the instance's own. ``initialize`` gets Triton's ``args``: the model
configuration as Triton's JSON (from model.yaml), the model's name, version, folder,
and the instance's kind, name and device id.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelport.core.runtime import GatheredRequest, RequestOutcome, RuntimeContext, Signature
from modelport.core.triton_config import triton_config, triton_json
from modelport.errors import InferenceFailed, ModelportError, SpecError
from modelport.runtimes import triton_python_utils as pb_utils

log = logging.getLogger(__name__)

TRITON_CLASS_NAME = "TritonPythonModel"
# The import name Triton's models use for the backend's module; the only one registered.
UTILS_MODULE = "triton_python_backend_utils"


def register_utils_module() -> None:
    """Let ``import triton_python_backend_utils`` inside a model.py find modelport's."""
    sys.modules.setdefault(UTILS_MODULE, pb_utils)


def initialize_args(context: RuntimeContext) -> dict[str, str]:
    """The ``args`` Triton passes ``initialize``: every key and value a string."""
    spec = context.spec
    config = triton_config(spec, Signature(tuple(spec.inputs), tuple(spec.outputs)))
    kind, _, device_id = context.device.partition(":")
    return {
        "model_config": json.dumps(triton_json(config)),
        "model_name": spec.name,
        "model_version": str(context.version),
        "model_repository": str(context.model_dir),
        "model_instance_kind": "GPU" if kind == "cuda" else "CPU",
        "model_instance_name": f"{spec.name}_0_{context.instance}",
        "model_instance_device_id": device_id or "0",
    }


class TritonPythonModelRunner:
    """One instance of a ``TritonPythonModel``: built and initialized by ``load``, its
    ``execute`` run with the gathered requests, finalized on unload."""

    def __init__(self, model_class: type[Any], context: RuntimeContext, path: Path) -> None:
        self.context = context
        self.path = path
        self.name = context.spec.name
        if not callable(getattr(model_class, "execute", None)):
            raise SpecError(
                f"{path}: class {TRITON_CLASS_NAME} needs an execute(self, requests) method"
            )
        self._outputs = [t.name for t in context.spec.outputs]
        self._async = inspect.iscoroutinefunction(model_class.execute)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.model = model_class()

    def initialize(self) -> None:
        if hasattr(self.model, "initialize"):
            try:
                self.model.initialize(initialize_args(self.context))
            except Exception as exc:
                raise SpecError(
                    f"{self.path}: {TRITON_CLASS_NAME}.initialize raised "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        if self._async:  # Triton runs an async execute on an event loop of the instance's own
            self._loop = asyncio.new_event_loop()

    def execute(self, requests: Sequence[GatheredRequest]) -> list[RequestOutcome]:
        """Run ``execute`` once for ``requests``; one outcome per request, in order."""
        pb_requests = [self._request(r) for r in requests]
        try:
            with pb_utils.models_callable(self.context.models):
                if self._loop is not None:
                    responses = self._loop.run_until_complete(self.model.execute(pb_requests))
                else:
                    responses = self.model.execute(pb_requests)
        except ModelportError as exc:
            return [exc for _ in requests]
        except Exception as exc:
            log.warning("model %s: execute raised", self.name, exc_info=True)
            message = (
                exc.message()
                if isinstance(exc, pb_utils.TritonModelException)
                else f"{type(exc).__name__}: {exc}"
            )
            return [InferenceFailed(f"model '{self.name}' failed: {message}") for _ in requests]
        return self._outcomes(responses, len(requests))

    def finalize(self) -> None:
        try:
            if hasattr(self.model, "finalize"):
                self.model.finalize()
        except Exception:
            # Triton logs a failing finalize and unloads the model all the same.
            log.exception("model %s: %s.finalize raised", self.name, TRITON_CLASS_NAME)
        finally:
            if self._loop is not None:
                self._loop.run_until_complete(self._loop.shutdown_default_executor())
                self._loop.close()

    def _request(self, request: GatheredRequest) -> pb_utils.InferenceRequest:
        return pb_utils.InferenceRequest(
            model_name=self.name,
            model_version=self.context.version,
            requested_output_names=request.outputs or self._outputs,
            inputs=[pb_utils.Tensor(name, array) for name, array in request.inputs.items()],
            request_id=request.id,
            parameters=request.parameters,
        )

    def _outcomes(self, responses: Any, count: int) -> list[RequestOutcome]:
        problem = ""
        if not isinstance(responses, list | tuple):
            problem = f"returned {type(responses).__name__}, not a list"
        elif len(responses) != count:
            problem = f"returned {len(responses)} responses for {count} requests"
        else:
            wrong = [r for r in responses if not isinstance(r, pb_utils.InferenceResponse)]
            if wrong:
                problem = f"returned {type(wrong[0]).__name__} among its responses"
        if problem:
            return [
                InferenceFailed(
                    f"model '{self.name}': {TRITON_CLASS_NAME}.execute {problem}; it must "
                    "return one pb_utils.InferenceResponse per request, in the order of the "
                    "requests"
                )
                for _ in range(count)
            ]
        outcomes: list[RequestOutcome] = []
        for response in responses:
            error = response.error()
            if error is not None:
                outcomes.append(pb_utils.as_modelport_error(error))
            else:
                outcomes.append({t.name(): t.as_numpy() for t in response.output_tensors()})
        return outcomes
