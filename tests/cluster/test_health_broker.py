"""``GET /health`` of ``modelport serve --broker redis://...`` while Redis stops and
comes back: 503 naming the broker, then 200 again, with the server serving on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.cluster_fixtures import RedisServer

pytestmark = pytest.mark.timeout(90)


def _health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health", timeout=10)


def _wait_for(url: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + 20
    while True:
        answer = _health(url)
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_health_names_the_broker_while_redis_is_down(
    redis_server: RedisServer, server_factory: Any, repository: Path
) -> None:
    server = server_factory(repo=repository, args=["--broker", redis_server.url]).url
    answer = _health(server)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"models", "serving", "task_store", "broker", "disk"}
    assert all(check["ok"] for check in body["checks"].values())

    redis_server.stop()
    answer = _wait_for(server, 503)
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["status"] == "failing" and body["failing"] == ["broker"]
    assert body["checks"]["broker"]["ok"] is False and body["checks"]["broker"]["error"]
    assert body["checks"]["task_store"]["ok"] is True
    assert httpx.get(f"{server}/livez").status_code == 200  # alive, only not healthy
    assert httpx.get(f"{server}/readyz").status_code == 503

    redis_server.start()
    answer = _wait_for(server, 200)
    assert answer.status_code == 200, answer.text
    assert answer.json()["checks"]["broker"] == {"ok": True}
