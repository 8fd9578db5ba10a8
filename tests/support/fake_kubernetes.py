"""A fake Kubernetes API server, with a fake kubelet, for the Kubernetes Jobs executor.

No Kubernetes API server can run on these machines, so this stands in for one: a small
HTTP server that answers the calls the executor makes, in the API's own shapes (the
batch/v1 Job, v1 Pod and v1 Status objects of the API reference, as a v1.3x server
returns them, with the labels the Job controller puts on its pods), for the official
``kubernetes`` client pointed at it:

    POST   /apis/batch/v1/namespaces/{ns}/jobs                (409 AlreadyExists)
    GET    /apis/batch/v1/namespaces/{ns}/jobs[?labelSelector] /jobs/{name} (404 NotFound)
    DELETE /apis/batch/v1/namespaces/{ns}/jobs/{name}         (its pods go too)
    GET    /api/v1/namespaces/{ns}/pods?labelSelector=...
    GET    /api/v1/namespaces/{ns}/pods/{name}/log?container=&follow=&tailLines=

The kubelet runs each Job's pod as Kubernetes would, one container after another: the
modelport containers (``python -m modelport.tasks.pod_files``) really run, as processes
with the container's environment (``envFrom`` Secrets from :attr:`FakeKubernetes.secrets`)
and its volumes as folders; a task image is a Python function registered in
:attr:`FakeKubernetes.images` (an unknown image waits in ``ErrImagePull``). It honours
``activeDeadlineSeconds`` (DeadlineExceeded) and stops a pod whose Job is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SRC = Path(__file__).resolve().parents[2] / "src"
JOB_PATH = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$")
POD_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)(/log)?)?$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TaskContainer:
    """What a task image (a function) gets: its mounts as folders, its environment, its
    log, and a flag set when Kubernetes kills the pod."""

    mounts: dict[str, Path]
    env: dict[str, str]
    args: list[str]
    stopped: threading.Event
    write_log: Callable[[str], None]


# A task image: returns its exit code, or (exit code, reason) such as (137, "OOMKilled").
TaskImage = Callable[[TaskContainer], "int | tuple[int, str]"]


@dataclass
class _Pod:
    body: dict[str, Any]
    logs: dict[str, bytearray] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)  # containers whose log is complete
    stopped: threading.Event = field(default_factory=threading.Event)


class FakeKubernetes:
    """The fake API server and kubelet; ``url`` is the API server's address."""

    def __init__(self) -> None:
        self.images: dict[str, TaskImage] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], _Pod] = {}
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request
        self.created: list[dict[str, Any]] = []  # every Job as it was posted
        self.changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> FakeKubernetes:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for pod in list(self.pods.values()):
            pod.stopped.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=30)

    def api_client(self) -> Any:
        """An ``ApiClient`` of the official client, pointed at this server."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def wait_until(self, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not check():
                left = deadline - time.monotonic()
                assert left > 0, "the fake cluster never got there"
                self.changed.wait(min(left, 0.2))

    # -- the API -----------------------------------------------------------------------------

    def create_job(self, namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = body["metadata"]["name"]
        with self.changed:
            if (namespace, name) in self.jobs:
                return 409, _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
            self.created.append(json.loads(json.dumps(body)))
            uid = str(uuid.uuid4())
            meta = body["metadata"]
            meta.update(
                namespace=namespace,
                uid=uid,
                resourceVersion=str(len(self.calls)),
                generation=1,
                creationTimestamp=_now(),
            )
            # What the API server's defaulting adds: the controller's labels and selector.
            controller = {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
            template = body["spec"]["template"]
            template.setdefault("metadata", {}).setdefault("labels", {}).update(controller)
            body["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            body["status"] = {"active": 1, "startTime": _now()}
            body.update(apiVersion="batch/v1", kind="Job")
            self.jobs[(namespace, name)] = body
            pod = self._make_pod(namespace, body)
            self.changed.notify_all()
        thread = threading.Thread(target=self._kubelet, args=(namespace, body, pod), daemon=True)
        self._threads.append(thread)
        thread.start()
        return 201, body

    def delete_job(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.changed:
            job = self.jobs.pop((namespace, name), None)
            if job is None:
                return 404, _status(404, "NotFound", f'jobs.batch "{name}" not found')
            uid = job["metadata"]["uid"]
            for key, pod in list(self.pods.items()):
                if pod.body["metadata"]["labels"].get("controller-uid") == uid:
                    pod.stopped.set()
                    del self.pods[key]
            self.changed.notify_all()
        status = _status(200, "", "")
        status.update(
            status="Success", details={"name": name, "group": "batch", "kind": "jobs", "uid": uid}
        )
        return 200, status

    def _make_pod(self, namespace: str, job: dict[str, Any]) -> _Pod:
        template = job["spec"]["template"]
        name = f"{job['metadata']['name']}-{secrets.token_hex(3)[:5]}"
        spec = json.loads(json.dumps(template["spec"]))
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "labels": dict(template["metadata"]["labels"]),
                "creationTimestamp": _now(),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job["metadata"]["name"],
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
            "status": {
                "phase": "Pending",
                "initContainerStatuses": [
                    _container_status(c, {"waiting": {"reason": "PodInitializing"}})
                    for c in spec.get("initContainers", [])
                ],
                "containerStatuses": [
                    _container_status(c, {"waiting": {"reason": "PodInitializing"}})
                    for c in spec["containers"]
                ],
            },
        }
        pod = _Pod(body)
        self.pods[(namespace, name)] = pod
        return pod

    # -- the kubelet -------------------------------------------------------------------------

    def _kubelet(self, namespace: str, job: dict[str, Any], pod: _Pod) -> None:
        seconds = job["spec"].get("activeDeadlineSeconds", 3600)
        deadline = time.monotonic() + seconds
        # Past the deadline Kubernetes kills the pod's running container.
        killer = threading.Timer(seconds, pod.stopped.set)
        killer.start()
        try:
            self._run_pod(namespace, job, pod, deadline)
        finally:
            killer.cancel()

    def _run_pod(self, namespace: str, job: dict[str, Any], pod: _Pod, deadline: float) -> None:
        spec = pod.body["spec"]
        with tempfile.TemporaryDirectory() as scratch:
            volumes = {v["name"]: Path(scratch) / v["name"] for v in spec["volumes"]}
            for path in volumes.values():
                path.mkdir()
            steps = [(c, True) for c in spec.get("initContainers", [])]
            steps += [(c, False) for c in spec["containers"]]
            for container, init in steps:
                code, reason = self._run_container(pod, container, volumes, deadline)
                self._set_state(
                    pod,
                    container["name"],
                    init,
                    {
                        "terminated": {
                            "exitCode": code,
                            "reason": reason,
                            "startedAt": _now(),
                            "finishedAt": _now(),
                            "containerID": f"containerd://{secrets.token_hex(8)}",
                        }
                    },
                )
                if reason in ("DeadlineExceeded", "ErrImagePull"):
                    self._end(namespace, job, pod, "Failed", reason)
                    return
                if code != 0:
                    self._end(namespace, job, pod, "Failed", "BackoffLimitExceeded")
                    return
            self._end(namespace, job, pod, "Succeeded", "")

    def _run_container(
        self, pod: _Pod, container: dict[str, Any], volumes: dict[str, Path], deadline: float
    ) -> tuple[int, str]:
        name = container["name"]
        init = any(c["name"] == name for c in pod.body["spec"].get("initContainers", []))
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            env = {**self.secrets[source["secretRef"]["name"]], **env}
        pod.logs[name] = bytearray()
        image = container["image"]
        is_files = container.get("command", [])[:3] == ["python", "-m", "modelport.tasks.pod_files"]
        if not is_files and image not in self.images:
            self._set_state(
                pod,
                name,
                init,
                {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": f'pull access denied for "{image}"',
                    }
                },
            )
            while not pod.stopped.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            return 1, "ErrImagePull"
        self._set_state(pod, name, init, {"running": {"startedAt": _now()}}, phase="Running")

        def write_log(text: str) -> None:
            with self.changed:
                pod.logs[name] += text.encode()
                self.changed.notify_all()

        try:
            if is_files:
                return self._run_files(container, mounts, env, write_log, pod, deadline)
            run = TaskContainer(
                mounts, env, list(container.get("args", [])), pod.stopped, write_log
            )
            result = self.images[image](run)
            if time.monotonic() > deadline:
                return 137, "DeadlineExceeded"
            code, reason = result if isinstance(result, tuple) else (result, "")
            return code, reason or ("Completed" if code == 0 else "Error")
        finally:
            with self.changed:
                pod.done.add(name)
                self.changed.notify_all()

    def _run_files(
        self,
        container: dict[str, Any],
        mounts: dict[str, Path],
        env: dict[str, str],
        write_log: Callable[[str], None],
        pod: _Pod,
        deadline: float,
    ) -> tuple[int, str]:
        """A modelport files container: its real command, its mounts as the folders."""
        args = list(container["command"][3:])
        for mount in ("/input", "/model", "/output"):
            if mount in mounts:
                args += [f"--{mount[1:]}", str(mounts[mount])]
        process_env = {
            **env,
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(SRC),
            "TMPDIR": str(mounts["/tmp"]),
        }
        output = mounts["/tmp"] / f"{container['name']}.log"
        with (
            output.open("wb") as out,
            subprocess.Popen(
                [sys.executable, "-m", "modelport.tasks.pod_files", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=process_env,
            ) as proc,
        ):
            while proc.poll() is None:
                if pod.stopped.is_set() or time.monotonic() > deadline:
                    proc.kill()
                time.sleep(0.02)
            code = proc.wait()
        write_log(output.read_text())
        if time.monotonic() > deadline:
            return 137, "DeadlineExceeded"
        return code, "Completed" if code == 0 else "Error"

    def _set_state(
        self, pod: _Pod, name: str, init: bool, state: dict[str, Any], phase: str = ""
    ) -> None:
        with self.changed:
            key = "initContainerStatuses" if init else "containerStatuses"
            for status in pod.body["status"][key]:
                if status["name"] == name:
                    status["state"] = state
                    status["ready"] = "running" in state
                    status["started"] = "running" in state
            if phase:
                pod.body["status"]["phase"] = phase
            self.changed.notify_all()

    def _end(self, namespace: str, job: dict[str, Any], pod: _Pod, phase: str, reason: str) -> None:
        with self.changed:
            pod.body["status"]["phase"] = phase
            pod.done.update(c["name"] for c in pod.body["spec"]["containers"])
            pod.done.update(c["name"] for c in pod.body["spec"].get("initContainers", []))
            if self.jobs.get((namespace, job["metadata"]["name"])) is job:
                ok = phase == "Succeeded"
                conditions = [
                    {
                        "type": "SuccessCriteriaMet" if ok else "FailureTarget",
                        "status": "True",
                        "reason": reason or "CompletionsReached",
                    },
                    {
                        "type": "Complete" if ok else "Failed",
                        "status": "True",
                        "reason": reason or "CompletionsReached",
                        "lastProbeTime": _now(),
                        "lastTransitionTime": _now(),
                    },
                ]
                job["status"] = {
                    "startTime": job["status"]["startTime"],
                    "completionTime" if ok else "failedTime": _now(),
                    "succeeded" if ok else "failed": 1,
                    "conditions": conditions,
                }
            self.changed.notify_all()

    # -- reads -------------------------------------------------------------------------------

    def pod_log(self, pod: _Pod, container: str, follow: bool) -> Iterator[bytes]:
        sent = 0
        while True:
            with self.changed:
                while follow and len(pod.logs.get(container, b"")) == sent:
                    if container in pod.done or pod.stopped.is_set():
                        return
                    self.changed.wait(0.2)
                data = bytes(pod.logs.get(container, b"")[sent:])
            sent += len(data)
            if data:
                yield data
            if not follow:
                return


def _container_status(container: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": state,
    }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _selected(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, sep, value = term.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _handler(cluster: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _query(self) -> tuple[str, dict[str, str]]:
            parts = urlsplit(self.path)
            cluster.calls.append((self.command, parts.path))
            return parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}

        def do_POST(self) -> None:
            path, _ = self._query()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            match = JOB_PATH.match(path)
            if match is None or match.group(2):
                self._send(404, _status(404, "NotFound", "the server could not find it"))
                return
            self._send(*cluster.create_job(match.group(1), body))

        def do_DELETE(self) -> None:
            path, _ = self._query()
            with contextlib.suppress(KeyError, ValueError):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
            match = JOB_PATH.match(path)
            if match is None or not match.group(2):
                self._send(405, _status(405, "MethodNotAllowed", "not here"))
                return
            self._send(*cluster.delete_job(match.group(1), match.group(2)))

        def do_GET(self) -> None:
            path, query = self._query()
            selector = query.get("labelSelector", "")
            if match := JOB_PATH.match(path):
                ns, name = match.groups()
                with cluster.changed:
                    if name:
                        job = cluster.jobs.get((ns, name))
                        if job is None:
                            self._send(
                                404, _status(404, "NotFound", f'jobs.batch "{name}" not found')
                            )
                        else:
                            self._send(200, job)
                        return
                    items = [
                        j
                        for (n, _), j in cluster.jobs.items()
                        if n == ns and _selected(j["metadata"]["labels"], selector)
                    ]
                    self._send(
                        200,
                        {
                            "apiVersion": "batch/v1",
                            "kind": "JobList",
                            "metadata": {"resourceVersion": "1"},
                            "items": items,
                        },
                    )
                return
            match = POD_PATH.match(path)
            if match is None:
                self._send(404, _status(404, "NotFound", "the server could not find it"))
                return
            ns, name, is_log = match.groups()
            if not name:
                with cluster.changed:
                    items = [
                        p.body
                        for (n, _), p in cluster.pods.items()
                        if n == ns and _selected(p.body["metadata"]["labels"], selector)
                    ]
                    self._send(
                        200,
                        {
                            "apiVersion": "v1",
                            "kind": "PodList",
                            "metadata": {"resourceVersion": "1"},
                            "items": items,
                        },
                    )
                return
            pod = cluster.pods.get((ns, name))
            if pod is None or not is_log:
                self._send(404, _status(404, "NotFound", f'pods "{name}" not found'))
                return
            self._log(pod, query)

        def _log(self, pod: _Pod, query: dict[str, str]) -> None:
            container = query.get("container", "")
            if query.get("follow") != "true":
                text = b"".join(cluster.pod_log(pod, container, follow=False))
                if "tailLines" in query:
                    lines = text.splitlines(keepends=True)[-int(query["tailLines"]) :]
                    text = b"".join(lines)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with contextlib.suppress(OSError):
                for chunk in cluster.pod_log(pod, container, follow=True):
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

    return Handler
