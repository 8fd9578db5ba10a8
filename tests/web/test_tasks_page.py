"""The page's tasks view in a real browser (tests/support/browser_fixtures.py), against a real
``modelport serve`` whose container models run on the real Docker engine in the busybox
test image (tests/support/task_fixtures.py): submit files, follow the task to the end, read its
log, download its output; cancel a task that would run forever."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.browser_fixtures import ARTIFACTS
from support.builders import write_model
from support.task_fixtures import FINISHED, submit_ok, task_containers, wait_for

# Upper-cases every input file into NAME.shout, with a pause at each step so that the
# page shows the task running and its progress moving.
SHOUT = """\
runtime: container
description: upper-cases every file, slowly
container:
  image: {image}
  timeout: 60
  command:
    - sh
    - -c
    - |
      echo "shouting $(find /input -type f | wc -l) files"
      echo 0.25 > /output/.progress
      sleep 1.5
      for f in $(cd /input && find . -type f); do
        tr a-z A-Z < "/input/$f" > "/output/$f.shout"
        echo "wrote $f.shout"
      done
      echo "$MODELPORT_PARAMETERS" > /output/parameters.json
      echo 0.75 > /output/.progress
      sleep 1.5
      echo done
"""
FOREVER = """\
runtime: container
description: ticks until it is cancelled
container:
  image: {image}
  timeout: 120
  command: [sh, -c, "i=0; while true; do echo tick $i; i=$((i + 1)); sleep 1; done"]
"""
FAILS = """\
runtime: container
container:
  image: {image}
  command: [sh, -c, "echo starting; echo something broke >&2; exit 3"]
"""
ONLINE = """\
runtime: fake
inputs: [{name: INPUT0, datatype: FP32, shape: [2]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [2]}]
"""
FILES = {"hello.txt": b"hello web\n", "notes.md": b"# shout me\n"}


@pytest.fixture(scope="module")
def tasks_server(
    server_factory: Any, tmp_path_factory: pytest.TempPathFactory, docker_image: str
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("web-task-repository")
    for name, text in (("shout", SHOUT), ("forever", FOREVER), ("fails", FAILS)):
        write_model(root, name, text.format(image=docker_image), {"1/README": name})
    write_model(root, "online", ONLINE, {"1/README": "the fake runtime needs no files"})
    proc = server_factory(repo=root, env={"MODELPORT_TASK_SLOTS": "2"})
    yield str(proc.url)
    proc.stop()


def _submit(page: Any, model: str, files: dict[str, bytes], parameters: str = "") -> str:
    """Fill the form as a person would and submit it; the new task's id."""
    page.select_option("#task-model", model)
    page.set_input_files(
        "#task-files",
        files=[{"name": n, "mimeType": "text/plain", "buffer": b} for n, b in files.items()],
    )
    page.fill("#task-parameters", parameters)
    with page.expect_response(
        lambda r: r.url.endswith("/api/tasks") and r.request.method == "POST"
    ) as answer:
        page.click("#task-submit")
    assert answer.value.status == 202, answer.value.text()
    task_id = str(answer.value.json()["id"])
    page.wait_for_selector(f"tr[data-task='{task_id}']")
    return task_id


def _unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_submit_follow_logs_and_download(page: Any, tasks_server: str) -> None:
    page.goto(tasks_server + "/")
    # The Tasks view is reachable by keyboard from the header.
    page.focus("#nav-tasks")
    page.keyboard.press("Enter")
    page.wait_for_selector("#tasks-view:not([hidden])")
    assert page.evaluate("() => document.activeElement.id") == "tasks-title"
    assert page.get_attribute("#nav-tasks", "aria-current") == "page"
    assert not page.is_visible("#models-section")
    # Only the container models are offered.
    page.wait_for_selector("#task-model option[value=shout]", state="attached")
    offered = page.eval_on_selector_all("#task-model option", "os => os.map(o => o.value)")
    assert sorted(o for o in offered if o) == ["fails", "forever", "shout"]

    task_id = _submit(page, "shout", FILES, '{"loud": true}')
    row = f"tr[data-task='{task_id}']"
    assert task_id[:8] in (page.text_content("#task-form-status") or "")

    # It runs, with its progress between 0 and 1 on the bar...
    page.wait_for_selector(f"{row}[data-status=running]", timeout=20_000)
    page.wait_for_function(
        """(row) => {
          const bar = document.querySelector(row + ' progress[value]');
          return bar && bar.value > 0 && bar.value < 1;
        }""",
        arg=row,
        timeout=10_000,
    )
    page.screenshot(path=str(ARTIFACTS / "tasks-running.png"), full_page=True)
    # ...then succeeds, and the change is announced to screen readers.
    page.wait_for_selector(f"{row}[data-status=succeeded]", timeout=30_000)
    assert f"{task_id[:8]} (shout) succeeded" in (page.text_content("#tasks-announce") or "")
    cells = page.eval_on_selector_all(f"{row} td", "tds => tds.map(td => td.innerText.trim())")
    assert cells[1] == "shout v1" and cells[2] == "succeeded"
    assert cells[3] == "100%" and cells[4] == "1" and page.is_visible(f"{row} td:nth-child(7) time")

    # Its log, read through the page.
    page.click(f"{row} [data-action=logs]")
    page.wait_for_selector("#task-logs[data-done]")
    assert page.evaluate("() => document.activeElement.id") == "task-logs-title"
    log = page.text_content("#task-logs-text") or ""
    assert "shouting 2 files" in log and "wrote ./hello.txt.shout" in log and "done" in log

    # Its output, downloaded through the page, is what the container wrote.
    with page.expect_download() as download:
        page.click(f"{row} [data-action=download]")
    assert download.value.suggested_filename == f"{task_id}-output.zip"
    downloaded = Path(download.value.path()).read_bytes()
    files = _unzip(downloaded)
    assert files["hello.txt.shout"] == b"HELLO WEB\n"
    assert files["notes.md.shout"] == b"# SHOUT ME\n"
    assert json.loads(files["parameters.json"]) == {"loud": True}
    api = httpx.get(f"{tasks_server}/api/tasks/{task_id}/output", timeout=30)
    assert _unzip(api.content) == files
    page.screenshot(path=str(ARTIFACTS / "tasks.png"), full_page=True)

    # Escape in the log closes it and gives the focus back to the button that opened it.
    page.focus("#task-logs-text")
    page.keyboard.press("Escape")
    assert page.is_hidden("#task-logs")
    assert page.evaluate("() => document.activeElement.dataset.action") == "logs"


