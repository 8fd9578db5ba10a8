"""The ``python`` runtime: a user's ``Model`` class, its contract, pipelines that call
other served models, and the errors a broken model.py gives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from modelport.core.runtime import available_cores
from modelport.core.service import InferenceService
from modelport.errors import InferenceFailed, ModelportError, ModelUnavailable
from modelport.tensors import InferenceRequest, Tensor
from support.builders import add_sub_onnx, write_model

Start = Callable[..., Awaitable[InferenceService]]  # the serve fixture

SCALE_YAML = """\
runtime: python
max_batch_size: 4
inputs: [{name: x, datatype: FP32, shape: [3]}]
outputs: [{name: y, datatype: FP32, shape: [3]}]
parameters: {scale: 2.0}
"""

# The full contract: setup reads the context, predict takes parameters, teardown runs
# on unload (it leaves a file behind so the test can see it).
CONTRACT = """\
import numpy as np

class Model:
    def setup(self, context):
        self.scale = context.spec.parameters["scale"]
        self.folder = context.version_dir
        self.where = (context.version, context.instance, context.device)

    def predict(self, inputs, parameters):
        offset = parameters.get("offset", 0.0)
        return {"y": inputs["x"][:, ::-1] * self.scale + offset}

    def teardown(self):
        (self.folder / "torn-down").write_text(repr(self.where))
"""

# The smallest model: predict(inputs) only, no setup or teardown.
MINIMAL = """\
class Model:
    def predict(self, inputs):
        return {"y": inputs["x"] + 1}
"""


def _x(rows: int = 1) -> Tensor:
    return Tensor("x", "FP32", np.arange(rows * 3, dtype=np.float32).reshape(rows, 3))


async def _infer(
    service: InferenceService, model: str, *tensors: Tensor, **parameters: object
) -> np.ndarray:
    response = await service.infer(InferenceRequest(model, tensors, parameters=parameters))
    return response.outputs[0].data


def _reason(service: InferenceService, name: str) -> str:
    (row,) = [r for r in service.index() if r.name == name]
    assert row.state == "UNAVAILABLE"
    return row.reason


async def test_full_contract(repo: Path, serve: Start) -> None:
    folder = write_model(repo, "scale", SCALE_YAML, {"1/model.py": CONTRACT})
    service = await serve()
    x = _x(2).data
    assert np.array_equal(await _infer(service, "scale", _x(2)), x[:, ::-1] * 2)
    assert np.array_equal(await _infer(service, "scale", _x(2), offset=0.5), x[:, ::-1] * 2 + 0.5)
    assert not (folder / "1" / "torn-down").exists()
    await service.unload("scale")
    assert (folder / "1" / "torn-down").read_text() == "(1, 0, 'cpu')"


async def test_predict_without_parameters_and_model_py_in_the_model_folder(
    repo: Path, serve: Start
) -> None:
    write_model(repo, "plus", SCALE_YAML, {"model.py": MINIMAL, "1/.keep": ""})
    service = await serve()
    assert np.array_equal(await _infer(service, "plus", _x(), ignored=1), _x().data + 1)


async def test_each_instance_gets_its_own_object(repo: Path, serve: Start) -> None:
    yaml = SCALE_YAML + "instances: {count: 2}\n"
    write_model(repo, "scale", yaml, {"1/model.py": CONTRACT})
    service = await serve()
    models = [inst.runtime.model for inst in service.get_version("scale").instances]  # type: ignore[attr-defined]
    assert [m.where for m in models] == [(1, 0, "cpu"), (1, 1, "cpu")]
    assert models[0] is not models[1]


# A thread-safe model whose requests meet at a barrier: two requests of one batch pass it
# only if they run at the same time (one after the other, the first waits 30 s and
# fails). A negative input fails its own request.
MEETING = """\
import threading
import numpy as np

class Model:
    thread_safe = True

    def setup(self, context):
        self.barrier = threading.Barrier(2, timeout=30)

    def predict(self, inputs):
        if (inputs["x"] < 0).any():
            raise ValueError("negative")
        self.barrier.wait()
        name = threading.current_thread().name
        return {"y": inputs["x"] * 0 + float(name.rsplit("_", 1)[1])}
