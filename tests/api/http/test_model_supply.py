"""Hot reload and memory limits against a real server: a repository changed under load
(``--poll``) fails no request; past ``--max-loaded-models`` models load on demand."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from support.builders import write_model

StartServer = Callable[..., Any]  # the server_factory fixture

# Answers version * scale (scale from model.yaml), so clients see which one served.
SCALED = """\
import time
import numpy as np

class Model:
    def setup(self, context):
        self.value = context.version * context.spec.parameters.get("scale", 1)
        time.sleep(0.3)  # a load that takes a while, so requests overlap the reload

    def predict(self, inputs):
        return {"y": np.full((len(inputs["x"]), 1), self.value, np.float32)}
"""

YAML = """\
runtime: python
max_batch_size: 8
inputs: [{name: x, datatype: FP32, shape: [1]}]
outputs: [{name: y, datatype: FP32, shape: [1]}]
"""

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0]}]}


class Load:
    """Clients sending requests in a loop on threads, recording what answered."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url = url
        self.failures: list[str] = []
        self.seen: list[tuple[str, float]] = []  # (version, value), in order
        self.by_client: dict[str, list[tuple[str, float]]] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._httpx) for _ in range(clients)]
        self._threads.append(threading.Thread(target=self._triton))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _httpx(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/v2/models/p/infer", json=BODY)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text}")
                        continue
                    doc = r.json()
                    self._saw(doc["model_version"], doc["outputs"][0]["data"][0])
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def _triton(self) -> None:
        client = triton.InferenceServerClient(self.url.removeprefix("http://"))
        x = triton.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.zeros((1, 1), np.float32))
        try:
            while not self._stop.is_set():
                try:
                    result = client.infer("p", [x])
                    response = result.get_response()
                    value = float(result.as_numpy("y")[0, 0])
                    self._saw(response["model_version"], value)
                except Exception as exc:  # any failure counts, whatever its kind
                    self.failures.append(repr(exc))
        finally:
            client.close()

    def _saw(self, version: str, value: float) -> None:
        self.seen.append((version, value))
        self.by_client.setdefault(threading.current_thread().name, []).append((version, value))

    def wait_for(self, version: str, value: float, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen and self.seen[-1] == (version, value):
                return
            time.sleep(0.02)
        pytest.fail(f"never served ({version}, {value}); last {self.seen[-3:]}")


def _replace(path: Path, text: str) -> None:
    """Write a file whole at once, as a deploy would (never half-written to a poll)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _index_versions(url: str) -> list[str]:
    rows = httpx.post(url + "/v2/repository/index", json={}).json()
    return [r.get("version", "") for r in rows if r["name"] == "p"]


def test_hot_reload_under_load_fails_no_request(
    server_factory: StartServer, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    folder = write_model(repo, "p", YAML, {"1/model.py": SCALED})
    proc = server_factory(repo=repo, args=["--poll", "0.5"])

    with Load(proc.url) as load:
        load.wait_for("1", 1.0)
        # A new version, staged and moved in whole: it loads, then takes over.
        staging = tmp_path / "staging"
        staging.mkdir()
        (staging / "model.py").write_text(SCALED)
        os.rename(staging, folder / "2")
        load.wait_for("2", 2.0)
        # A changed model.yaml: every selected version reloads with the new settings.
        _replace(
            folder / "model.yaml", YAML + "version_policy: {all: true}\nparameters: {scale: 10}\n"
        )
        load.wait_for("2", 20.0)
        deadline = time.monotonic() + 15
        while _index_versions(proc.url) != ["1", "2"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _index_versions(proc.url) == ["1", "2"]
        # A removed version unloads; the latest keeps serving.
        shutil.rmtree(folder / "1")
        while _index_versions(proc.url) != ["2"] and time.monotonic() < deadline + 15:
            time.sleep(0.05)
        assert _index_versions(proc.url) == ["2"]
        time.sleep(0.5)

    assert load.failures == []
    # The served version only ever moved forward: 1, then 2, then 2 at the new scale.
    expected = [("1", 1.0), ("2", 2.0), ("2", 20.0)]
    for client, seen in load.by_client.items():
        steps = [pair for i, pair in enumerate(seen) if i == 0 or seen[i - 1] != pair]
        assert steps == [p for p in expected if p in steps], (client, steps)
    assert len(load.seen) > 100
    assert "model p changed: loading it" in proc.log()


def test_memory_limit_loads_evicted_models_on_demand(
    server_factory: StartServer, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    fake = YAML.replace("runtime: python", "runtime: fake").replace("INT32", "FP32")
    for name in ("a", "b", "c"):
        write_model(repo, name, fake, {"1/.keep": ""})
    proc = server_factory(repo=repo, args=["--max-loaded-models", "2"])
    reason = "unloaded to stay under max_loaded_models (loads again on demand)"

    def states() -> dict[str, tuple[str, str]]:
        rows = httpx.post(proc.url + "/v2/repository/index", json={}).json()
        return {r["name"]: (r["state"], r.get("reason", "")) for r in rows}

    assert states() == {"a": ("UNAVAILABLE", reason), "b": ("READY", ""), "c": ("READY", "")}
    httpx.post(proc.url + "/v2/models/c/infer", json=BODY).raise_for_status()
    r = httpx.post(proc.url + "/v2/models/a/infer", json=BODY)  # waits for a to load
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [0]
    assert states() == {"a": ("READY", ""), "b": ("UNAVAILABLE", reason), "c": ("READY", "")}
    client = triton.InferenceServerClient(proc.url.removeprefix("http://"))
    try:
        x = triton.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), np.float32))
        assert client.infer("b", [x]).as_numpy("y").tolist() == [[1.0]]
    finally:
        client.close()
    assert states()["c"] == ("UNAVAILABLE", reason)
