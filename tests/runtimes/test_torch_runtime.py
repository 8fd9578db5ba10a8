"""The ``torch`` runtime: torch.export archives and TorchScript built here from small
modules, served as app.py wires them (in process, and as a real server answering
tritonclient over HTTP): signatures, batching, datatypes, threads, encrypted files,
pickled modules refused unless allowed, and the errors of unusable files or devices."""

from __future__ import annotations

import asyncio
import shutil
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from modelport.core.service import InferenceService
from modelport.errors import InferenceFailed
from modelport.runtimes.torch import PICKLE_REFUSED, TORCH_DTYPES, TorchRuntime
from modelport.server.build import build_service
from modelport.settings import Settings
from modelport.supply.encryption import KEY_ENV, encrypt_file, new_key, parse_key
from modelport.tensors import InferenceRequest, Tensor
from support.builders import write_model

WIDTH, CLASSES = 4, 3
KEY = new_key()

# TorchScript models need their tensors declared: the MLP's, and an identity's per type.
MLP_YAML = f"""\
runtime: torch
max_batch_size: 8
inputs: [{{name: features, datatype: FP32, shape: [{WIDTH}]}}]
outputs: [{{name: scores, datatype: FP32, shape: [{CLASSES}]}}]
"""


class AddSub(torch.nn.Module):
    """Two inputs, a dict of two outputs: names come from forward's arguments and keys."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": a + b, "diff": a - b}


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


@dataclass(frozen=True)
class Files:
    """Model files built once for the module, and the MLP's weights to check against."""

    mlp_pt2: Path  # torch.export, dynamic batch
    mlp_pt: Path  # TorchScript
    mlp_pth: Path  # torch.save of the whole module (pickled)
    mlp_fixed_pt2: Path  # torch.export with a fixed batch of 2
    add_sub_pt2: Path
    identity_pt: Path
    weight: np.ndarray
    bias: np.ndarray

    def expected(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.weight.T + self.bias, 0)


def _script_and_save(module: torch.nn.Module, path: Path) -> None:
    # PyTorch 2.10+ deprecates TorchScript (with a DeprecationWarning, an error under
    # pytest here); it still writes models that operators have, which must serve.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("torch-models")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(WIDTH, CLASSES), torch.nn.ReLU()).eval()
    example = (torch.randn(2, WIDTH),)
    batch = torch.export.Dim("batch")
    dynamic = torch.export.export(mlp, example, dynamic_shapes=({0: batch},))
    torch.export.save(dynamic, folder / "mlp.pt2")
    torch.export.save(torch.export.export(mlp, example), folder / "mlp_fixed.pt2")
    _script_and_save(mlp, folder / "mlp.pt")
    torch.save(mlp, folder / "mlp.pth")
    pair = (torch.randn(2, WIDTH), torch.randn(2, WIDTH))
    add_sub = torch.export.export(AddSub(), pair, dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(add_sub, folder / "add_sub.pt2")
    _script_and_save(Identity(), folder / "identity.pt")
    linear = mlp[0]
    return Files(
        folder / "mlp.pt2", folder / "mlp.pt", folder / "mlp.pth", folder / "mlp_fixed.pt2",
        folder / "add_sub.pt2", folder / "identity.pt",
        linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy(),
    )  # fmt: skip


def _model(repo: Path, name: str, model_yaml: str, source: Path, target: str) -> Path:
    """A model folder with ``source`` copied to ``1/<target>``; returns that file."""
    folder = write_model(repo, name, model_yaml)
    (folder / "1").mkdir()
    shutil.copy(source, folder / "1" / target)
    return folder / "1" / target


Serve = Callable[..., Awaitable[InferenceService]]


@pytest.fixture
async def serve_app(repo: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Serve]:
    """``await serve_app(key=..., **settings)``: app.py's service over ``repo``, with
    MODELPORT_MODEL_KEY set to ``key`` (unset if empty)."""
    services: list[InferenceService] = []

    async def start(key: str = "", **settings: Any) -> InferenceService:
        if key:
            monkeypatch.setenv(KEY_ENV, key)
        else:
            monkeypatch.delenv(KEY_ENV, raising=False)
        service = build_service(Settings(repository=str(repo), **settings))
        services.append(service)
        await service.open()
        return service

    yield start
    for service in services:
        await service.close()


def _row(service: InferenceService, name: str) -> tuple[str, str]:
    (row,) = [r for r in service.index() if r.name == name]
    return row.state, row.reason


async def _infer(
    service: InferenceService, name: str, **inputs: np.ndarray
) -> dict[str, np.ndarray]:
    tensors = tuple(Tensor(n, _v2(a), a) for n, a in inputs.items())
    response = await service.infer(InferenceRequest(name, tensors))
    return {t.name: t.data for t in response.outputs}


def _v2(array: np.ndarray) -> str:
    by_dtype = {np.dtype(t): v2 for v2, t in TORCH_DTYPES.items()}
    return by_dtype[array.dtype]


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, WIDTH)).astype(np.float32)