"""


@pytest.mark.skipif(
    available_cores() < 2, reason="one core: a thread-safe model's requests run in turn"
)
async def test_a_thread_safe_models_requests_run_side_by_side(repo: Path, serve: Start) -> None:
    write_model(repo, "meeting", SCALE_YAML, {"1/model.py": MEETING})
    service = await serve()
    bad = Tensor("x", "FP32", np.full((1, 3), -1, np.float32))
    # Submitted in one loop turn, so the batcher takes the three as one batch.
    first, second, failed = await asyncio.gather(
        _infer(service, "meeting", _x()),
        _infer(service, "meeting", _x(2)),
        _infer(service, "meeting", bad),
        return_exceptions=True,
    )
    assert isinstance(first, np.ndarray) and isinstance(second, np.ndarray)
    assert first.shape == (1, 3) and second.shape == (2, 3)
    assert first[0, 0] != second[0, 0]  # two threads of the model's pool
    assert isinstance(failed, InferenceFailed)
    assert "ValueError: negative" in failed.message
    (stats,) = service.statistics("meeting")
    assert stats.stats.execution_count == 1  # one batch, not three runs


PIPELINE_YAML = """\
runtime: python
max_batch_size: 4
inputs: [{name: a, datatype: FP32, shape: [4]}, {name: b, datatype: FP32, shape: [4]}]
outputs: [{name: product, datatype: FP32, shape: [4]}]
"""

# (a + b) * (a - b), with the sum and difference computed by the served ONNX model.
PIPELINE = """\
class Model:
    def setup(self, context):
        self.models = context.models

    def predict(self, inputs):
        step = self.models.infer("addsub", {"INPUT0": inputs["a"], "INPUT1": inputs["b"]})
        return {"product": step["OUTPUT0"] * step["OUTPUT1"]}
"""


async def test_pipeline_calls_another_served_model(repo: Path, serve: Start) -> None:
    write_model(repo, "addsub", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(repo / "addsub" / "1" / "model.onnx")
    write_model(repo, "pipeline", PIPELINE_YAML, {"1/model.py": PIPELINE})
    service = await serve()
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    b = np.array([[1, 1, 1, 1], [2, 2, 2, 2]], np.float64)  # cast to the model's FP32
    request = InferenceRequest(
        "pipeline", (Tensor("a", "FP32", a), Tensor("b", "FP32", b.astype(np.float32)))
    )
    response = await service.infer(request)
    assert np.array_equal(response.outputs[0].data, a * a - b * b)
    # The inner call went through the served model, and was counted there.
    assert service.statistics("addsub")[0].stats.success.count == 1


async def test_pipeline_calling_an_unknown_model_fails_the_request(
    repo: Path, serve: Start
) -> None:
    write_model(repo, "pipeline", PIPELINE_YAML, {"1/model.py": PIPELINE})
    service = await serve()
    a = Tensor("a", "FP32", np.zeros((1, 4), np.float32))
    # The inner call's error reaches the client as raised (ModelportErrors pass through
    # the batcher unchanged), naming the model the pipeline called.
    with pytest.raises(ModelportError, match="unknown model 'addsub'"):
        await service.infer(InferenceRequest("pipeline", (a, Tensor("b", "FP32", a.data))))
    assert service.model_ready("pipeline")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"1/model.py": "import numpy as np\nimport no_such_module\n"},
         "model.py: importing it raised ModuleNotFoundError: No module named 'no_such_module'"),
        ({"1/model.py": "class Model:\n    def predict(self, inputs)\n"},
         "model.py: importing it raised SyntaxError"),
        ({"1/model.py": "raise RuntimeError('boom at import')\n"},
         "importing it raised RuntimeError: boom at import"),
        ({"1/model.py": "class Predictor:\n    def predict(self, inputs):\n        return {}\n"},
         "model.py: needs a class Model with a predict method"),
        ({"1/model.py": "class Model:\n    pass\n"},
         "model.py: needs a class Model with a predict method"),
        ({"1/.keep": ""},
         "model.py: missing; a python model needs a model.py with a class Model"),
        ({"1/model.py": "class Model:\n    def setup(self, context):\n        1 / 0\n"
                        "    def predict(self, inputs):\n        return {}\n"},
         "Model.setup raised ZeroDivisionError: division by zero"),
    ],
    ids=["import-error", "syntax-error", "raises", "no-model-class", "no-predict", "no-file",
         "setup-raises"],
)  # fmt: skip
async def test_broken_model_py_is_a_clear_spec_error(
    repo: Path, serve: Start, files: dict[str, str], expected: str
) -> None:
    folder = write_model(repo, "broken", SCALE_YAML, files)
    write_model(repo, "fine", SCALE_YAML, {"1/model.py": MINIMAL})
    service = await serve()
    reason = _reason(service, "broken")
    assert expected in reason
    assert reason.startswith(str(folder / "1" / "model.py"))
    with pytest.raises(ModelUnavailable):
        await _infer(service, "broken", _x())
    assert np.array_equal(await _infer(service, "fine", _x()), _x().data + 1)


async def test_predict_must_return_a_dict(repo: Path, serve: Start) -> None:
    model = "class Model:\n    def predict(self, inputs):\n        return [inputs['x']]\n"
    write_model(repo, "m", SCALE_YAML, {"1/model.py": model})
    service = await serve()
    with pytest.raises(InferenceFailed, match=r"predict must return a dict .* got list"):
        await _infer(service, "m", _x())


async def test_outputs_are_cast_to_the_declared_datatype(repo: Path, serve: Start) -> None:
    model = "class Model:\n    def predict(self, inputs):\n        return {'y': [[1, 2, 3]]}\n"
    write_model(repo, "m", SCALE_YAML, {"1/model.py": model})
    service = await serve()
    y = await _infer(service, "m", _x())
    assert y.dtype == np.float32 and y.tolist() == [[1.0, 2.0, 3.0]]
