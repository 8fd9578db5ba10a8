"""The zip-task cluster server's API under /compat/inference-server (the prefix kept for
scripts that build URLs by concatenating strings), on a real server. Its real client,
on a listener of its own: test_inference_server_client.py."""

from __future__ import annotations

import io
import time
import zipfile

import httpx
import yaml

from support.task_fixtures import make_zip

BASE = "/compat/inference-server"


def _post_task(url: str, model: str, files: dict[str, bytes]) -> httpx.Response:
    zipped = make_zip(files)
    return httpx.post(
        f"{url}{BASE}/api/tasks/",
        data={"model_human_readable_id": model},
        files={"zip_file": ("in.zip", zipped)},
        timeout=30,
    )


def _wait_code(url: str, uid: str, codes: set[int], timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{url}{BASE}/api/tasks/{uid}", timeout=10)
        if response.status_code in codes or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_tasks_through_the_compat_api(task_server) -> None:
    url = task_server().url
    response = _post_task(url, "upper", {"scan.txt": b"abc"})
    assert response.status_code == 200
    uid = response.json()
    assert isinstance(uid, str)
    assert httpx.get(f"{url}{BASE}/api/tasks/{uid}").status_code in (551, 200)
    done = _wait_code(url, uid, {200, 552})
    assert done.status_code == 200 and done.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(done.content)) as archive:
        assert archive.read("scan.txt") == b"ABC"

    slow = _post_task(url, "sleepy", {"seconds": b"20"}).json()
    assert httpx.get(f"{url}{BASE}/api/tasks/{slow}").status_code == 551
    assert httpx.delete(f"{url}{BASE}/api/tasks/{slow}").status_code == 200
    assert httpx.get(f"{url}{BASE}/api/tasks/{slow}").status_code == 554

    failing = _post_task(url, "fails", {"a": b"x"}).json()
    assert _wait_code(url, failing, {552}).status_code == 552
    assert httpx.get(f"{url}{BASE}/api/tasks/never-was").status_code == 554
    unknown = _post_task(url, "nope", {"a": b"x"})
    assert unknown.status_code == 550 and unknown.json() == {"detail": "ModelNotFound"}

    listed = httpx.get(f"{url}{BASE}/api/models/").json()
    upper = next(m for m in listed if m["human_readable_id"] == "upper")
    assert upper["container_tag"].startswith("modelport-test/busybox") and not upper["use_gpu"]
    assert all(m["human_readable_id"] != "online" for m in listed)

    refused = httpx.post(
        f"{url}{BASE}/api/models/", params={"container_tag": "x:1", "human_readable_id": "posted"}
    )
    assert refused.status_code == 405 and "posting models is off" in refused.json()["detail"]


def test_posting_models_when_allowed(task_server, task_repository, docker_image) -> None:
    url = task_server(compat_allow_model_posting="true", model_images=docker_image).url
    response = httpx.post(
        f"{url}{BASE}/api/models/",
        data={
            "container_tag": docker_image,
            "human_readable_id": "posted-1",
            "description": "from a client",
            "use_gpu": "false",
            "model_available": "true",
        },
        files={"zip_file": ("static.zip", make_zip({"weights/w.bin": b"\x01\x02"}))},
    )
    assert response.status_code == 200, response.text
    folder = task_repository / "posted-1"
    spec = yaml.safe_load((folder / "model.yaml").read_text())
    assert spec["runtime"] == "container" and spec["container"]["image"] == docker_image
    assert (folder / "1" / "weights" / "w.bin").read_bytes() == b"\x01\x02"
    again = httpx.post(
        f"{url}{BASE}/api/models/",
        data={"container_tag": docker_image, "human_readable_id": "posted-1"},
    )
    assert again.status_code == 409
    clash = httpx.post(
        f"{url}{BASE}/api/models/",
        data={"container_tag": docker_image, "human_readable_id": "posted-2"},
        files={"zip_file": ("static.zip", make_zip({"w": b"1", "w/x": b"2"}))},
    )
    assert clash.status_code == 400 and "'w/x' is inside 'w'" in clash.json()["detail"]
    assert str(task_repository) not in clash.text and not (task_repository / "posted-2").exists()
    # The image has no command of its own: the task fails, and says why.
    uid = _post_task(url, "posted-1", {"a": b"x"}).json()
    failed = _wait_code(url, uid, {552})
    assert failed.status_code == 552 and "could not start" in failed.json()["detail"]["detail"]


def test_finished_without_output_after_retention(task_server) -> None:
    url = task_server(task_retention_hours=0.0003).url  # about a second
    uid = _post_task(url, "upper", {"a.txt": b"x"}).json()
    assert _wait_code(url, uid, {553}, timeout=20).status_code == 553
