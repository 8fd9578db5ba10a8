"""``modelport pull`` and ``modelport serve s3://...`` against moto's S3 server mode.

moto runs as a real process with its IAM checks on (after the few unauthenticated
calls that create the test's user and key), so wrong credentials are really refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from modelport.supply.pull import MANIFEST
from support.builders import add_sub_onnx, write_model
from support.s3_fixtures import BUCKET, S3, _free_port

pytestmark = pytest.mark.timeout(60)

PREFIX = "repo"


def upload_repository(s3: S3, local: Path, prefix: str) -> None:
    client = s3.client()
    for path in sorted(local.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(local).as_posix()}"
            client.upload_file(str(path), BUCKET, key)  # type: ignore[attr-defined]


@pytest.fixture
def bucket_repo(s3: S3, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An add_sub repository under its own prefix; the s3:// URL of it."""
    local = tmp_path / "source"
    folder = write_model(local, "add_sub", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    prefix = f"{PREFIX}-{request.node.name}"
    upload_repository(s3, local, prefix)
    return f"s3://{BUCKET}/{prefix}"


def modelport(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        capture_output=True, text=True, timeout=40,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **env},
    )  # fmt: skip


def test_pull_copies_skips_unchanged_and_recopies_changed(
    s3: S3, bucket_repo: str, tmp_path: Path
) -> None:
    dest = tmp_path / "copy"
    env = s3.env(endpoint=False)  # the endpoint through the flag this time
    first = modelport("pull", bucket_repo, str(dest), "--endpoint-url", s3.endpoint, env=env)
    assert first.returncode == 0, first.stderr
    assert "2 copied" in first.stdout
    assert (dest / "add_sub" / "model.yaml").read_text().startswith("runtime: onnx")
    assert (dest / "add_sub" / "1" / "model.onnx").stat().st_size > 0
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["source"] == bucket_repo
    assert set(manifest["files"]) == {"add_sub/model.yaml", "add_sub/1/model.onnx"}
    assert all(f["checksum"].startswith("etag:") for f in manifest["files"].values())
    assert not list(dest.rglob("*.partial"))

    again = modelport("pull", bucket_repo, str(dest), "--endpoint-url", s3.endpoint, env=env)
    assert again.returncode == 0, again.stderr
    assert "0 copied" in again.stdout and "2 unchanged" in again.stdout

    client = s3.client()
    key = bucket_repo.removeprefix(f"s3://{BUCKET}/")
    body = b"runtime: onnx\nmax_batch_size: 4\n"
    client.put_object(Bucket=BUCKET, Key=f"{key}/add_sub/model.yaml", Body=body)  # type: ignore[attr-defined]
    client.put_object(Bucket=BUCKET, Key=f"{key}/add_sub/2/model.onnx", Body=b"v2")  # type: ignore[attr-defined]
    client.delete_object(Bucket=BUCKET, Key=f"{key}/add_sub/1/model.onnx")  # type: ignore[attr-defined]
    changed = modelport("pull", bucket_repo, str(dest), env=s3.env())  # endpoint from env
    assert changed.returncode == 0, changed.stderr
    assert "2 copied" in changed.stdout and "1 removed" in changed.stdout
    assert (dest / "add_sub" / "model.yaml").read_bytes() == body
    assert (dest / "add_sub" / "2" / "model.onnx").read_bytes() == b"v2"
    assert not (dest / "add_sub" / "1").exists()


def test_pull_from_a_local_folder_uses_size_and_mtime(tmp_path: Path) -> None:
    source = tmp_path / "source"
    folder = write_model(source, "add_sub", "runtime: onnx\n")
    add_sub_onnx(folder / "1" / "model.onnx")
    dest = tmp_path / "copy"
    first = modelport("pull", f"file://{source}", str(dest), env={})
    assert first.returncode == 0, first.stderr
    manifest = json.loads((dest / MANIFEST).read_text())
    assert all(f["checksum"].startswith("mtime:") for f in manifest["files"].values())
    assert "0 copied" in modelport("pull", f"file://{source}", str(dest), env={}).stdout


def test_serve_pulls_the_bucket_and_answers(
    s3: S3, bucket_repo: str, server_factory: object, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    env = {**s3.env(), "MODELPORT_REPOSITORY_CACHE": str(cache)}
    proc = server_factory(env=env, repo=bucket_repo)  # type: ignore[operator]
    assert (cache / "add_sub" / "1" / "model.onnx").is_file()
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
        ]
    }
    response = httpx.post(f"{proc.url}/v2/models/add_sub/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs == {"OUTPUT0": [2, 3, 4, 5], "OUTPUT1": [0, 1, 2, 3]}


def test_wrong_credentials_fail_clearly_without_the_secret(
    s3: S3, bucket_repo: str, tmp_path: Path
) -> None:
    wrong = "WRONG-secret-do-not-print-1234567890"
    result = modelport("pull", bucket_repo, str(tmp_path / "copy"), env=s3.env(secret=wrong))
    assert result.returncode == 1
    assert "error" in result.stderr and bucket_repo in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert s3.secret not in result.stdout + result.stderr

    served = modelport(
        "serve", bucket_repo, "--port", str(_free_port()), "--grpc-port", "0",
        env={**s3.env(secret=wrong), "MODELPORT_DATA_DIR": str(tmp_path / "data")},
    )  # fmt: skip
    assert served.returncode == 1, served.stdout + served.stderr
    assert "error" in served.stderr and bucket_repo in served.stderr
    assert wrong not in served.stdout + served.stderr


def test_a_missing_bucket_fails_clearly(s3: S3, tmp_path: Path) -> None:
    result = modelport("pull", "s3://no-such-bucket/repo", str(tmp_path / "copy"), env=s3.env())
    assert result.returncode == 1
    assert "s3://no-such-bucket/repo" in result.stderr
    assert s3.secret not in result.stdout + result.stderr
    assert not (tmp_path / "copy" / "add_sub").exists()


def test_serve_with_poll_pulls_again_and_loads_new_models(
    s3: S3, bucket_repo: str, server_factory: object, tmp_path: Path
) -> None:
    env = {**s3.env(), "MODELPORT_REPOSITORY_CACHE": str(tmp_path / "cache")}
    proc = server_factory(env=env, repo=bucket_repo, args=["--poll", "0.3"])  # type: ignore[operator]
    source = tmp_path / "more"
    folder = write_model(source, "add_sub_too", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    upload_repository(s3, source, bucket_repo.removeprefix(f"s3://{BUCKET}/"))
    deadline = time.monotonic() + 15
    while httpx.get(f"{proc.url}/v2/models/add_sub_too/ready").status_code != 200:
        assert time.monotonic() < deadline, "the new model never loaded"
        time.sleep(0.1)
