"""kill -9 of the server with tasks queued and running: after a restart every accepted
task ends succeeded, or failed with a reason; none is lost or stuck."""

from __future__ import annotations

import time

import httpx

from support.task_fixtures import FINISHED, submit_ok, task, task_containers, wait_for


def _kill(proc) -> None:
    proc.process.kill()  # SIGKILL: no shutdown code runs
    proc.process.wait(10)


def test_restart_after_kill_finishes_every_accepted_task(task_server, tmp_path) -> None:
    data = tmp_path / "data"
    first = task_server(slots=1, data_dir=data)
    accepted = [submit_ok(first.url, "sleepy", {"seconds": b"3"}) for _ in range(3)]
    accepted.append(submit_ok(first.url, "upper", {"a.txt": b"abc"}))
    running = wait_for(first.url, accepted[0], {"running"})
    deadline = time.monotonic() + 10
    while not task_containers(accepted[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running["attempts"] == 1 and task_containers(accepted[0])
    _kill(first)

    second = task_server(slots=1, data_dir=data)
    records = [wait_for(second.url, i, FINISHED, timeout=60) for i in accepted]
    assert [r["status"] for r in records] == ["succeeded"] * len(accepted), records
    assert records[0]["attempts"] == 2  # the run the kill cut short, then the retry
    assert [r["attempts"] for r in records[1:]] == [1, 1, 1]
    listed = httpx.get(f"{second.url}/api/tasks", params={"limit": 100}).json()
    assert listed["total"] == len(accepted)
    assert all(task_containers(i) == [] for i in accepted)  # the orphan was removed


def test_a_task_out_of_attempts_fails_with_the_reason(task_server, tmp_path) -> None:
    data = tmp_path / "data"
    first = task_server(slots=1, data_dir=data, task_max_attempts=1)
    lost = submit_ok(first.url, "sleepy", {"seconds": b"30"})
    queued = submit_ok(first.url, "upper", {"a.txt": b"x"})
    wait_for(first.url, lost, {"running"})
    _kill(first)

    second = task_server(slots=1, data_dir=data, task_max_attempts=1)
    failed = wait_for(second.url, lost, FINISHED)
    assert failed["status"] == "failed"
    assert "server stopped while the task ran" in failed["error"], failed
    assert wait_for(second.url, queued, FINISHED)["status"] == "succeeded"
    assert task(second.url, lost)["attempts"] == 1
