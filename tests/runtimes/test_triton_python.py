"""Triton's python backend, run unchanged by the ``python`` runtime: ``TritonPythonModel``
models against the ``triton_python_backend_utils`` modelport provides, through a real
InferenceService (real batcher, real ONNX model for BLS). The same models over HTTP and
gRPC with tritonclient, against a real server process: test_triton_python_server.py."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelport.core.service import InferenceService
from modelport.errors import InferenceFailed, InvalidInput, ModelportError
from modelport.runtimes import triton_python_utils as pb_utils
from modelport.tensors import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from support.builders import write_model
from support.triton_python_models import (
    RAISING_YAML,
    write_triton_python_repository,
)

Start = Callable[..., Awaitable[InferenceService]]  # the serve fixture

pytestmark = pytest.mark.timeout(60)

A = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
B = np.array([[1, 1, 1, 1], [2, 2, 2, 2]], np.float32)


def _add_sub(rows: int, offset: float = 0.0) -> InferenceRequest:
    a = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + offset
    return InferenceRequest(
        "add_sub", (Tensor("INPUT0", "FP32", a), Tensor("INPUT1", "FP32", np.ones_like(a)))
    )


def _outputs(response: InferenceResponse) -> dict[str, np.ndarray]:
    return {t.name: t.data for t in response.outputs}


def _int_request(model: str, value: int) -> InferenceRequest:
    return InferenceRequest(model, (Tensor("INPUT0", "INT32", np.array([[value]], np.int32)),))


@pytest.fixture
def triton_repo(repo: Path) -> Path:
    return write_triton_python_repository(repo)


async def test_add_sub_gets_triton_args_and_answers(triton_repo: Path, serve: Start) -> None:
    service = await serve()
    out = _outputs(await service.infer(_add_sub(2)))
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(out["OUTPUT0"], a + 1)
    assert np.array_equal(out["OUTPUT1"], a - 1)
    assert out["OUTPUT0"].dtype == np.float32
    assert out["GATHERED"].tolist() == [[1], [1]]

    model: Any = service.get_version("add_sub").instances[0].runtime.model  # type: ignore[attr-defined]
    args = model.args
    assert all(isinstance(v, str) for v in args.values())
    assert {k: v for k, v in args.items() if k != "model_config"} == {
        "model_name": "add_sub",
        "model_version": "1",
        "model_repository": str(triton_repo / "add_sub"),
        "model_instance_kind": "CPU",
        "model_instance_name": "add_sub_0_0",
        "model_instance_device_id": "0",
    }
    config = json.loads(args["model_config"])
    assert config["name"] == "add_sub"
    assert config["backend"] == "python"
    assert config["max_batch_size"] == 16
    assert config["input"] == [
        {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]},
        {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4]},
    ]
    assert config["output"][2] == {"name": "GATHERED", "data_type": "TYPE_INT32", "dims": [1]}
    assert config["parameters"] == {"delay_ms": {"string_value": "40"}}
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["model_transaction_policy"] == {"decoupled": False}
    assert "dynamic_batching" in config
    # The module the model imported is modelport's, under Triton's name.
    assert sys.modules["triton_python_backend_utils"] is pb_utils


async def test_execute_gets_the_gathered_requests_unmerged(triton_repo: Path, serve: Start) -> None:
    service = await serve()
    # Sent together, so the batcher gathers them; each keeps its own rows.
    rows = [1, 3, 2, 1]
    answers = await asyncio.gather(
        *(service.infer(_add_sub(n, offset=10 * i)) for i, n in enumerate(rows))
    )
    for i, (n, answer) in enumerate(zip(rows, answers, strict=True)):
        out = _outputs(answer)
        a = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + 10 * i
        assert np.array_equal(out["OUTPUT0"], a + 1)
        assert np.array_equal(out["OUTPUT1"], a - 1)
        assert out["GATHERED"].shape == (n, 1)
    gathered = {int(_outputs(a)["GATHERED"][0, 0]) for a in answers}
    assert max(gathered) > 1  # one execute call was given several requests


async def test_an_error_response_fails_only_its_request(triton_repo: Path, serve: Start) -> None:
    service = await serve()
    answers = await asyncio.gather(
        *(service.infer(_int_request("picky", v)) for v in (1, -5, 3)), return_exceptions=True
    )
    refused = answers[1]
    assert isinstance(refused, InvalidInput)  # TritonError.INVALID_ARG
    assert refused.message == "negative input -5 refused"
    for value, answer in ((1, answers[0]), (3, answers[2])):
        assert isinstance(answer, InferenceResponse)
        out = _outputs(answer)
        assert out["OUTPUT0"].tolist() == [[value * 2]]
        assert out["GATHERED"].tolist() == [[3]]  # in the same execute call as the refused one


async def test_an_exception_from_execute_fails_the_requests_of_that_call(
    triton_repo: Path, serve: Start
) -> None:
    service = await serve()
    answers = await asyncio.gather(
        *(service.infer(_int_request("raising", v)) for v in (1, 2, 3)), return_exceptions=True
    )
    for answer in answers:
        assert isinstance(answer, InferenceFailed)
        # One call with all three, not rerun one by one.
        assert answer.message == "model 'raising' failed: cannot handle 3 request(s) today"
    assert service.model_ready("raising")


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        ("responses[:-1]", "returned 1 responses for 2 requests"),
        ("None", "returned NoneType, not a list"),
        ("[None for _ in requests]", "returned NoneType among its responses"),
    ],
)
async def test_a_wrong_answer_from_execute_is_a_clear_error(
    repo: Path, serve: Start, returned: str, problem: str
) -> None:
    model = f"""\
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", r.inputs()[0].as_numpy())])
            for r in requests
        ]
        return {returned}
