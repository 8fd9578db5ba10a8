"""Builders: modelport's parts made from Settings, wired but not started.

``serve.py`` (``modelport serve``) and ``worker.py`` (``modelport worker``) build what
they run from here, so a part is put together one way wherever it runs.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from modelport import __version__
from modelport.api.http.tasks import TaskRoutes
from modelport.cluster.gateway import ClusterRepository
from modelport.cluster.node import ClusterNode
from modelport.core.cache import MemoryLimits
from modelport.core.repository import ModelRepository
from modelport.core.runtime import RuntimeFactory
from modelport.core.service import InferenceService, Peers
from modelport.core.tracing import Tracer
from modelport.observability.gpus import Nvml, discover_gpus
from modelport.runtimes.container import ContainerRuntime
from modelport.runtimes.ensemble import EnsembleRuntime
from modelport.runtimes.fake import FakeRuntime
from modelport.runtimes.onnx import OnnxRuntime
from modelport.runtimes.python import PythonRuntime
from modelport.runtimes.remote import RemoteRuntime
from modelport.runtimes.remote_replicas import ReplicaSets
from modelport.runtimes.tensorflow import TensorflowRuntime
from modelport.runtimes.torch import TorchRuntime
from modelport.security.access import AccessPolicy, Guard, Listener
from modelport.security.keys import KeyStore
from modelport.server.cluster import Cluster, task_models
from modelport.server.repository import ablinfer_folder, build_repository
from modelport.settings import Settings, admin_refusal, tasks_refusal
from modelport.spec import ContainerSpec
from modelport.supply.allow_lists import image_allow_list, url_allow_list
from modelport.supply.encryption import key_provider
from modelport.supply.pull import pull_in_thread
from modelport.tasks.ablinfer_files import SpecFolder
from modelport.tasks.ablinfer_runs import ContainerOptions
from modelport.tasks.ablinfer_sessions import AblinferSessions
from modelport.tasks.archives import ZipLimits
from modelport.tasks.blobs import BlobStore
from modelport.tasks.broker import Broker, MemoryBroker
from modelport.tasks.container_models import PostedContainer
from modelport.tasks.job_manifest import KubernetesOptions
from modelport.tasks.kubernetes_jobs import KubernetesJobs
from modelport.tasks.service import TaskPolicy, TaskService
from modelport.tasks.spool import Spool
from modelport.tasks.store import TaskStore, sqlite_url
from modelport.tasks.worker import TaskExecutor, TaskWorker, make_slots

RUNTIMES: dict[str, RuntimeFactory] = {
    "ensemble": EnsembleRuntime,
    "onnx": OnnxRuntime,
    "python": PythonRuntime,
    "fake": FakeRuntime,
    "remote": RemoteRuntime,
    "tensorflow": TensorflowRuntime,
    "torch": TorchRuntime,
}

log = logging.getLogger("modelport")
# Instance threads need the GIL back the moment a batch finishes; Python's default 5 ms
# switch interval would add up to 5 ms to every batch under load.
GIL_SWITCH_SECONDS = 0.0005


def build_service(
    settings: Settings,
    *,
    nvml: Nvml | None = None,
    repository: ModelRepository | None = None,
    extra_runtimes: Mapping[str, RuntimeFactory] | None = None,
    peers: Peers | None = None,
    tracer: Tracer | None = None,
) -> InferenceService:
    """The core, whole but not opened (models load in ``await service.open()``); GPU
    models are placed on the ``gpus`` setting's ids, else on those ``nvml`` finds."""
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
    remote = functools.partial(RemoteRuntime, sources=sources, replica_sets=ReplicaSets())
    # A SavedModel's TF Serving warm-up records run as it loads, unless turned off.
    tensorflow = functools.partial(TensorflowRuntime, warmup_records=settings.savedmodel_warmup)
    runtimes: dict[str, RuntimeFactory] = {
        **RUNTIMES,
        "onnx": onnx,
        "torch": torch,
        "tensorflow": tensorflow,
    }
    runtimes["remote"] = remote
    runtimes.update(extra_runtimes or {})
    return InferenceService(
        repository or build_repository(settings),
        runtimes,
        name=settings.server_name,
        version=__version__,
        limits=limits,
        gpus=gpus,
        admin_refusal=core_admin_refusal(settings),
        max_tensor_elements=settings.max_tensor_elements,
        peers=peers,
        tracer=tracer,
    )


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
        mode=settings.auth,
        public_health=settings.public_health,
        public_metrics=settings.public_metrics,
        max_concurrent_per_key=settings.max_concurrent_per_key,
        admin_refusal_without_keys=admin_refusal(settings, keys_enforced=False),
    )
    return Guard(KeyStore(settings.keys_path), policy)


@dataclass(frozen=True, slots=True)
class FileModes:
    """What a ``data_dir_mode`` means: the mode of ``data_dir`` itself and the umask the
    server process writes everything under (the task database, files, spool, work)."""

    folder: int
    umask: int