# -- serving --------------------------------------------------------------------------------


def test_real_server_answers_tritonclient(
    tmp_path: Path, files: Files, server_factory: Callable[..., Any]
) -> None:
    """A real server: an export archive (signature from the archive), the same MLP as
    TorchScript (signature from model.yaml) and a dict-returning archive, over HTTP v2
    with tritonclient; a request the model rejects fails alone and the server serves on."""
    repo = tmp_path / "models"
    _model(repo, "mlp_export", "runtime: torch\nmax_batch_size: 8\n", files.mlp_pt2, "model.pt2")
    _model(repo, "mlp_script", MLP_YAML, files.mlp_pt, "model.pt")
    _model(repo, "add_sub", "runtime: torch\nmax_batch_size: 8\n", files.add_sub_pt2, "model.pt2")
    variable = MLP_YAML.replace(f"shape: [{WIDTH}]", "shape: [-1]")
    _model(repo, "mlp_variable", variable, files.mlp_pt, "model.pt")
    server = server_factory(repo=repo)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))

    metadata = client.get_model_metadata("mlp_export")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, WIDTH]}]
    assert metadata["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": [-1, CLASSES]}]
    x = _rows(3)
    for name, input_name, output_name in (
        ("mlp_export", "input", "output_0"),
        ("mlp_script", "features", "scores"),
    ):
        tensor = triton.InferInput(input_name, [3, WIDTH], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(name, [tensor])
        np.testing.assert_allclose(result.as_numpy(output_name), files.expected(x), rtol=1e-5)

    a, b = _rows(2, seed=1), _rows(2, seed=2)
    inputs = [triton.InferInput(n, [2, WIDTH], "FP32") for n in ("a", "b")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add_sub", inputs)
    np.testing.assert_allclose(result.as_numpy("sum"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("diff"), a - b, rtol=1e-6)

    wrong = triton.InferInput("features", [1, WIDTH + 1], "FP32")
    wrong.set_data_from_numpy(np.ones((1, WIDTH + 1), np.float32))
    with pytest.raises(InferenceServerException, match="mat1 and mat2 shapes cannot be"):
        client.infer("mlp_variable", [wrong])
    right = triton.InferInput("features", [1, WIDTH], "FP32")
    right.set_data_from_numpy(x[:1])
    result = client.infer("mlp_variable", [right])
    np.testing.assert_allclose(result.as_numpy("scores"), files.expected(x[:1]), rtol=1e-5)


async def test_concurrent_requests_batch_and_match_alone(
    repo: Path, files: Files, serve_app: Serve
) -> None:
    _model(repo, "mlp", "runtime: torch\nmax_batch_size: 16\n", files.mlp_pt2, "model.pt2")
    service = await serve_app()
    assert _row(service, "mlp") == ("READY", "")
    requests = [_rows(1 + i % 3, seed=i) for i in range(8)]
    alone = [(await _infer(service, "mlp", input=x))["output_0"] for x in requests]
    stats = service.get_version("mlp").stats
    executions = stats.execution_count
    together = await asyncio.gather(*(_infer(service, "mlp", input=x) for x in requests))
    # The eight requests arrived together, so they ran in fewer than eight batches.
    assert stats.execution_count - executions < len(requests)
    for x, one, merged in zip(requests, alone, together, strict=True):
        np.testing.assert_allclose(merged["output_0"], one, rtol=1e-6)
        np.testing.assert_allclose(one, files.expected(x), rtol=1e-5)


async def test_every_served_datatype_round_trips(
    repo: Path, files: Files, serve_app: Serve
) -> None:
    for datatype in TORCH_DTYPES:
        _model(
            repo,
            f"identity_{datatype.lower()}",
            f"""\
            runtime: torch
            max_batch_size: 4
            inputs: [{{name: x, datatype: {datatype}, shape: [3]}}]
            outputs: [{{name: y, datatype: {datatype}, shape: [3]}}]
            """,
            files.identity_pt,
            "model.pt",
        )
    service = await serve_app()
    for datatype, dtype in TORCH_DTYPES.items():
        x = (np.arange(6).reshape(2, 3) % 2).astype(dtype)
        out = await _infer(service, f"identity_{datatype.lower()}", x=x)
        assert out["y"].dtype == np.dtype(dtype) and out["y"].tolist() == x.tolist(), datatype


async def test_threads_intra_op_is_set_on_each_instance_thread(
    repo: Path, files: Files, serve_app: Serve
) -> None:
    for name, threads in (("one", 1), ("two", 2)):
        model_yaml = f"runtime: torch\nmax_batch_size: 8\nthreads: {{intra_op: {threads}}}\n"
        _model(repo, name, model_yaml, files.mlp_pt2, "model.pt2")
    service = await serve_app()
    for name, threads in (("one", 1), ("two", 2), ("one", 1)):
        await _infer(service, name, input=_rows(1))
        instance = service.get_version(name).instances[0]
        assert await instance.call(torch.get_num_threads) == threads, name


async def test_output_count_mismatch_fails_the_request_saying_so(
    repo: Path, files: Files, serve_app: Serve
) -> None:
    two_outputs = MLP_YAML.replace(
        "outputs: [", "outputs: [{name: extra, datatype: FP32, shape: [3]}, "
    )
    _model(repo, "m", two_outputs, files.mlp_pt, "model.pt")
    service = await serve_app()
    with pytest.raises(InferenceFailed, match=r"returned a Tensor, but its outputs are"):
        await _infer(service, "m", features=_rows(1))


# -- encrypted and pickled files ------------------------------------------------------------


async def test_encrypted_torchscript_serves_like_the_plain_one(
    repo: Path, files: Files, serve_app: Serve
) -> None:
    plain = _model(repo, "secret", MLP_YAML, files.mlp_pt, "model.pt")
    enc = encrypt_file(plain, parse_key(KEY), remove_plain=True)
    service = await serve_app(key=KEY)
    assert _row(service, "secret") == ("READY", "")
    x = _rows(2)
    out = await _infer(service, "secret", features=x)
    np.testing.assert_allclose(out["scores"], files.expected(x), rtol=1e-5)
    assert sorted(p.name for p in enc.parent.iterdir()) == ["model.pt.enc"]


async def test_encrypted_archive_with_the_wrong_key_is_unavailable(
    repo: Path, files: Files, serve_app: Serve
) -> None:
    batched = "runtime: torch\nmax_batch_size: 8\n"
    plain = _model(repo, "secret", batched, files.mlp_pt2, "model.pt2")
    enc = encrypt_file(plain, parse_key(KEY), remove_plain=True)
    _model(repo, "plain", MLP_YAML, files.mlp_pt, "model.pt")
    service = await serve_app(key=new_key())
    state, reason = _row(service, "secret")
    assert state == "UNAVAILABLE"
    assert reason.startswith(f"model 'secret': {enc}: cannot decrypt")
    assert _row(service, "plain") == ("READY", "")


async def test_pickled_module_is_refused_unless_allowed(
    repo: Path, files: Files, serve_app: Serve
) -> None:
    path = _model(repo, "pickled", MLP_YAML, files.mlp_pth, "model.pth")
    refused = await serve_app()
    state, reason = _row(refused, "pickled")
    assert state == "UNAVAILABLE"
    assert reason == f"{path}: a pickled module, refused: {PICKLE_REFUSED}"

    allowed = await serve_app(allow_pickled_models=True)
    assert _row(allowed, "pickled") == ("READY", "")
    x = _rows(3)
    out = await _infer(allowed, "pickled", features=x)
    np.testing.assert_allclose(out["scores"], files.expected(x), rtol=1e-5)


async def test_a_pickled_state_dict_is_not_a_model(
    repo: Path, files: Files, serve_app: Serve, tmp_path: Path
) -> None:
    state_dict = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(WIDTH, CLASSES).state_dict(), state_dict)
    path = _model(repo, "weights", MLP_YAML, state_dict, "model.pth")
    service = await serve_app(allow_pickled_models=True)
    state, reason = _row(service, "weights")
    assert state == "UNAVAILABLE"
    assert reason.startswith(f"{path}: holds a OrderedDict, not a torch.nn.Module")


# -- unusable models ------------------------------------------------------------------------


async def test_torchscript_without_declared_tensors_names_model_yaml(
    repo: Path, files: Files, serve_app: Serve
) -> None:
    _model(repo, "bare", "runtime: torch\nmax_batch_size: 8\n", files.mlp_pt, "model.pt")
    service = await serve_app()
    state, reason = _row(service, "bare")
    assert state == "UNAVAILABLE"
    assert reason.startswith(f"{repo / 'bare' / 'model.yaml'}: field 'inputs': a TorchScript")
    assert "declare its inputs and outputs (name, datatype, shape)" in reason


@pytest.mark.parametrize(
    ("source", "target", "reason"),
    [
        ("mlp_pt", "model.pt2", "PyTorch cannot load it as a torch.export archive"),
        ("garbage", "model.pt", "PyTorch cannot load it as a TorchScript model"),
        ("garbage", "model.onnx", "no torch model file; expected model.pt2"),
    ],
)
async def test_wrong_file_is_unavailable_saying_why(
    repo: Path, files: Files, serve_app: Serve, tmp_path: Path, source: str, target: str,
    reason: str,
) -> None:  # fmt: skip
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x08\x07not a model")
    path = garbage if source == "garbage" else getattr(files, source)
    _model(repo, "wrong", MLP_YAML, path, target)
    _model(repo, "right", MLP_YAML, files.mlp_pt, "model.pt")
    service = await serve_app()
    state, why = _row(service, "wrong")
    assert state == "UNAVAILABLE" and reason in why
    assert _row(service, "right") == ("READY", "")


async def test_two_model_files_are_ambiguous(repo: Path, files: Files, serve_app: Serve) -> None:
    _model(repo, "both", MLP_YAML, files.mlp_pt, "model.pt")
    shutil.copy(files.mlp_pt2, repo / "both" / "1" / "model.pt2")
    service = await serve_app()
    assert _row(service, "both") == (
        "UNAVAILABLE",
        f"{repo / 'both' / '1'}: holds model.pt2, model.pt; keep one torch model file per version",
    )


async def test_archive_with_a_fixed_batch_cannot_batch(
    repo: Path, files: Files, serve_app: Serve
) -> None:
    _model(repo, "fixed", "runtime: torch\nmax_batch_size: 8\n", files.mlp_fixed_pt2, "model.pt2")
    _model(repo, "unbatched", "runtime: torch\n", files.mlp_fixed_pt2, "model.pt2")
    service = await serve_app()
    state, reason = _row(service, "fixed")
    assert state == "UNAVAILABLE"
    assert "tensor 'input' was exported with a fixed first dimension of 2" in reason
    assert "dynamic_shapes=" in reason and "max_batch_size: 0" in reason
    # Without batching the same archive serves, its fixed shape as it is.
    assert _row(service, "unbatched") == ("READY", "")
    x = _rows(2)
    out = await _infer(service, "unbatched", input=x)
    np.testing.assert_allclose(out["output_0"], files.expected(x), rtol=1e-5)


async def test_declared_input_count_must_match_the_archive(
    repo: Path, files: Files, serve_app: Serve
) -> None:
    _model(repo, "m", MLP_YAML, files.add_sub_pt2, "model.pt2")
    service = await serve_app()
    state, reason = _row(service, "m")
    assert state == "UNAVAILABLE"
    assert reason.startswith(f"{repo / 'm' / 'model.yaml'}: field 'inputs': declares 1, but")
    assert "has 2 (a, b)" in reason


async def test_bytes_tensors_are_refused(repo: Path, files: Files, serve_app: Serve) -> None:
    text_yaml = MLP_YAML.replace(
        "name: features, datatype: FP32", "name: features, datatype: BYTES"
    )
    _model(repo, "text", text_yaml, files.mlp_pt, "model.pt")
    service = await serve_app()
    state, reason = _row(service, "text")
    assert state == "UNAVAILABLE"
    assert "'features' is BYTES, which the torch runtime cannot pass" in reason


async def test_gpu_model_without_cuda_in_torch(repo: Path, files: Files, serve_app: Serve) -> None:
    """These machines have no GPU and the CPU-only PyTorch wheel: with a GPU declared
    (the gpus setting), a model placed on it reaches PyTorch, which has no CUDA, so
    ``device: gpu`` is UNAVAILABLE saying so and ``device: auto`` serves on the CPU."""
    for name, device in (("gpu", "gpu"), ("auto", "auto")):
        model_yaml = f"runtime: torch\nmax_batch_size: 8\ninstances: {{device: {device}}}\n"
        _model(repo, name, model_yaml, files.mlp_pt2, "model.pt2")
    service = await serve_app(gpus="0")
    state, reason = _row(service, "gpu")
    assert state == "UNAVAILABLE"
    assert reason.startswith("model 'gpu' is placed on cuda:0 (instances.device: gpu), but")
    assert "CPU-only build" in reason and "install a CUDA build of PyTorch" in reason
    assert _row(service, "auto") == ("READY", "")
    runtime = service.get_version("auto").instances[0].runtime
    assert isinstance(runtime, TorchRuntime) and runtime.device == "cpu"


async def test_without_pytorch_the_model_says_what_to_install(
    repo: Path, files: Files, serve_app: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PyTorch is installed here; None in sys.modules makes `import torch` fail as if not.
    monkeypatch.setitem(sys.modules, "torch", None)
    _model(repo, "m", "runtime: torch\nmax_batch_size: 8\n", files.mlp_pt2, "model.pt2")
    service = await serve_app()
    state, reason = _row(service, "m")
    assert state == "UNAVAILABLE"
    assert reason.startswith("model 'm': the torch runtime needs PyTorch")
    assert reason.endswith("pip install 'modelport[torch]'")
