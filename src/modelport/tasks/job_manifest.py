"""The Kubernetes Job of one task (pure: a dict the API takes as it is; tests validate it
against the Kubernetes schemas).

The pod runs three containers in turn: ``fetch`` (an init container, the modelport
image) unpacks the task's files from the blob store; ``task`` (an init container too,
so that it ends before the next starts) is the model's own image and command with its
limits and GPUs; ``upload`` (the main container, the modelport image) packs ``/output``
back into the blob store. A task that exits non-zero fails the pod there, and nothing is
uploaded. No container gets a service account token; every one runs as a non-root user
with no privilege escalation and no capabilities. See :mod:`modelport.tasks.pod_files`.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.runtimes.container import NOBODY, ContainerJob
from modelport.tasks.archives import ZipLimits

TASK_LABEL = "modelport.task"  # the Job's and its pod's, as the Docker executor's
COMPONENT_LABEL = "app.kubernetes.io/component"
NETWORK_LABEL = "modelport.network"  # 'none': deploy/k8s's NetworkPolicy cuts the task off
TASK_CONTAINER = "task"
FETCH_CONTAINER = "fetch"
UPLOAD_CONTAINER = "upload"
GPU_RESOURCE = "nvidia.com/gpu"
# Moving the files in and out is not the task's own time: the Job's deadline leaves this
# much beyond the model's timeout (the worker still holds the task to its timeout).
FILES_GRACE_S = 300
_DOCKER_UNITS = {"b": "", "k": "Ki", "m": "Mi", "g": "Gi"}


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesOptions:
    """Where and how task Jobs run (the ``kubernetes_*`` settings)."""

    namespace: str
    files_image: str
    files_secret: str = ""
    files_url: str = ""
    service_account: str = ""
    image_pull_policy: str = "IfNotPresent"
    models_claim: str = ""
    models_root: Path | None = None
    ttl_seconds: int = 3600


def job_name(task_id: str) -> str:
    """The Job's name: a DNS label, so that its pods' names fit too."""
    return f"modelport-task-{task_id.lower()}"[:63].rstrip("-")


def quantity(docker_size: str) -> str:
    """A Docker size ('8g', '512m', '1024') as a Kubernetes quantity ('8Gi', ...)."""
    match = re.fullmatch(r"([0-9]+)([bkmg]?)", docker_size.lower())
    if match is None:
        raise ValueError(f"not a size: {docker_size!r}")
    return match.group(1) + _DOCKER_UNITS.get(match.group(2), "")


def gpu_count(job: ContainerJob) -> int:
    """GPUs the task asks for: the scheduler picks them, so a list of ids counts."""
    gpus = job.spec.gpus
    return len(gpus) if isinstance(gpus, tuple) else gpus


def run_as(job: ContainerJob) -> tuple[int, int] | None:
    """The task's user and group: nobody for 'auto', the spec's 'uid:gid', or None for
    'image' (the image's own, which must not be root: runAsNonRoot refuses it)."""
    user = job.spec.user
    if user == "image":
        return None
    uid, _, gid = (NOBODY if user == "auto" else user).partition(":")
    if int(uid) == 0:
        raise ValueError("the kubernetes executor runs no task as root (the model's user)")
    return int(uid), int(gid or uid)


def job_manifest(job: ContainerJob, *, options: KubernetesOptions, limits: ZipLimits) -> dict:
    """The ``batch/v1`` Job that runs ``job``; ValueError for what Kubernetes cannot give
    it (``ipc: host``, root, files copied into the image)."""
    spec = job.spec
    if spec.ipc == "host":
        raise ValueError("ipc: host is not available to Kubernetes task Jobs")
    if job.copy_to is not None:
        raise ValueError("images that take their files copied in run on the Docker executor")
    user = run_as(job)
    labels = {
        "app.kubernetes.io/name": "modelport",
        COMPONENT_LABEL: "task",
        TASK_LABEL: job.task_id,
        NETWORK_LABEL: spec.network,
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(user),
        "initContainers": [_fetch(job, options, limits), _task(job, options)],
        "containers": [_upload(job, options)],
        "volumes": _volumes(job, options),
    }
    if options.service_account:
        pod["serviceAccountName"] = options.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(job.task_id),
            "namespace": options.namespace,
            "labels": labels,
        },
        "spec": {
            "backoffLimit": 0,  # a failed run is the task's failure: the worker decides
            "activeDeadlineSeconds": math.ceil(spec.timeout) + FILES_GRACE_S,
            "ttlSecondsAfterFinished": options.ttl_seconds,  # a dead worker's leftovers
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _pod_security(user: tuple[int, int] | None) -> dict[str, Any]:
    context: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if user is not None:
        context.update(runAsUser=user[0], runAsGroup=user[1], fsGroup=user[1])
    return context


def _locked_down(*, read_only_root: bool) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def _files_env(job: ContainerJob, options: KubernetesOptions) -> dict[str, Any]:
    env = [
        {"name": "MODELPORT_TASK_FILES", "value": options.files_url},
        {"name": "MODELPORT_TASK_ID", "value": job.task_id},
    ]
    found: dict[str, Any] = {"env": env}
    if options.files_secret:
        found["envFrom"] = [{"secretRef": {"name": options.files_secret}}]
    return found


def _files_container(
    name: str, job: ContainerJob, options: KubernetesOptions, args: list[str]
) -> dict[str, Any]:
    return {
        "name": name,
        "image": options.files_image,
        "imagePullPolicy": options.image_pull_policy,
        "command": ["python", "-m", "modelport.tasks.pod_files", *args],
        **_files_env(job, options),
        "securityContext": _locked_down(read_only_root=True),
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
    }


def _fetch(job: ContainerJob, options: KubernetesOptions, limits: ZipLimits) -> dict[str, Any]:
    args = [
        "fetch",
        f"--max-members={limits.max_members}",
        f"--max-unpacked-bytes={limits.max_unpacked_bytes}",
        f"--max-ratio={limits.max_ratio:g}",
    ]
    container = _files_container(FETCH_CONTAINER, job, options, args)
    mounts = [{"name": "input", "mountPath": "/input"}, {"name": "scratch", "mountPath": "/tmp"}]
    if not options.models_claim:
        mounts.append({"name": "model", "mountPath": "/model"})
    container["volumeMounts"] = mounts
    return container


def _upload(job: ContainerJob, options: KubernetesOptions) -> dict[str, Any]:
    container = _files_container(UPLOAD_CONTAINER, job, options, ["upload"])
    container["volumeMounts"] = [
        {"name": "output", "mountPath": "/output", "readOnly": True},
        {"name": "scratch", "mountPath": "/tmp"},
    ]
    return container


def _task(job: ContainerJob, options: KubernetesOptions) -> dict[str, Any]:
    spec = job.spec
    env = {
        **spec.env,
        "MODELPORT_TASK_ID": job.task_id,
        "MODELPORT_PARAMETERS": json.dumps(job.parameters),
    }
    gpus = gpu_count(job)
    if not gpus:
        # As on Docker: an image built FROM a CUDA base would otherwise ask for every GPU.
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    limits: dict[str, str] = {}
    if spec.cpus is not None:
        limits["cpu"] = f"{spec.cpus:g}"
    if spec.memory is not None:
        limits["memory"] = quantity(spec.memory)
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    model_mount: dict[str, Any] = {"name": "model", "mountPath": "/model", "readOnly": True}
    if options.models_claim and options.models_root is not None:
        model_mount["subPath"] = job.model_dir.relative_to(options.models_root).as_posix()
    mounts = [
        {"name": "input", "mountPath": "/input", "readOnly": True},
        {"name": "output", "mountPath": "/output"},
        model_mount,
    ]
    if spec.shm_size is not None:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    container: dict[str, Any] = {
        "name": TASK_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": {"missing": "IfNotPresent", "never": "Never", "always": "Always"}[
            spec.pull
        ],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        # Requests equal to the limits: the scheduler places the task where they fit.
        "resources": {"requests": dict(limits), "limits": limits},
        "securityContext": _locked_down(read_only_root=False),
        "volumeMounts": mounts,
    }
    if spec.command is not None:
        # Docker's command replaces the image's CMD and keeps its ENTRYPOINT: in
        # Kubernetes that is ``args`` (``command`` would replace the ENTRYPOINT).
        command = spec.command
        container["args"] = list(command) if isinstance(command, tuple) else shlex.split(command)
    return container


def _volumes(job: ContainerJob, options: KubernetesOptions) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "input", "emptyDir": {}},
        {"name": "output", "emptyDir": {}},
        {"name": "scratch", "emptyDir": {}},
    ]
    if options.models_claim:
        claim = {"claimName": options.models_claim, "readOnly": True}
        volumes.append({"name": "model", "persistentVolumeClaim": claim})
    else:
        volumes.append({"name": "model", "emptyDir": {}})
    if job.spec.shm_size is not None:
        shm = {"medium": "Memory", "sizeLimit": quantity(job.spec.shm_size)}
        volumes.append({"name": "shm", "emptyDir": shm})
    return volumes