"""
    write_model(repo, "wrong", RAISING_YAML, {"1/model.py": model})
    service = await serve()
    answers = await asyncio.gather(
        *(service.infer(_int_request("wrong", v)) for v in (1, 2)), return_exceptions=True
    )
    for answer in answers:
        assert isinstance(answer, InferenceFailed)
        assert answer.message == (
            f"model 'wrong': TritonPythonModel.execute {problem}; it must return one "
            "pb_utils.InferenceResponse per request, in the order of the requests"
        )


async def test_bytes_preprocessing(triton_repo: Path, serve: Start) -> None:
    service = await serve()
    texts = np.array([[b"1.5, 2, 3"], ["héllo".encode()]], dtype=np.object_)
    response = await service.infer(
        InferenceRequest("preprocess", (Tensor("TEXT", "BYTES", texts),))
    )
    out = _outputs(response)
    assert out["UPPER"].tolist() == [[b"1.5, 2, 3"], ["HÉLLO".encode()]]
    assert out["SUM"][0, 0] == np.float32(6.5)
    assert np.isnan(out["SUM"][1, 0])


@pytest.mark.parametrize("model", ["bls", "bls_async"])
async def test_bls_calls_the_served_onnx_model(triton_repo: Path, serve: Start, model: str) -> None:
    service = await serve()
    request = InferenceRequest(model, (Tensor("A", "FP32", A), Tensor("B", "FP32", B)))
    out = _outputs(await service.infer(request))
    assert np.array_equal(out["PRODUCT"], A * A - B * B)
    # The inner calls went through the served ONNX model, and were counted there.
    calls = 1 if model == "bls" else 2
    assert service.statistics("addsub_onnx")[0].stats.success.count == calls


async def test_a_bls_error_comes_back_as_the_response_error(
    triton_repo: Path, serve: Start
) -> None:
    service = await serve()
    request = InferenceRequest(
        "bls", (Tensor("A", "FP32", A), Tensor("B", "FP32", B)), parameters={"target": "nope"}
    )
    with pytest.raises(InferenceFailed, match="model 'bls' failed: unknown model 'nope'"):
        await service.infer(request)


ECHO = """\
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            seen = {
                "requested": request.requested_output_names(),
                "parameters": json.loads(request.parameters()),
                "id": request.request_id(),
                "inputs": [t.name() for t in request.inputs()],
            }
            info = np.array([json.dumps(seen).encode()], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("INFO", info), pb_utils.Tensor("OTHER", info)]
                )
            )
        return responses

    def finalize(self):
        with open(self.folder + "/finalized", "w") as f:
            f.write("yes")

    def initialize(self, args):
        self.folder = args["model_repository"]
"""

ECHO_YAML = """\
runtime: python
inputs: [{name: X, datatype: INT32, shape: [1]}]
outputs:
  - {name: INFO, datatype: BYTES, shape: [1]}
  - {name: OTHER, datatype: BYTES, shape: [1]}
