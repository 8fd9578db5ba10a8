"""The bundled example repository: what a bare ``modelport serve`` serves, loaded in process."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest

from modelport.core.service import InferenceService
from modelport.errors import InvalidInput
from modelport.server.build import build_service
from modelport.settings import EXAMPLES, Settings
from modelport.tensors import InferenceRequest, Tensor

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_examples.py"
SAMPLES = EXAMPLES / "digit-reader" / "samples"


def _build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_examples", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def service() -> AsyncIterator[InferenceService]:
    service = build_service(Settings(repository=str(EXAMPLES)))
    await service.open()
    try:
        yield service
    finally:
        await service.close()


def _image_request(*images: bytes) -> InferenceRequest:
    data = np.empty((len(images), 1), dtype=np.object_)
    data[:, 0] = images
    return InferenceRequest("digit-reader", (Tensor("image", "BYTES", data),))


def test_bare_serve_serves_the_examples() -> None:
    assert Settings.load(environ={}).repository == str(EXAMPLES)


async def test_both_models_are_ready(service: InferenceService) -> None:
    rows = {row.name: row for row in service.index()}
    assert set(rows) == {"digits", "digit-reader", "text-detector", "face-detector"}
    assert all(row.state == "READY" for row in rows.values()), rows
    meta = service.metadata("digits")
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("pixels", "FP32", (-1, 64))]
    assert [(t.name, t.datatype, t.shape) for t in meta.outputs] == [
        ("probabilities", "FP32", (-1, 10))
    ]


async def test_reader_reads_every_sample(service: InferenceService) -> None:
    paths = sorted(SAMPLES.glob("digit-*.png"))
    assert len(paths) == 10
    # Concurrent requests, so the reader's and the classifier's batchers merge some.
    responses = await asyncio.gather(
        *(service.infer(_image_request(p.read_bytes())) for p in paths)
    )
    for path, response in zip(paths, responses, strict=True):
        match = re.fullmatch(r"digit-(\d)\.png", path.name)
        assert match is not None
        outputs = {t.name: t for t in response.outputs}
        assert outputs["label"].datatype == "BYTES"
        assert outputs["label"].data.shape == (1, 1)
        assert outputs["label"].data[0, 0] == match[1].encode(), path.name
        scores = outputs["scores"].data
        assert outputs["scores"].datatype == "FP32" and scores.shape == (1, 10)
        assert int(np.argmax(scores)) == int(match[1])
        assert float(scores.sum()) == pytest.approx(1.0, abs=1e-4)


async def test_reader_takes_a_batch(service: InferenceService) -> None:
    digits = [7, 1, 3, 3]
    images = [(SAMPLES / f"digit-{d}.png").read_bytes() for d in digits]
    response = await service.infer(_image_request(*images))
    labels = {t.name: t for t in response.outputs}["label"].data
    assert [x.decode() for x in labels[:, 0]] == [str(d) for d in digits]


async def test_reader_refuses_bytes_that_are_not_an_image(service: InferenceService) -> None:
    with pytest.raises(InvalidInput, match=r"not an image.*PNG or JPEG"):
        await service.infer(_image_request(b"certainly not a picture"))
    # The model still answers afterwards.
    response = await service.infer(_image_request((SAMPLES / "digit-0.png").read_bytes()))
    assert {t.name: t for t in response.outputs}["label"].data[0, 0] == b"0"


def test_onnx_export_matches_sklearn() -> None:
    build = _build_script()
    split = build.load_split()
    classifier = build.train(split)
    session = ort.InferenceSession(
        build.to_onnx(classifier).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (probabilities,) = session.run(["probabilities"], {"pixels": split.test_images})
    expected = classifier.predict_proba(split.test_images / build.FULL_INK)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert classifier.score(split.test_images / build.FULL_INK, split.test_labels) > 0.95


def test_committed_model_is_accurate_on_held_out_digits() -> None:
    split = _build_script().load_split()
    session = ort.InferenceSession(
        str(EXAMPLES / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (probabilities,) = session.run(["probabilities"], {"pixels": split.test_images})
    assert float(np.mean(probabilities.argmax(axis=1) == split.test_labels)) > 0.95
