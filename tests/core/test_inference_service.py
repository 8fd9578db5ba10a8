"""InferenceService: requests checked against the signature before they queue,
output selection, version lookups, metadata and statistics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport.core.service import InferenceService
from modelport.errors import ErrorKind, InvalidInput, ModelNotFound
from modelport.tensors import InferenceRequest, RequestedOutput, Tensor
from support.builders import write_model

Start = Callable[..., Awaitable[InferenceService]]  # the serve fixture

TWO_IN_TWO_OUT = """\
runtime: fake
max_batch_size: 8
inputs:
  - {name: a, datatype: FP32, shape: [4]}
  - {name: b, datatype: INT32, shape: [-1, 2]}
outputs:
  - {name: y, datatype: FP32, shape: [4]}
  - {name: z, datatype: INT32, shape: [-1, 2]}
version_policy: {all: true}
"""

UNBATCHED = """\
runtime: fake
inputs: [{name: a, datatype: BYTES, shape: [2, -1]}]
outputs: [{name: y, datatype: BYTES, shape: [2, -1]}]
"""


@pytest.fixture
async def service(repo: Path, serve: Start) -> InferenceService:
    write_model(repo, "m", TWO_IN_TWO_OUT, {"1/.keep": "", "2/.keep": ""})
    write_model(repo, "u", UNBATCHED, {"1/.keep": ""})
    return await serve()


def _a(rows: int = 1) -> Tensor:
    return Tensor("a", "FP32", np.arange(rows * 4, dtype=np.float32).reshape(rows, 4))


def _b(rows: int = 1, n: int = 3) -> Tensor:
    return Tensor("b", "INT32", np.arange(rows * n * 2, dtype=np.int32).reshape(rows, n, 2))


def _request(*tensors: Tensor, **fields: Any) -> InferenceRequest:
    return InferenceRequest("m", tensors, **fields)


async def _invalid(service: InferenceService, request: InferenceRequest) -> str:
    with pytest.raises(InvalidInput) as info:
        await service.infer(request)
    assert info.value.kind is ErrorKind.INVALID_INPUT
    return info.value.message


async def test_valid_request(service: InferenceService) -> None:
    response = await service.infer(_request(_a(2), _b(2), id="r1"))
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "r1")
    assert [(t.name, t.datatype, t.shape) for t in response.outputs] == [
        ("y", "FP32", (2, 4)),
        ("z", "INT32", (2, 3, 2)),
    ]
    assert np.array_equal(response.outputs[0].data, _a(2).data)
    assert np.array_equal(response.outputs[1].data, _b(2).data)


async def test_unknown_input(service: InferenceService) -> None:
    extra = Tensor("c", "FP32", np.zeros((1, 4), np.float32))
    message = await _invalid(service, _request(_a(), _b(), extra))
    assert message == "model 'm' has no input 'c'; its inputs are ['a', 'b']"


async def test_missing_input(service: InferenceService) -> None:
    message = await _invalid(service, _request(_b()))
    assert message == "model 'm' needs input(s) ['a'], which are missing"


async def test_input_given_twice(service: InferenceService) -> None:
    assert "given twice" in await _invalid(service, _request(_a(), _a(), _b()))


async def test_wrong_datatype(service: InferenceService) -> None:
    a = Tensor("a", "FP64", np.zeros((1, 4), np.float64))
    message = await _invalid(service, _request(a, _b()))
    assert message == "input 'a' has datatype FP64, but model 'm' expects FP32"


@pytest.mark.parametrize(
    ("shape", "name"),
    [((1, 5), "a"), ((1, 4, 1), "a"), ((4,), "a"), ((1, 3, 3), "b"), ((1, 6), "b")],
)
async def test_wrong_shape(service: InferenceService, shape: tuple[int, ...], name: str) -> None:
    dtype = np.float32 if name == "a" else np.int32
    bad = Tensor(name, "FP32" if name == "a" else "INT32", np.zeros(shape, dtype))
    tensors = (bad, _b()) if name == "a" else (_a(), bad)
    message = await _invalid(service, _request(*tensors))
    want = "[-1, 4]" if name == "a" else "[-1, -1, 2]"
    assert message == (
        f"input '{name}' has shape {list(shape)}, but model 'm' expects {want} (-1 is any size)"
    )


async def test_variable_dimensions_take_any_size(service: InferenceService) -> None:
    for n in (1, 7):
        response = await service.infer(_request(_a(), _b(1, n)))
        assert response.outputs[1].shape == (1, n, 2)


async def test_batch_over_max(service: InferenceService) -> None:
    message = await _invalid(service, _request(_a(9), _b(9)))
    assert message == "input 'a' has batch size 9; model 'm' takes 1 to 8 (max_batch_size)"


async def test_empty_batch(service: InferenceService) -> None:
    assert "batch size 0" in await _invalid(service, _request(_a(0), _b(0)))


async def test_mismatched_batch_sizes(service: InferenceService) -> None:
    message = await _invalid(service, _request(_a(2), _b(3)))
    assert message == "all inputs of one request need the same batch size"


async def test_unbatched_model_takes_exact_shapes(service: InferenceService) -> None:
    words = np.array([[b"a", b"bc", b"d"], [b"", b"e", b"f"]], dtype=np.object_)
    response = await service.infer(InferenceRequest("u", (Tensor("a", "BYTES", words),)))
    assert response.outputs[0].datatype == "BYTES"
    assert response.outputs[0].data.tolist() == words.tolist()
    batched = Tensor("a", "BYTES", words[None])
    with pytest.raises(InvalidInput, match=r"expects \[2, -1\]"):
        await service.infer(InferenceRequest("u", (batched,)))


async def test_requested_output_subset(service: InferenceService) -> None:
    wanted = (RequestedOutput("z", {"binary_data": True}),)
    response = await service.infer(_request(_a(), _b(), outputs=wanted))
    assert [t.name for t in response.outputs] == ["z"]
    assert response.outputs[0].parameters == {"binary_data": True}
    both = (RequestedOutput("z"), RequestedOutput("y"))
    response = await service.infer(_request(_a(), _b(), outputs=both))
    assert [t.name for t in response.outputs] == ["z", "y"]


async def test_unknown_output(service: InferenceService) -> None:
    wanted = (RequestedOutput("y"), RequestedOutput("scores"))
    message = await _invalid(service, _request(_a(), _b(), outputs=wanted))
    assert message == "model 'm' has no output(s) ['scores']; its outputs are ['y', 'z']"


async def test_model_versions(service: InferenceService) -> None:
    for version in ("1", "2"):
        response = await service.infer(_request(_a(), _b(), model_version=version))
        assert response.model_version == version
    with pytest.raises(ModelNotFound, match=r"has no version 3 \(serving: 1, 2\)") as info:
        await service.infer(_request(_a(), _b(), model_version="3"))
    assert info.value.kind is ErrorKind.NOT_FOUND
    for version in ("v1", "-1", "1.0"):
        with pytest.raises(InvalidInput, match="must be a positive integer"):
            await service.infer(_request(_a(), _b(), model_version=version))
    with pytest.raises(ModelNotFound):
        await service.infer(InferenceRequest("nope", (_a(),)))


async def test_metadata(service: InferenceService) -> None:
    meta = service.metadata("m")
    assert meta.versions == ("1", "2") and meta.platform == "fake"
    assert meta.max_batch_size == 8
    # The batch dimension shows as -1, as Triton reports it.
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
        ("a", "FP32", (-1, 4)),
        ("b", "INT32", (-1, -1, 2)),
    ]
    assert [t.shape for t in meta.outputs] == [(-1, 4), (-1, -1, 2)]
    assert service.metadata("u").inputs[0].shape == (2, -1)


async def test_statistics(service: InferenceService) -> None:
    for rows in (1, 3):
        await service.infer(_request(_a(rows), _b(rows), model_version="1"))
    await service.infer(_request(_a(), _b()))
    with pytest.raises(InvalidInput):
        await service.infer(_request(_a(), model_version="1"))

    (v1,) = service.statistics("m", "1")
    assert (v1.name, v1.version) == ("m", "1")
    stats = v1.stats
    assert stats.success.count == 2 and stats.success.ns > 0
    assert stats.fail.count == 1 and stats.failures_by_reason == {"invalid_input": 1}
    assert stats.execution_count == 2 and stats.inference_count == 4
    assert sorted(stats.batches) == [1, 3]
    assert stats.batches[3].compute_infer.count == 1
    assert stats.queue.count == 2
    assert stats.compute_infer.count == 2 and stats.compute_infer.ns > 0
    assert stats.last_inference_ms > 0
    assert stats.request_latency.samples == 3 and stats.batch_size.samples == 2

    per_version = {s.version: s.stats.success.count for s in service.statistics("m")}
    assert per_version == {"1": 2, "2": 1}
    everything = {(s.name, s.version) for s in service.statistics()}
    assert everything == {("m", "1"), ("m", "2"), ("u", "1")}
    with pytest.raises(ModelNotFound):
        service.statistics("nope")


async def test_health(service: InferenceService) -> None:
    assert service.live() and service.ready()
    assert service.model_ready("m") and service.model_ready("m", "1")
    await service.unload("m")
    assert not service.model_ready("m")
    assert [r.name for r in service.index(ready_only=True)] == ["u"]
