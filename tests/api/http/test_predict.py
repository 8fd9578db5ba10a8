"""The friendly predict API and the detector server's /predictor/ route: files, JSON or
a bare image in; boxes in picture pixels, top-k labels and plain outputs out. Each test
runs against the app in process and against a real server."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from support.builders import write_model

ECHO_IMAGE = """\
runtime: python
inputs:
  - {name: images, datatype: FP32, shape: [3, 4, 6], codec: image,
     image: {layout: CHW, scale: 0.00392156862745098}}
outputs: [{name: pixels, datatype: FP32, shape: [3, 4, 6]}]
"""
ECHO_IMAGE_PY = """\
class Model:
    def predict(self, inputs):
        return {"pixels": inputs["images"]}
"""
BOXES = """\
runtime: python
max_batch_size: 4
inputs:
  - {name: image, datatype: UINT8, shape: [10, 20, 3], codec: image}
outputs:
  - {name: found, datatype: FP32, shape: [-1, 6], codec: detections,
     detections: {coordinates: input, score_threshold: 0.5}}
labels: [cat, dog]
"""
# Boxes in the 20x10 input's pixels; the last row is padding.
BOXES_PY = """\
import numpy as np

class Model:
    def predict(self, inputs):
        assert inputs["image"].shape[1:] == (10, 20, 3), inputs["image"].shape
        rows = [[0, 0, 10, 5, 0.9, 0], [10, 5, 20, 10, 0.3, 1], [0, 0, 0, 0, 0, -1]]
        return {"found": np.array([rows] * len(inputs["image"]), np.float32)}
"""
CLASSIFY = """\
runtime: python
inputs: [{name: x, datatype: FP32, shape: [3]}]
outputs:
  - {name: scores, datatype: FP32, shape: [3], codec: classification,
     classification: {top_k: 2}}
  - {name: name, datatype: BYTES, shape: [1]}
labels: [a, b, c]
"""
CLASSIFY_PY = """\
import numpy as np

class Model:
    def predict(self, inputs):
        return {"scores": inputs["x"], "name": np.array([b"classify"], dtype=object)}
