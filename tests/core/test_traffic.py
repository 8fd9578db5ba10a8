"""``traffic`` and ``shadow`` (model.yaml) against a real server.

A split between two versions is measured over 2,000 requests; a split between a local
version and a ``runtime: remote`` model (a second modelport process stands in for the
fleet) is counted at both ends; shadow copies are compared and counted, never returned.
"""

from __future__ import annotations

import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelport.errors import SpecError
from modelport.spec import parse_spec
from support.builders import add_sub_onnx, mlp_onnx, write_model

pytestmark = pytest.mark.timeout(120)

LOOPBACK_SOURCES = {"MODELPORT_MODEL_SOURCES": "http://127.0.0.1:*"}
REQUESTS = 2000
WAIT_S = 30.0
ADD_SUB = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
    ]
}
X = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
MLP = {
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": X.ravel().tolist()}]
}


def add_sub_versions(repo: Path, name: str, yaml: str, versions: tuple[int, ...]) -> None:
    folder = write_model(repo, name, "runtime: onnx\nmax_batch_size: 8\n" + textwrap.dedent(yaml))
    for version in versions:
        add_sub_onnx(folder / str(version) / "model.onnx")


def mlp_versions(repo: Path, name: str, yaml: str, seeds: dict[int, int]) -> None:
    folder = write_model(repo, name, "runtime: onnx\nmax_batch_size: 8\n" + textwrap.dedent(yaml))
    for version, seed in seeds.items():
        mlp_onnx(folder / str(version) / "model.onnx", sizes=(16, 8, 4), seed=seed)


@dataclass
class Servers:
    front: Any  # conftest.ServerProcess
    fleet: Any


