"""The tasks API against a real server running containers on the real Docker engine."""

from __future__ import annotations

import io
import struct
import time
import zipfile

import httpx

from support.task_fixtures import (
    FINISHED,
    make_zip,
    submit,
    submit_ok,
    task,
    task_containers,
    wait_for,
)


def _output(url: str, task_id: str) -> dict[str, bytes]:
    response = httpx.get(f"{url}/api/tasks/{task_id}/output", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_a_task_turns_input_files_into_output_files(task_server) -> None:
    url = task_server().url
    response = submit(url, "upper", {"a.txt": b"abc\n", "b.txt": b"hello\n"}, '{"k": 1}')
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["model"] == "upper" and body["version"] == 1
    assert response.headers["location"] == body["links"]["self"] == f"/api/tasks/{body['id']}"

    done = wait_for(url, body["id"], FINISHED)
    assert done["status"] == "succeeded", done
    assert done["exit_code"] == 0 and done["attempts"] == 1 and done["progress"] == 1.0
    assert done["started_at"] and done["finished_at"] and done["output_bytes"] > 0
    files = _output(url, body["id"])
    assert files["a.txt"] == b"ABC\n" and files["b.txt"] == b"HELLO\n"
    assert ".progress" not in files
    assert files["uid"].strip() == b"65534"  # not root
    assert files["model.txt"] == b"upper v1" and files["model_mode"].strip() == b"ro"
    assert files["net"].split() == [b"lo"]  # no network
    assert b'"k": 1' in files["parameters"]
    logs = httpx.get(f"{url}/api/tasks/{body['id']}/logs", timeout=10)
    assert logs.status_code == 200 and b"hello-log" in logs.content
    assert task_containers(body["id"]) == []


def test_a_zip_upload_keeps_its_folders(task_server) -> None:
    url = task_server().url
    zipped = make_zip({"scans/one.txt": b"x1", "scans/deep/two.txt": b"y2"})
    task_id = submit_ok(url, "upper", {"scans.zip": zipped})
    assert wait_for(url, task_id, FINISHED)["status"] == "succeeded"
    files = _output(url, task_id)
    assert files["scans/one.txt"] == b"X1" and files["scans/deep/two.txt"] == b"Y2"


def test_a_failing_container_fails_the_task_with_its_code_and_log_tail(task_server) -> None:
    url = task_server().url
    task_id = submit_ok(url, "fails", {"a.txt": b"x"})
    done = wait_for(url, task_id, FINISHED)
    assert done["status"] == "failed" and done["exit_code"] == 3
    assert "exited with code 3" in done["error"] and "something broke" in done["error"]
    response = httpx.get(f"{url}/api/tasks/{task_id}/output")
    assert response.status_code == 409 and "failed" in response.json()["error"]


def test_a_container_that_runs_too_long_is_killed(task_server) -> None:
    url = task_server().url
    task_id = submit_ok(url, "hangs", {"a.txt": b"x"})
    done = wait_for(url, task_id, FINISHED)
    assert done["status"] == "failed" and "timed out after 1 s" in done["error"]
    assert "waiting forever" in done["error"]
    assert task_containers(task_id) == []


def test_an_empty_output_fails_the_task(task_server) -> None:
    url = task_server().url
    done = wait_for(url, submit_ok(url, "empty", {"a.txt": b"x"}), FINISHED)
    assert done["status"] == "failed" and "left /output empty" in done["error"]
    assert "nothing to do" in done["error"]


def test_cancel_stops_the_container(task_server) -> None:
    url = task_server().url
    task_id = submit_ok(url, "sleepy", {"seconds": b"30"})
    wait_for(url, task_id, {"running"})
    deadline = time.monotonic() + 10
    while not task_containers(task_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert task_containers(task_id)
    response = httpx.delete(f"{url}/api/tasks/{task_id}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    deadline = time.monotonic() + 10
    while task_containers(task_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert task_containers(task_id) == []
    assert task(url, task_id)["status"] == "cancelled"
    again = httpx.delete(f"{url}/api/tasks/{task_id}")
    assert again.status_code == 409 and "cancelled" in again.json()["error"]


def test_a_queued_task_can_be_cancelled(task_server) -> None:
    url = task_server(slots=1).url
    first = submit_ok(url, "sleepy", {"seconds": b"3"})
    second = submit_ok(url, "sleepy", {"seconds": b"1"})
    assert httpx.delete(f"{url}/api/tasks/{second}").json()["status"] == "cancelled"
    assert wait_for(url, first, FINISHED)["status"] == "succeeded"
    assert task(url, second)["attempts"] == 0


def test_two_slots_run_two_tasks_at_once(task_server) -> None:
    url = task_server(slots=2).url
    ids = [submit_ok(url, "sleepy", {"seconds": b"4"}) for _ in range(2)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(task(url, i)["status"] == "running" for i in ids):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"never both running: {[task(url, i) for i in ids]}")
    for task_id in ids:
        assert wait_for(url, task_id, FINISHED)["status"] == "succeeded"


def test_logs_stream_while_the_task_runs(task_server) -> None:
    url = task_server().url
    task_id = submit_ok(url, "sleepy", {"seconds": b"3"})
    seen = b""
    with httpx.stream("GET", f"{url}/api/tasks/{task_id}/logs", timeout=30) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            if not seen:
                assert task(url, task_id)["status"] == "running"  # streamed, not at the end
            seen += chunk
    assert seen.count(b"tick") == 3
    assert task(url, task_id)["status"] == "succeeded"


def test_list_filters_and_pages(task_server) -> None:
    url = task_server().url
    ok = [submit_ok(url, "upper", {"a.txt": b"x"}) for _ in range(3)]
    bad = submit_ok(url, "fails", {"a.txt": b"x"})
    for task_id in [*ok, bad]:
        wait_for(url, task_id, FINISHED)
    page = httpx.get(f"{url}/api/tasks", params={"model": "upper", "limit": 2}).json()
    assert page["total"] == 3 and len(page["tasks"]) == 2 and page["next"]
    rest = httpx.get(url + page["next"]).json()
    assert {t["id"] for t in page["tasks"] + rest["tasks"]} == set(ok) and rest["next"] is None
    failed = httpx.get(f"{url}/api/tasks", params={"status": "failed"}).json()
    assert [t["id"] for t in failed["tasks"]] == [bad]
    assert httpx.get(f"{url}/api/tasks", params={"status": "nope"}).status_code == 400


def _patched_zip(local_at: int, central_at: int, value: int, form: str) -> bytes:
    """A zip of 's.txt' with a field of both its headers set to ``value``."""
    data = bytearray(make_zip({"s.txt": b"hello " * 100}))
    struct.pack_into(form, data, data.index(b"PK\x03\x04") + local_at, value)
    struct.pack_into(form, data, data.index(b"PK\x01\x02") + central_at, value)
    return bytes(data)


def test_bad_requests_get_clear_4xx(task_server, task_repository, tmp_path) -> None:
    data = tmp_path / "data"
    url = task_server(data_dir=data, task_max_upload_bytes=64 * 1024).url
    encrypted, bad_crc = _patched_zip(6, 8, 0x1, "<H"), _patched_zip(14, 16, 1234, "<I")
    cases = [
        (submit(url, "nope", {"a.txt": b"x"}), 404, "no model 'nope'"),
        (submit(url, "online", {"a.txt": b"x"}), 400, "not a container model"),
        (submit(url, "upper", {"a.zip": b"not a zip"}), 400, "not a zip"),
        (submit(url, "upper", {"a.zip": make_zip({"../evil": b"x"})}), 400, "outside"),
        (submit(url, "upper", {"a.zip": make_zip({"/etc/evil": b"x"})}), 400, "absolute"),
        # Refused at submit, rather than failing the task when its worker unpacks it:
        (submit(url, "upper", {"a.zip": encrypted}), 400, "'s.txt' is encrypted"),
        (submit(url, "upper", {"a.zip": bad_crc}), 400, "'s.txt' cannot be unpacked"),
        (submit(url, "upper", {"a.zip": make_zip({"a": b"1", "a/b": b"2"})}), 400, "'a/b'"),
        (submit(url, "upper", {"a.zip": make_zip({"a" * 300: b"x"})}), 400, "over 255 bytes"),
        (submit(url, "upper", {"a.txt": b"x" * 100_000}), 413, "over the limit"),
        (submit(url, "upper", {"a.txt": b"x"}, parameters="[1]"), 400, "JSON object"),
        (httpx.get(f"{url}/api/tasks/nope"), 404, "unknown task"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"], response.text
        assert str(task_repository) not in response.text and str(data) not in response.text
    assert httpx.get(f"{url}/api/tasks").json()["total"] == 0
    files = data / "files"
    assert not files.exists() or list(files.iterdir()) == []
