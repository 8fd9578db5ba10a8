"""The JSON bodies the HTTP routes take, as the OpenAPI document shows them.

The routes that take these read their bodies raw (the infer path skips pydantic for
speed, and each codec gives its own, protocol-worded errors), so these models validate
nothing at run time: they are the request schemas of ``/openapi.json`` and ``/docs``,
registered as components by ``openapi.py``. Each one says what its codec accepts; a
field the codec ignores is not listed, and extra fields are allowed wherever the codec
ignores them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from modelport.tensors import DATATYPES


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


_DATATYPE = Field(description="the tensor's datatype", json_schema_extra={"enum": list(DATATYPES)})


class V2TensorParameters(_Body):
    """An input tensor's parameters (Triton's binary tensor data extension)."""

    model_config = ConfigDict(extra="allow")
    binary_data_size: int | None = Field(
        None,
        ge=0,
        description="the tensor's bytes follow the JSON part (whose length is in the "
        "Inference-Header-Content-Length header) instead of 'data'",
    )


class V2InputTensor(_Body):
    """One input tensor of a KServe v2 infer request."""

    name: str = Field(min_length=1)
    shape: list[int] = Field(description="its dimensions, each >= 0", examples=[[1, 4]])
    datatype: str = _DATATYPE
    parameters: V2TensorParameters | None = None
    data: list[Any] = Field(
        default_factory=list,
        description="the values, flat or nested by the shape, row-major (strings for "
        "BYTES); needed unless parameters.binary_data_size is given",
    )


class V2OutputParameters(_Body):
    """How one output is answered."""

    model_config = ConfigDict(extra="allow")
    binary_data: bool | None = Field(None, description="answer this output as binary data")
    classification: int | None = Field(
        None, ge=0, description="answer the top N classes (Triton's classification extension)"
    )


class V2RequestedOutput(_Body):
    """An output the request asks for (none listed: every output)."""

    name: str
    parameters: V2OutputParameters | None = None


class V2InferRequest(_Body):
    """A KServe v2 (Open Inference Protocol) infer request."""

    id: str = Field("", description="echoed in the answer")
    inputs: list[V2InputTensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="'binary_data_output': true answers every output as binary data; "
        "'timeout' (microseconds in the queue before a 504) and 'priority' (a level of "
        "the model's priority_levels, 1 first) are read by the server; other entries are "
        "passed to the model",
    )


class RepositoryIndexRequest(_Body):
    """The repository index's optional body."""

    ready: bool = Field(False, description="list only the models that are ready")


class RepositoryLoadRequest(_Body):
    """A load request's optional body: an override config (``parameters.config``) is
    answered 501; the model's model.yaml is what is loaded."""

    parameters: dict[str, Any] = Field(default_factory=dict)


class TFServingRowRequest(_Body):
    """TF Serving's ``:predict`` in the row format: one entry an instance (a value, or
    an object by input name)."""

    signature_name: str = Field("serving_default", description="the model's signature")
    instances: list[Any] = Field(min_length=1)


class TFServingColumnarRequest(_Body):
    """TF Serving's ``:predict`` in the columnar format: a value, or an object by input
    name, each batched on its first dimension."""

    signature_name: str = Field("serving_default", description="the model's signature")
    inputs: Any


class TFServingExamplesRequest(_Body):
    """TF Serving's ``:classify`` and ``:regress`` body (tf.Example features): those verbs
    are answered 501, since modelport runs SavedModels through their predict signature."""

    signature_name: str = "serving_default"
    context: dict[str, Any] = Field(default_factory=dict)
    examples: list[dict[str, Any]]


class PredictParameters(_Body):
    """The friendly API's parameters (also accepted in the query and the form)."""

    model_config = ConfigDict(extra="allow")
    score_threshold: float | None = Field(None, description="detections: the lowest score kept")
    top_k: int | None = Field(None, description="classification: how many classes to answer")


class PredictRequest(_Body):
    """The friendly API's JSON body: values by input name (images as base64 or data
    URLs)."""

    inputs: dict[str, Any] = Field(default_factory=dict)
    parameters: PredictParameters | None = None


class SharedMemoryRegisterRequest(_Body):
    """What ``register_system_shared_memory`` posts (Triton's shared-memory extension)."""

    key: str = Field(description="the POSIX shared memory object, e.g. '/input_data'")
    offset: int = Field(default=0, ge=0, description="where the region starts in it")
    byte_size: int = Field(gt=0, description="the region's size in bytes")


BODY_MODELS: tuple[type[BaseModel], ...] = (
    V2InferRequest,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    TFServingRowRequest,
    TFServingColumnarRequest,
    TFServingExamplesRequest,
    PredictRequest,
    SharedMemoryRegisterRequest,
)
