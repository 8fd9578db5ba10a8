"""Loading models from a repository: a broken model never takes the others down; the
version policy picks the folders; reloads swap only once the new version is ready."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from modelport.core.caller import LoopModelCaller
from modelport.core.entries import IndexRow, ModelState
from modelport.core.repository import ModelRepository
from modelport.core.service import InferenceService
from modelport.errors import InvalidInput, ModelNotFound, ModelUnavailable, SpecError
from modelport.tensors import InferenceRequest, Tensor
from support.builders import add_sub_onnx, mlp_onnx, write_model

Start = Callable[..., Awaitable[InferenceService]]  # the serve fixture

FAKE = """\
runtime: fake
max_batch_size: 4
inputs: [{name: x, datatype: FP32, shape: [2]}]
outputs: [{name: y, datatype: FP32, shape: [2]}]
"""

# A python model answering with its version number, so tests can see which one ran.
VERSIONED = """\
import numpy as np
from pathlib import Path

class Model:
    def setup(self, context):
        self.version = context.version
        (context.version_dir / "setup-started").touch()
        delay = context.spec.parameters.get("setup_delay_{version}", 0)
        import time; time.sleep(delay)

    def predict(self, inputs):
        delay = inputs["x"][0, 0]
        import time; time.sleep(float(delay))
        return {{"y": np.full((len(inputs["x"]), 1), self.version, np.int32)}}
