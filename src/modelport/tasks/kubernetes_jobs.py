"""The Kubernetes executor (``task_executor = "kubernetes"``): each task a Job.

The worker hands it the same :class:`~modelport.runtimes.container.ContainerJob` the
Docker executor gets. It puts the model's version folder in the blob store (unless the
repository is on a volume the pods mount, ``kubernetes_models_claim``), creates the Job
of :func:`~modelport.tasks.job_manifest.job_manifest`, streams the task container's log
into the job's log file, and when the Job completes unpacks the pod's ``/output`` from
the blob store into the job's output folder, so the worker concludes the task as it does
after Docker. A cancel (or the worker stopping) deletes the Job; so does every end.

Jobs carry the task's id as a label, so a worker that replaces a dead one can follow a
Job it left (:meth:`KubernetesJobs.adopt`) or delete it (:meth:`remove_stale`); a Job
nobody comes back for is removed by Kubernetes ``ttl_seconds`` after it ends. The
worker needs a Role allowing jobs (create, get, list, delete), pods (get, list) and
pods/log (get) in the namespace (deploy/k8s/base/rbac.yaml). Calls block; the task worker
makes them from threads. Progress (``/output/.progress``) is not seen from here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from urllib3.exceptions import HTTPError

from modelport.errors import ModelportError
from modelport.runtimes.container import ContainerJob, ContainerResult, RunControl
from modelport.tasks.archives import ZipLimits, extract_zip, zip_folder
from modelport.tasks.blobs import BlobStore, TaskBlob
from modelport.tasks.job_manifest import (
    FETCH_CONTAINER,
    TASK_CONTAINER,
    TASK_LABEL,
    UPLOAD_CONTAINER,
    KubernetesOptions,
    job_manifest,
    job_name,
)

log = logging.getLogger("modelport.tasks")

# A pod's container that waits for one of these will not start without someone's help.
STUCK = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}
)
LOG_TAIL_BYTES = 2000
LOG_TAIL_LINES = 40
# Beyond the Job's own deadline, how long the worker waits for Kubernetes to say it ended.
DEADLINE_SLACK_S = 60.0


def default_api_client() -> Any:
    """A client of the cluster the worker runs in (its service account), else of the
    current context of ``~/.kube/config``."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        # KUBECONFIG as it is now (the client reads it once, when first imported).
        path = os.environ.get("KUBECONFIG") or None
        config.load_kube_config(config_file=path, client_configuration=configuration)
    return client.ApiClient(configuration)


