"""Triton's asyncio gRPC client (``tritonclient.grpc.aio``) against a real modelport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(30)

A = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
B = np.array([[0.5, 0.5, 0.5, 0.5]], dtype=np.float32)


def tensor(name: str, array: np.ndarray, datatype: str) -> InferInput:
    item = InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[InferInput]:
    return [tensor("INPUT0", a, "FP32"), tensor("INPUT1", b, "FP32")]


@pytest.fixture
async def aclient(grpc_server: Any) -> AsyncIterator[triton_aio.InferenceServerClient]:
    client = triton_aio.InferenceServerClient(grpc_server.target)
    try:
        yield client
    finally:
        await client.close()


async def test_health_metadata_and_config(aclient: triton_aio.InferenceServerClient) -> None:
    assert await aclient.is_server_live()
    assert await aclient.is_server_ready()
    assert await aclient.is_model_ready("add_sub")
    assert not await aclient.is_model_ready("broken")
    assert (await aclient.get_server_metadata()).name == "modelport"
    meta = await aclient.get_model_metadata("mlp", as_json=True)
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "16"]}]
    config = await aclient.get_model_config("mlp", as_json=True)
    assert config["config"]["max_batch_size"] == 8


async def test_concurrent_infers(aclient: triton_aio.InferenceServerClient) -> None:
    rng = np.random.default_rng(5)
    pairs = [
        (rng.standard_normal((1 + i % 4, 4)).astype(np.float32),
         rng.standard_normal((1 + i % 4, 4)).astype(np.float32))
        for i in range(16)
    ]  # fmt: skip
    results = await asyncio.gather(
        *(aclient.infer("add_sub", add_sub_inputs(a, b), request_id=str(i))
          for i, (a, b) in enumerate(pairs))
    )  # fmt: skip
    for i, ((a, b), result) in enumerate(zip(pairs, results, strict=True)):
        assert result.get_response().id == str(i)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


async def test_bytes_and_fp16(aclient: triton_aio.InferenceServerClient) -> None:
    words = np.array([[b"alpha", b""], [b"\xce\xb2", b"gamma"]], dtype=np.object_)
    result = await aclient.infer("identity_bytes", [tensor("INPUT0", words, "BYTES")])
    assert result.as_numpy("OUTPUT0").tolist() == words.tolist()
    half = np.array([[0.5, -1.25, 65504.0, 0.0]], dtype=np.float16)
    result = await aclient.infer(
        "identity_fp16",
        [tensor("INPUT0", half, "FP16")],
        outputs=[InferRequestedOutput("OUTPUT0")],
    )
    assert result.as_numpy("OUTPUT0").dtype == np.float16
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), half)


async def test_errors_carry_their_codes(aclient: triton_aio.InferenceServerClient) -> None:
    cases = [
        ("no_such_model", add_sub_inputs(A, B), "StatusCode.NOT_FOUND"),
        ("add_sub", add_sub_inputs(np.ones((1, 3), np.float32), A), "StatusCode.INVALID_ARGUMENT"),
        ("broken", add_sub_inputs(A, B), "StatusCode.UNAVAILABLE"),
    ]
    for model, inputs, status in cases:
        with pytest.raises(InferenceServerException) as caught:
            await aclient.infer(model, inputs)
        assert caught.value.status() == status, model


async def test_model_id_routing(aclient: triton_aio.InferenceServerClient) -> None:
    result = await aclient.infer("mlp", add_sub_inputs(A, B), headers={"model-id": "add_sub"})
    assert result.get_response().model_name == "add_sub"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


async def test_stream_infer(aclient: triton_aio.InferenceServerClient) -> None:
    rows = [np.full((1, 4), float(i), np.float32) for i in range(10)]

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for i, row in enumerate(rows):
            yield {"model_name": "add_sub", "inputs": add_sub_inputs(row, B), "request_id": str(i)}
        yield {"model_name": "add_sub", "inputs": add_sub_inputs(A, B)[:1], "request_id": "bad"}

    answers = [answer async for answer in aclient.stream_infer(requests())]
    assert len(answers) == 11
    for i, (result, error) in enumerate(answers[:10]):
        assert error is None
        assert result.get_response().id == str(i)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), rows[i] + B)
    result, error = answers[10]
    assert result is None
    assert "INPUT1" in error.message()


async def test_stream_with_model_id(aclient: triton_aio.InferenceServerClient) -> None:
    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "", "inputs": add_sub_inputs(A, B)}

    answers = [a async for a in aclient.stream_infer(requests(), headers={"model-id": "add_sub"})]
    ((result, error),) = answers
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
