"""The one place that knows the concrete classes: builds modelport from Settings,
starts it and stops it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from types import FrameType

import uvicorn
from prometheus_client import CollectorRegistry

from modelport import __version__
from modelport.access import AccessPolicy, Guard
from modelport.api.grpc.server import STOP_GRACE_S, start_grpc_server
from modelport.api.http.app import create_app
from modelport.api.http.auth import AuthMiddleware
from modelport.api.http.fastpath import http_protocol
from modelport.api.http.tasks import TaskRoutes
from modelport.api.http.v2 import InferHandler
from modelport.cluster.node import ClusterNode
from modelport.cluster_app import Cluster, connect, server_node
from modelport.core.cache import MemoryLimits
from modelport.core.registry import ModelRegistry
from modelport.core.repository import ModelRepository
from modelport.core.runtime import RuntimeFactory
from modelport.core.service import InferenceService, LoopModelCaller
from modelport.core.watcher import RepositoryWatcher
from modelport.crypto import key_provider
from modelport.devices import Nvml, discover_gpus
from modelport.keys import KeyStore
from modelport.observability import metrics_registry, setup_logging
from modelport.processes import Peers, ProcessInfo, peer_app, reuseport_socket
from modelport.pull import PullingWatcher, is_url, pull_in_thread
from modelport.runtimes.container import ContainerRuntime
from modelport.runtimes.fake import FakeRuntime
from modelport.runtimes.onnx import OnnxRuntime
from modelport.runtimes.python import PythonRuntime
from modelport.runtimes.remote import RemoteRuntime
from modelport.runtimes.tensorflow import TensorflowRuntime
from modelport.runtimes.torch import TorchRuntime
from modelport.settings import Settings, admin_refusal
from modelport.sources import image_allow_list, url_allow_list
from modelport.tasks.archives import ZipLimits
from modelport.tasks.blobs import BlobStore
from modelport.tasks.broker import MemoryBroker
from modelport.tasks.service import TaskPolicy, TaskService
from modelport.tasks.store import TaskStore, sqlite_url
from modelport.tasks.worker import TaskWorker, make_slots
from modelport.tls import load_tls

RUNTIMES: dict[str, RuntimeFactory] = {
    "onnx": OnnxRuntime,
    "python": PythonRuntime,
    "fake": FakeRuntime,
    "remote": RemoteRuntime,
    "tensorflow": TensorflowRuntime,
    "torch": TorchRuntime,
}

log = logging.getLogger("modelport")
GIL_SWITCH_SECONDS = 0.0005


class _Server(uvicorn.Server):
    """uvicorn raises a caught SIGTERM or SIGINT again once it has stopped, which would
    end the process before :func:`serve` closes the models; here the signal only stops it."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


class _PeerServer(uvicorn.Server):
    """The peers' socket: the main server handles SIGTERM and SIGINT, this one stops with it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_service(
    settings: Settings,
    nvml: Nvml | None = None,
    repository: ModelRepository | None = None,
    extra_runtimes: Mapping[str, RuntimeFactory] | None = None,
) -> tuple[InferenceService, LoopModelCaller]:
    """The core, wired but not started (models load in :func:`start_service`); GPU
    models are placed on the ``gpus`` setting's ids, else on those ``nvml`` finds."""
    caller = LoopModelCaller()
    gpus = discover_gpus(settings.gpus, nvml or Nvml.open())
    log.info("GPUs for models: %s (%s)", list(gpus.ids) or "none", gpus.source)
    limits = MemoryLimits(
        settings.max_loaded_models, settings.max_loaded_bytes, settings.load_timeout_seconds
    )
    # The runtimes that load from bytes are given the model key for encrypted files.
    model_key = key_provider(settings.model_key_file)
    onnx = functools.partial(OnnxRuntime, model_key=model_key)
    torch = functools.partial(
        TorchRuntime, model_key=model_key, allow_pickled=settings.allow_pickled_models
    )
    # A remote model's URL must be allowed (model_sources) before anything is sent to it.
    sources = url_allow_list(settings.model_sources, (settings.repository,))
    remote = functools.partial(RemoteRuntime, sources=sources)
    runtimes: dict[str, RuntimeFactory] = {
        **RUNTIMES, "onnx": onnx, "torch": torch, "remote": remote,
        **(extra_runtimes or {}),
    }  # fmt: skip
    repository = repository or ModelRepository(settings.repository_path)
    registry = ModelRegistry(repository, runtimes, caller, limits, gpus)
    service = InferenceService(
        registry, settings.server_name, __version__, core_admin_refusal(settings),
        settings.max_tensor_elements,
    )  # fmt: skip
    return service, caller


