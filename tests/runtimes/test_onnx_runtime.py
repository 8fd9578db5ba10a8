"""The ``onnx`` runtime on ONNX Runtime's CPU provider: signatures read from the file,
every datatype end to end, threads, and the errors of unusable files or devices."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from modelport.core.instances import Gpus
from modelport.core.service import InferenceService
from modelport.runtimes.onnx import OnnxRuntime
from modelport.tensors import DATATYPES, InferenceRequest, Tensor
from support.builders import ONNX_TYPES, add_sub_onnx, identity_onnx, mlp_onnx, write_model

Start = Callable[..., Awaitable[InferenceService]]  # the serve fixture

HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _row(service: InferenceService, name: str) -> tuple[str, str, str]:
    (row,) = [r for r in service.index() if r.name == name]
    return row.version, row.state, row.reason


def _session(service: InferenceService, name: str) -> onnxruntime.InferenceSession:
    runtime = service.get_version(name).instances[0].runtime
    assert isinstance(runtime, OnnxRuntime)
    return runtime.session


async def test_signature_from_the_file_when_batching(repo: Path, serve: Start) -> None:
    write_model(repo, "mlp", "runtime: onnx\nmax_batch_size: 64\n")
    mlp_onnx(repo / "mlp" / "1" / "model.onnx", sizes=(256, 32, 10))
    service = await serve()
    signature = service.get_version("mlp").signature
    # The file's first dimension is the batch dimension, so it is left out.
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("INPUT0", "FP32", (256,))]
    assert [(t.name, t.datatype, t.shape) for t in signature.outputs] == [
        ("OUTPUT0", "FP32", (10,))
    ]
    meta = service.metadata("mlp")
    assert meta.platform == "onnxruntime_onnx" and meta.inputs[0].shape == (-1, 256)
    x = np.ones((3, 256), np.float32)
    response = await service.infer(InferenceRequest("mlp", (Tensor("INPUT0", "FP32", x),)))
    assert response.outputs[0].shape == (3, 10)


async def test_signature_from_the_file_without_batching(repo: Path, serve: Start) -> None:
    write_model(repo, "addsub", "runtime: onnx\n")
    add_sub_onnx(repo / "addsub" / "1" / "model.onnx", width=4)
    service = await serve()
    signature = service.get_version("addsub").signature
    # Without batching the symbolic first dimension is just a variable one.
    assert [(t.name, t.shape) for t in signature.inputs] == [
        ("INPUT0", (-1, 4)),
        ("INPUT1", (-1, 4)),
    ]
    assert [t.name for t in signature.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert service.metadata("addsub").inputs[0].shape == (-1, 4)
    a = np.full((5, 4), 3, np.float32)
    b = np.ones((5, 4), np.float32)
    request = InferenceRequest("addsub", (Tensor("INPUT0", "FP32", a), Tensor("INPUT1", "FP32", b)))
    response = await service.infer(request)
    assert [t.data.tolist() for t in response.outputs] == [(a + b).tolist(), (a - b).tolist()]


async def test_declared_signature_narrows_the_file(repo: Path, serve: Start) -> None:
    yaml = """\
runtime: onnx
max_batch_size: 8
inputs:
  - {name: INPUT0, datatype: FP32, shape: [4]}
  - {name: INPUT1, datatype: FP32, shape: [4]}
outputs:
  - {name: OUTPUT1, datatype: FP32, shape: [4], description: the difference}
