"""Tasks as Kubernetes Jobs (``task_executor = "kubernetes"``).

No Kubernetes API server can run on these machines, so the executor talks, through the
official ``kubernetes`` client and a kubeconfig, to a fake of the API and of the kubelet
(tests/support/fake_kubernetes.py): it answers the calls the executor makes in the
API's shapes, really runs the pod's modelport files containers (against moto's S3
server, the blob store) and runs each task image as a Python function. Everything
else is modelport's own, built from Settings as ``modelport serve`` builds it. The Jobs
the executor posts are validated against the Kubernetes schemas (kubernetes-validate).
"""

from __future__ import annotations

import asyncio
import io
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from modelport.runtimes.container import ContainerJob, ContainerResult
from modelport.server.build import build_executor, build_task_service
from modelport.settings import Settings, SettingsError
from modelport.spec import ContainerSpec
from modelport.tasks.archives import ZipLimits
from modelport.tasks.blobs import BlobStore, TaskBlob
from modelport.tasks.job_manifest import (
    FILES_GRACE_S,
    KubernetesOptions,
    job_manifest,
    job_name,
)
from modelport.tasks.kubernetes_jobs import KubernetesJobs
from modelport.tasks.records import TaskRecord, TaskStatus
from modelport.tasks.service import TaskService, Upload
from support.builders import write_model
from support.fake_kubernetes import FakeKubernetes, TaskContainer
from support.s3_fixtures import BUCKET, S3, s3

__all__ = ["s3"]

# The Kubernetes version the Jobs are checked against (deploy/k8s is checked against it too).
KUBERNETES_VERSION = "1.32.0"
NAMESPACE = "tasks"
FILES_SECRET = "task-files"
MODEL_YAML = """\
runtime: container
container:
  image: {image}
  command: [upper, --all]
  gpus: {gpus}
  cpus: 0.5
  memory: 64m
  timeout: {timeout}
"""


def validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


# -- the Job --------------------------------------------------------------------------------


def _job(tmp_path: Path, **spec: Any) -> ContainerJob:
    return ContainerJob(
        task_id=uuid.uuid4().hex,
        spec=ContainerSpec(image="lab/seg:2", **spec),
        model_dir=tmp_path / "models" / "seg" / "1",
        input_dir=tmp_path / "input",
        output_dir=tmp_path / "output",
        log_path=tmp_path / "logs.txt",
        parameters={"threshold": 0.5},
    )


OPTIONS = KubernetesOptions(
    namespace=NAMESPACE,
    files_image="modelport:1",
    files_secret=FILES_SECRET,
    files_url=f"s3://{BUCKET}/tasks",
)