def core_admin_refusal(settings: Settings) -> str:
    """The admin refusal the core applies. Unless keys are off (auth = off), refusing
    admin calls on a network address while no key is asked for is the guard's (it knows
    whether keys are enforced now), and with keys an admin key allows them."""
    return admin_refusal(settings, keys_enforced=settings.auth != "off")


def build_guard(settings: Settings) -> Guard | None:
    """API keys' guard, None when keys are off; KeyFileError for a broken keys file."""
    if settings.auth == "off":
        return None
    policy = AccessPolicy(
        settings.auth, settings.public_health, settings.public_metrics,
        settings.max_concurrent_per_key, admin_refusal(settings, keys_enforced=False),
    )  # fmt: skip
    return Guard(KeyStore(settings.keys_path), policy)


def build_tasks(
    settings: Settings, cluster: Cluster | None = None, process: ProcessInfo | None = None
) -> TaskService:
    """The tasks core: records in SQL, files through fsspec, the in-process broker (or
    the cluster's Redis one), and a worker running containers in ``task_slots`` CPU slots
    or one slot per ``task_gpus``; with several server processes, only in the first."""
    data = Path(settings.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    store = TaskStore(settings.task_store or sqlite_url(data / "tasks.db"))
    blobs = BlobStore(settings.task_files or str(data / "files"))
    repository = ModelRepository(settings.repository_path)
    memory = MemoryBroker()
    broker = cluster.broker(repository) if cluster is not None else memory
    primary = process is None or process.primary
    limits = ZipLimits(
        settings.task_max_zip_members, settings.task_max_unpacked_bytes,
        settings.task_max_zip_ratio,
    )  # fmt: skip
    hours = settings.task_retention_hours
    retention = timedelta(hours=hours) if hours else None
    policy = TaskPolicy(limits, settings.task_max_attempts, retention)
    slots = make_slots(settings.task_slots, settings.task_gpu_ids)
    worker = None
    if slots and primary:
        worker = TaskWorker(
            store, blobs, broker, repository, ContainerRuntime(), slots, data / "work", limits,
            settings.task_visibility_seconds, cluster.worker_id if cluster else "worker",
            settings.task_max_attempts, cluster.may_take_over if cluster else None,
        )  # fmt: skip
    remote = cluster.directory.task_versions if cluster is not None else None
    # Several processes, one in-process broker each: the first adopts the others' tasks.
    adopt = process is not None and process.count > 1 and primary and cluster is None
    return TaskService(
        store, blobs, broker, repository, policy, worker, remote, primary,
        memory.has if adopt else None,
    )  # fmt: skip


def task_routes(
    settings: Settings, tasks: TaskService, cluster: Cluster | None = None
) -> TaskRoutes:
    # Posting a model is an admin call: off unless allowed, and never where admin is refused.
    posting = settings.compat_allow_model_posting and not core_admin_refusal(settings)
    return TaskRoutes(
        tasks, settings.task_max_upload_bytes, settings.compat_inference_server, posting,
        image_allow_list(settings.model_images), cluster.list_workers if cluster else None,
    )  # fmt: skip


async def start_service(service: InferenceService, caller: LoopModelCaller) -> None:
    caller.bind(service, asyncio.get_running_loop())
    await service.registry.load_all()


async def pull_repository(settings: Settings) -> None:
    """Bring the local copy of a repository URL up to date (modelport.pull)."""
    await pull_in_thread(
        settings.repository, settings.repository_path, settings.repository_endpoint_url
    )


def start_peer_server(
    process: ProcessInfo, service: InferenceService, metrics: CollectorRegistry
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """The process's private Unix socket, for its peers (processes.py)."""
    path = process.socket_path(process.index)
    path.unlink(missing_ok=True)
    config = uvicorn.Config(
        peer_app(service, metrics), uds=str(path), lifespan="off", access_log=False,
        log_level="warning", loop="none",
    )  # fmt: skip
    server = _PeerServer(config)
    return server, asyncio.create_task(server.serve())


async def serve(
    settings: Settings,
    on_ready: Callable[[InferenceService], None] | None = None,
    process: ProcessInfo | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; models load while the server already answers health."""
    setup_logging(settings.log_level, settings.log_format)
    # Instance threads need the GIL back the moment a batch finishes; Python's default
    # 5 ms switch interval would add up to 5 ms to every batch under load.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    # Checked before anything starts: a TlsError or KeyFileError stops serve here.
    tls = load_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    guard = build_guard(settings)
    nvml = Nvml.open()  # GPUs for placement and metrics; unavailable without a driver
    cluster = connect(settings) if settings.broker else None
    local = ModelRepository(settings.repository_path)
    service, caller = build_service(
        settings, nvml, cluster.repository(local) if cluster else local,
        cluster.runtimes(settings) if cluster else None,
    )  # fmt: skip
    tasks = build_tasks(settings, cluster, process)
    metrics = metrics_registry(service, nvml)
    peers = Peers(process) if process is not None else None
    if peers is not None:
        service.after_admin = peers.broadcast
        service.statistics_elsewhere = peers.statistics
    _, asgi = create_app(
        service, metrics, settings.max_request_bytes, task_routes(settings, tasks, cluster),
        functools.partial(peers.metrics, metrics) if peers is not None else None,
    )  # fmt: skip
    handler = InferHandler(service, settings.max_request_bytes)
    admit = None
    if guard is not None:
        asgi = AuthMiddleware(asgi, guard, settings.compat_inference_server)
        admit = asgi.admit
    config = uvicorn.Config(
        asgi,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http_protocol(
            handler,
            settings.max_request_bytes,
            admit,
            settings.request_header_timeout_s,
            settings.request_body_timeout_s,
        ),
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=10,
        **(tls.uvicorn_options() if tls else {}),
    )
    server = _Server(config)
    grpc_server = None
    if settings.grpc_port:  # 0 turns gRPC off
        grpc_server = await start_grpc_server(
            service,
            settings.host,
            settings.grpc_port,
            settings.grpc_max_message_bytes,
            settings.grpc_max_concurrent_rpcs,
            settings.grpc_listeners,
            guard,
            tls,
            shared_port=process is not None,
            transport=settings.grpc_transport,
            max_idle_s=settings.grpc_max_idle_s,
        )
    # Several processes: each binds the port with SO_REUSEPORT, and answers its peers on
    # a Unix socket of its own (processes.py).
    sockets = [reuseport_socket(settings.host, settings.port)] if process else None
    serving = asyncio.create_task(server.serve(sockets=sockets))
    peer_server = start_peer_server(process, service, metrics) if process else None
    watcher: RepositoryWatcher | None = None
    node: ClusterNode | None = None
    try:
        # (With several processes the supervisor pulled before starting them, and only
        # the first pulls again on --poll; the others watch the folder it updates.)
        pulls = is_url(settings.repository) and (process is None or process.primary)
        if pulls and process is None:
            await pull_repository(settings)  # a PullError stops the server here
        await tasks.start()
        await start_service(service, caller)
        if cluster is not None:
            node = server_node(cluster, service, tasks)
            await node.start()
        if settings.poll_seconds and pulls:
            watcher = PullingWatcher(
                service.registry, settings.poll_seconds, lambda: pull_repository(settings)
            )
            await watcher.start()
        elif settings.poll_seconds:
            watcher = RepositoryWatcher(service.registry, settings.poll_seconds)
            await watcher.start()
        # Everything alive now (modules, models) lives as long as the server: keep it out
        # of the collector's scans, or each full collection stalls requests for ~50 ms.
        gc.collect()
        gc.freeze()
        if on_ready is not None and not serving.done():
            on_ready(service)
        await serving
    finally:
        if not serving.done():
            server.should_exit = True
            await serving
        if peer_server is not None:
            peer_server[0].should_exit = True
            await peer_server[1]
        if grpc_server is not None:
            await grpc_server.stop(STOP_GRACE_S)
        if watcher is not None:
            await watcher.close()
        if node is not None:
            await node.stop()
        await tasks.close()
        await service.registry.close()
        if cluster is not None:
            await cluster.close()
        log.info("modelport stopped")