warmup: [{inputs: {X: zeros}}]
"""


async def test_request_outputs_parameters_and_id_and_finalize(repo: Path, serve: Start) -> None:
    folder = write_model(repo, "echo", ECHO_YAML, {"1/model.py": ECHO})
    service = await serve()  # the warm-up sample ran through execute too
    x = (Tensor("X", "INT32", np.array([7], np.int32)),)

    async def seen(request: InferenceRequest) -> dict[str, Any]:
        response = await service.infer(request)
        return dict(json.loads(response.outputs[0].data[0]))

    named = await seen(
        InferenceRequest(
            "echo", x, id="req-1", parameters={"k": 1}, outputs=(RequestedOutput("INFO"),)
        )
    )
    assert named == {"requested": ["INFO"], "parameters": {"k": 1}, "id": "req-1", "inputs": ["X"]}
    everything = await seen(InferenceRequest("echo", x))
    assert everything["requested"] == ["INFO", "OTHER"]
    assert not (folder / "finalized").exists()
    await service.unload("echo")
    assert (folder / "finalized").read_text() == "yes"


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (
            "class TritonPythonModel:\n"
            "    def initialize(self, args):\n"
            "        raise RuntimeError('no weights')\n"
            "    def execute(self, requests):\n"
            "        return []\n",
            "TritonPythonModel.initialize raised RuntimeError: no weights",
        ),
        (
            "class TritonPythonModel:\n    pass\n",
            "class TritonPythonModel needs an execute(self, requests) method",
        ),
    ],
)
async def test_a_broken_model_is_unavailable_with_its_reason(
    repo: Path, serve: Start, model: str, reason: str
) -> None:
    write_model(repo, "broken", RAISING_YAML, {"1/model.py": model})
    service = await serve()
    (row,) = [r for r in service.index() if r.name == "broken"]
    assert row.state == "UNAVAILABLE"
    assert reason in row.reason


async def test_a_model_class_named_model_still_gets_merged_batches(
    repo: Path, serve: Start
) -> None:
    # modelport's own contract is unchanged: predict sees the requests concatenated.
    model = (
        "import numpy as np\n"
        "class Model:\n"
        "    def predict(self, inputs):\n"
        "        x = inputs['INPUT0']\n"
        "        return {'OUTPUT0': np.full_like(x, x.shape[0])}\n"
    )
    write_model(repo, "merged", RAISING_YAML, {"1/model.py": model})
    service = await serve()
    answers = await asyncio.gather(*(service.infer(_int_request("merged", v)) for v in (1, 2, 3)))
    assert [a.outputs[0].data.tolist() for a in answers] == [[[3]], [[3]], [[3]]]


def test_tensor_types_and_byte_helpers() -> None:
    with pytest.raises(pb_utils.TritonModelException, match=r"use an np\.object_ array"):
        pb_utils.Tensor("T", np.array(["a", "b"]))
    t = pb_utils.Tensor("T", np.array([1.0, 2.0], np.float32))
    assert (t.name(), t.triton_dtype(), t.shape(), t.is_cpu()) == ("T", 11, [2], True)
    # triton_dtype given: the same bytes, read as that type (as Triton does).
    viewed = pb_utils.Tensor("V", np.array([1, 2], np.int32), triton_dtype=4)
    assert viewed.as_numpy().dtype == np.uint32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    with pytest.raises(pb_utils.TritonModelException, match="unknown data_type 'TYPE_X'"):
        pb_utils.triton_string_to_numpy("TYPE_X")
    items = np.array([b"ab", b"", "ç".encode()], dtype=np.object_)
    wire = pb_utils.serialize_byte_tensor(items)
    assert wire is not None
    assert pb_utils.deserialize_bytes_tensor(wire.tobytes()).tolist() == items.tolist()
    error = pb_utils.TritonError("gone", pb_utils.TritonError.NOT_FOUND)
    assert (error.message(), error.code()) == ("gone", 2)
    response = pb_utils.InferenceResponse(error=error)
    assert response.has_error() and response.output_tensors() == []
    with pytest.raises(pb_utils.TritonModelException, match="must be a list"):
        pb_utils.InferenceResponse(output_tensors=t)  # type: ignore[arg-type]


def test_bls_outside_execute_is_refused() -> None:
    request = pb_utils.InferenceRequest(model_name="m", requested_output_names=[], inputs=[])
    with pytest.raises(pb_utils.TritonModelException, match="only be made while execute"):
        request.exec()


def test_dlpack_both_ways_with_torch() -> None:
    t = pb_utils.Tensor("T", np.arange(6, dtype=np.float32).reshape(2, 3))
    as_torch = torch.utils.dlpack.from_dlpack(t.to_dlpack())
    assert as_torch.tolist() == [[0, 1, 2], [3, 4, 5]]
    back = pb_utils.Tensor.from_dlpack("U", torch.utils.dlpack.to_dlpack(as_torch * 2))
    assert back.as_numpy().tolist() == [[0, 2, 4], [6, 8, 10]]
    direct = pb_utils.Tensor.from_dlpack("W", torch.ones(2, dtype=torch.int64))
    assert (direct.triton_dtype(), direct.as_numpy().tolist()) == (9, [1, 1])


def test_modelport_errors_keep_their_kind_through_triton_codes() -> None:
    for code, kind in (
        (pb_utils.TritonError.INVALID_ARG, "invalid_input"),
        (pb_utils.TritonError.NOT_FOUND, "not_found"),
        (pb_utils.TritonError.UNAVAILABLE, "unavailable"),
        (pb_utils.TritonError.INTERNAL, "internal"),
        (pb_utils.TritonError.UNKNOWN, "internal"),
    ):
        error = pb_utils.as_modelport_error(pb_utils.TritonError("m", code))
        assert isinstance(error, ModelportError)
        assert (error.kind.value, error.message) == (kind, "m")