"""
    write_model(repo, "addsub", yaml)
    add_sub_onnx(repo / "addsub" / "1" / "model.onnx", width=4)
    service = await serve()
    a = np.full((1, 4), 3, np.float32)
    request = InferenceRequest("addsub", (Tensor("INPUT0", "FP32", a), Tensor("INPUT1", "FP32", a)))
    response = await service.infer(request)
    assert [(t.name, t.data.tolist()) for t in response.outputs] == [("OUTPUT1", [[0, 0, 0, 0]])]


async def test_every_datatype_end_to_end(repo: Path, serve: Start) -> None:
    samples = {
        "BOOL": np.array([[True, False, True]]),
        "BYTES": np.array([[b"a", "é".encode(), b""]], dtype=np.object_),
    }
    for datatype in DATATYPES:
        write_model(repo, datatype.lower(), "runtime: onnx\nmax_batch_size: 4\n")
        identity_onnx(repo / datatype.lower() / "1" / "model.onnx", datatype)
    service = await serve()
    for datatype in DATATYPES:
        name = datatype.lower()
        assert _row(service, name)[1] == "READY", _row(service, name)
        assert service.get_version(name).signature.inputs[0].datatype == datatype
        dtype = DATATYPES[datatype]
        x = samples.get(datatype)
        if x is None:
            x = np.array([[1, 2, 127]], dtype=dtype)
        response = await service.infer(InferenceRequest(name, (Tensor("INPUT0", datatype, x),)))
        (out,) = response.outputs
        assert out.datatype == datatype and out.data.dtype == dtype
        assert out.data.tolist() == x.tolist(), datatype


async def test_threads_settings_are_applied(repo: Path, serve: Start) -> None:
    write_model(repo, "default", "runtime: onnx\nmax_batch_size: 8\n")
    write_model(
        repo, "tuned", "runtime: onnx\nmax_batch_size: 8\nthreads: {intra_op: 3, inter_op: 2}\n"
    )
    for name in ("default", "tuned"):
        mlp_onnx(repo / name / "1" / "model.onnx", sizes=(8, 4))
    service = await serve()
    default = _session(service, "default").get_session_options()
    tuned = _session(service, "tuned").get_session_options()
    assert (default.intra_op_num_threads, default.inter_op_num_threads) == (1, 1)
    assert (tuned.intra_op_num_threads, tuned.inter_op_num_threads) == (3, 2)


async def test_a_big_model_without_threads_gets_the_cores(
    repo: Path, serve: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sizes stand in for the 16 MiB line: "big" is an MLP whose file is past it, "small" one
    # that is not; "two" shares the cores between its instances; "pinned" says its threads.
    write_model(repo, "small", "runtime: onnx\nmax_batch_size: 8\n")
    write_model(repo, "big", "runtime: onnx\nmax_batch_size: 8\n")
    write_model(repo, "two", "runtime: onnx\nmax_batch_size: 8\ninstances: {count: 2}\n")
    write_model(repo, "pinned", "runtime: onnx\nmax_batch_size: 8\nthreads: {intra_op: 1}\n")
    mlp_onnx(repo / "small" / "1" / "model.onnx", sizes=(8, 4))
    for name in ("big", "two", "pinned"):
        mlp_onnx(repo / name / "1" / "model.onnx", sizes=(256, 256, 4))
    small_bytes = (repo / "small" / "1" / "model.onnx").stat().st_size
    big_bytes = (repo / "big" / "1" / "model.onnx").stat().st_size
    assert small_bytes < big_bytes
    monkeypatch.setattr("modelport.runtimes.onnx.AUTO_THREADS_BYTES", big_bytes)
    service = await serve()
    cores = len(os.sched_getaffinity(0))

    def intra_op(name: str) -> int:
        return int(_session(service, name).get_session_options().intra_op_num_threads)

    assert intra_op("small") == 1
    assert intra_op("big") == cores
    assert intra_op("two") == max(1, cores // 2)
    assert intra_op("pinned") == 1
    # Still no spinning: the threads would take the CPU from the event loop.
    options = _session(service, "big").get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = np.ones((3, 256), dtype=np.float32)
    (name,) = [i.name for i in _session(service, "big").get_inputs()]
    big = await service.infer(InferenceRequest("big", (Tensor(name, "FP32", x),)))
    pinned = await service.infer(InferenceRequest("pinned", (Tensor(name, "FP32", x),)))
    assert big.outputs[0].data.shape == (3, 4)
    assert pinned.outputs[0].data.shape == (3, 4)


@pytest.mark.skipif(HAS_CUDA, reason="this ONNX Runtime has a CUDA provider")
async def test_gpu_model_is_unavailable_without_cuda(repo: Path, serve: Start) -> None:
    """These test machines have no GPU (and the CPU-only onnxruntime wheel): with GPUs
    declared, a model placed on one reaches ONNX Runtime, which has no CUDA provider, so
    it must be UNAVAILABLE saying what to install, while a CPU model beside it serves."""
    write_model(
        repo, "gpu", "runtime: onnx\nmax_batch_size: 8\ninstances: {device: gpu, gpus: [1]}\n"
    )
    write_model(repo, "cpu", "runtime: onnx\nmax_batch_size: 8\n")
    for name in ("gpu", "cpu"):
        mlp_onnx(repo / name / "1" / "model.onnx", sizes=(8, 4))
    service = await serve(gpus=Gpus((0, 1), "declared by the test"))
    _, state, reason = _row(service, "gpu")
    assert state == "UNAVAILABLE"
    assert "model 'gpu' is placed on cuda:1 (instances.device: gpu)" in reason
    assert "no CUDA provider" in reason and "pip install 'modelport[gpu]'" in reason
    assert _row(service, "cpu")[1] == "READY"


@pytest.mark.skipif(HAS_CUDA, reason="this ONNX Runtime has a CUDA provider")
async def test_auto_device_falls_back_to_cpu_without_cuda(repo: Path, serve: Start) -> None:
    """No GPU on these machines: ``device: auto`` placed on a declared GPU must still
    serve, on the CPU, when ONNX Runtime has no CUDA provider."""
    write_model(repo, "auto", "runtime: onnx\nmax_batch_size: 8\ninstances: {device: auto}\n")
    mlp_onnx(repo / "auto" / "1" / "model.onnx", sizes=(8, 4))
    service = await serve(gpus=Gpus((0,), "declared by the test"))
    assert _row(service, "auto")[1] == "READY", _row(service, "auto")
    assert _session(service, "auto").get_providers() == ["CPUExecutionProvider"]


async def test_missing_model_file(repo: Path, serve: Start) -> None:
    folder = write_model(repo, "m", "runtime: onnx\n", {"1/model.pt": b"\x00"})
    service = await serve()
    _, state, reason = _row(service, "m")
    assert state == "UNAVAILABLE"
    assert reason == f"{folder / '1' / 'model.onnx'}: missing; an onnx model's file is model.onnx"


async def test_corrupt_model_file(repo: Path, serve: Start) -> None:
    folder = write_model(repo, "m", "runtime: onnx\n", {"1/model.onnx": b"\x08\x07garbage"})
    service = await serve()
    _, state, reason = _row(service, "m")
    assert state == "UNAVAILABLE"
    assert reason.startswith(f"{folder / '1' / 'model.onnx'}: ONNX Runtime cannot load it")


def _graph_model(path: Path, inputs: list[onnx.ValueInfoProto]) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", [inputs[0].name], ["OUTPUT0"])],
        "g",
        inputs,
        [helper.make_tensor_value_info("OUTPUT0", inputs[0].type.tensor_type.elem_type, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


async def test_scalar_input_cannot_batch(repo: Path, serve: Start) -> None:
    write_model(repo, "m", "runtime: onnx\nmax_batch_size: 8\n")
    _graph_model(
        repo / "m" / "1" / "model.onnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])]
    )
    service = await serve()
    reason = _row(service, "m")[2]
    assert "tensor 'x' is a scalar, so it has no batch dimension; set max_batch_size: 0" in reason


async def test_unserved_tensor_type(repo: Path, serve: Start) -> None:
    assert TensorProto.BFLOAT16 not in ONNX_TYPES.values()
    write_model(repo, "m", "runtime: onnx\n")
    _graph_model(
        repo / "m" / "1" / "model.onnx",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2])],
    )
    service = await serve()
    assert "tensor 'x' has type tensor(bfloat16), not served" in _row(service, "m")[2]


def _runtime(service: InferenceService, name: str) -> OnnxRuntime:
    runtime = service.get_version(name).instances[0].runtime
    assert isinstance(runtime, OnnxRuntime)
    return runtime


async def test_lone_requests_get_a_spinning_session_of_their_own(repo: Path, serve: Start) -> None:
    # Two threads asked for explicitly, so the test does not depend on this machine's cores.
    write_model(
        repo, "lone", "runtime: onnx\nmax_batch_size: 8\nparameters:\n  lone_request_threads: 2\n"
    )
    write_model(
        repo, "plain", "runtime: onnx\nmax_batch_size: 8\nparameters:\n  lone_request_threads: 0\n"
    )
    for name in ("lone", "plain"):
        mlp_onnx(repo / name / "1" / "model.onnx", sizes=(8, 4))
    service = await serve()
    lone, plain = _runtime(service, "lone"), _runtime(service, "plain")
    assert plain.lone_session is None
    options = lone.lone_session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    # The batches' session never spins (it would take the CPU from the event loop).
    main = lone.session.get_session_options()
    assert main.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = np.random.default_rng(3).random((1, 8), dtype=np.float32)
    (name,) = [i.name for i in lone.session.get_inputs()]
    by_batch = lone.infer({name: x}, {})
    by_lone = lone.infer_inline({name: x}, {})
    assert by_batch.keys() == by_lone.keys()
    for key in by_batch:
        np.testing.assert_allclose(by_lone[key], by_batch[key], rtol=1e-5)
    # Served: a lone request's answer is the same whichever session ran it.
    request = InferenceRequest("lone", (Tensor(name, "FP32", x),))
    served = await service.infer(request)
    np.testing.assert_allclose(served.outputs[0].data, next(iter(by_batch.values())), rtol=1e-5)


async def test_lone_request_threads_must_be_a_count(repo: Path, serve: Start) -> None:
    folder = write_model(
        repo, "m", "runtime: onnx\nmax_batch_size: 8\nparameters:\n  lone_request_threads: many\n"
    )
    mlp_onnx(repo / "m" / "1" / "model.onnx", sizes=(8, 4))
    service = await serve()
    _, state, reason = _row(service, "m")
    assert state == "UNAVAILABLE"
    assert reason.startswith(f"{folder / 'model.yaml'}: field 'parameters.lone_request_threads'")
    assert "'many' is not a whole number >= 0" in reason