class KubernetesJobs:
    """Runs :class:`ContainerJob` s as Kubernetes Jobs in ``options.namespace``, their
    files through ``blobs`` (which the pods reach at ``options.files_url``)."""

    def __init__(
        self,
        *,
        options: KubernetesOptions,
        blobs: BlobStore,
        limits: ZipLimits,
        api_client: Callable[[], Any] = default_api_client,
        poll_s: float = 1.0,
    ) -> None:
        self.options, self.blobs, self.limits = options, blobs, limits
        self.poll_s = poll_s
        self._make_client = api_client
        self._client: Any = None
        self._lock = threading.Lock()

    def _apis(self) -> tuple[Any, Any]:
        from kubernetes import client

        with self._lock:
            if self._client is None:
                self._client = self._make_client()
        return client.BatchV1Api(self._client), client.CoreV1Api(self._client)

    # -- the TaskExecutor protocol -----------------------------------------------------------

    def run(self, job: ContainerJob, control: RunControl) -> ContainerResult:
        from kubernetes.client.exceptions import ApiException

        try:
            manifest = job_manifest(job, options=self.options, limits=self.limits)
        except ValueError as exc:
            return ContainerResult("error", reason=str(exc))
        try:
            batch, _ = self._apis()
            self._send_model(job)
            created = self._create(batch, manifest)
        except (ApiException, ModelportError, OSError, HTTPError) as exc:
            self._clean(job.task_id)
            return ContainerResult("error", reason=f"the Job could not be created: {_why(exc)}")
        return self._follow(created, job, control)

    def adopt(self, job: ContainerJob, control: RunControl) -> ContainerResult | None:
        """Follow to its end the Job of ``job.task_id`` that a stopped worker left, and
        return its result as :meth:`run` would have; None when there is no such Job."""
        from kubernetes.client.exceptions import ApiException

        try:
            batch, _ = self._apis()
            found = batch.read_namespaced_job(job_name(job.task_id), self.options.namespace)
        except (ApiException, HTTPError):
            return None
        job.log_path.write_bytes(b"")  # the pod's log is streamed again from its start
        return self._follow(found, job, control)

    def left_behind(self, task_ids: Collection[str]) -> set[str]:
        """Those of ``task_ids`` that have a Job in the namespace."""
        return {t for t in self._task_jobs() if t in task_ids}

    def remove_stale(self, task_ids: Collection[str] | None = None) -> int:
        """Delete the Jobs (and pods) of ``task_ids`` (every task's when None); how many."""
        removed = 0
        for task_id in self._task_jobs():
            if task_ids is None or task_id in task_ids:
                removed += self._delete(task_id)
                self._clean(task_id)
        return removed

    # -- one Job -----------------------------------------------------------------------------

    def _send_model(self, job: ContainerJob) -> None:
        """The model's version folder, packed for the pod's fetch container (unless the
        pods mount the repository)."""
        if self.options.models_claim or not job.model_dir.is_dir():
            return
        with tempfile.TemporaryDirectory() as scratch:
            packed = Path(scratch) / TaskBlob.JOB_MODEL.value
            zip_folder(job.model_dir, packed)
            self.blobs.put_file(TaskBlob.JOB_MODEL.key(job.task_id), packed)

    def _create(self, batch: Any, manifest: dict) -> Any:
        """Create the Job; one of the same name left by an earlier attempt is deleted
        first (its pods go with it)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return batch.create_namespaced_job(self.options.namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._delete(manifest["metadata"]["labels"][TASK_LABEL])
        return batch.create_namespaced_job(self.options.namespace, manifest)

    def _follow(self, created: Any, job: ContainerJob, control: RunControl) -> ContainerResult:
        """Wait for the Job's end (or a cancel), streaming the task's log; then its
        result, its output unpacked; the Job and its files removed in all cases."""
        try:
            return self._watch(created, job, control)
        finally:
            self._delete(job.task_id)
            self._clean(job.task_id)

    def _watch(self, created: Any, job: ContainerJob, control: RunControl) -> ContainerResult:
        from kubernetes.client.exceptions import ApiException

        batch, core = self._apis()
        name, uid = created.metadata.name, created.metadata.uid
        deadline = time.monotonic() + created.spec.active_deadline_seconds + DEADLINE_SLACK_S
        logs: threading.Thread | None = None
        while True:
            if control.cancelled():
                return ContainerResult("cancelled")
            if time.monotonic() > deadline:
                return ContainerResult("timeout")
            try:
                current = batch.read_namespaced_job(name, self.options.namespace)
                pod = self._pod(core, uid)
            except (ApiException, HTTPError) as exc:
                if getattr(exc, "status", None) == 404:
                    return ContainerResult("error", reason="the task's Job was deleted")
                log.warning("task %s: reading its Job failed: %s", job.task_id, _why(exc))
                time.sleep(self.poll_s)
                continue
            task_state = _state(pod, TASK_CONTAINER, init=True)
            if logs is None and pod is not None and _started(task_state):
                logs = threading.Thread(
                    target=self._copy_logs,
                    args=(core, pod.metadata.name, job.log_path),
                    daemon=True,
                    name=f"logs-{job.task_id}",
                )
                logs.start()
            ended = _ended(current)
            stuck = _stuck(pod)
            if ended is None and not stuck:
                time.sleep(self.poll_s)
                continue
            if logs is not None:
                logs.join(timeout=10)
            if stuck:
                return ContainerResult("error", reason=stuck)
            return self._result(core, ended or "", pod, job)

    def _result(self, core: Any, ended: str, pod: Any, job: ContainerJob) -> ContainerResult:
        if ended == "DeadlineExceeded":
            return ContainerResult("timeout")
        task = _state(pod, TASK_CONTAINER, init=True)
        terminated = getattr(task, "terminated", None)
        if terminated is None:  # the task never ran: its files could not be fetched
            tail = self._tail(core, pod, FETCH_CONTAINER)
            return ContainerResult("error", reason=f"fetching the task's files failed: {tail}")
        code = int(terminated.exit_code)
        if code != 0:
            if terminated.reason == "OOMKilled":
                why = f"killed for using more than its memory limit {job.spec.memory}"
                return ContainerResult("exited", code, why)
            return ContainerResult("exited", code)
        if ended != "Complete":
            tail = self._tail(core, pod, UPLOAD_CONTAINER)
            return ContainerResult("error", 0, f"uploading /output failed: {tail}")
        with tempfile.TemporaryDirectory() as scratch:
            packed = Path(scratch) / TaskBlob.JOB_OUTPUT.value
            self.blobs.get_file(TaskBlob.JOB_OUTPUT.key(job.task_id), packed)
            extract_zip(packed, job.output_dir, self.limits)
        return ContainerResult("exited", 0)

    def _pod(self, core: Any, uid: str) -> Any:
        """The Job's pod (backoffLimit 0: at most one), or None before it exists."""
        pods = core.list_namespaced_pod(
            self.options.namespace, label_selector=f"controller-uid={uid}"
        ).items
        return pods[0] if pods else None

    def _copy_logs(self, core: Any, pod: str, path: Path) -> None:
        with contextlib.suppress(Exception), path.open("ab") as out:
            stream = core.read_namespaced_pod_log(
                pod,
                self.options.namespace,
                container=TASK_CONTAINER,
                follow=True,
                _preload_content=False,
            )
            for chunk in stream.stream(64 * 1024):
                out.write(chunk)
                out.flush()
            stream.release_conn()

    def _tail(self, core: Any, pod: Any, container: str) -> str:
        if pod is None:
            return "(no pod)"
        try:
            text = core.read_namespaced_pod_log(
                pod.metadata.name,
                self.options.namespace,
                container=container,
                tail_lines=LOG_TAIL_LINES,
            )
        except Exception as exc:
            return f"(its log could not be read: {_why(exc)})"
        return str(text).strip()[-LOG_TAIL_BYTES:] or "its log is empty"

    def _task_jobs(self) -> set[str]:
        """The task ids of the namespace's task Jobs."""
        from kubernetes.client.exceptions import ApiException

        try:
            batch, _ = self._apis()
            found = batch.list_namespaced_job(self.options.namespace, label_selector=TASK_LABEL)
        except (ApiException, OSError, HTTPError) as exc:
            log.warning("listing the task Jobs failed: %s", _why(exc))
            return set()
        return {item.metadata.labels[TASK_LABEL] for item in found.items}

    def _delete(self, task_id: str) -> int:
        """Delete a task's Job and, in the background, its pods; 1 if there was one."""
        from kubernetes.client.exceptions import ApiException

        try:
            batch, _ = self._apis()
            batch.delete_namespaced_job(
                job_name(task_id), self.options.namespace, propagation_policy="Background"
            )
        except (ApiException, HTTPError) as exc:
            if getattr(exc, "status", None) != 404:
                log.warning("task %s: deleting its Job failed: %s", task_id, _why(exc))
            return 0
        return 1

    def _clean(self, task_id: str) -> None:
        """The Job's files in transit, no longer needed."""
        for blob in (TaskBlob.JOB_MODEL, TaskBlob.JOB_OUTPUT):
            with contextlib.suppress(OSError):
                self.blobs.delete(blob.key(task_id))


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    status = getattr(exc, "status", None)
    if status is not None:
        return f"{status} {reason}"
    return str(exc)


