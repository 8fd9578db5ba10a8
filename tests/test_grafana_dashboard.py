"""deploy/grafana/modelport.json: every query names a metric that a running server's
/metrics has (GPUs from the fake NVML of tests/support/nvml_stub, as in
test_gpu_metrics.py: the test machines have no GPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from support.nvml_fixtures import TWO_GPUS, fake_nvml_env

DASHBOARD = Path(__file__).parents[1] / "deploy" / "grafana" / "modelport.json"
METRIC = re.compile(r"\bmodelport_[a-z0-9_]+\b")
ADD_SUB = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
    ]
}


def _queries(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    found += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return found


def test_every_dashboard_query_names_a_served_metric(server_factory: Any, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "errors", "latency", "queue", "batch", "gpu", "task"):
        assert topic in titles, topic
    server = server_factory(env=fake_nvml_env(TWO_GPUS))
    assert httpx.post(f"{server.url}/v2/models/add_sub/infer", json=ADD_SUB).status_code == 200
    assert httpx.post(f"{server.url}/v2/models/add_sub/infer", json={}).status_code == 400
    text = httpx.get(f"{server.url}/metrics").text
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    queries = _queries(dashboard)
    named = {name for query in queries for name in METRIC.findall(query)}
    assert len(queries) >= 15 and len(named) >= 15, named
    assert named <= served, sorted(named - served)
