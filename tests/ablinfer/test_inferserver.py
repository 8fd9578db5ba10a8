"""ABLInfer's InferServer drop-in, driven by the real ``ablinfer`` client from PyPI
(``DispatchRemote`` and ``python -m ablinfer.cli``) against a real server whose sessions
run as tasks in real containers (a busybox image that acts as the model)."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from ablinfer.base import DispatchException
from ablinfer.constants import DispatchStage
from ablinfer.model import normalize_model
from ablinfer.remote import DispatchRemote

from modelport.spec.ablinfer_session import sniff_filetype
from support.ablinfer_fixtures import io_entry, nifti_gz, nrrd, spec

pytestmark = pytest.mark.timeout(120)


def _config(inp: Path, out: Path, **params: Any) -> dict[str, Any]:
    return {
        "inputs": {"input_vol": {"value": str(inp)}},
        "outputs": {
            "output_seg": {"value": str(out)},
            "extra": {"enabled": False, "value": str(out) + ".extra"},
        },
        "params": {k: {"value": v} for k, v in params.items()},
    }


def _run(url: str, model: str, config: dict[str, Any]) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    remote = DispatchRemote({"base_url": url})
    spec = remote.get_model(model)
    remote.run(spec, config, progress=lambda stage, _a, _b, text: seen.append((stage, text)))
    return seen


def _session(url: str, model: str = "busybox_seg", **params: Any) -> str:
    body = {"params": {k: {"value": v} for k, v in params.items()}}
    answer = httpx.post(f"{url}models/{model}", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["data"]["session_id"])


def _wait(url: str, session: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = httpx.get(f"{url}sessions/{session}").json()["data"]
        if data["status"] in states:
            return dict(data)
        assert time.monotonic() < deadline, data
        time.sleep(0.1)


def test_dispatch_remote_runs_a_session_end_to_end(ablinfer_server, tmp_path) -> None:
    server = ablinfer_server()
    volume = nifti_gz(24)
    (tmp_path / "in.nii.gz").write_bytes(volume)
    out = tmp_path / "out.nii.gz"
    config = _config(tmp_path / "in.nii.gz", out, threads=2, scale=0.5, mode="slow")
    seen = _run(server.url, "busybox_seg", config)

    assert out.read_bytes() == volume
    stages = {stage for stage, _ in seen}
    assert {
        DispatchStage.Validate,
        DispatchStage.Save,
        DispatchStage.Run,
        DispatchStage.Load,
    } <= stages
    texts = [text for stage, text in seen if stage == DispatchStage.Run]
    # The arguments as the client library builds them: sorted names, "=" flags, no bools.
    args = [t.removeprefix("arg: ") for t in texts if t.startswith("arg: ")]
    assert args == [
        "-i",
        "/tmp/input_vol.nii.gz",
        "--mode=slow",
        "-o",
        "/tmp/output_seg.nii.gz",
        "--scale=0.5",
        "--sleep=0",
        "--threads=2",
    ]
    assert "inference iter 186, done" in texts
    assert any("Session ID is" in text for _, text in seen)


def test_models_listing_and_specs_pass_the_clients_normalizer(
    ablinfer_server, ablinfer_image, spec_folder
) -> None:
    server = ablinfer_server()
    root = httpx.get(server.url).json()
    assert root == {"data": {"server": "inferserver", "version": "1.1.0"}}
    assert sorted(httpx.get(f"{server.url}models").json()["data"]) == [
        "busybox_plain",
        "busybox_seg",
    ]  # the broken spec is left out, the others serve on
    served = httpx.get(f"{server.url}models/busybox_seg").json()["data"]
    normalize_model(served)
    assert served["params"]["mode"]["enum"] == {"Fast": "fast", "Slow": "slow"}
    assert "data_path" in server.log() and "broken.json" in server.log()
    # A spec added (or fixed) later is served without a restart.
    later = spec(ablinfer_image, "added_later", with_enum=False)
    (spec_folder / "later.json").write_text(json.dumps(later))
    assert "added_later" in httpx.get(f"{server.url}models").json()["data"]
    missing = httpx.get(f"{server.url}models/nope")
    assert missing.status_code == 404
    assert missing.json() == {"errors": [{"detail": "Unknown model nope"}]}


def test_specs_are_container_models_of_the_repository(ablinfer_server) -> None:
    server = ablinfer_server()
    index = httpx.post(f"{server.main_url}/v2/repository/index", json={}).json()
    rows = {row["name"]: row for row in index}
    for ident in ("busybox_seg", "busybox_plain"):
        # Task-only, as every container model: run through the ablinfer listener.
        assert rows[ident]["state"] == "UNAVAILABLE"
        assert "POST /api/tasks" in rows[ident]["reason"]
    # The broken file is a model of its file's name, its reason naming file and field.
    assert "broken.json" in rows["broken"]["reason"]
    assert "docker/data_path" in rows["broken"]["reason"]
    listed = subprocess.run(
        [sys.executable, "-m", "modelport", "models", "--url", server.main_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "busybox_seg" in listed and "broken" in listed


def test_the_cli_runs_a_model(ablinfer_server, tmp_path) -> None:
    server = ablinfer_server()
    (tmp_path / "in.nii.gz").write_bytes(nifti_gz(8, seed=3))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ablinfer.cli",
            "-s",
            server.url,
            "busybox_plain",
            "-i",
            str(tmp_path / "in.nii.gz"),
            "-o",
            str(tmp_path / "out.nii.gz"),
            "--threads",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "out.nii.gz").read_bytes() == nifti_gz(8, seed=3)
    assert "--threads=3" in done.stdout and "[RUN ]" in done.stdout


def test_a_failing_container_fails_the_session(ablinfer_server, tmp_path) -> None:
    server = ablinfer_server()
    (tmp_path / "in.nii.gz").write_bytes(nifti_gz(8))
    with pytest.raises(DispatchException, match="failed"):
        _run(server.url, "busybox_seg", _config(tmp_path / "in.nii.gz", tmp_path / "o", fail=True))
    assert not (tmp_path / "o").exists()


def test_refusals_in_upstreams_words(ablinfer_server, tmp_path) -> None:
    server = ablinfer_server()
    url = server.url
    bad = httpx.post(f"{url}models/busybox_seg", json={"params": {"threads": {"value": 0}}})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["detail"].startswith("Invalid value for params/threads")
    assert httpx.post(f"{url}models/busybox_seg", content=b"x").json() == {
        "errors": [{"detail": "Must pass the model parameters as JSON"}]
    }
    required = httpx.post(
        f"{url}models/busybox_seg",
        json={"params": {}, "outputs": {"output_seg": {"enabled": False}}},
    )
    assert required.status_code == 400  # upstream: 200 with errors
    assert required.json()["errors"][0]["detail"] == "Output output_seg cannot be disabled"
    # An enum by key or by value.
    _session(url, mode="Slow")
    _session(url, mode="slow")
    # Another volume type converts (SimpleITK, the medical extra, is in the dev extra).
    check = httpx.post(f"{url}models/busybox_seg/inputs/input_vol/check", content=nrrd()[:1024])
    assert check.json()["data"] == {"filetype": ".nrrd", "acceptable": True, "can_convert": True}
    good = httpx.post(f"{url}models/busybox_seg/inputs/input_vol/check", content=nifti_gz()[:1024])
    assert good.json()["data"] == {"filetype": ".nii.gz", "acceptable": True, "can_convert": False}
    big = httpx.post(f"{url}models/busybox_seg/inputs/input_vol/check", content=b"x" * 5000)
    assert big.status_code == 413
    converted = _session(url)
    put = httpx.put(f"{url}sessions/{converted}/inputs/input_vol", content=nrrd())
    assert put.status_code == 200, put.text
    _wait(url, converted, {"complete"})
    output = httpx.get(f"{url}sessions/{converted}/outputs/output_seg").content
    assert sniff_filetype(output[:1024]) == ".nii.gz"  # the container got a .nii.gz
    # A file that is no volume at all: the check says so, the client refuses, an upload
    # is refused in upstream's words.
    not_a_volume = b"plain text, not a volume " * 60
    check = httpx.post(f"{url}models/busybox_seg/inputs/input_vol/check", content=not_a_volume)
    assert check.json()["data"] == {"filetype": None, "acceptable": False, "can_convert": False}
    (tmp_path / "in.nii.gz").write_bytes(not_a_volume)
    with pytest.raises(DispatchException, match="Invalid filetype"):
        _run(url, "busybox_seg", _config(tmp_path / "in.nii.gz", tmp_path / "o"))
    session = _session(url)
    refused = httpx.put(f"{url}sessions/{session}/inputs/input_vol", content=not_a_volume)
    assert refused.status_code == 400
    assert [e["detail"] for e in refused.json()["errors"]] == ["Expected filetype .nii.gz"]
    assert httpx.get(f"{url}sessions/{session}").json()["data"]["needed"] == ["input_vol"]
    assert httpx.get(f"{url}sessions/nope").status_code == 404
    assert httpx.get(f"{url}sessions/{session}/logs").json() == {
        "errors": [{"detail": "Session not running yet"}]
    }
    out = httpx.get(f"{url}sessions/{session}/outputs/extra")
    assert out.status_code == 400 and out.json()["errors"][0]["detail"] == "Output was not enabled"


def test_uploads_sha256_conflict_reupload_and_queue_position(ablinfer_server) -> None:
    server = ablinfer_server()
    url = server.url
    first = _session(url, sleep=3)
    second = _session(url)
    volume = nifti_gz(8)
    # A second upload of the same input while one is under way: 409.
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    slow = http.client.HTTPConnection(host, int(port))
    slow.putrequest("PUT", f"/sessions/{second}/inputs/input_vol")
    slow.putheader("Content-Length", str(len(volume)))
    slow.endheaders()
    slow.send(volume[:100])
    time.sleep(0.5)
    busy = httpx.put(f"{url}sessions/{second}/inputs/input_vol", content=volume)
    assert busy.status_code == 409
    slow.close()
    # The first session runs (3 s); the second waits behind it in the queue.
    done = httpx.put(f"{url}sessions/{first}/inputs/input_vol", content=volume)
    assert done.json() == {"data": {"sha256": hashlib.sha256(volume).hexdigest()}}
    assert httpx.put(f"{url}sessions/{first}/inputs/input_vol", content=volume).status_code == 400
    _wait(url, first, {"working"})
    other = nifti_gz(8, seed=9)
    httpx.put(f"{url}sessions/{second}/inputs/input_vol", content=other)  # (re-upload below)
    with httpx.stream("GET", f"{url}sessions/{second}/logs", timeout=60) as logs:
        lines = [line for line in logs.iter_lines()]
    assert "Waiting, position in queue is 1" in lines
    assert "inference iter 186, done" in lines
    assert _wait(url, second, {"complete", "failed"})["status"] == "complete"
    assert httpx.get(f"{url}sessions/{second}/outputs/output_seg").content == other
    saved = httpx.get(f"{url}sessions/{first}/logs")
    assert "inference iter 3, sleeping" in saved.text and saved.headers["content-length"]


def test_reupload_while_waiting_replaces_the_input(
    ablinfer_server, ablinfer_image, tmp_path
) -> None:
    folder = tmp_path / "specs2"
    folder.mkdir()
    two = spec(ablinfer_image, "two_inputs", with_enum=False)
    two["inputs"]["mask"] = io_entry("Mask", "--mask", "volume")
    (folder / "two.json").write_text(json.dumps(two))
    server = ablinfer_server(ablinfer_models=folder)
    url = server.url
    session = _session(url, "two_inputs")
    put = f"{url}sessions/{session}/inputs/input_vol"
    assert httpx.put(put, content=nifti_gz(8, seed=1)).status_code == 200
    assert httpx.get(f"{url}sessions/{session}").json()["data"]["needed"] == ["mask"]
    assert httpx.put(put, content=nifti_gz(8, seed=2)).status_code == 200  # again: replaced
    httpx.put(f"{url}sessions/{session}/inputs/mask", content=nifti_gz(4))
    assert _wait(url, session, {"complete", "failed"})["status"] == "complete"
    assert httpx.get(f"{url}sessions/{session}/outputs/output_seg").content == nifti_gz(8, seed=2)


def test_a_session_survives_kill_9_and_its_outputs_download(ablinfer_server, tmp_path) -> None:
    data = tmp_path / "data"
    first = ablinfer_server(data_dir=data)
    session = _session(first.url, sleep=4)
    volume = nifti_gz(8, seed=5)
    httpx.put(f"{first.url}sessions/{session}/inputs/input_vol", content=volume)
    _wait(first.url, session, {"working"})
    time.sleep(1)
    first.kill()

    second = ablinfer_server(data_dir=data)
    done = _wait(second.url, session, {"complete", "failed"})
    assert done["status"] == "complete", done
    assert httpx.get(f"{second.url}sessions/{session}/outputs/output_seg").content == volume


def test_idle_sessions_are_removed(ablinfer_server) -> None:
    server = ablinfer_server(ablinfer_session_ttl_s=1)
    session = _session(server.url)
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}sessions/{session}").status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.2)
