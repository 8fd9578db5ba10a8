"""The bundled detector examples on their samples, through the friendly API: the
boxes found match the boxes known to be there (drawn text, a hand-marked face)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from PIL import Image

from modelport.settings import EXAMPLES

TEXT_SAMPLES = EXAMPLES / "text-detector" / "samples"
FACE_SAMPLES = EXAMPLES / "face-detector" / "samples"


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def matches(found: list[dict], truth: list[dict]) -> list[float]:
    """For each known box, the best IoU of a box found."""
    return [max((iou(f["box"], t["box"]) for f in found), default=0.0) for t in truth]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    from modelport.api.http.app import create_app
    from modelport.observability.metrics import metrics_registry
    from modelport.server.build import build_service
    from modelport.settings import Settings

    service = build_service(Settings(repository=str(EXAMPLES)))
    await service.open()
    _, asgi = create_app(service, metrics=metrics_registry(service), max_body=64 * 1024 * 1024)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi), base_url="http://examples"
        ) as http:
            yield http
    finally:
        await service.close()


async def _detect(client: httpx.AsyncClient, model: str, data: bytes, **params: float) -> dict:
    response = await client.post(
        f"/api/models/{model}/predict", params=params, files={"file": ("x.png", data)}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_text_detector_finds_every_drawn_line(client: httpx.AsyncClient) -> None:
    truth = json.loads((TEXT_SAMPLES / "sign.boxes.json").read_text())
    body = await _detect(client, "text-detector", (TEXT_SAMPLES / "sign.png").read_bytes())
    found = body["detections"]
    assert body["image"] == {"width": 800, "height": 480}
    assert len(found) == len(truth), found
    assert all(d["label"] == "text" and d["score"] >= 0.5 for d in found)
    assert min(matches(found, truth)) > 0.5, (found, truth)


async def test_text_boxes_follow_a_scaled_picture(client: httpx.AsyncClient) -> None:
    """Half the size, as JPEG: the boxes come back in the smaller picture's pixels."""
    truth = json.loads((TEXT_SAMPLES / "sign.boxes.json").read_text())
    half = Image.open(TEXT_SAMPLES / "sign.png").convert("RGB").resize((400, 240))
    out = io.BytesIO()
    half.save(out, format="JPEG", quality=90)
    found = (await _detect(client, "text-detector", out.getvalue()))["detections"]
    halved = [{"box": [v / 2 for v in t["box"]]} for t in truth]
    assert min(matches(found, halved)) > 0.5, found


async def test_face_detector_finds_the_astronaut(client: httpx.AsyncClient) -> None:
    truth = json.loads((FACE_SAMPLES / "astronaut.boxes.json").read_text())
    body = await _detect(client, "face-detector", (FACE_SAMPLES / "astronaut.jpg").read_bytes())
    found = body["detections"]
    assert [d["label"] for d in found] == ["face"], found
    assert matches(found, truth)[0] > 0.5, found


async def test_face_box_is_in_the_original_pixels(client: httpx.AsyncClient) -> None:
    """The astronaut pasted into a larger canvas at (300, 100): the box moves with her."""
    (truth,) = json.loads((FACE_SAMPLES / "astronaut.boxes.json").read_text())
    canvas = Image.new("RGB", (1000, 800), (90, 110, 130))
    canvas.paste(Image.open(FACE_SAMPLES / "astronaut.jpg"), (300, 100))
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    found = (await _detect(client, "face-detector", out.getvalue()))["detections"]
    moved = [v + d for v, d in zip(truth["box"], (300, 100, 300, 100), strict=True)]
    assert matches(found, [{"box": moved}])[0] > 0.5, found


async def test_no_faces_in_the_text_sample(client: httpx.AsyncClient) -> None:
    body = await _detect(client, "face-detector", (TEXT_SAMPLES / "sign.png").read_bytes())
    assert body["detections"] == []


async def test_predictor_route_on_the_face_detector(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/predictor/",
        data={"model_type": "face-detector"},
        files={"file": ("a.jpg", (FACE_SAMPLES / "astronaut.jpg").read_bytes(), "image/jpeg")},
    )
    body = response.json()
    assert response.status_code == 200 and body["success"] is True, body
    (prediction,) = body["predictions"]
    assert prediction["category_id"] == "face" and len(prediction["scores"]) == 1
    truth = json.loads((FACE_SAMPLES / "astronaut.boxes.json").read_text())[0]["box"]
    assert iou(prediction["bbox"], truth) > 0.5
