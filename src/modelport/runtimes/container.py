"""The container runtime: one task, one Docker container, through the ``docker`` SDK.

The container gets the model's version folder read-only at ``/model``, the task's
files read-only at ``/input`` and an empty, writable ``/output``; no network unless the
model asks for it (``network: bridge``); CPU, memory, ``/dev/shm`` and GPU limits from
``model.yaml``; a non-root user unless the model says otherwise (``user``). It may
write a number 0..1 to ``/output/.progress``. Its stdout and stderr go to a log file
as they come. It ends as ``exited`` (with its exit code), ``timeout``, ``cancelled``
(stopped at the caller's request) or ``error`` (the engine could not run it, with the
reason); the container is removed in all cases.

Every container is labelled with its task id (:data:`TASK_LABEL`), so a restarted
server can follow a container a dead one left behind to its end and use its result
(:meth:`ContainerRuntime.adopt`), or remove it (:meth:`ContainerRuntime.remove_stale`).
Calls block; the task worker makes them from threads.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from modelport.spec import ContainerSpec

TASK_LABEL = "modelport.task"
PROGRESS_FILE = ".progress"
NOBODY = "65534:65534"
LOG_TAIL_BYTES = 2000
Outcome = Literal["exited", "timeout", "cancelled", "error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerJob:
    """One run: the spec, the host folders to mount, the GPU of the worker's slot."""

    task_id: str
    spec: ContainerSpec
    model_dir: Path
    input_dir: Path
    output_dir: Path
    log_path: Path
    gpu: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # Copied files instead of mounts (ABLInfer's images): nothing is mounted; the files
    # of ``input_dir`` are copied into the container's ``copy_to`` folder before it
    # starts, and the ``copy_back`` paths out of it into ``output_dir`` after it exits 0.
    copy_to: str | None = None
    copy_back: tuple[str, ...] = ()
    # The task's W3C trace context, given to the container as TRACEPARENT ("" : none).
    traceparent: str = ""


@dataclass(frozen=True, slots=True)
class ContainerResult:
    outcome: Outcome
    exit_code: int | None = None
    reason: str = ""


class RunControl(Protocol):
    """What the caller offers a run: a cancel flag to poll, and a progress sink."""

    def cancelled(self) -> bool: ...

    def progress(self, value: float) -> None: ...


def run_options(job: ContainerJob, uid: int | None = None) -> dict[str, Any]:
    """The keyword arguments of ``containers.run`` for ``job`` (pure, for tests)."""
    import docker.types

    spec = job.spec
    environment = {
        **spec.env,
        "MODELPORT_TASK_ID": job.task_id,
        "MODELPORT_PARAMETERS": json.dumps(job.parameters),
    }
    if job.traceparent:  # W3C trace context, as OpenTelemetry SDKs read it
        environment["TRACEPARENT"] = job.traceparent
    gpus = _gpu_ids(spec, job.gpu)
    requests = []
    if gpus:
        requests.append(docker.types.DeviceRequest(device_ids=gpus, capabilities=[["gpu"]]))
        environment["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpus)
    else:
        # An image built FROM a CUDA base asks for every GPU by this variable when the
        # engine's default runtime is nvidia's; a CPU task sees none.
        environment["NVIDIA_VISIBLE_DEVICES"] = "void"
    options: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command) if isinstance(spec.command, tuple) else spec.command,
        "environment": environment,
        "volumes": {}
        if job.copy_to is not None
        else {
            str(job.model_dir): {"bind": "/model", "mode": "ro"},
            str(job.input_dir): {"bind": "/input", "mode": "ro"},
            str(job.output_dir): {"bind": "/output", "mode": "rw"},
        },
        "labels": {TASK_LABEL: job.task_id},
        "detach": True,
        "security_opt": ["no-new-privileges"],
        "device_requests": requests,
    }
    if spec.network == "none":
        options["network_mode"] = "none"
    if spec.shm_size is not None:
        options["shm_size"] = spec.shm_size
    if spec.ipc == "host":
        options["ipc_mode"] = "host"
    user = container_user(spec, os.getuid() if uid is None else uid)
    if user is not None:
        options["user"] = user
    if spec.cpus is not None:
        options["nano_cpus"] = int(spec.cpus * 1e9)
    if spec.memory is not None:
        options["mem_limit"] = spec.memory
    return options