"""

PYTHON_YAML = """\
runtime: python
max_batch_size: 4
inputs: [{name: x, datatype: FP32, shape: [1]}]
outputs: [{name: y, datatype: INT32, shape: [1]}]
"""


def _fake_request(name: str = "m", version: str = "") -> InferenceRequest:
    return InferenceRequest(name, (Tensor("x", "FP32", np.ones((1, 2), np.float32)),), version)


async def _version_answering(service: InferenceService, delay: float = 0.0) -> int:
    x = Tensor("x", "FP32", np.full((1, 1), delay, np.float32))
    response = await service.infer(InferenceRequest("p", (x,)))
    assert response.model_version == str(response.outputs[0].data[0, 0])
    return int(response.model_version)


def _rows(service: InferenceService) -> dict[str, tuple[str, str, str]]:
    return {r.name: (r.version, r.state, r.reason) for r in service.index()}


async def test_broken_models_leave_the_others_serving(repo: Path, serve: Start) -> None:
    write_model(repo, "good", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(repo / "good" / "1" / "model.onnx")
    write_model(repo, "bad-yaml", "runtime: onnx\nmax_batch_sise: 8\n")
    write_model(repo, "corrupt", "runtime: onnx\n", {"1/model.onnx": b"not a protobuf"})
    write_model(repo, "no-yaml", "")
    (repo / "no-yaml" / "model.yaml").unlink()
    write_model(repo, "tensorrt", "runtime: tensorrt\n", {"1/model.plan": b""})
    write_model(repo, "no-versions", "runtime: onnx\n")

    service = await serve()
    rows = _rows(service)
    assert rows["good"] == ("1", "READY", "")
    for name in ("bad-yaml", "corrupt", "no-yaml", "tensorrt", "no-versions"):
        assert rows[name][:2] == ("", "UNAVAILABLE"), name
    assert "field 'max_batch_sise': unknown field" in rows["bad-yaml"][2]
    assert str(repo / "bad-yaml" / "model.yaml") in rows["bad-yaml"][2]
    assert "ONNX Runtime cannot load it" in rows["corrupt"][2]
    assert str(repo / "corrupt" / "1" / "model.onnx") in rows["corrupt"][2]
    assert "model.yaml: missing" in rows["no-yaml"][2]
    assert "unknown runtime 'tensorrt'; expected one of fake, onnx, python" in rows["tensorrt"][2]
    assert "no version folders" in rows["no-versions"][2]
    assert service.ready()
    assert [r.name for r in service.index(ready_only=True)] == ["good"]

    a = np.array([[1, 2, 3, 4]], np.float32)
    request = InferenceRequest("good", (Tensor("INPUT0", "FP32", a), Tensor("INPUT1", "FP32", a)))
    response = await service.infer(request)
    assert response.outputs[0].data.tolist() == [[2, 4, 6, 8]]
    with pytest.raises(ModelUnavailable, match="field 'max_batch_sise'"):
        await service.infer(_fake_request("bad-yaml"))
    assert not service.model_ready("corrupt") and service.model_ready("good")


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", [3]),
        ("version_policy: {latest: 2}", [2, 3]),
        ("version_policy: {all: true}", [1, 2, 3]),
        ("version_policy: {specific: [1, 3]}", [1, 3]),
    ],
)
async def test_version_policy_selects_folders(
    repo: Path, serve: Start, policy: str, served: list[int]
) -> None:
    folder = write_model(repo, "m", FAKE + policy + "\n")
    for v in (1, 2, 3):
        (folder / str(v)).mkdir()
    (folder / "notes").mkdir()  # not a version
    service = await serve()
    assert [int(r.version) for r in service.index()] == served
    response = await service.infer(_fake_request())
    assert response.model_version == str(served[-1])
    for v in served:
        assert (await service.infer(_fake_request(version=str(v)))).model_version == str(v)
    for v in {1, 2, 3} - set(served):
        with pytest.raises(ModelNotFound, match=f"has no version {v}"):
            await service.infer(_fake_request(version=str(v)))
    with pytest.raises(InvalidInput, match="positive integer, got 'latest'"):
        await service.infer(_fake_request(version="latest"))


async def test_policy_selecting_nothing(repo: Path, serve: Start) -> None:
    write_model(repo, "m", FAKE + "version_policy: {specific: [7]}\n", {"1/.keep": ""})
    service = await serve()
    _, state, reason = _rows(service)["m"]
    assert state == "UNAVAILABLE"
    assert "field 'version_policy': selects none of the versions present (1)" in reason


async def test_unload_and_load_again(repo: Path, serve: Start) -> None:
    write_model(repo, "m", FAKE, {"1/.keep": ""})
    service = await serve()
    runtime = service.get_version("m").instances[0].runtime
    await service.unload("m")
    assert _rows(service)["m"] == ("", "UNAVAILABLE", "unloaded")
    assert runtime.loaded is False  # type: ignore[attr-defined]
    with pytest.raises(ModelUnavailable, match="'m' is unavailable: unloaded"):
        await service.infer(_fake_request())
    await service.load("m")
    assert _rows(service)["m"] == ("1", "READY", "")
    assert (await service.infer(_fake_request())).outputs[0].data.tolist() == [[1, 1]]


async def test_unknown_model(repo: Path, serve: Start) -> None:
    service = await serve()
    with pytest.raises(ModelNotFound):
        await service.load("ghost")
    with pytest.raises(ModelNotFound):
        await service.unload("ghost")
    with pytest.raises(ModelNotFound, match="unknown model 'ghost'"):
        await service.infer(_fake_request("ghost"))
    for name in ("", "../m", ".hidden", "_private"):
        with pytest.raises(ModelNotFound):
            ModelRepository(repo).source(name)
    assert "ghost" not in [m.name for m in service.models()]


async def test_models_not_loaded_are_listed(repo: Path, serve: Start) -> None:
    write_model(repo, "m", FAKE, {"1/.keep": ""})
    (repo / "__pycache__").mkdir()
    service = await serve(load_all=False)
    assert service.index() == [
        IndexRow(name="m", version="", state="UNAVAILABLE", reason="not loaded")
    ]
    assert _rows(service) == {"m": ("", "UNAVAILABLE", "not loaded")}
    assert not service.ready()


async def test_reload_serves_the_old_version_until_the_new_one_is_ready(
    repo: Path, serve: Start
) -> None:
    yaml = PYTHON_YAML + "parameters: {setup_delay_2: 0.5}\n"
    folder = write_model(repo, "p", yaml, {"1/model.py": VERSIONED.format(version=1)})
    service = await serve()
    assert await _version_answering(service) == 1

    (folder / "2").mkdir()
    (folder / "2" / "model.py").write_text(VERSIONED.format(version=2))
    reload = asyncio.create_task(service.load("p"))
    while not (folder / "2" / "setup-started").exists():
        await asyncio.sleep(0.005)
    # Version 2 is loading (its setup takes 0.5 s); version 1 keeps answering, and a
    # slow request it accepted now finishes even though the swap happens meanwhile.
    slow = asyncio.create_task(_version_answering(service, delay=0.8))
    for _ in range(3):
        assert await _version_answering(service) == 1
    assert _rows(service)["p"] == ("1", "READY", "")
    await reload
    assert await _version_answering(service) == 2
    assert await slow == 1
    assert _rows(service)["p"] == ("2", "READY", "")
    with pytest.raises(ModelNotFound, match="has no version 1"):
        service.get_version("p", "1")


async def test_failed_reload_keeps_the_old_version(repo: Path, serve: Start) -> None:
    folder = write_model(repo, "p", PYTHON_YAML, {"1/model.py": VERSIONED.format(version=1)})
    service = await serve()
    (folder / "2").mkdir()
    (folder / "2" / "model.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(SpecError, match="ModuleNotFoundError"):
        await service.load("p")
    assert _rows(service)["p"] == ("1", "READY", "")
    assert await _version_answering(service) == 1

    # A model.yaml broken after loading does not take the served version down either.
    (folder / "model.yaml").write_text("runtime: python\nmax_batch_size: [4]\n")
    with pytest.raises(SpecError, match="field 'max_batch_size'"):
        await service.load("p")
    assert await _version_answering(service) == 1


async def test_warm_up_runs_before_ready(repo: Path, serve: Start) -> None:
    warmup = """\
