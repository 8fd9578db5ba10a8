"""KServe v2 protobuf messages <-> modelport's tensors, metadata and statistics.

A tensor travels either in ``raw_input_contents`` / ``raw_output_contents`` (Triton's
binary layout, read and written by ``codecs/v2_binary``) or as a typed list in
``contents``. A request uses one or the other for all its inputs; the response answers
in kind, except that FP16 and BF16, which have no typed list, always travel raw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.codecs.regions import (
    REGION,
    SHARED_MEMORY_PARAMETERS,
    Regions,
    no_regions,
    placed_in_region,
    region_slice,
)
from modelport.codecs.v2_binary import decode_tensor, encode_tensor
from modelport.core.entries import IndexRow
from modelport.core.service import ModelMetadata, VersionStats
from modelport.core.stats import Duration
from modelport.core.triton_config import ConfigTensor, TritonConfig, VersionChoice
from modelport.errors import InvalidInput
from modelport.protos import grpc_service_pb2 as pb
from modelport.protos import model_config_pb2 as config_pb
from modelport.protos.datatypes import V2_CONTENTS
from modelport.protos.parameters import set_parameters
from modelport.spec import TensorSpec
from modelport.tensors import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    Tensor,
    checked_count,
    element_count,
)


@dataclass(frozen=True, slots=True)
class DecodedInfer:
    """A parsed ModelInferRequest, and whether to answer with typed ``contents``."""

    request: InferenceRequest
    typed_output: bool


# -- inference ----------------------------------------------------------------------------


def decode_request(
    message: pb.ModelInferRequest,
    model_name: str,
    max_elements: int = 0,
    *,
    regions: Regions | None = None,
) -> DecodedInfer:
    """A ModelInferRequest as the core's request, addressed to ``model_name``; an input
    of more than ``max_elements`` elements is refused before it is read (0: any). An
    input naming a shared-memory region is read from ``regions`` and has no entry in
    raw_input_contents (as tritonclient sends it)."""
    if not message.inputs:
        raise InvalidInput("request has no inputs")
    given = [_parameters_of(item) for item in message.inputs]
    places = [
        region_slice(p, item.name) if p else None
        for p, item in zip(given, message.inputs, strict=True)
    ]
    raw = message.raw_input_contents
    in_message = places.count(None)
    if raw and len(raw) != in_message:
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {in_message} inputs; "
            "give one entry per input (but those in shared memory), in the order of 'inputs'"
        )
    tensors = []
    next_raw = 0
    for item, params, where in zip(message.inputs, given, places, strict=True):
        name, datatype = item.name, item.datatype
        if not name:
            raise InvalidInput("an input has no name")
        if datatype not in DATATYPES:
            raise InvalidInput(
                f"input '{name}': datatype {datatype!r} is not one of {', '.join(DATATYPES)}"
            )
        shape = tuple(item.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
        checked_count(name, shape, max_elements)
        if where is not None:
            if regions is None:
                raise no_regions(name)
            data = decode_tensor(name, datatype, shape, regions.read(where))
            params = {k: v for k, v in params.items() if k not in SHARED_MEMORY_PARAMETERS}
        elif raw:
            if item.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}' has both contents and raw_input_contents; use one"
                )
            data = decode_tensor(name, datatype, shape, raw[next_raw])
            next_raw += 1
        else:
            data = _from_contents(name, datatype, shape, contents=item.contents)
        tensors.append(Tensor(name, datatype, data, params))
    outputs = tuple(RequestedOutput(o.name, _parameters_of(o)) for o in message.outputs)
    request = InferenceRequest(
        model_name,
        tuple(tensors),
        message.model_version,
        message.id,
        _parameters_of(message),
        outputs,
    )
    return DecodedInfer(request, typed_output=not raw)


def _from_contents(
    name: str, datatype: str, shape: tuple[int, ...], *, contents: pb.InferTensorContents
) -> np.ndarray:
    typed = V2_CONTENTS.get(datatype)
    if typed is None:
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents list; send it in raw_input_contents"
        )
    field = typed.field
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} values in "
            f"contents.{field}, got {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    wide: np.ndarray = np.array(values, dtype=typed.wide)
    dtype = DATATYPES[datatype]
    if dtype != wide.dtype and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(
                f"input '{name}': a value in contents.{field} is out of the range of {datatype}"
            )
    return wide.astype(dtype, copy=False).reshape(shape)


def encode_response(
    response: InferenceResponse, typed: bool, *, regions: Regions | None = None
) -> pb.ModelInferResponse:
    """The core's response as a ModelInferResponse: raw outputs, or typed when ``typed``
    and every output has a typed list (the protocol allows no mix). An output requested
    into a shared-memory region is written there and answered by its parameters, with an
    empty raw entry so the others keep their places."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    set_parameters(message.parameters, response.parameters)
    typed = typed and all(t.datatype in V2_CONTENTS for t in response.outputs)
    raw: list[bytes] = []
    sent_raw = False
    for tensor in response.outputs:
        out = message.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=tensor.data.shape
        )
        if tensor.parameters and REGION in tensor.parameters:
            where = region_slice(tensor.parameters, tensor.name)
            assert where is not None
            set_parameters(out.parameters, placed_in_region(tensor, where, regions))
            raw.append(b"")
        elif typed:
            values = getattr(out.contents, V2_CONTENTS[tensor.datatype].field)
            values.extend(tensor.data.ravel().tolist())
        else:
            raw.append(encode_tensor(tensor.data, tensor.datatype))
            sent_raw = True
    if sent_raw:
        message.raw_output_contents.extend(raw)
    return message


