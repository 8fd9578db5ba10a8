"""``/health``, ``/healthz``, ``/livez`` and ``/readyz``: each check named, in process
and against a real server; public once keys are on (like ``/v2/health/*``). The broker
check with Redis stopped is in tests/cluster/test_health_broker.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from modelport.api.http.health import HealthSources, run_checks
from modelport.security.keys import KeyStore
from modelport.server.build import build_service
from modelport.settings import Settings
from support.builders import write_model

pytestmark = pytest.mark.timeout(60)


def test_a_real_server_names_each_check(server: str) -> None:
    for path in ("/health", "/healthz", "/readyz"):
        answer = httpx.get(server + path)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "ok" and body["failing"] == []
        # No --broker: the in-process broker needs no check.
        assert set(body["checks"]) == {"models", "serving", "task_store", "disk"}
        assert body["checks"]["serving"] == {"ok": True, "draining": False}
        models = body["checks"]["models"]
        assert models["ok"] is True and models["ready"] > 1 and models["loading"] == []
        assert "broken" in models["unavailable"]  # listed, and not failing the check
        assert body["checks"]["disk"]["free_bytes"] > 0
    answer = httpx.get(server + "/livez")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


async def test_full_disk_and_loading_models_fail_their_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_model(tmp_path / "repo", "m", "runtime: fake\n", {"1/.keep": ""})
    service = build_service(Settings(repository=str(tmp_path / "repo")))
    # Not opened yet: models have not loaded.
    checks = await run_checks(service, HealthSources(data_dir=tmp_path / "not" / "made"))
    assert checks["models"].ok is False
    assert checks["disk"].ok is True and checks["disk"].detail["path"].endswith("made")
    await service.open()
    try:
        monkeypatch.setattr("modelport.api.http.health.MIN_FREE_BYTES", 2**62)
        checks = await run_checks(service, HealthSources(data_dir=tmp_path))
        assert checks["models"].ok is True
        assert checks["disk"].ok is False
        # Draining (SIGTERM): not ready, though every model still serves.
        service.drain()
        checks = await run_checks(service, HealthSources())
        assert checks["models"].ok is True and checks["serving"].ok is False
        assert not service.ready()
    finally:
        await service.close()


def test_health_is_public_with_keys(server_factory: Any, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.create("infer-only", ["infer"])
    server = server_factory(env={"MODELPORT_KEYS_FILE": str(store.path)}).url
    for path in ("/health", "/healthz", "/livez", "/readyz"):
        assert httpx.get(server + path).status_code == 200, path
    assert httpx.get(server + "/v2/models/add_sub").status_code == 401