FILE_MODES = {
    "private": FileModes(folder=0o700, umask=0o077),
    "group": FileModes(folder=0o750, umask=0o027),
}


def claim_data_dir(settings: Settings) -> int:
    """Make ``data_dir`` with its mode and set this process's umask so that what the
    server writes there is readable by no other user (or only its group); the previous
    umask, for a caller that serves in-process and gives it back after."""
    modes = FILE_MODES[settings.data_dir_mode]
    previous = os.umask(modes.umask)
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True, mode=modes.folder)
    # A folder made by an older version (0755) is closed too.
    data.chmod(modes.folder)
    return previous


@dataclass(frozen=True, slots=True)
class TaskStorage:
    """Where tasks are kept: records (SQL), files (a blob store), and the local folder."""

    store: TaskStore
    blobs: BlobStore
    data_dir: Path

    @classmethod
    def open(cls, settings: Settings) -> TaskStorage:
        data = Path(settings.data_dir).resolve()
        data.mkdir(parents=True, exist_ok=True)
        store = TaskStore(settings.task_store or sqlite_url(data / "tasks.db"))
        return cls(store, BlobStore(settings.task_files or str(data / "files")), data)

    def spool(self) -> Spool:
        """This process's upload spool under ``data_dir/spool``; what killed processes
        left there is removed now."""
        return Spool(self.data_dir / "spool")


def zip_limits(settings: Settings) -> ZipLimits:
    return ZipLimits(
        max_members=settings.task_max_zip_members,
        max_unpacked_bytes=settings.task_max_unpacked_bytes,
        max_ratio=settings.task_max_zip_ratio,
    )


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def build_executor(settings: Settings, blobs: BlobStore) -> TaskExecutor:
    """What runs container tasks: the Docker engine, or Kubernetes Jobs
    (``task_executor``); neither is reached before the first task."""
    if settings.task_executor == "docker":
        return ContainerRuntime()
    namespace = settings.kubernetes_namespace
    if not namespace:  # the worker pod's own, as its service account says
        own = SERVICE_ACCOUNT_NAMESPACE
        namespace = own.read_text().strip() if own.is_file() else "default"
    options = KubernetesOptions(
        namespace=namespace,
        files_image=settings.kubernetes_files_image,
        files_secret=settings.kubernetes_files_secret,
        files_url=settings.task_files,
        service_account=settings.kubernetes_service_account,
        image_pull_policy=settings.kubernetes_image_pull_policy,
        models_claim=settings.kubernetes_models_claim,
        models_root=settings.repository_path.resolve(),
        ttl_seconds=settings.kubernetes_job_ttl_seconds,
    )
    return KubernetesJobs(options=options, blobs=blobs, limits=zip_limits(settings))


def build_task_worker(
    settings: Settings,
    *,
    storage: TaskStorage,
    broker: Broker,
    repository: ModelRepository,
    work_dir: Path,
    name: str = "worker",
    takeover: Callable[[str], Awaitable[bool]] | None = None,
    tracer: Tracer | None = None,
) -> TaskWorker:
    """The worker that runs container tasks in ``task_slots`` CPU slots, or one slot per
    ``task_gpus``; the same for ``modelport serve`` and ``modelport worker``."""
    return TaskWorker(
        store=storage.store,
        blobs=storage.blobs,
        broker=broker,
        repository=repository,
        executor=build_executor(settings, storage.blobs),
        slots=make_slots(settings.task_slots, settings.task_gpu_ids),
        work_dir=work_dir,
        zip_limits=zip_limits(settings),
        visibility_s=settings.task_visibility_seconds,
        name=name,
        max_attempts=settings.task_max_attempts,
        takeover=takeover,
        tracer=tracer,
    )


def build_task_service(
    settings: Settings,
    *,
    cluster: Cluster | None = None,
    primary: bool = True,
    adopt: bool = False,
    tracer: Tracer | None = None,
) -> TaskService:
    """The tasks core: records in SQL, files through fsspec, the in-process broker (or
    the cluster's Redis one), and a worker for the slots, when there are any and this is
    the ``primary`` process. ``adopt``: several processes, one in-process broker each:
    this one takes up the tasks the others stored."""
    storage = TaskStorage.open(settings)
    repository = build_repository(settings, mirror_remotes=False)  # tasks run no remotes
    memory = MemoryBroker()
    broker = cluster.broker(repository) if cluster is not None else memory
    hours = settings.task_retention_hours
    retention = timedelta(hours=hours) if hours else None
    policy = TaskPolicy(
        zip_limits=zip_limits(settings),
        max_attempts=settings.task_max_attempts,
        retention=retention,
        posted_container=PostedContainer(
            shm_size=settings.compat_container_shm_size or None,
            ipc=settings.compat_container_ipc,
            network=settings.compat_container_network,
            user=settings.compat_container_user,
        ),
    )
    worker = None
    if primary and make_slots(settings.task_slots, settings.task_gpu_ids):
        worker = build_task_worker(
            settings,
            storage=storage,
            broker=broker,
            repository=repository,
            work_dir=storage.data_dir / "work",
            name=cluster.worker_id if cluster else "worker",
            takeover=cluster.may_take_over if cluster else None,
            tracer=tracer,
        )
    return TaskService(
        store=storage.store,
        blobs=storage.blobs,
        broker=broker,
        repository=repository,
        policy=policy,
        spool=storage.spool(),
        worker=worker,
        remote_versions=cluster.directory.task_versions if cluster is not None else None,
        primary=primary,
        known=memory.has if adopt else None,
    )