def test_the_job_runs_the_task_locked_down_within_its_limits(tmp_path: Path) -> None:
    job = _job(
        tmp_path,
        gpus=1,
        cpus=2,
        memory="8g",
        shm_size="2g",
        timeout=600,
        command=("python", "/app/run.py"),
    )
    manifest = job_manifest(job, options=OPTIONS, limits=ZipLimits())
    validate(manifest)
    spec = manifest["spec"]
    pod = spec["template"]["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 600 + FILES_GRACE_S
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65534
    assert [c["name"] for c in pod["initContainers"]] == ["fetch", "task"]
    assert [c["name"] for c in pod["containers"]] == ["upload"]
    task = pod["initContainers"][1]
    assert task["image"] == "lab/seg:2"
    # Docker's command is the image's CMD: Kubernetes' args, the ENTRYPOINT kept.
    assert task["args"] == ["python", "/app/run.py"] and "command" not in task
    assert task["resources"]["limits"] == {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}
    assert task["securityContext"]["allowPrivilegeEscalation"] is False
    assert task["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e["value"] for e in task["env"]}
    assert env["MODELPORT_PARAMETERS"] == '{"threshold": 0.5}'
    mounts = {m["mountPath"]: m for m in task["volumeMounts"]}
    assert mounts["/input"]["readOnly"] and mounts["/model"]["readOnly"]
    assert "/dev/shm" in mounts
    fetch = pod["initContainers"][0]
    assert fetch["envFrom"] == [{"secretRef": {"name": FILES_SECRET}}]
    assert fetch["securityContext"]["readOnlyRootFilesystem"] is True


def test_a_cpu_task_sees_no_gpu_and_the_repository_volume_is_mounted(tmp_path: Path) -> None:
    options = KubernetesOptions(
        namespace="ml",
        files_image="modelport:1",
        models_claim="models",
        models_root=tmp_path / "models",
        service_account="tasks",
    )
    manifest = job_manifest(_job(tmp_path, user="1000:2000"), options=options, limits=ZipLimits())
    validate(manifest)
    pod = manifest["spec"]["template"]["spec"]
    task = pod["initContainers"][1]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in task["env"]
    assert "nvidia.com/gpu" not in task["resources"]["limits"]
    model = next(m for m in task["volumeMounts"] if m["mountPath"] == "/model")
    assert model["subPath"] == "seg/1"
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in (pod["volumes"])
    assert pod["serviceAccountName"] == "tasks"
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        1000,
        2000,
    )


@pytest.mark.parametrize(
    ("spec", "why"),
    [({"user": "0:0"}, "as root"), ({"ipc": "host"}, "ipc: host")],
)
def test_what_kubernetes_cannot_give_a_task_is_refused(
    tmp_path: Path, spec: dict[str, Any], why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        job_manifest(_job(tmp_path, **spec), options=OPTIONS, limits=ZipLimits())


def test_job_names_are_dns_labels() -> None:
    assert job_name("ABC123") == "modelport-task-abc123"
    assert len(job_name("f" * 80)) == 63


# -- settings and the executor's choice -----------------------------------------------------


def test_the_kubernetes_executor_needs_its_image_and_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="kubernetes_files_image"):
        Settings.load(environ={"MODELPORT_TASK_EXECUTOR": "kubernetes"}, config=None)
    base = {"MODELPORT_TASK_EXECUTOR": "kubernetes", "MODELPORT_KUBERNETES_FILES_IMAGE": "mp:1"}
    with pytest.raises(SettingsError, match="bucket"):
        Settings.load(environ={**base, "MODELPORT_TASK_FILES": str(tmp_path)})
    with pytest.raises(SettingsError, match="Kubernetes object name"):
        Settings.load(environ={**base, "MODELPORT_KUBERNETES_NAMESPACE": "Bad_Name"})
    assert Settings().task_executor == "docker"


# -- running tasks through the fake cluster -------------------------------------------------


def upper(run: TaskContainer) -> int:
    """The image ``lab/upper:1``: upper-cases /input into /output, as its args say."""
    assert run.args == ["upper", "--all"]
    run.write_log("hello from the pod\n")
    for path in run.mounts["/input"].rglob("*"):
        if path.is_file():
            out = run.mounts["/output"] / path.relative_to(run.mounts["/input"])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(path.read_text().upper())
    run.write_log("model says " + (run.mounts["/model"] / "info.txt").read_text() + "\n")
    return 0


def fails(run: TaskContainer) -> int:
    run.write_log("something broke\n")
    return 3


def hangs(run: TaskContainer) -> int:
    run.write_log("waiting forever\n")
    run.stopped.wait(60)
    return 137


@pytest.fixture
def cluster() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        fake.images.update({"lab/upper:1": upper, "lab/fails:1": fails, "lab/hangs:1": hangs})
        yield fake


@pytest.fixture
def tasks_env(
    tmp_path: Path, s3: S3, cluster: FakeKubernetes, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings of a worker that runs its tasks as Jobs, with a kubeconfig naming the
    fake cluster, and the bucket's credentials in its environment and the pods' Secret."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": cluster.url}}],
                "users": [{"name": "fake", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    cluster.secrets[FILES_SECRET] = s3.env()
    repo = tmp_path / "models"
    for name, image, gpus, timeout in (
        ("upper", "lab/upper:1", 0, 60),
        ("fails", "lab/fails:1", 0, 60),
        ("hangs", "lab/hangs:1", 1, 60),
        ("missing", "lab/missing:1", 0, 60),
        ("late", "lab/hangs:1", 0, 0.5),
    ):
        text = MODEL_YAML.format(image=image, gpus=gpus, timeout=timeout)
        write_model(repo, name, text, {"1/info.txt": f"{name} v1"})
    return Settings(
        repository=str(repo),
        data_dir=str(tmp_path / "data"),
        task_slots=2,
        task_files=f"s3://{BUCKET}/tasks-{uuid.uuid4().hex[:8]}",
        task_executor="kubernetes",
        kubernetes_namespace=NAMESPACE,
        kubernetes_files_image="modelport:test",
        kubernetes_files_secret=FILES_SECRET,
    )


@pytest.fixture
async def service(tasks_env: Settings) -> AsyncIterator[TaskService]:
    built = build_task_service(tasks_env)
    assert built.worker is not None and isinstance(built.worker.executor, KubernetesJobs)
    await built.start()
    yield built
    await built.close()


async def submit(service: TaskService, model: str, tmp_path: Path) -> str:
    scan = tmp_path / "scan.txt"
    scan.write_text("a scan")
    record = await service.submit(model, [Upload("scan.txt", scan)])
    return record.id


async def finished(
    service: TaskService, task_id: str, *, states: set[TaskStatus] | None = None
) -> TaskRecord:
    states = states or {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED}
    for _ in range(600):
        record = await service.get(task_id)
        if record.status in states:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} is still {record.status}")


def zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


async def test_a_task_runs_as_a_job_its_files_through_the_bucket(
    service: TaskService, cluster: FakeKubernetes, tmp_path: Path
) -> None:
    task_id = await submit(service, "upper", tmp_path)
    record = await finished(service, task_id)
    assert record.status is TaskStatus.SUCCEEDED, record.error
    output = await service.open_output(task_id)
    data = b"".join([chunk async for chunk in output.chunks])
    assert zip_members(data) == {"scan.txt": b"A SCAN"}
    logs = b"".join([chunk async for chunk in service.logs(task_id, follow=False)])
    assert logs == b"hello from the pod\nmodel says upper v1\n"
    posted = cluster.created[-1]
    validate(posted)
    assert posted["metadata"]["namespace"] == NAMESPACE
    # The Job is gone once the task ended, and so are its files in transit.
    assert cluster.jobs == {} and cluster.pods == {}
    assert ("DELETE", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{job_name(task_id)}") in (
        cluster.calls
    )
    for blob in (TaskBlob.JOB_MODEL, TaskBlob.JOB_OUTPUT):
        assert not service.blobs.exists(blob.key(task_id))


async def test_a_failing_task_fails_with_its_exit_code_and_log(
    service: TaskService, tmp_path: Path
) -> None:
    record = await finished(service, await submit(service, "fails", tmp_path))
    assert record.status is TaskStatus.FAILED
    assert record.exit_code == 3
    assert "exited with code 3" in record.error and "something broke" in record.error


async def test_an_image_that_cannot_be_pulled_fails_the_task_saying_so(
    service: TaskService, tmp_path: Path
) -> None:
    record = await finished(service, await submit(service, "missing", tmp_path))
    assert record.status is TaskStatus.FAILED
    assert "ErrImagePull" in record.error and "lab/missing:1" in record.error


async def test_cancelling_a_task_deletes_its_job(
    service: TaskService, cluster: FakeKubernetes, tmp_path: Path
) -> None:
    task_id = await submit(service, "hangs", tmp_path)
    await finished(service, task_id, states={TaskStatus.RUNNING})
    await asyncio.to_thread(
        cluster.wait_until,
        lambda: (
            b"waiting forever"
            in b"".join(bytes(p.logs.get("task", b"")) for p in cluster.pods.values())
        ),
    )
    posted = cluster.created[-1]["spec"]["template"]["spec"]["initContainers"][1]
    assert posted["resources"]["limits"]["nvidia.com/gpu"] == "1"
    await service.cancel(task_id)
    await asyncio.to_thread(cluster.wait_until, lambda: not cluster.jobs)
    assert (await service.get(task_id)).status is TaskStatus.CANCELLED


async def test_a_task_past_its_deadline_times_out(
    service: TaskService, cluster: FakeKubernetes, tmp_path: Path
) -> None:
    # The Job's deadline is the task's timeout plus FILES_GRACE_S; the fake cluster is
    # told a shorter one here so that the test does not wait minutes for it.
    original = cluster.create_job

    def short_deadline(namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body["spec"]["activeDeadlineSeconds"] = 3
        return original(namespace, body)

    cluster.create_job = short_deadline  # type: ignore[method-assign]
    record = await finished(service, await submit(service, "late", tmp_path))
    assert record.status is TaskStatus.FAILED
    assert record.error.startswith("timed out after 0.5 s")


def test_a_dead_workers_job_is_adopted_or_removed_by_the_next(
    tasks_env: Settings, cluster: FakeKubernetes, tmp_path: Path
) -> None:
    blobs = BlobStore(tasks_env.task_files)
    executor = build_executor(tasks_env, blobs)
    assert isinstance(executor, KubernetesJobs)
    model_dir = Path(tasks_env.repository) / "upper" / "1"
    jobs = []
    for _ in range(2):
        job = ContainerJob(
            task_id=uuid.uuid4().hex,
            spec=ContainerSpec(image="lab/upper:1", command=("upper", "--all")),
            model_dir=model_dir,
            input_dir=tmp_path / "in",
            output_dir=tmp_path / uuid.uuid4().hex,
            log_path=tmp_path / uuid.uuid4().hex,
        )
        job.output_dir.mkdir()
        with zipfile.ZipFile(tmp_path / "input.zip", "w") as archive:
            archive.writestr("scan.txt", "left behind")
        blobs.put_file(TaskBlob.INPUT.key(job.task_id), tmp_path / "input.zip")
        # What a worker that died after creating its Job left: the Job, still running.
        executor._send_model(job)
        batch, _ = executor._apis()
        batch.create_namespaced_job(
            NAMESPACE, job_manifest(job, options=executor.options, limits=executor.limits)
        )
        jobs.append(job)
    adopted, removed = jobs
    assert executor.left_behind([adopted.task_id, "another"]) == {adopted.task_id}

    class Control:
        def cancelled(self) -> bool:
            return False

        def progress(self, value: float) -> None:
            raise AssertionError("no progress is seen from a Job")

    result = executor.adopt(adopted, Control())
    assert result == ContainerResult("exited", 0)
    assert (adopted.output_dir / "scan.txt").read_text() == "LEFT BEHIND"
    assert b"hello from the pod" in adopted.log_path.read_bytes()
    assert executor.remove_stale([removed.task_id]) == 1
    assert cluster.jobs == {}
    assert executor.adopt(removed, Control()) is None