warmup:
  - inputs: {INPUT0: random}
    batch_size: 4
    count: 3
  - {}
instances: {count: 2}
"""
    write_model(repo, "mlp", "runtime: onnx\nmax_batch_size: 8\n" + warmup)
    mlp_onnx(repo / "mlp" / "1" / "model.onnx", sizes=(16, 32, 4))
    service = await serve()
    stats = service.get_version("mlp").stats
    assert stats.warmup_ns > 0
    # Warm-up requests are not client requests: they are not counted.
    assert stats.execution_count == 0 and stats.success.count == 0


@pytest.mark.parametrize(
    ("yaml", "files", "reason"),
    [
        (
            "runtime: onnx\nmax_batch_size: 8\nwarmup: [{inputs: {INPUT0: [1, 2, 3]}}]\n",
            {},
            "cannot reshape",
        ),
        (
            FAKE + "parameters: {fail_with: out of memory}\nwarmup: [{}]\n",
            {"1/.keep": ""},
            "RuntimeError: out of memory",
        ),
    ],
    ids=["bad-literal", "runtime-raises"],
)
async def test_failing_warm_up_makes_the_model_unavailable(
    repo: Path, serve: Start, yaml: str, files: dict[str, str], reason: str
) -> None:
    folder = write_model(repo, "m", yaml, files)
    if yaml.startswith("runtime: onnx"):
        mlp_onnx(folder / "1" / "model.onnx", sizes=(16, 4))
    service = await serve()
    _, state, message = _rows(service)["m"]
    assert state == "UNAVAILABLE"
    assert "model 'm' version 1: warm-up failed" in message and reason in message
    assert "check the 'warmup' field" in message


async def test_labels_from_the_spec_or_a_file(repo: Path, serve: Start) -> None:
    write_model(repo, "listed", FAKE + "labels: [cat, dog]\n", {"1/.keep": ""})
    write_model(
        repo, "filed", FAKE + "labels: names.txt\n", {"1/.keep": "", "names.txt": "a\n\nb\n"}
    )
    write_model(repo, "lost", FAKE + "labels: absent.txt\n", {"1/.keep": ""})
    service = await serve()
    assert service.get_version("listed").labels == ("cat", "dog")
    assert service.get_version("filed").labels == ("a", "b")
    _, state, reason = _rows(service)["lost"]
    assert state == "UNAVAILABLE" and "field 'labels'" in reason and "absent.txt" in reason


async def test_declared_inputs_must_exist_in_the_model_file(repo: Path, serve: Start) -> None:
    yaml = "runtime: onnx\nmax_batch_size: 8\ninputs: [{name: IMAGE, datatype: FP32, shape: [4]}]\n"
    write_model(repo, "m", yaml)
    add_sub_onnx(repo / "m" / "1" / "model.onnx")
    service = await serve()
    _, state, reason = _rows(service)["m"]
    assert state == "UNAVAILABLE"
    assert "field 'inputs': ['IMAGE'] not in the model file" in reason


async def test_undeclared_inputs_of_a_runtime_that_cannot_tell(repo: Path, serve: Start) -> None:
    write_model(repo, "m", "runtime: fake\n", {"1/.keep": ""})
    service = await serve()
    assert "field 'inputs': the fake runtime cannot tell its inputs" in _rows(service)["m"][2]


async def test_close_unloads_everything(repo: Path, serve: Start) -> None:
    write_model(repo, "m", FAKE, {"1/.keep": ""})
    service = await serve()
    runtime = service.get_version("m").instances[0].runtime
    await service.close()
    assert runtime.loaded is False  # type: ignore[attr-defined]
    assert service.model("m").state is ModelState.UNAVAILABLE


async def test_a_loading_model_is_not_ready(repo: Path, serve: Start) -> None:
    yaml = PYTHON_YAML + "parameters: {setup_delay_1: 0.3}\n"
    folder = write_model(repo, "p", yaml, {"1/model.py": VERSIONED.format(version=1)})
    service = await serve(load_all=False)
    loading = asyncio.create_task(service.open())
    while not (folder / "1" / "setup-started").exists():
        await asyncio.sleep(0.005)
    assert _rows(service)["p"] == ("", "LOADING", "")
    assert not service.ready() and not service.model_ready("p")
    with pytest.raises(ModelUnavailable, match="model 'p' is loading"):
        await _version_answering(service)
    await loading
    assert service.ready() and service.model_ready("p")
    assert await _version_answering(service) == 1


async def test_models_cannot_be_called_before_the_server_starts(repo: Path) -> None:
    service = InferenceService(ModelRepository(repo), {}, name="modelport", version="test")
    with pytest.raises(ModelUnavailable, match="before the server has started"):
        LoopModelCaller(service).infer("m", {"x": np.zeros(1)})


async def test_warm_up_from_files(repo: Path, serve: Start) -> None:
    yaml = """\
runtime: onnx
max_batch_size: 8
warmup:
  - inputs: {INPUT0: {file: warmup/sample.npy}}
    batch_size: 2
  - inputs: {INPUT0: {file: warmup/raw.bin}}
"""
    folder = write_model(repo, "mlp", yaml)
    mlp_onnx(folder / "1" / "model.onnx", sizes=(4, 8, 2))
    (folder / "warmup").mkdir()
    np.save(folder / "warmup" / "sample.npy", np.ones(4, np.float32))  # no batch dimension
    (folder / "warmup" / "raw.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    write_model(repo, "outside", yaml.replace("warmup/sample.npy", "../../secret.npy"))
    mlp_onnx(repo / "outside" / "1" / "model.onnx", sizes=(4, 8, 2))
    service = await serve()
    assert service.get_version("mlp").stats.warmup_ns > 0
    _, state, reason = _rows(service)["outside"]
    assert state == "UNAVAILABLE" and "outside the model's folder" in reason