def test_cancel_a_long_task_on_a_phone(page: Any, tasks_server: str) -> None:
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(tasks_server + "/#/tasks")
    page.wait_for_selector("#task-model option[value=forever]", state="attached")

    # Parameters that are not a JSON object are refused before anything is sent.
    page.select_option("#task-model", "forever")
    page.set_input_files(
        "#task-files", files=[{"name": "a.txt", "mimeType": "text/plain", "buffer": b"x"}]
    )
    page.fill("#task-parameters", "[1, 2]")
    page.click("#task-submit")
    assert "JSON object" in (page.text_content("#task-form-error") or "")
    assert page.evaluate("() => document.activeElement.id") == "task-parameters"

    task_id = _submit(page, "forever", {"a.txt": b"x"})
    row = f"tr[data-task='{task_id}']"
    page.wait_for_selector(f"{row}[data-status=running]", timeout=20_000)
    # Its log follows the container while it runs.
    page.click(f"{row} [data-action=logs]")
    page.wait_for_function(
        "() => document.querySelector('#task-logs-text').textContent.includes('tick 1')",
        timeout=10_000,
    )
    assert not page.is_visible("#task-logs[data-done]")
    # Nothing wider than the phone's screen.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "tasks-phone-running.png"), full_page=True)

    page.click(f"{row} [data-action=cancel]")
    page.wait_for_selector(f"{row}[data-status=cancelled]", timeout=10_000)
    assert f"{task_id[:8]} cancelled" in (page.text_content("#tasks-announce") or "")
    assert page.query_selector(f"{row} [data-action=cancel]") is None
    assert page.query_selector(f"{row} [data-action=download]") is None
    # The log stream ends with the container.
    page.wait_for_selector("#task-logs[data-done]", timeout=10_000)
    deadline = time.monotonic() + 10
    while task_containers(task_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert task_containers(task_id) == []
    status = httpx.get(f"{tasks_server}/api/tasks/{task_id}", timeout=10).json()["status"]
    assert status == "cancelled"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "tasks-phone.png"), full_page=True)


def test_a_failed_task_shows_its_error(page: Any, tasks_server: str) -> None:
    task_id = submit_ok(tasks_server, "fails", {"a.txt": b"x"})  # through the API
    assert wait_for(tasks_server, task_id, FINISHED)["status"] == "failed"
    page.goto(tasks_server + "/#/tasks")
    row = f"tr[data-task='{task_id}']"
    page.wait_for_selector(f"{row}[data-status=failed]")
    assert "exit 3" in (page.text_content(f"{row} td:nth-child(3)") or "")
    # The error's first line is shown, the log tail under it a click away.
    summary = page.text_content(f"{row} .task-error summary") or ""
    assert "exited with code 3" in summary
    page.click(f"{row} .task-error summary")
    assert "something broke" in (page.text_content(f"{row} .task-error pre") or "")
    assert page.query_selector(f"{row} [data-action=download]") is None
    # Filtering by status asks the server for failed tasks only.
    page.select_option("#task-filter", "failed")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#tasks tbody tr')]"
        ".every(r => r.dataset.status === 'failed')"
    )
    page.screenshot(path=str(ARTIFACTS / "tasks-failed.png"), full_page=True)