def _state(pod: Any, container: str, *, init: bool) -> Any:
    """The ``state`` of one of the pod's containers, or None."""
    if pod is None or pod.status is None:
        return None
    statuses = pod.status.init_container_statuses if init else pod.status.container_statuses
    for status in statuses or ():
        if status.name == container:
            return status.state
    return None


def _started(state: Any) -> bool:
    return state is not None and (state.running is not None or state.terminated is not None)


def _ended(job: Any) -> str | None:
    """'Complete', or the reason the Job failed ('DeadlineExceeded', ...), or None."""
    for condition in (job.status and job.status.conditions) or ():
        if condition.status != "True":
            continue
        if condition.type == "Complete":
            return "Complete"
        if condition.type == "Failed":
            return str(condition.reason or "Failed")
    return None


def _stuck(pod: Any) -> str:
    """Why the pod cannot start a container (a missing image, ...), or ''."""
    if pod is None or pod.status is None:
        return ""
    for status in [
        *(pod.status.init_container_statuses or ()),
        *(pod.status.container_statuses or ()),
    ]:
        waiting = status.state.waiting if status.state is not None else None
        if waiting is not None and waiting.reason in STUCK:
            message = f": {waiting.message}" if waiting.message else ""
            return f"the {status.name} container cannot start ({waiting.reason}{message})"
    return ""