"""


@pytest.fixture(scope="module")
def predict_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict-repo")
    write_model(root, "echo-image", ECHO_IMAGE, {"1/model.py": ECHO_IMAGE_PY})
    png = _png(80, 40)
    write_model(root, "boxes", BOXES, {"1/model.py": BOXES_PY, "samples/street.png": png,
                                       "samples/notes.txt": "not a sample"})  # fmt: skip
    write_model(root, "classify", CLASSIFY, {"1/model.py": CLASSIFY_PY})
    return root


@pytest.fixture(scope="module")
def predict_server(predict_repo: Path, server_factory) -> str:
    return str(server_factory(repo=predict_repo).url)


@pytest.fixture(params=["inproc", "server"])
async def client(
    request: pytest.FixtureRequest, predict_repo: Path, inproc_factory
) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "inproc":
        async with inproc_factory(repo=predict_repo) as inproc:
            yield inproc
    else:
        url = request.getfixturevalue("predict_server")
        async with httpx.AsyncClient(base_url=url, timeout=30) as real:
            yield real


def _png(width: int, height: int) -> bytes:
    rows, cols = np.mgrid[0:height, 0:width]
    picture = np.stack([rows * 5, cols * 3, np.full_like(rows, 99)], axis=2).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return out.getvalue()


async def test_multipart_file_gives_boxes_in_picture_pixels(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/models/boxes/predict", files={"file": ("a.png", _png(80, 40), "image/png")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "boxes" and body["model_version"] == "1"
    assert body["image"] == {"width": 80, "height": 40}
    # The 20x10 input is 4x smaller than the 80x40 picture; 0.3 is under the threshold.
    assert body["detections"] == [{"box": [0.0, 0.0, 40.0, 20.0], "label": "cat", "score": 0.9}]
    assert body["outputs"] == {}


async def test_score_threshold_and_a_bare_image_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/models/boxes/predict?score_threshold=0",
        content=_png(40, 20),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200, response.text
    found = response.json()["detections"]
    assert [(d["label"], d["box"]) for d in found] == [
        ("cat", [0.0, 0.0, 20.0, 10.0]),
        ("dog", [20.0, 10.0, 40.0, 20.0]),
    ]


async def test_json_with_base64_and_data_urls(client: httpx.AsyncClient) -> None:
    png = base64.b64encode(_png(6, 4)).decode()
    for value in (png, f"data:image/png;base64,{png}", {"b64": png}):
        response = await client.post(
            "/api/models/echo-image/predict", json={"inputs": {"images": value}}
        )
        assert response.status_code == 200, response.text
        pixels = np.array(response.json()["outputs"]["pixels"], np.float32)
        assert pixels.shape == (3, 4, 6)
        # CHW, scaled to 0..1: channel 2 is the constant blue 99.
        np.testing.assert_allclose(pixels[2], 99 / 255, rtol=1e-5)
        np.testing.assert_allclose(pixels[1, 0], np.arange(6) * 3 / 255, rtol=1e-5)


async def test_classification_top_k_and_plain_outputs(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/models/classify/predict", json={"inputs": {"x": [1, 3, 2]}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["classification"] == [{"label": "b", "score": 3.0}, {"label": "c", "score": 2.0}]
    assert body["outputs"] == {"name": "classify"}
    response = await client.post(
        "/api/models/classify/predict",
        json={"inputs": {"x": [1, 3, 2]}, "parameters": {"top_k": 3}},
    )
    assert [c["label"] for c in response.json()["classification"]] == ["b", "c", "a"]
    # A form field carries numbers as JSON text.
    response = await client.post("/api/models/classify/predict", data={"x": "[5, 0, 1]"})
    assert response.json()["classification"][0] == {"label": "a", "score": 5.0}


async def test_predictor_route_of_the_detector_server(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/predictor/",
        data={"model_type": "boxes"},
        files={"file": ("a.png", _png(80, 40), "image/png")},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "predictions": [{"category_id": "cat", "scores": [0.9], "bbox": [0.0, 0.0, 40.0, 20.0]}],
    }


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "message"),
    [
        ("/predictor/", {"files": {"file": ("a.png", b"x")}}, 400, "'model_type'"),
        ("/predictor/", {"data": {"model_type": "boxes"}}, 400, "'file'"),
        ("/predictor/", {"data": {"model_type": "nope"}, "files": {"file": ("a", b"x")}}, 404,
         "unknown model 'nope'"),
        ("/predictor/", {"data": {"model_type": "classify"}, "files": {"file": ("a", b"[1,2,3]")}},
         400, "no output with codec 'detections'"),
    ],
)  # fmt: skip
async def test_predictor_errors(
    client: httpx.AsyncClient, path: str, kwargs: dict, status: int, message: str
) -> None:
    response = await client.post(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["success"] is False
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "message"),
    [
        ("/api/models/boxes/predict", {"files": {"file": ("a.txt", b"hello")}}, 400,
         "5 bytes that are not an image"),
        ("/api/models/nope/predict", {"files": {"file": ("a.png", b"x")}}, 404, "unknown model"),
        ("/api/models/boxes/predict", {"json": {"inputs": {"img": "AAAA"}}}, 400,
         "has no input(s) ['img']"),
        ("/api/models/boxes/predict", {"json": {"inputs": {}}}, 400, "needs input(s) ['image']"),
        ("/api/models/boxes/predict", {"json": {"inputs": {"image": "%%%"}}}, 400, "base64"),
        ("/api/models/boxes/predict?score_threshold=2", {"content": b"x"}, 400,
         "score_threshold must be a number from 0 to 1"),
        ("/api/models/classify/predict", {"json": {"inputs": {"x": [1, 2]}}}, 400,
         "has shape [2]"),
        ("/api/models/classify/predict", {"json": {"inputs": {"x": "a"}}}, 400,
         "not a number or a JSON list"),
        ("/api/models/classify/predict", {"content": b"{oops", "headers": {
            "content-type": "application/json"}}, 400, "not valid JSON"),
        ("/api/models/classify/predict", {"content": b"x", "headers": {
            "content-type": "text/csv"}}, 400, "'text/csv' is not understood"),
    ],
)  # fmt: skip
async def test_predict_errors(
    client: httpx.AsyncClient, path: str, kwargs: dict, status: int, message: str
) -> None:
    response = await client.post(path, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


async def test_too_large_is_413(predict_repo: Path, inproc_factory) -> None:
    async with inproc_factory(max_request_bytes=2048, repo=predict_repo) as small:
        response = await small.post(
            "/api/models/boxes/predict", files={"file": ("a.png", b"x" * 4096)}
        )
    assert response.status_code == 413
    assert "over the limit" in response.json()["error"]


async def test_models_for_the_page(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/api/models")).json()["models"]
    rows = {m["name"]: m for m in listing}
    assert set(rows) == {"boxes", "classify", "echo-image"}
    assert rows["boxes"]["state"] == "READY" and rows["boxes"]["runtime"] == "python"
    assert rows["boxes"]["devices"] == ["cpu"] and rows["boxes"]["image_input"] is True
    assert rows["boxes"]["codecs"] == ["detections"]
    card = (await client.get("/api/models/boxes")).json()
    assert card["labels"] == ["cat", "dog"] and card["samples"] == ["street.png"]
    assert card["inputs"][0]["shape"] == [-1, 10, 20, 3]
    assert card["outputs"][0]["detections"] == {"coordinates": "input", "score_threshold": 0.5}
    sample = await client.get("/api/models/boxes/samples/street.png")
    assert sample.status_code == 200 and sample.headers["content-type"] == "image/png"
    assert (await client.get("/api/models/boxes/samples/notes.txt")).status_code == 404
    assert (await client.get("/api/models/nope")).status_code == 404


async def test_the_page_is_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/web/app.js">' in page.text
    script = await client.get("/web/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert (await client.get("/web/style.css")).headers["content-type"].startswith("text/css")
    assert (await client.get("/web/missing.js")).status_code == 404
    # Offline: the page names no other host.
    for text in (page.text, script.text):
        assert "http://" not in text and "https://" not in text
