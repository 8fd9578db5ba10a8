"""No secret of a remote model reaches a caller, a log line or the CLI (issue 20, item 2).

A real server serves two ``runtime: remote`` models whose URL carries
``user:password@`` and whose headers carry a bearer token: one in front of another
modelport (it loads: its configuration is shown), one in front of a closed port (it
fails: its reason and errors are shown). Every surface that shows a URL or headers is
called, and neither secret may appear in any answer, in the log or in ``modelport
models``'s output.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient

from modelport.redaction import REDACTED, redact_headers, redact_text, redact_url
from support.builders import write_model

PASSWORD = "hunter2-pass"
TOKEN = "sekret-bearer-token"


def test_the_rule() -> None:
    assert redact_url("http://bob:pw@host:1/x?q=1") == f"http://{REDACTED}@host:1/x?q=1"
    assert redact_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert redact_url("/local/a@b") == "/local/a@b"
    headers = {"Authorization": "Bearer x", "X-Api-Key": "k", "x-my-token": "t",
               "Cookie": "c", "Proxy-Authorization": "p", "accept": "json"}  # fmt: skip
    assert redact_headers(headers) == {**dict.fromkeys(headers, REDACTED), "accept": "json"}
    assert (
        redact_text("failed for url 'https://u:p@h/x'")
        == f"failed for url 'https://{REDACTED}@h/x'"
    )


def _remote_yaml(url: str) -> str:
    return f"""\
    runtime: remote
    max_batch_size: 8
    remote:
      url: {url}
      model: add_sub
      timeout: 2
      headers: {{authorization: Bearer {TOKEN}, x-api-key: {TOKEN}}}
    """


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def servers(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    upstream = server_factory()
    repo = tmp_path_factory.mktemp("remote-secrets")
    port = upstream.url.rsplit(":", 1)[1]
    mirror = f"http://bob:{PASSWORD}@127.0.0.1:{port}"
    write_model(repo, "mirror", _remote_yaml(mirror), {"1/README": "served remotely"})
    gone = f"http://bob:{PASSWORD}@127.0.0.1:{_closed_port()}"
    write_model(repo, "gone", _remote_yaml(gone), {"1/README": "served remotely"})
    grpc_port = _closed_port()
    server = server_factory(
        repo=repo, grpc_port=grpc_port, env={"MODELPORT_MODEL_SOURCES": "http://127.0.0.1:*"}
    )
    return server, grpc_port


def _clean(text: str) -> None:
    assert PASSWORD not in text and TOKEN not in text, text


def test_no_surface_shows_a_secret(servers: Any) -> None:
    server, grpc_port = servers
    seen: list[str] = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        config = client.get("/v2/models/mirror/config")
        assert config.status_code == 200, config.text
        assert REDACTED in config.text
        seen.append(config.text)
        index = client.post("/v2/repository/index", json={})
        gone = [row for row in index.json() if row["name"] == "gone"]
        assert gone and gone[0]["state"] != "READY"
        assert "127.0.0.1" in gone[0]["reason"]  # the reason still names where
        seen.append(index.text)
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4],
                            "data": [1, 2, 3, 4]}]}  # fmt: skip
        for model in ("gone", "mirror"):
            answer = client.post(f"/v2/models/{model}/infer", json=body)
            seen.append(answer.text)
            seen.append(client.get(f"/v2/models/{model}").text)
            seen.append(client.get(f"/v2/models/{model}/ready").text)
            seen.append(client.get(f"/v1/models/{model}").text)  # TF Serving's status
            seen.append(client.get(f"/api/models/{model}").text)  # the web page's views
        seen.append(client.get("/api/models").text)
        for model in ("gone", "mirror"):
            client.post(f"/v2/repository/models/{model}/load", json={})
    triton = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        seen.append(str(triton.get_model_config("mirror", as_json=True)))
        seen.append(str(triton.get_model_repository_index(as_json=True)))
        with pytest.raises(Exception) as failed:
            triton.get_model_config("gone")
        seen.append(str(failed.value))
    finally:
        triton.close()
    cli = subprocess.run(
        [sys.executable, "-m", "modelport", "models", "--url", server.url],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "gone" in cli.stdout
    seen += [cli.stdout, cli.stderr, server.log()]
    assert "gone" in server.log()
    for text in seen:
        _clean(text)