def _parameters_of(message: Any) -> dict[str, Any]:
    """``message.parameters`` as plain values ({} at once when there are none)."""
    params = message.parameters
    return parameters(params) if params else {}


def parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """InferParameter map -> plain values."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        kind = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, kind) if kind else None
    return out


# -- metadata, configuration, repository, statistics ------------------------------------


def metadata_response(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    def tensors(specs: tuple[TensorSpec, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
            for t in specs
        ]

    return pb.ModelMetadataResponse(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=tensors(meta.inputs),
        outputs=tensors(meta.outputs),
    )


def model_config(config: TritonConfig) -> config_pb.ModelConfig:
    """Triton's model configuration as its protobuf message."""

    def tensors(items: tuple[ConfigTensor, ...], kind: Any) -> list[Any]:
        out = []
        for t in items:
            message = kind(name=t.name, data_type=t.data_type, dims=t.dims)
            if t.reshape is not None:
                message.reshape.shape.extend(t.reshape)
            if t.optional:
                message.optional = True
            if t.label_filename:
                message.label_filename = t.label_filename
            out.append(message)
        return out

    group = config.instance_group
    message = config_pb.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        max_batch_size=config.max_batch_size,
        input=tensors(config.inputs, config_pb.ModelInput),
        output=tensors(config.outputs, config_pb.ModelOutput),
        instance_group=[
            config_pb.ModelInstanceGroup(
                count=group.count,
                kind=config_pb.ModelInstanceGroup.Kind.Value(group.kind.value),
                gpus=group.gpus,
            )
        ],
        default_model_filename=config.default_model_filename,
    )
    policy = config.version_policy
    if policy.choice is VersionChoice.ALL:
        message.version_policy.all.SetInParent()
    elif policy.choice is VersionChoice.SPECIFIC:
        message.version_policy.specific.versions.extend(policy.versions)
    else:
        message.version_policy.latest.num_versions = policy.num_versions
    batching = config.dynamic_batching
    if batching is not None:
        message.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_size)
        message.dynamic_batching.max_queue_delay_microseconds = (
            batching.max_queue_delay_microseconds
        )
        if batching.max_queue_size:
            message.dynamic_batching.default_queue_policy.max_queue_size = batching.max_queue_size
    for key, text in config.parameters.items():
        message.parameters[key].string_value = text
    for sample in config.model_warmup:
        warmup = message.model_warmup.add(batch_size=sample.batch_size, count=sample.count)
        for item in sample.inputs:
            entry = warmup.inputs[item.name]
            if item.data_type:
                entry.data_type = config_pb.DataType.Value(item.data_type)
            entry.dims.extend(item.dims)
            if item.source == "input_data_file":
                entry.input_data_file = item.file
            else:
                setattr(entry, item.source, True)
    for step in config.ensemble_steps:
        message.ensemble_scheduling.step.add(
            model_name=step.model_name,
            model_version=step.model_version,
            input_map=step.input_map,
            output_map=step.output_map,
        )
    return message


def index_response(rows: list[IndexRow]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=r.name, version=r.version, state=r.state, reason=r.reason
            )
            for r in rows
        ]
    )


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def statistics_response(found: list[VersionStats]) -> pb.ModelStatisticsResponse:
    """Triton's statistics extension, from the same counters as the HTTP one."""
    models = []
    for entry in found:
        s = entry.stats
        models.append(
            pb.ModelStatistics(
                name=entry.name,
                version=entry.version,
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                inference_stats=pb.InferStatistics(
                    success=_duration(s.success),
                    fail=_duration(s.fail),
                    queue=_duration(s.queue),
                    compute_input=_duration(s.compute_input),
                    compute_infer=_duration(s.compute_infer),
                    compute_output=_duration(s.compute_output),
                    cache_hit=pb.StatisticDuration(),
                    cache_miss=pb.StatisticDuration(),
                ),
                batch_stats=[
                    pb.InferBatchStatistics(
                        batch_size=size,
                        compute_input=_duration(b.compute_input),
                        compute_infer=_duration(b.compute_infer),
                        compute_output=_duration(b.compute_output),
                    )
                    for size, b in sorted(s.batches.items())
                ],
            )
        )
    return pb.ModelStatisticsResponse(model_stats=models)
