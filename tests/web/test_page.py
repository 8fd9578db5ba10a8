"""The built-in page in a real browser (tests/support/browser_fixtures.py) against a real
``modelport serve`` of the bundled examples. Screenshots are saved under artifacts/web/
for a person to look at."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from modelport.settings import EXAMPLES
from support.browser_fixtures import ARTIFACTS

SIGN = EXAMPLES / "text-detector" / "samples" / "sign.png"


@pytest.fixture(scope="module")
def examples_server(server_factory: Any) -> str:
    return str(server_factory(repo=EXAMPLES).url)


def _drawn(page: Any) -> list[dict[str, Any]]:
    return list(json.loads(page.get_attribute("#canvas", "data-boxes")))


def test_text_detector_boxes_match_the_api(page: Any, examples_server: str) -> None:
    page.goto(examples_server + "/")
    page.wait_for_selector("tr[data-model=text-detector] >> text=READY")
    page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)
    page.click("tr[data-model=text-detector] button")
    page.wait_for_selector("#image-form:not([hidden])")

    page.set_input_files("#image-file", str(SIGN))
    page.wait_for_selector("#canvas[data-ready]")
    page.screenshot(path=str(ARTIFACTS / "text-detector.png"), full_page=True)

    answer = httpx.post(
        examples_server + "/api/models/text-detector/predict",
        files={"file": ("sign.png", SIGN.read_bytes(), "image/png")},
        timeout=30,
    ).json()["detections"]  # the model's own threshold, the slider's starting point
    drawn = _drawn(page)
    assert len(drawn) == len(answer) == 4
    for d, a in zip(drawn, answer, strict=True):
        assert d["label"] == a["label"]
        assert d["box"] == pytest.approx(a["box"], abs=0.01)
        assert d["score"] == pytest.approx(a["score"], abs=1e-4)
    assert page.text_content("#box-count") == "4 of 4 boxes"
    # The canvas holds the picture at its own size, so boxes are in its pixels.
    size = page.evaluate("() => [canvas.width, canvas.height]")
    assert size == [800, 480]

    # The slider filters what is drawn without asking the server again.
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/predict" in r.url else None)
    threshold = sorted(a["score"] for a in answer)[2]  # keeps the two best
    page.fill("#score", f"{threshold:.2f}")
    page.dispatch_event("#score", "input")
    fewer = _drawn(page)
    assert 0 < len(fewer) < len(drawn)
    assert all(d["score"] >= round(threshold, 2) for d in fewer)
    assert asked == []
    page.screenshot(path=str(ARTIFACTS / "text-detector-slider.png"), full_page=True)

    # The raw JSON is a click away.
    page.click("#raw summary")
    raw = json.loads(page.text_content("#raw-json") or "{}")
    assert raw["model_name"] == "text-detector" and len(raw["detections"]) >= 4


def test_sample_button_and_keyboard(page: Any, examples_server: str) -> None:
    page.goto(examples_server + "/#/models/face-detector")
    page.wait_for_selector("text=Sample: astronaut.jpg")
    # Tab to the sample button and press it, as a keyboard user would.
    page.focus("label[for=image-file]")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Sample: astronaut.jpg"
    page.keyboard.press("Enter")
    page.wait_for_selector("#canvas[data-ready]")
    drawn = _drawn(page)
    assert [d["label"] for d in drawn] == ["face"]
    page.screenshot(path=str(ARTIFACTS / "face-detector.png"), full_page=True)


def test_form_for_a_model_without_an_image_input(page: Any, examples_server: str) -> None:
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(examples_server + "/#/models/digits")
    page.wait_for_selector("#tensor-form:not([hidden])")
    assert page.is_visible("#input-pixels")
    page.click("#tensor-form button[type=submit]")
    page.wait_for_function(
        "() => document.querySelector('#raw-json').textContent.includes('probabilities')"
    )
    answer = json.loads(page.text_content("#raw-json") or "{}")
    assert len(answer["outputs"]["probabilities"]) == 10
    # Nothing wider than the phone's screen.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "digits-phone.png"), full_page=True)


def test_classification_of_an_uploaded_digit(page: Any, examples_server: str) -> None:
    page.goto(examples_server + "/#/models/digit-reader")
    page.wait_for_selector("#image-form:not([hidden])")
    page.set_input_files("#image-file", str(EXAMPLES / "digit-reader" / "samples" / "digit-7.png"))
    page.wait_for_selector("#class-list li")
    assert (page.text_content("#class-list li") or "").startswith("7:")
    assert not page.is_visible("#score")  # no boxes, no slider
