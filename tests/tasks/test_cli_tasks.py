"""``modelport tasks`` as users run it: a real process against a real server and engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.task_fixtures import FINISHED, submit_ok, wait_for


def modelport(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "MODELPORT_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "modelport", "tasks", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def test_submit_a_folder_wait_and_unpack_the_output(task_server, tmp_path: Path) -> None:
    url = task_server().url
    scans = tmp_path / "scans"
    (scans / "deep").mkdir(parents=True)
    (scans / "one.txt").write_text("abc")
    (scans / "deep" / "two.txt").write_text("xyz")
    out = tmp_path / "results"
    done = modelport("submit", "upper", str(scans), "--wait", "--output", str(out), url=url)
    assert done.returncode == 0, done.stderr
    assert (out / "one.txt").read_text() == "ABC" and (out / "deep/two.txt").read_text() == "XYZ"
    task_id = done.stdout.split()[0]

    status = modelport("status", task_id, url=url)
    assert status.returncode == 0 and '"succeeded"' in status.stdout
    logs = modelport("logs", task_id, url=url)
    assert logs.returncode == 0 and "hello-log" in logs.stdout
    listed = modelport("list", "--model", "upper", url=url)
    assert listed.returncode == 0 and task_id in listed.stdout


def test_a_failed_wait_exits_non_zero_and_cancel_works(task_server, tmp_path: Path) -> None:
    url = task_server().url
    (tmp_path / "a.txt").write_text("x")
    failed = modelport("submit", "fails", str(tmp_path / "a.txt"), "--wait", url=url)
    assert failed.returncode == 1 and "something broke" in failed.stderr

    task_id = submit_ok(url, "sleepy", {"seconds": b"30"})
    wait_for(url, task_id, {"running"})
    follow = subprocess.Popen(
        [sys.executable, "-m", "modelport", "tasks", "logs", "-f", task_id, "--url", url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None and follow.stdout.readline() == "tick 0\n"
    cancelled = modelport("cancel", task_id, url=url)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert wait_for(url, task_id, FINISHED)["status"] == "cancelled"
    follow.communicate(timeout=30)  # -f ends when the task does
    assert follow.returncode == 0
    unknown = modelport("status", "nope", url=url)
    assert unknown.returncode == 1 and "unknown task" in unknown.stderr
