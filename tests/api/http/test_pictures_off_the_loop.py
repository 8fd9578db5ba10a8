"""Pictures never stall the server: while large pictures are decoded and resized for a
model with an ``image`` input, a real server keeps answering another model's infers."""

from __future__ import annotations

import io
import json
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from support.builders import mlp_onnx, write_model

# A python model behind the friendly API's image codec: the server decodes each file and
# resizes it to 224x224 before predict sees it.
PICTURES_YAML = """\
runtime: python
max_batch_size: 4
inputs:
  - {name: image, datatype: UINT8, shape: [224, 224, 3], codec: image}
outputs:
  - {name: mean, datatype: FP32, shape: [1]}
"""
PICTURES_PY = """\
import numpy as np

class Model:
    def predict(self, inputs):
        pixels = inputs["image"].astype(np.float32)
        return {"mean": pixels.reshape(len(pixels), -1).mean(axis=1, keepdims=True)}
"""
PROBE = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
PICTURES_IN_FLIGHT = 3
# Each picture is 12 million pixels, a few hundred ms of decoding and resizing. Were that
# done on the event loop, the probe could slip in only between two pictures (3 or 4
# answers in all, measured so); off it, the probe answers all along (300 to 500 here).
PROBES_WHILE_DECODING = 10


def _large_png() -> bytes:
    rows, cols = np.mgrid[0:3000, 0:4000]
    pixels = np.stack([rows % 256, cols % 256, (rows // 7 + cols // 5) % 256], axis=2)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _post_picture(url: str, picture: bytes) -> socket.socket:
    """Send a bare-file predict request whole (no form to parse, and every byte is sent
    when this returns); the answer is left to read from the socket."""
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=120)
    head = (
        "POST /api/models/pictures/predict HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(picture)}\r\n\r\n"
    )
    conn.sendall(head.encode() + picture)
    return conn


def _answer(conn: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the one answer on ``conn``."""
    with conn, conn.makefile("rb") as stream:
        status = int(stream.readline().split()[1])
        length = 0
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, json.loads(stream.read(length))


def test_another_model_answers_while_large_pictures_are_decoded(
    server_factory, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    write_model(repo, "pictures", PICTURES_YAML, {"1/model.py": PICTURES_PY})
    folder = write_model(repo, "probe", "runtime: onnx\nmax_batch_size: 8\n")
    mlp_onnx(folder / "1" / "model.onnx", sizes=(16, 32, 10))
    url = server_factory(repo=repo).url
    picture = _large_png()
    answers: list[tuple[int, dict[str, Any]]] = []
    sent = threading.Barrier(PICTURES_IN_FLIGHT + 1, timeout=60)

    def post_picture() -> None:
        conn = _post_picture(url, picture)
        sent.wait()
        answers.append(_answer(conn))

    with httpx.Client(timeout=60) as probe:
        infer = f"{url}/v2/models/probe/infer"
        assert probe.post(infer, json=PROBE).status_code == 200  # connected, warm
        senders = [threading.Thread(target=post_picture) for _ in range(PICTURES_IN_FLIGHT)]
        for sender in senders:
            sender.start()
        sent.wait()  # every picture is on the server: from here on, it decodes them
        answered_while_decoding = 0
        while len(answers) < PICTURES_IN_FLIGHT and any(s.is_alive() for s in senders):
            assert probe.post(infer, json=PROBE).status_code == 200
            answered_while_decoding += len(answers) < PICTURES_IN_FLIGHT
        for sender in senders:
            sender.join(60)
    assert [status for status, _ in answers] == [200] * PICTURES_IN_FLIGHT, answers
    for _, body in answers:
        assert body["image"] == {"width": 4000, "height": 3000}
        assert 0 < body["outputs"]["mean"] < 255
    assert answered_while_decoding >= PROBES_WHILE_DECODING, answered_while_decoding
