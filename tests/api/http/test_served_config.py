"""``GET /api/v1/config`` of a real server started with secrets: an API key, a remote
model with ``user:pass@`` in its URL and an ``authorization`` header, a model key
file. The answer lists listeners and models (versions, state, signature, batching,
instances, aliases) and none of the secrets."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelport.security.keys import KeyStore
from support.builders import add_sub_onnx, write_model

pytestmark = pytest.mark.timeout(60)

REMOTE = """\
runtime: remote
inputs: [{{name: x, datatype: FP32, shape: [2]}}]
outputs: [{{name: y, datatype: FP32, shape: [2]}}]
remote:
  url: http://alice-user:{password}@127.0.0.1:9/v2?token={password}
  headers: {{authorization: Bearer {header}}}
"""


def test_config_lists_what_is_served_and_no_secret(
    server_factory: Any, tmp_path: Path, free_port: Any
) -> None:
    password, header, model_key = (secrets.token_hex(12) for _ in range(3))
    repo = tmp_path / "repo"
    folder = write_model(
        repo,
        "add_sub",
        "runtime: onnx\nmax_batch_size: 8\naliases: [sums]\nbatching: {max_queue_delay_us: 500}\n",
    )
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    write_model(repo, "far", REMOTE.format(password=password, header=header), {"1/.keep": ""})
    key_file = tmp_path / "model.key"
    key_file.write_text(model_key + model_key)  # 64 hex digits
    store = KeyStore(tmp_path / "keys.json")
    token = store.create("reader", ["infer"]).token
    grpc_port = free_port()
    env = {
        "MODELPORT_KEYS_FILE": str(store.path),
        "MODELPORT_MODEL_KEY_FILE": str(key_file),
        "MODELPORT_MODEL_SOURCES": "http://127.0.0.1:*",
    }
    server = server_factory(repo=repo, env=env, grpc_port=grpc_port).url

    assert httpx.get(f"{server}/api/v1/config").status_code == 401  # infer scope, as v2
    answer = httpx.get(f"{server}/api/v1/config", headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    for secret in (password, header, model_key, token, "alice-user"):
        assert secret not in answer.text, secret

    config = answer.json()
    assert config["server"]["name"] == "modelport" and config["server"]["version"]
    port = server.rsplit(":", 1)[1]
    listeners = {listener["name"]: listener for listener in config["listeners"]}
    assert listeners["http"]["address"] == f"127.0.0.1:{port}"
    assert listeners["grpc"]["address"] == f"127.0.0.1:{grpc_port}"
    models = {model["name"]: model for model in config["models"]}
    add_sub = models["add_sub"]
    assert add_sub["state"] == "READY" and add_sub["versions"] == ["1"]
    assert add_sub["aliases"] == ["sums"]
    assert add_sub["max_batch_size"] == 8
    assert add_sub["batching"]["max_queue_delay_us"] == 500
    assert add_sub["instances"]["count"] == 1
    assert [t["name"] for t in add_sub["signature"]["inputs"]] == ["INPUT0", "INPUT1"]
    assert add_sub["signature"]["outputs"][0]["datatype"] == "FP32"
    assert models["far"]["remote"]["url"] == "http://127.0.0.1:9/v2"
