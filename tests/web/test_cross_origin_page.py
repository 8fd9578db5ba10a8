"""The detector server's front-end, as upstream ships it, from another origin: a page
served on its own port posts FormData (``file``, ``model_type`` a Redis queue name) to
modelport's ``/predictor/`` and draws the boxes it gets, in headless Chromium. CORS
(``cors_origins``) is what lets the page read the answer."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelport.security.keys import KeyStore
from support.builders import write_model

pytestmark = pytest.mark.timeout(90)

DETECTOR = """\
runtime: python
inputs: [{name: image, datatype: UINT8, shape: [10, 20, 3], codec: image}]
outputs:
  - {name: found, datatype: FP32, shape: [-1, 6], codec: detections,
     detections: {coordinates: input, score_threshold: 0.5}}
labels: [Sebastes, Octopus]
aliases: [image_queue_yolov5]
"""
# One box over the left half of the 20x10 input, class 1 (Octopus).
DETECTOR_PY = """\
import numpy as np

class Model:
    def predict(self, inputs):
        return {"found": np.array([[0, 0, 10, 10, 0.875, 1]], np.float32)}
"""
# What model-server.js does: FormData with the file and the queue name, then draw.
PAGE = """\
<!doctype html>
<html><body>
<canvas id="canvas" width="200" height="100"></canvas>
<p id="result">waiting</p>
<script>
async function run(server) {
  const canvas = document.getElementById("canvas");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "rgb(255, 255, 255)";
  ctx.fillRect(0, 0, 200, 100);
  const blob = await new Promise((done) => canvas.toBlob(done, "image/png"));
  const form = new FormData();
  form.append("file", blob, "frame.png");
  form.append("model_type", "image_queue_yolov5");
  const answer = await (await fetch(server + "/predictor/", {method: "POST", body: form})).json();
  if (!answer.success) throw new Error("no success");
  const lines = [];
  for (const p of answer.predictions) {
    const [x1, y1, x2, y2] = p.bbox;
    ctx.fillStyle = "rgb(255, 0, 0)";
    ctx.fillRect(x1, y1, x2 - x1, y2 - y1);
    for (const s of p.scores) lines.push(p.category_id.toUpperCase() + " " + s.toFixed(3));
  }
  document.getElementById("result").textContent = lines.join("; ");
}
</script>
</body></html>
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def page_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The front-end on a static file server of its own: another origin."""
    folder = tmp_path_factory.mktemp("front-end")
    (folder / "index.html").write_text(PAGE)
    handler = functools.partial(
        type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *_: None}),
        directory=str(folder),
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def detector_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detector-repo")
    write_model(root, "yolov5", DETECTOR, {"1/model.py": DETECTOR_PY})
    return root


def test_a_page_on_another_origin_draws_the_predictions(
    page: Any, page_origin: str, detector_repo: Path, server_factory: Any
) -> None:
    server = server_factory(
        repo=detector_repo, env={"MODELPORT_CORS_ORIGINS": f"http://x.invalid,{page_origin}"}
    ).url
    page.goto(page_origin + "/index.html")
    page.evaluate("(server) => run(server)", server)
    page.wait_for_selector("#result:not(:text('waiting'))")
    assert page.text_content("#result") == "OCTOPUS 0.875"
    # The box is the left half of the 20x10 input, scaled to the 200x100 picture.
    pixel = "([x, y]) => Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data)"
    assert page.evaluate(pixel, [50, 50]) == [255, 0, 0, 255]
    assert page.evaluate(pixel, [150, 50]) == [255, 255, 255, 255]


def test_preflight_and_origins_not_allowed(detector_repo: Path, server_factory: Any) -> None:
    allowed = "http://lab.example.com"
    server = server_factory(repo=detector_repo, env={"MODELPORT_CORS_ORIGINS": allowed}).url
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "x-a"}
    answer = httpx.options(f"{server}/predictor/", headers={"origin": allowed, **preflight})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == allowed
    assert "POST" in answer.headers["access-control-allow-methods"]
    # Another origin is not allowed; neither preflight nor answer lets its page read.
    answer = httpx.options(f"{server}/predictor/", headers={"origin": "http://evil", **preflight})
    assert answer.status_code == 400
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    answer = httpx.post(
        f"{server}/v2/models/yolov5/infer", json=body, headers={"origin": "http://evil"}
    )
    assert "access-control-allow-origin" not in answer.headers
    # The v2 infer route answers pages too (it leaves the fast path when CORS is on).
    answer = httpx.post(f"{server}/v2/models/yolov5/infer", json=body, headers={"origin": allowed})
    assert answer.headers["access-control-allow-origin"] == allowed
    assert answer.headers["access-control-expose-headers"]


def test_no_cors_by_default(detector_repo: Path, server_factory: Any) -> None:
    server = server_factory(repo=detector_repo).url
    answer = httpx.options(
        f"{server}/predictor/",
        headers={"origin": "http://lab.example.com", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in answer.headers


def test_with_keys_the_preflight_passes_and_refusals_reach_the_page(
    detector_repo: Path, server_factory: Any, tmp_path: Path
) -> None:
    store = KeyStore(tmp_path / "keys.json")
    token = store.create("page", ["infer"]).token
    allowed = "http://lab.example.com"
    env = {"MODELPORT_CORS_ORIGINS": allowed, "MODELPORT_KEYS_FILE": str(store.path)}
    server = server_factory(repo=detector_repo, env=env).url
    preflight = {
        "origin": allowed,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization",
    }
    answer = httpx.options(f"{server}/predictor/", headers=preflight)
    assert answer.status_code == 200  # browsers send no key with a preflight
    form = {"data": {"model_type": "image_queue_yolov5"}, "files": {"file": ("a", b"x")}}
    answer = httpx.post(f"{server}/predictor/", headers={"origin": allowed}, **form)
    assert answer.status_code == 401
    assert answer.headers["access-control-allow-origin"] == allowed  # the page reads why
    keyed = {"origin": allowed, "authorization": f"Bearer {token}"}
    answer = httpx.post(f"{server}/predictor/", headers=keyed, **form)
    assert answer.status_code == 400  # past the key: b"x" is no image
    assert answer.headers["access-control-allow-origin"] == allowed