def build_ablinfer_sessions(settings: Settings, tasks: TaskService) -> AblinferSessions:
    """ABLInfer's InferServer sessions (the ``ablinfer`` listener's service) over
    ``tasks``: the specs of ``ablinfer_models``, the sessions in the task database, their
    files under ``data_dir/ablinfer``; started and closed after ``tasks`` is started and
    before it is closed (``build_ablinfer_app`` in api/http/compat/ablinfer.py serves it)."""
    # Checked as a model.yaml's container settings are (a bad memory value stops the start).
    limits = ContainerSpec(
        image="ablinfer",
        cpus=settings.ablinfer_cpus,
        memory=settings.ablinfer_memory,
        timeout=settings.ablinfer_timeout_s,
        network=settings.ablinfer_network,
        user=settings.ablinfer_user,
    )
    options = ContainerOptions(
        cpus=limits.cpus,
        memory=limits.memory,
        timeout=limits.timeout,
        network=limits.network,
        user=limits.user,
    )
    return AblinferSessions(
        specs=SpecFolder(ablinfer_folder(settings)),
        tasks=tasks,
        folder=Path(settings.data_dir).resolve() / "ablinfer",
        options=options,
        ttl_s=settings.ablinfer_session_ttl_s,
        check_filetypes=settings.ablinfer_check_filetypes,
        convert_inputs=settings.ablinfer_convert_inputs,
        max_upload_bytes=settings.task_max_upload_bytes,
    )


def task_routes(
    settings: Settings,
    tasks: TaskService,
    cluster: Cluster | None = None,
    *,
    host: str = "",
    open_tasks: bool = False,
) -> TaskRoutes:
    """The task routes of a listener on ``host`` (default: the main port's);
    ``open_tasks``: an open compat listener (compat_open)."""
    host = host or settings.host
    # Posting a model is an admin call: off unless allowed, and never where admin is refused.
    keys_possible = settings.auth != "off"
    posting = settings.compat_allow_model_posting and not admin_refusal(
        settings, keys_enforced=keys_possible, host=host
    )
    # Without a guard (auth = off) nobody asks for keys: the routes refuse task calls
    # themselves where the guard would.
    refusal = "" if keys_possible or open_tasks else tasks_refusal(settings, host)
    return TaskRoutes(
        service=tasks,
        spool=tasks.spool,
        max_upload_bytes=settings.task_max_upload_bytes,
        compat_prefix=settings.compat_inference_server,
        allow_model_posting=posting,
        model_images=image_allow_list(settings.model_images),
        workers=cluster.list_workers if cluster else None,
        refusal=refusal,
    )


def listener_access(settings: Settings, host: str, *, open_tasks: bool = False) -> Listener:
    """The guard's rules for a listener on ``host``; ``open_tasks``: an open compat
    listener (compat_open)."""
    return Listener(
        open=open_tasks,
        admin_refusal=admin_refusal(settings, keys_enforced=False, host=host),
        tasks_refusal=tasks_refusal(settings, host),
    )


def server_node(
    cluster: Cluster,
    service: InferenceService,
    tasks: TaskService,
    gateway: ClusterRepository | None,
) -> ClusterNode:
    """The node of ``modelport serve --broker``: it advertises its own models and task
    slots to other gateways, and routes to the models of workers that ``gateway``, the
    service's repository, lists."""
    worker = tasks.worker
    slots = tuple(s.name for s in worker.slots) if worker is not None else ()
    running = worker.running if worker is not None else {}
    return ClusterNode(
        cluster.client,
        cluster.keys,
        cluster.directory,
        service=service,
        worker_id=cluster.worker_id,
        role="server",
        task_models=lambda: task_models(tasks.repository),
        slots=slots,
        running=lambda: {task: slot.name for task, slot in running.items()},
        gateway=gateway,
    )


async def pull_repository(settings: Settings) -> None:
    """Bring the local copy of a repository URL up to date (modelport.supply.pull)."""
    await pull_in_thread(
        settings.repository, settings.repository_path, settings.repository_endpoint_url
    )
