"""API keys over HTTP, against a real server listening on 0.0.0.0 with a keys file
(the tests talk to it over 127.0.0.1), with real clients: httpx and tritonclient.http.
Also the same middleware in process, through httpx's ASGI transport."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from modelport.security.keys import KeyStore
from support.auth_fixtures import (
    GATE_BODY,
    Gate,
    add_sub_body,
    bearer,
    build_auth_repository,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


@dataclass
class KeyedServer:
    url: str
    store: KeyStore
    tokens: dict[str, str]  # scope -> a key with only that scope
    gate: Gate


@pytest.fixture(scope="module")
def keyed(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> KeyedServer:
    root = tmp_path_factory.mktemp("auth-http")
    repo, gate = build_auth_repository(root)
    store = KeyStore(root / "keys.json")
    tokens = {s: store.create(f"{s}-only", [s]).token for s in ("infer", "tasks", "admin")}
    env = {"MODELPORT_KEYS_FILE": str(store.path), "MODELPORT_MAX_CONCURRENT_PER_KEY": "1"}
    proc = server_factory(repo=repo, env=env, args=["--host", "0.0.0.0"])
    return KeyedServer(proc.url, store, tokens, gate)


def test_health_metrics_and_the_page_need_no_key(keyed: KeyedServer) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/", "/docs"):
        assert httpx.get(keyed.url + path).status_code == 200, path


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v2/models/add_sub/infer", add_sub_body()),  # the fast path
        ("GET", "/v2/models/add_sub", None),
        ("POST", "/v2/repository/index", {}),
        ("POST", "/v1/models/add_sub:predict", {"instances": [[1, 2, 3, 4]]}),
        ("GET", "/api/models", None),
        ("GET", "/api/tasks", None),
        ("GET", "/compat/inference-server/api/models/", None),
        ("POST", "/v2/repository/models/add_sub/unload", None),
    ],
)
def test_calls_without_a_key_get_401_saying_how_to_send_one(
    keyed: KeyedServer, method: str, path: str, body: Any
) -> None:
    answer = httpx.request(method, keyed.url + path, json=body)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <key>" in answer.json()["error"]
    mistyped = httpx.request(method, keyed.url + path, json=body, headers=bearer("mp_x_y"))
    assert mistyped.status_code == 401 and "not valid" in mistyped.json()["error"]


def test_a_key_with_the_scope_gets_in(keyed: KeyedServer) -> None:
    infer, tasks = bearer(keyed.tokens["infer"]), bearer(keyed.tokens["tasks"])
    answer = httpx.post(keyed.url + "/v2/models/add_sub/infer", json=add_sub_body(), headers=infer)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [2, 4, 6, 8]
    assert httpx.get(keyed.url + "/v2/models/add_sub", headers=infer).status_code == 200
    assert httpx.get(keyed.url + "/api/tasks", headers=tasks).status_code == 200


@pytest.mark.parametrize(
    ("scope", "method", "path", "needed"),
    [
        ("tasks", "POST", "/v2/models/add_sub/infer", "infer"),
        ("admin", "GET", "/v2/models/add_sub", "infer"),
        ("infer", "GET", "/api/tasks", "tasks"),
        ("infer", "POST", "/v2/repository/models/add_sub/load", "admin"),
    ],
)
def test_a_key_without_the_scope_gets_403_naming_it(
    keyed: KeyedServer, scope: str, method: str, path: str, needed: str
) -> None:
    body = add_sub_body() if path.endswith("infer") else None
    answer = httpx.request(method, keyed.url + path, json=body, headers=bearer(keyed.tokens[scope]))
    assert answer.status_code == 403
    assert f"'{needed}' scope" in answer.json()["error"]
    assert f"--scope {needed}" in answer.json()["error"]


def test_an_admin_key_loads_on_a_network_address(keyed: KeyedServer) -> None:
    admin = bearer(keyed.tokens["admin"])
    answer = httpx.post(keyed.url + "/v2/repository/models/add_sub/load", headers=admin, timeout=30)
    assert answer.status_code == 200, answer.text


def test_tritonclient_sends_the_key_as_a_header(keyed: KeyedServer) -> None:
    client = triton.InferenceServerClient(keyed.url.removeprefix("http://"))
    x = triton.InferInput("INPUT0", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    y = triton.InferInput("INPUT1", [1, 4], "FP32")
    y.set_data_from_numpy(np.ones((1, 4), np.float32))
    result = client.infer("add_sub", [x, y], headers=bearer(keyed.tokens["infer"]))
    assert result.as_numpy("OUTPUT0").tolist() == [[2.0] * 4]
    assert client.is_server_ready()  # health: no key
    with pytest.raises(InferenceServerException, match="API key"):
        client.infer("add_sub", [x, y])
    with pytest.raises(InferenceServerException, match="'admin' scope"):
        client.unload_model("add_sub", headers=bearer(keyed.tokens["infer"]))
    client.close()


def test_a_key_revoked_while_the_server_runs_is_refused(keyed: KeyedServer) -> None:
    new = keyed.store.create("short-lived", ["infer"])
    url = keyed.url + "/v2/models/add_sub"

    def status() -> int:
        return httpx.get(url, headers=bearer(new.token)).status_code

    wait_until(lambda: status() == 200, "the server to see the new key")
    keyed.store.revoke(new.key.id)
    wait_until(lambda: status() == 401, "the server to refuse the revoked key")
    assert httpx.get(url, headers=bearer(keyed.tokens["infer"])).status_code == 200


def test_a_key_past_its_calls_in_progress_gets_429(keyed: KeyedServer) -> None:
    infer = bearer(keyed.tokens["infer"])
    gate_url = keyed.url + "/v2/models/gate/infer"
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(httpx.post, gate_url, json=GATE_BODY, headers=infer, timeout=60)
        keyed.gate.wait_entered()
        for method, path in (("POST", "/v2/models/gate/infer"), ("GET", "/v2/models/gate")):
            refused = httpx.request(
                method, keyed.url + path, json=GATE_BODY if method == "POST" else None,
                headers=infer,
            )  # fmt: skip
            assert refused.status_code == 429, path
            assert refused.headers["retry-after"] == "1"
            assert "max_concurrent_per_key" in refused.json()["error"]
        # Other keys are not held back by this one.
        assert httpx.get(keyed.url + "/api/tasks", headers=bearer(keyed.tokens["tasks"])).is_success
        keyed.gate.open()
        answer = held.result()
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [7.0]
    assert httpx.post(gate_url, json=GATE_BODY, headers=infer).status_code == 200


def test_the_cli_sends_the_api_key(keyed: KeyedServer) -> None:
    command = [sys.executable, "-m", "modelport", "models", "--url", keyed.url]
    environ = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    refused = subprocess.run(command, capture_output=True, text=True, env=environ, timeout=20)
    assert refused.returncode == 1 and "error 401" in refused.stderr
    environ["MODELPORT_API_KEY"] = keyed.tokens["infer"]
    listed = subprocess.run(command, capture_output=True, text=True, env=environ, timeout=20)
    assert listed.returncode == 0, listed.stderr
    assert "add_sub" in listed.stdout and "READY" in listed.stdout


@pytest.fixture
async def inproc_keyed(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The app in process, behind the auth middleware, with one infer key."""
    from modelport.api.http.app import create_app
    from modelport.api.http.auth import AuthMiddleware
    from modelport.observability.metrics import metrics_registry
    from modelport.security.access import AccessPolicy, Guard
    from modelport.server.build import build_service
    from modelport.settings import Settings

    repo, _ = build_auth_repository(tmp_path)
    settings = Settings(repository=str(repo))
    service = build_service(settings)
    await service.open()
    store = KeyStore(tmp_path / "keys.json")
    token = store.create("inproc", ["infer"]).token
    _, asgi = create_app(
        service, metrics=metrics_registry(service), max_body=settings.max_request_bytes
    )
    guarded = AuthMiddleware(asgi, Guard(store, AccessPolicy()))
    transport = httpx.ASGITransport(app=guarded)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://inproc") as client:
            yield client, token
    finally:
        await service.close()


async def test_the_middleware_guards_the_asgi_infer_path(
    inproc_keyed: tuple[httpx.AsyncClient, str],
) -> None:
    client, token = inproc_keyed
    refused = await client.post("/v2/models/add_sub/infer", json=add_sub_body())
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    answer = await client.post(
        "/v2/models/add_sub/infer", json=add_sub_body(), headers=bearer(token)
    )
    assert answer.status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200