def container_user(spec: ContainerSpec, uid: int) -> str | None:
    """'auto': the server's own user when it is not root (its files stay its own),
    else nobody; 'image': the image's choice; else the spec's ``uid:gid``."""
    if spec.user == "image":
        return None
    if spec.user != "auto":
        return spec.user
    return f"{uid}:{os.getgid()}" if uid != 0 else NOBODY


def _gpu_ids(spec: ContainerSpec, slot_gpu: int | None) -> list[str]:
    if isinstance(spec.gpus, tuple):
        return [str(g) for g in spec.gpus]
    if spec.gpus == 0:
        return []
    if slot_gpu is None:
        raise ValueError(
            "the model needs a GPU (use_gpu, or gpus in its model.yaml), and this worker's "
            "slot has none: give the worker GPU slots (task_gpus, e.g. '0,1')"
        )
    if spec.gpus > 1:
        raise ValueError("a worker slot holds one GPU; the model asks for more")
    return [str(slot_gpu)]


def log_tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last ``size`` bytes of a log, from a line start where one is near."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    cut = text.find("\n")
    if len(data) >= size and 0 <= cut < len(text) - 1:
        text = text[cut + 1 :]
    return text.rstrip()


def read_progress(output_dir: Path) -> float | None:
    try:
        text = (output_dir / PROGRESS_FILE).read_text()[:64]
        value = float(text.strip())
    except (OSError, ValueError):
        return None
    return min(max(value, 0.0), 1.0) if value == value else None


