"""The one place that knows the concrete classes: builds modelport from Settings,
starts it and stops it."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import FrameType

import uvicorn

from modelport import __version__
from modelport.api.grpc.server import STOP_GRACE_S, start_grpc_server
from modelport.api.http.app import create_app
from modelport.api.http.fastpath import http_protocol
from modelport.api.http.tasks import TaskRoutes
from modelport.api.http.v2 import InferHandler
from modelport.core.cache import MemoryLimits
from modelport.core.registry import ModelRegistry
from modelport.core.repository import ModelRepository
from modelport.core.runtime import RuntimeFactory
from modelport.core.service import InferenceService, LoopModelCaller
from modelport.core.watcher import RepositoryWatcher
from modelport.crypto import key_provider
from modelport.observability import metrics_registry, setup_logging
from modelport.pull import PullingWatcher, is_url, pull_in_thread
from modelport.runtimes.container import ContainerRuntime
from modelport.runtimes.fake import FakeRuntime
from modelport.runtimes.onnx import OnnxRuntime
from modelport.runtimes.python import PythonRuntime
from modelport.runtimes.remote import RemoteRuntime
from modelport.settings import Settings, admin_refusal
from modelport.tasks.archives import ZipLimits
from modelport.tasks.blobs import BlobStore
from modelport.tasks.broker import MemoryBroker
from modelport.tasks.service import TaskPolicy, TaskService
from modelport.tasks.store import TaskStore, sqlite_url
from modelport.tasks.worker import TaskWorker, make_slots

RUNTIMES: dict[str, RuntimeFactory] = {
    "onnx": OnnxRuntime,
    "python": PythonRuntime,
    "fake": FakeRuntime,
    "remote": RemoteRuntime,
}

log = logging.getLogger("modelport")
GIL_SWITCH_SECONDS = 0.0005


class _Server(uvicorn.Server):
    """uvicorn raises a caught SIGTERM or SIGINT again once it has stopped, which would
    end the process before :func:`serve` closes the models; here the signal only stops it."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def build_service(settings: Settings) -> tuple[InferenceService, LoopModelCaller]:
    """The core, wired but not started (models load in :func:`start_service`)."""
    caller = LoopModelCaller()
    limits = MemoryLimits(
        settings.max_loaded_models, settings.max_loaded_bytes, settings.load_timeout_seconds
    )
    # Only the onnx runtime loads from bytes, so only it is given the model key.
    onnx = functools.partial(OnnxRuntime, model_key=key_provider(settings.model_key_file))
    runtimes: dict[str, RuntimeFactory] = {**RUNTIMES, "onnx": onnx}
    registry = ModelRegistry(ModelRepository(settings.repository_path), runtimes, caller, limits)
    service = InferenceService(registry, settings.server_name, __version__, admin_refusal(settings))
    return service, caller


def build_tasks(settings: Settings) -> TaskService:
    """The tasks core: records in SQL, files through fsspec, the in-process broker, and a
    worker running containers in ``task_slots`` CPU slots or one slot per ``task_gpus``."""
    data = Path(settings.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    store = TaskStore(settings.task_store or sqlite_url(data / "tasks.db"))
    blobs = BlobStore(settings.task_files or str(data / "files"))
    broker = MemoryBroker()
    repository = ModelRepository(settings.repository_path)
    limits = ZipLimits(
        settings.task_max_zip_members, settings.task_max_unpacked_bytes,
        settings.task_max_zip_ratio,
    )  # fmt: skip
    hours = settings.task_retention_hours
    retention = timedelta(hours=hours) if hours else None
    policy = TaskPolicy(limits, settings.task_max_attempts, retention)
    slots = make_slots(settings.task_slots, settings.task_gpu_ids)
    worker = None
    if slots:
        worker = TaskWorker(
            store, blobs, broker, repository, ContainerRuntime(), slots, data / "work", limits
        )
    return TaskService(store, blobs, broker, repository, policy, worker)


def task_routes(settings: Settings, tasks: TaskService) -> TaskRoutes:
    # Posting a model is an admin call: off unless allowed, and never where admin is refused.
    posting = settings.compat_allow_model_posting and not admin_refusal(settings)
    return TaskRoutes(
        tasks, settings.task_max_upload_bytes, settings.compat_inference_server, posting
    )


async def start_service(service: InferenceService, caller: LoopModelCaller) -> None:
    caller.bind(service, asyncio.get_running_loop())
    await service.registry.load_all()


async def pull_repository(settings: Settings) -> None:
    """Bring the local copy of a repository URL up to date (modelport.pull)."""
    await pull_in_thread(
        settings.repository, settings.repository_path, settings.repository_endpoint_url
    )


async def serve(
    settings: Settings, on_ready: Callable[[InferenceService], None] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM; models load while the server already answers health."""
    setup_logging(settings.log_level, settings.log_format)
    # Instance threads need the GIL back the moment a batch finishes; Python's default
    # 5 ms switch interval would add up to 5 ms to every batch under load.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    service, caller = build_service(settings)
    tasks = build_tasks(settings)
    _, asgi = create_app(
        service, metrics_registry(service), settings.max_request_bytes,
        task_routes(settings, tasks),
    )  # fmt: skip
    handler = InferHandler(service)
    config = uvicorn.Config(
        asgi,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http_protocol(handler, settings.max_request_bytes),
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=10,
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
        )
    serving = asyncio.create_task(server.serve())
    watcher: RepositoryWatcher | None = None
    try:
        if is_url(settings.repository):
            await pull_repository(settings)  # a PullError stops the server here
        await tasks.start()
        await start_service(service, caller)
        if settings.poll_seconds and is_url(settings.repository):
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
        if grpc_server is not None:
            await grpc_server.stop(STOP_GRACE_S)
        if watcher is not None:
            await watcher.close()
        await tasks.close()
        await service.registry.close()
        log.info("modelport stopped")