@pytest.fixture(scope="module")
def servers(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    fleet_repo = tmp_path_factory.mktemp("traffic-fleet")
    add_sub_versions(fleet_repo, "add_sub", "", (1,))
    fleet = server_factory(repo=fleet_repo)
    repo = tmp_path_factory.mktemp("traffic-front")
    every = "version_policy: {all: true}\n"
    add_sub_versions(repo, "split", every + "traffic: {1: 90, 2: 10}\n", (1, 2))
    add_sub_versions(repo, "canary", "traffic: {1: 70, fleet: 30}\n", (1,))
    write_model(
        repo,
        "fleet",
        f"runtime: remote\nmax_batch_size: 8\nremote: {{url: '{fleet.url}', model: add_sub}}\n",
        {"1/README": "runs on the fleet"},
    )
    mlp_versions(repo, "shadow_same", every + "shadow: {target: 1}\n", {1: 0, 2: 0})
    mlp_versions(repo, "shadow_differs", every + "shadow: {target: 1, share: 50}\n", {1: 0, 2: 1})
    add_sub_versions(repo, "shadow_broken", "shadow: {target: shadow_same}\n", (1,))
    add_sub_versions(repo, "split_unserved", "traffic: {1: 1, 2: 1}\n", (1, 2))
    front = server_factory(repo=repo, env=LOOPBACK_SOURCES)
    yield Servers(front, fleet)
    front.stop()
    fleet.stop()


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def routed(url: str, model: str, target: str, version: str) -> float:
    return metric(
        url, "modelport_traffic_requests_total", model=model, target=target, version=version
    )


def compared(url: str, model: str, outcome: str) -> float:
    return metric(url, "modelport_shadow_comparisons_total", model=model, outcome=outcome)


def rows(url: str, model: str) -> int:
    found = httpx.get(f"{url}/v2/models/{model}/stats", timeout=10).json()
    return sum(int(s["inference_count"]) for s in found["model_stats"])


def test_a_weighted_split_over_2000_requests(servers: Servers) -> None:
    url = servers.front.url
    answered: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(REQUESTS):
            answer = client.post("/v2/models/split/infer", json=ADD_SUB)
            assert answer.status_code == 200, answer.text
            doc = answer.json()
            assert doc["model_name"] == "split"
            assert doc["outputs"][0]["data"] == [2, 3, 4, 5]
            answered[doc["model_version"]] += 1
    assert set(answered) == {"1", "2"}
    for version, weight in (("1", 90), ("2", 10)):
        share = 100 * answered[version] / REQUESTS
        assert abs(share - weight) <= 3, (version, share)
        assert routed(url, "split", version, version) == answered[version]


def test_a_request_naming_its_version_is_never_split(servers: Servers) -> None:
    url = servers.front.url
    before = routed(url, "split", "1", "1"), routed(url, "split", "2", "2")
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(20):
            answer = client.post("/v2/models/split/versions/1/infer", json=ADD_SUB)
            assert answer.json()["model_version"] == "1"
    assert (routed(url, "split", "1", "1"), routed(url, "split", "2", "2")) == before


def test_a_split_between_a_local_version_and_a_remote(servers: Servers) -> None:
    url = servers.front.url
    fleet_before, local_before = rows(servers.fleet.url, "add_sub"), rows(url, "canary")
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(100):
            answer = client.post("/v2/models/canary/infer", json=ADD_SUB)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_name"] == "canary"
            assert answer.json()["outputs"][0]["data"] == [2, 3, 4, 5]
    assert rows(servers.fleet.url, "add_sub") - fleet_before == 30
    assert rows(url, "canary") - local_before == 70
    assert routed(url, "canary", "fleet", "1") == 30
    assert routed(url, "canary", "1", "1") == 70


def wait_for_count(url: str, model: str, outcome: str, expected: float) -> None:
    deadline = time.monotonic() + WAIT_S
    while compared(url, model, outcome) < expected:
        if time.monotonic() > deadline:
            pytest.fail(f"{model}: {outcome} stayed at {compared(url, model, outcome)}")
        time.sleep(0.05)


def test_shadow_copies_are_compared_and_never_returned(servers: Servers) -> None:
    url = servers.front.url
    answers = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for model in ("shadow_same", "shadow_differs"):
            for _ in range(10):
                answer = client.post(f"/v2/models/{model}/infer", json=MLP)
                assert answer.status_code == 200, answer.text
                assert answer.json()["model_version"] == "2"  # the default answers
                answers[model] = answer.json()["outputs"][0]["data"]
            own = client.post(f"/v2/models/{model}/versions/2/infer", json=MLP)
            assert own.json()["outputs"][0]["data"] == answers[model]
        for _ in range(4):
            answer = client.post("/v2/models/shadow_broken/infer", json=ADD_SUB)
            assert answer.status_code == 200, answer.text
    # Version 1 of shadow_differs has other weights: the copies' answers differ.
    assert answers["shadow_same"] != answers["shadow_differs"]
    wait_for_count(url, "shadow_same", "agree", 10)
    wait_for_count(url, "shadow_differs", "disagree", 5)  # share: 50
    wait_for_count(url, "shadow_broken", "failed", 4)  # its inputs are not mlp's
    assert compared(url, "shadow_same", "agree") == 10  # the request naming 2: no copy
    assert compared(url, "shadow_same", "disagree") == 0
    assert compared(url, "shadow_differs", "agree") == 0
    labels = {"model": "shadow_differs", "version": "2", "target": "1", "outcome": "disagree"}
    assert metric(url, "modelport_shadow_comparisons_total", **labels) == 5


def test_a_split_to_a_version_that_does_not_serve_says_so(servers: Servers) -> None:
    answer = httpx.post(f"{servers.front.url}/v2/models/split_unserved/infer", json=ADD_SUB)
    answers = [
        answer,
        httpx.post(f"{servers.front.url}/v2/models/split_unserved/infer", json=ADD_SUB),
    ]
    refused = [a for a in answers if a.status_code != 200]
    assert len(refused) == 1 and refused[0].status_code == 503
    assert (
        "version 1" in refused[0].json()["error"] and "version_policy" in refused[0].json()["error"]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("traffic: {1: -1}", "0 or more"),
        ("traffic: {1: 0, 2: 0}", "above 0"),
        ("traffic: {0: 1}", "a target is a version number"),
        ("traffic: {a/b: 1}", "a target is a version number"),
        ("traffic: {1: 0.5}", "whole numbers"),
        ("shadow: {target: 2, share: 0}", "'shadow.share'"),
        ("shadow: {share: 5}", "'shadow.target'"),
    ],
)
def test_traffic_errors(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec("m", f"runtime: onnx\n{text}\n", "models/m/model.yaml")
    assert expected in caught.value.message, caught.value.message


def test_traffic_reads_numbers_and_names() -> None:
    spec = parse_spec("m", "runtime: onnx\ntraffic: {1: 9, fleet: 1}\nshadow: {target: 2}\n", "f")
    assert spec.traffic == {"1": 9, "fleet": 1}
    assert spec.shadow is not None and (spec.shadow.target, spec.shadow.share) == ("2", 100.0)