class ContainerRuntime:
    """Runs :class:`ContainerJob` s on the Docker engine that ``DOCKER_HOST`` names (or
    the local socket)."""

    def __init__(self, client_factory: Callable[[], Any] | None = None, poll_s: float = 0.2):
        self._client_factory = client_factory
        self.poll_s = poll_s

    def client(self) -> Any:
        if self._client_factory is not None:
            return self._client_factory()
        import docker

        return docker.from_env(timeout=60)

    def run(self, job: ContainerJob, control: RunControl) -> ContainerResult:
        import docker.errors

        try:
            options = run_options(job)
        except ValueError as exc:
            return ContainerResult("error", reason=str(exc))
        try:
            client = self.client()
        except docker.errors.DockerException as exc:
            return ContainerResult("error", reason=f"the Docker engine is unreachable: {exc}")
        container = None
        try:
            self._ensure_image(client, job.spec)
            if job.copy_to is None:
                container = client.containers.run(**options)
            else:
                container = client.containers.create(**options)
                copy_in(container, job.input_dir, job.copy_to)
                container.start()
        except (docker.errors.DockerException, OSError) as exc:
            if container is not None:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True, v=True)
            client.close()
            return ContainerResult("error", reason=f"the container could not start: {exc}")
        return self._finish(client, container, job, control)

    def adopt(self, job: ContainerJob, control: RunControl) -> ContainerResult | None:
        """Follow to its end the container of ``job.task_id`` that a stopped server left
        (running, or exited while it was down) and return its result, as :meth:`run`
        would have; None when the engine has no such container that started (one only
        created is removed), so the task must run again. The log is copied anew."""
        import docker.errors

        try:
            client = self.client()
            found = client.containers.list(
                all=True, filters={"label": f"{TASK_LABEL}={job.task_id}"}
            )
        except docker.errors.DockerException:
            return None
        started = [c for c in found if c.status in ("running", "exited", "dead")]
        if len(found) != 1 or len(started) != 1:
            for container in found:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True, v=True)
            client.close()
            return None
        job.log_path.write_bytes(b"")  # the container's logs are copied from the start
        return self._finish(client, started[0], job, control)

    def _finish(
        self, client: Any, container: Any, job: ContainerJob, control: RunControl
    ) -> ContainerResult:
        """Follow a started container to its end, copy its files back, remove it."""
        import docker.errors

        try:
            result = self._follow(container, job, control)
            if job.copy_back and result.outcome == "exited" and result.exit_code == 0:
                missing = copy_out(container, job.copy_back, job.output_dir)
                if missing:
                    return ContainerResult("error", 0, f"the container wrote no {missing}")
            return result
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True, v=True)
            client.close()

    def _ensure_image(self, client: Any, spec: ContainerSpec) -> None:
        import docker.errors

        if spec.pull == "always":
            client.images.pull(spec.image)
            return
        try:
            client.images.get(spec.image)
        except docker.errors.ImageNotFound:
            if spec.pull == "never":
                raise docker.errors.ImageNotFound(
                    f"image {spec.image} is not on this host and the model says pull: never"
                ) from None
            client.images.pull(spec.image)

    def _follow(self, container: Any, job: ContainerJob, control: RunControl) -> ContainerResult:
        logs = threading.Thread(
            target=_copy_logs,
            args=(container, job.log_path),
            daemon=True,
            name=f"logs-{job.task_id}",
        )
        logs.start()
        deadline = time.monotonic() + job.spec.timeout
        outcome: Outcome = "exited"
        last_progress: float | None = None
        while True:
            container.reload()
            if container.status in ("exited", "dead"):
                break
            if control.cancelled():
                outcome = "cancelled"
            elif time.monotonic() > deadline:
                outcome = "timeout"
            if outcome != "exited":
                with contextlib.suppress(Exception):
                    container.kill()
                break
            progress = read_progress(job.output_dir)
            if progress is not None and progress != last_progress:
                control.progress(progress)
                last_progress = progress
            time.sleep(self.poll_s)
        status = container.wait(timeout=60)
        logs.join(timeout=10)
        progress = read_progress(job.output_dir)
        if progress is not None and progress != last_progress:
            control.progress(progress)
        if outcome != "exited":
            return ContainerResult(outcome)
        container.reload()
        code = int(status.get("StatusCode", -1))
        if container.attrs.get("State", {}).get("OOMKilled"):
            return ContainerResult(
                "exited", code, f"killed for using more than its memory limit {job.spec.memory}"
            )
        return ContainerResult("exited", code)

    def left_behind(self, task_ids: Collection[str]) -> set[str]:
        """Those of ``task_ids`` whose container a stopped server left on the engine,
        started (running or ended): the ones :meth:`adopt` can follow."""
        import docker.errors

        try:
            client = self.client()
            found = client.containers.list(all=True, filters={"label": TASK_LABEL})
        except docker.errors.DockerException:
            return set()
        client.close()
        return {
            c.labels.get(TASK_LABEL, "")
            for c in found
            if c.status in ("running", "exited", "dead") and c.labels.get(TASK_LABEL) in task_ids
        }

    def remove_stale(self, task_ids: Collection[str] | None = None) -> int:
        """Remove the containers of ``task_ids`` (of every task when None) that a server
        which died left behind; how many were removed."""
        import docker.errors

        try:
            client = self.client()
            found = client.containers.list(all=True, filters={"label": TASK_LABEL})
        except docker.errors.DockerException:
            return 0
        removed = 0
        for container in found:
            if task_ids is None or container.labels.get(TASK_LABEL) in task_ids:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
                    removed += 1
        client.close()
        return removed


def copy_in(container: Any, folder: Path, target: str) -> None:
    """Copy the files of ``folder`` into the container's ``target`` folder (which the
    image must have), readable by any user the container runs as."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            info = tarfile.TarInfo(path.name)
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, int(time.time())
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    if not container.put_archive(target, buffer.getvalue()):
        raise OSError(f"could not copy the inputs into {target}")


def copy_out(container: Any, paths: Collection[str], folder: Path) -> str:
    """Copy each file of ``paths`` out of the (stopped) container into ``folder``; the
    first path that is not there, or "" when every one was."""
    import docker.errors

    for path in paths:
        try:
            stream, _stat = container.get_archive(path)
            with tempfile.TemporaryFile() as spooled:
                for chunk in stream:
                    spooled.write(chunk)
                spooled.seek(0)
                with tarfile.open(fileobj=spooled) as tar:
                    member = next((m for m in tar if m.isfile()), None)
                    source = tar.extractfile(member) if member is not None else None
                    if source is None:
                        return path
                    with (folder / path.rsplit("/", 1)[-1]).open("wb") as out:
                        shutil.copyfileobj(source, out)
        except docker.errors.NotFound:
            return path
    return ""


def _copy_logs(container: Any, path: Path) -> None:
    with path.open("ab") as out, contextlib.suppress(Exception):
        for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            out.write(chunk)
            out.flush()
