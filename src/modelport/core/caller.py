"""How a runtime calls other served models (a python pipeline): from its own thread,
through the event loop the models serve on."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from modelport.core.entries import LoadedVersion
from modelport.errors import InferenceFailed, ModelportError, ModelUnavailable, RetryLater
from modelport.tensors import (
    InferenceRequest,
    InferenceResponse,
    Tensor,
    as_bytes_array,
    datatype_of,
    numpy_dtype,
)


class ServedModels(Protocol):
    """What the caller needs of the service (:class:`~modelport.core.service.InferenceService`)."""

    def running_loop(self) -> asyncio.AbstractEventLoop: ...

    def get_version(self, name: str, version: str = "") -> LoadedVersion: ...

    async def infer(self, request: InferenceRequest) -> InferenceResponse: ...


class LoopModelCaller:
    """The :class:`~modelport.core.runtime.ModelCaller` the service gives its runtimes:
    schedules the call on the service's event loop and waits. Inputs are cast to the
    called model's declared datatypes, so a pipeline can pass plain numpy arrays."""

    def __init__(self, service: ServedModels) -> None:
        self._service = service

    def infer(
        self, model: str, inputs: Mapping[str, Any], version: str = ""
    ) -> dict[str, np.ndarray]:
        loop = self._service.running_loop()
        loaded = self._service.get_version(model, version)
        tensors = []
        for name, value in inputs.items():
            spec = loaded.inputs_by_name.get(name)
            array = np.asarray(value)
            if spec is not None and spec.datatype != "BYTES":
                array = array.astype(numpy_dtype(spec.datatype), copy=False)
            elif spec is not None:
                array = as_bytes_array(array)
            tensors.append(Tensor(name, spec.datatype if spec else datatype_of(array), array))
        request = InferenceRequest(model, tuple(tensors), version)
        future = asyncio.run_coroutine_threadsafe(self._service.infer(request), loop)
        try:
            return {t.name: t.data for t in future.result().outputs}
        except (ModelUnavailable, RetryLater):
            raise
        except ModelportError as exc:
            # The pipeline built a bad call: the pipeline's fault, not its client's.
            raise InferenceFailed(f"calling model '{model}' failed: {exc.message}") from exc
