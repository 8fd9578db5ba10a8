"""kill -9 of the server with tasks queued and running: after a restart every accepted
task ends succeeded, or failed with a reason; none is lost or stuck, and a container the
dead server left is adopted rather than run again."""

from __future__ import annotations

import time

import httpx

from support.task_fixtures import (
    FINISHED,
    docker,
    submit_ok,
    task,
    task_containers,
    wait_for,
)


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
    # The container the kill left ran on and was adopted: one run for every task.
    assert [r["attempts"] for r in records] == [1, 1, 1, 1]
    listed = httpx.get(f"{second.url}/api/tasks", params={"limit": 100}).json()
    assert listed["total"] == len(accepted)
    assert all(task_containers(i) == [] for i in accepted)  # the orphan was removed


def _container_starts(task_id: str, since: str) -> int:
    events = docker(
        "events",
        "--since",
        since,
        "--until",
        str(int(time.time()) + 1),
        "--filter",
        f"label=modelport.task={task_id}",
        "--filter",
        "event=start",
        "--format",
        "{{.ID}}",
    )
    return len(events.stdout.split())


def test_a_container_that_finishes_while_the_server_is_down_is_not_run_again(
    task_server, tmp_path
) -> None:
    data = tmp_path / "data"
    since = str(int(time.time()) - 1)
    first = task_server(slots=1, data_dir=data)
    task_id = submit_ok(first.url, "sleepy", {"seconds": b"2"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the container's last second: "tick 1" logged
        found = task_containers(task_id)
        if found and "tick 1" in docker("logs", found[0]).stdout:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the container never reached its last second")
    _kill(first)
    time.sleep(1.5)  # the container ends while no server runs
    assert task_containers(task_id), "the container should outlive the server"

    second = task_server(slots=1, data_dir=data)
    record = wait_for(second.url, task_id, FINISHED, timeout=30)
    assert record["status"] == "succeeded", record
    assert record["attempts"] == 1, record
    output = httpx.get(f"{second.url}/api/tasks/{task_id}/output", timeout=10)
    assert output.status_code == 200
    assert _container_starts(task_id, since) == 1  # the command ran once
    logs = httpx.get(f"{second.url}/api/tasks/{task_id}/logs", timeout=10).text
    assert logs.count("tick 1") == 1, logs
    assert task_containers(task_id) == []


def test_a_task_out_of_attempts_fails_with_the_reason(task_server, tmp_path) -> None:
    data = tmp_path / "data"
    first = task_server(slots=1, data_dir=data, task_max_attempts=1)
    lost = submit_ok(first.url, "sleepy", {"seconds": b"30"})
    queued = submit_ok(first.url, "upper", {"a.txt": b"x"})
    wait_for(first.url, lost, {"running"})
    _kill(first)
    deadline = time.monotonic() + 10
    while not task_containers(lost) and time.monotonic() < deadline:
        time.sleep(0.1)
    for container in task_containers(lost):  # nothing left to adopt: it must run again
        docker("rm", "-f", container)

    second = task_server(slots=1, data_dir=data, task_max_attempts=1)
    failed = wait_for(second.url, lost, FINISHED)
    assert failed["status"] == "failed"
    assert "server stopped while the task ran" in failed["error"], failed
    assert wait_for(second.url, queued, FINISHED)["status"] == "succeeded"
    assert task(second.url, lost)["attempts"] == 1
