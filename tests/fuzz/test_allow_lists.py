"""The allow-lists of where models may come from (model_sources, model_images), as
functions and against real servers."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelport.errors import Forbidden
from modelport.settings import Settings
from modelport.supply.allow_lists import AllowList, url_allow_list


def test_url_patterns() -> None:
    allow = url_allow_list(["grpc://triton-*:8001", "https://models.example.com/team"],
                           ["s3://bucket/models"])  # fmt: skip
    assert allow.allows_url("grpc://triton-3:8001")
    assert allow.allows_url("GRPC://Triton-3:8001/")
    assert allow.allows_url("https://models.example.com/team/resnet")
    assert allow.allows_url("s3://bucket/models/digits/1/model.onnx")  # the operator's
    assert not allow.allows_url("https://models.example.com/teamx")
    assert not allow.allows_url("grpc://triton-3:8002")
    assert not allow.allows_url("s3://bucket/other")
    # user information cannot smuggle another host past a port wildcard
    assert not AllowList(("http://good:*",), "model_sources").allows_url("http://good:1@evil:80")
    with pytest.raises(Forbidden, match="model_sources") as caught:
        allow.check_url("http://10.0.0.5:8000", "model 'm': remote.url")
    assert "MODELPORT_MODEL_SOURCES=http://10.0.0.5:8000" in caught.value.message


def test_image_patterns_and_settings() -> None:
    settings = Settings.load(environ={"MODELPORT_MODEL_IMAGES": "lab/*, registry.example.com/*"})
    assert settings.model_images == ("lab/*", "registry.example.com/*")
    images = AllowList(settings.model_images, "model_images")
    assert images.allows_image("lab/segmenter:2.1")
    assert not images.allows_image("evil/segmenter:2.1")
    assert Settings().model_sources == () and Settings().model_images == ()


def _remote_repo(root: Path, url: str) -> Path:
    folder = root / "front" / "add_sub_remote"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "README").write_text("runs on a remote")
    (folder / "model.yaml").write_text(
        textwrap.dedent(f"""\
        runtime: remote
        max_batch_size: 8
        remote: {{url: {url}, model: add_sub}}
        """)
    )
    return root / "front"


def _state(url: str, model: str) -> dict[str, Any]:
    rows = httpx.post(f"{url}/v2/repository/index").json()
    return next(r for r in rows if r["name"] == model)


def test_a_remote_outside_model_sources_is_unavailable(
    server: str, server_factory: Any, tmp_path: Path
) -> None:
    repo = _remote_repo(tmp_path, server)  # the shared test server is the remote
    refused = server_factory(repo=repo)
    row = _state(refused.url, "add_sub_remote")
    assert row["state"] == "UNAVAILABLE"
    assert f"remote.url {server} is not allowed by model_sources" in row["reason"]
    allowed = server_factory(repo=repo, env={"MODELPORT_MODEL_SOURCES": "http://127.0.0.1:*"})
    assert _state(allowed.url, "add_sub_remote")["state"] == "READY"
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
                       for n in ("INPUT0", "INPUT1")]}  # fmt: skip
    answer = httpx.post(f"{allowed.url}/v2/models/add_sub_remote/infer", json=body)
    assert answer.status_code == 200, answer.text


def test_posted_images_outside_model_images_are_refused(
    server_factory: Any, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    env = {"MODELPORT_COMPAT_ALLOW_MODEL_POSTING": "true", "MODELPORT_TASK_SLOTS": "0",
           "MODELPORT_MODEL_IMAGES": "lab/*"}  # fmt: skip
    url = server_factory(repo=repo, env=env).url + "/compat/inference-server/api/models/"
    refused = httpx.post(url, data={"container_tag": "evil/miner:1", "human_readable_id": "m1"})
    assert refused.status_code == 403
    # The zip-task cluster API answers in its upstream shape, {"detail": ...}.
    assert "container_tag evil/miner:1 is not allowed by model_images" in refused.json()["detail"]
    assert not (repo / "m1").exists()
    posted = httpx.post(url, data={"container_tag": "lab/seg:2", "human_readable_id": "m2"})
    assert posted.status_code == 200, posted.text
    assert (repo / "m2" / "model.yaml").is_file()
