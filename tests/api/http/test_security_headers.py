"""The answers that middlewares give before any route runs carry the security headers
too: the API keys' refusals (401, 403) on the main port, its infer fast path and a compat
listener, and the CORS preflight answers (allowed and refused), against a real server
with a keys file and ``cors_origins``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from modelport.api.http.asgi import CONTENT_SECURITY_POLICY
from modelport.security.keys import KeyStore
from support.auth_fixtures import bearer
from support.cluster_fixtures import free_port

pytestmark = pytest.mark.timeout(60)

PAGE_ORIGIN = "http://lab.example.com"
PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "x-a"}


@dataclass(frozen=True)
class KeyedServer:
    url: str
    compat_url: str  # the zip-task cluster server's own listener
    tasks_only: str  # a key without the infer scope


@pytest.fixture(scope="module")
def keyed(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> KeyedServer:
    store = KeyStore(tmp_path_factory.mktemp("headers") / "keys.json")
    token = store.create("tasks-only", ["tasks"]).token
    env = {"MODELPORT_KEYS_FILE": str(store.path), "MODELPORT_CORS_ORIGINS": PAGE_ORIGIN}
    port = free_port()
    proc = server_factory(env=env, args=["--compat", f"inference-server=127.0.0.1:{port}"])
    return KeyedServer(proc.url, f"http://127.0.0.1:{port}", token)


def assert_secured(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_refusals_of_the_key_check_carry_the_security_headers(keyed: KeyedServer) -> None:
    infer = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1]}]}
    refused = [
        httpx.get(f"{keyed.url}/v2/models/simple"),  # the ASGI middleware
        httpx.get(f"{keyed.url}/api/tasks"),
        httpx.post(f"{keyed.url}/v2/models/simple/infer", json=infer),  # the fast path
        httpx.get(f"{keyed.compat_url}/api/models/"),  # a compat listener's middleware
    ]
    for answer in refused:
        assert answer.status_code == 401, answer.request.url
        assert "www-authenticate" in answer.headers
        assert_secured(answer)
    wrong_scope = httpx.get(f"{keyed.url}/v2/models/simple", headers=bearer(keyed.tasks_only))
    assert wrong_scope.status_code == 403
    assert "infer" in wrong_scope.json()["error"]
    assert_secured(wrong_scope)


def test_cors_preflight_answers_carry_the_security_headers(keyed: KeyedServer) -> None:
    allowed = httpx.options(
        f"{keyed.url}/api/models/simple/predict", headers={"origin": PAGE_ORIGIN, **PREFLIGHT}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == PAGE_ORIGIN
    assert_secured(allowed)
    refused = httpx.options(
        f"{keyed.url}/api/models/simple/predict", headers={"origin": "http://evil", **PREFLIGHT}
    )
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert_secured(refused)


def test_the_page_and_the_docs_stay_open_and_secured_with_keys(keyed: KeyedServer) -> None:
    for path in ("/", "/docs"):
        answer = httpx.get(keyed.url + path)
        assert answer.status_code == 200, path
        assert_secured(answer)
