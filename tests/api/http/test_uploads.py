"""Uploads on a real server: spooled under data_dir off the event loop, and what a killed
server left in the spool removed at the next start."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

PART_BYTES = 400 * 1024 * 1024
CHUNK = b"\0" * (4 * 1024 * 1024)
BOUNDARY = "modelport-test-boundary"
INFER = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}


def _body(sent: threading.Event) -> Iterator[bytes]:
    """A multipart form with one 400 MB file and no 'model' field (so the server answers
    400 the moment the file is spooled), sent slowly but steadily."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
        'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    for _ in range(PART_BYTES // len(CHUNK)):
        yield CHUNK
        time.sleep(0.005)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()
    sent.set()


def test_online_inference_answers_while_a_large_upload_is_in_flight(
    task_server, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    url = task_server(slots=0, data_dir=data).url
    sent, finished = threading.Event(), threading.Event()
    upload: list[httpx.Response] = []

    def send() -> None:
        headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        with httpx.Client(timeout=120) as client:
            upload.append(client.post(f"{url}/api/tasks", content=_body(sent), headers=headers))
        finished.set()

    sender = threading.Thread(target=send)
    sender.start()
    answered_while_sending = 0
    answered_while_copying = 0
    with httpx.Client(timeout=60) as client:
        infer = f"{url}/v2/models/online/infer"
        while not sent.is_set() and not finished.is_set():
            assert client.post(infer, json=INFER).status_code == 200
            answered_while_sending += not finished.is_set()
            time.sleep(0.05)
        # The server copies the spooled file into data_dir/spool: an infer sent while
        # that file is still growing must answer before it is whole.
        while not finished.is_set():
            copying = [p for p in data.glob("spool/*/*/0") if _size(p) < PART_BYTES]
            if not copying:
                continue
            assert client.post(infer, json=INFER).status_code == 200
            if _size(copying[0]) < PART_BYTES:
                answered_while_copying += 1
    sender.join(60)
    assert upload[0].status_code == 400 and "'model' field" in upload[0].text
    assert answered_while_sending >= 3
    assert answered_while_copying >= 1, "no infer answered while the upload was copied"
    assert list(data.glob("spool/*/*")) == []  # the upload's folder went with its request


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return PART_BYTES  # copied and removed


def test_uploads_left_by_a_killed_server_are_removed_at_start(task_server, tmp_path) -> None:
    data = tmp_path / "data"
    left = data / "spool" / "0123abcd" / "tmpxyz"
    left.mkdir(parents=True)
    (left / "0").write_bytes(b"half an upload")
    task_server(slots=0, data_dir=data)
    assert not (data / "spool" / "0123abcd").exists()
    assert len(list((data / "spool").iterdir())) == 1  # the running server's own
