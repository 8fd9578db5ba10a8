"""Settings: the one reader of flags, ``MODELPORT_*`` environment and ``modelport.toml``.

Precedence, highest first: command-line flags, environment (``MODELPORT_PORT=9000``),
the ``[server]`` table of ``modelport.toml`` (in the working folder, or the file named
by ``--config`` / ``MODELPORT_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from modelport.numbers import natural
from modelport.spec.remote_repository import RemoteRepositorySpec

ENV_PREFIX = "MODELPORT_"
CONFIG_FILE = "modelport.toml"
EXAMPLES = Path(__file__).parent / "examples"


class SettingsError(ValueError):
    """A setting with a bad value; the message names its source."""


class CompatListener(BaseModel):
    """One upstream API served at the root of a listener of its own (``compat``):
    ``NAME=[HOST:]PORT``; the host is the server's when not given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    host: str = ""
    port: int = Field(ge=1, le=65535)

    @classmethod
    def parse(cls, name: str, address: str | int) -> CompatListener:
        """``address``: a port, ``HOST:PORT`` or ``[IPv6]:PORT``."""
        text = str(address).strip()
        host, _, port = text.rpartition(":")
        host = host.strip("[]")
        if natural(port) is None:
            raise ValueError(f"compat listener {name!r}: expected [HOST:]PORT, got {text!r}")
        return cls(name=name.strip(), host=host, port=int(port))


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: str = Field(
        default=str(EXAMPLES),
        description="model repository: a folder, or a URL (s3://bucket/prefix, gs://...) "
        "pulled into repository_cache",
    )
    host: str = Field(default="127.0.0.1", description="address to listen on")
    admin: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="admin calls (load, unload, model posting): auto allows them only "
        "while modelport listens on a loopback address",
    )
    # -- access: API keys and TLS (README "Security") ---------------------------------------
    auth: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="API keys: auto asks every call for a key once the keys file exists "
        "(modelport keys create), on always, off never",
    )
    keys_file: str = Field(default="", description="the API keys (default: data_dir/keys.json)")
    public_health: bool = Field(
        default=True, description="health (HTTP and gRPC) answers without a key"
    )
    public_metrics: bool = Field(default=True, description="/metrics answers without a key")
    cors_origins: tuple[str, ...] = Field(
        default=(),
        description="web pages on other origins that may call the main port from a "
        "browser, e.g. 'https://lab.example.com,http://localhost:3000', or '*' for any; "
        "none by default",
    )
    max_concurrent_per_key: int = Field(
        default=64, ge=0, description="calls in progress per API key; 429 above (0: no limit)"
    )
    tls_cert: str = Field(default="", description="PEM certificate (chain): HTTPS and gRPC TLS")
    tls_key: str = Field(default="", description="PEM private key of tls_cert")
    tls_client_ca: str = Field(
        default="", description="PEM CA(s): when set, clients must show a certificate it signed"
    )
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    drain_seconds: float = Field(
        default=5.0,
        ge=0,
        description="on SIGTERM, health says NOT_SERVING at once while the listeners keep "
        "answering (new connections too) this long, so load balancers notice; then the "
        "requests in flight finish, running tasks go back to the queue, and it exits",
    )
    otel_endpoint: str = Field(
        default="",
        description="OpenTelemetry collector to export traces to over OTLP/HTTP, e.g. "
        "'http://collector:4318' (needs the otel extra; '' : no tracing)",
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="largest HTTP body (413 above)"
    )
    request_header_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="an HTTP request's headers must arrive within this (408, then the "
        "connection closes); a connection that sends nothing closes after 5 s",
    )
    request_body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="an HTTP request body with no new byte for this long gets 408, then "
        "the connection closes",
    )
    max_tensor_elements: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="elements in one input tensor, counted from its shape (400 above)",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="server processes sharing the ports, each with its own copy of the "
        "models (more use more cores; see processes.py)",
    )
    grpc_port: int = Field(
        default=8001, ge=0, le=65535, description="gRPC port (KServe v2); 0 turns gRPC off"
    )
    grpc_max_message_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="largest gRPC message, either way"
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=0, ge=0, description="gRPC calls running at once (0: no limit)"
    )
    grpc_max_idle_s: float = Field(
        default=300.0,
        ge=0,
        description="close a gRPC connection with no call for this long (GOAWAY; clients "
        "connect again when they next call). 0: never. Native transport only",
    )
    grpc_transport: Literal["native", "grpcio"] = Field(
        default="native",
        description="what speaks gRPC: 'native' (modelport's own HTTP/2 on the event "
        "loop, the fast one) or 'grpcio' (grpc.aio)",
    )
    grpc_listeners: int = Field(
        default=16,
        ge=1,
        le=64,
        description="with grpc_transport = 'grpcio': grpc.aio servers sharing the gRPC "
        "port, each accepting calls (more accept more calls at once; 1 with "
        "grpc_max_concurrent_rpcs)",
    )
    server_name: str = "modelport"
    # -- model supply ----------------------------------------------------------------------
    poll_seconds: float = Field(
        default=0.0, ge=0, description="rescan the repository this often and reload (0: off)"
    )
    max_loaded_models: int = Field(
        default=0, ge=0, description="models loaded at once; past it the LRU unloads (0: any)"
    )
    max_loaded_bytes: int = Field(
        default=0, ge=0, description="model files' bytes loaded at once; past it the LRU unloads"
    )
    load_timeout_seconds: float = Field(
        default=60.0, gt=0, description="how long a request waits for an unloaded model to load"
    )
    repository_cache: str = Field(
        default="", description="where a repository URL is pulled to (default: data_dir/repository)"
    )
    repository_endpoint_url: str = Field(
        default="", description="an S3-compatible endpoint for the repository URL (MinIO...)"
    )
    model_key_file: str = Field(
        default="",
        description="file holding the key of encrypted models (else MODELPORT_MODEL_KEY, "
        "which is read from the environment only, never from a settings file)",
    )
    gpus: str = Field(
        default="",
        description="GPU ids models may be placed on, e.g. '0,1'; 'none' for none "
        "(default: every GPU NVML finds)",
    )
    allow_pickled_models: bool = Field(
        default=False,
        description="let the torch runtime load pickled modules (model.pth, model.pkl); off "
        "because unpickling runs whatever code the file names",
    )
    # -- the upstream servers' files and command lines (cli/tritonserver.py,
    # cli/tensorflow_model_server.py; README "Drop-in for tritonserver and
    # tensorflow_model_server") ------------------------------------------------------------
    extra_repositories: tuple[str, ...] = Field(
        default=(),
        description="more repository folders served beside 'repository' (tritonserver's "
        "repeated --model-repository); a model name in several is served from the first",
    )
    model_folders: tuple[str, ...] = Field(
        default=(),
        description="models served from folders of their own, 'NAME=PATH' each, the folder "
        "holding the version folders (TF Serving's --model_name and --model_base_path)",
    )
    model_config_file: str = Field(
        default="",
        description="TF Serving's model_config_list text proto: each entry's model is served "
        "from its base_path, with its version policy and labels",
    )
    model_config_poll_seconds: float = Field(
        default=0.0,
        ge=0,
        description="read model_config_file again this often and load or unload what changed "
        "(0: read once)",
    )
    enable_batching: bool = Field(
        default=False,
        description="batch the models of model_folders and model_config_file with TF "
        "Serving's batching parameters (batching_parameters_file, else its defaults)",
    )
    batching_parameters_file: str = Field(
        default="", description="TF Serving's BatchingParameters text proto (enable_batching)"
    )
    tensorflow_intra_op_parallelism: int | None = Field(
        default=None,
        ge=0,
        description="TensorFlow's intra-op threads for the models of model_folders and "
        "model_config_file (0: TensorFlow chooses; default: each model's threads)",
    )
    tensorflow_inter_op_parallelism: int | None = Field(
        default=None, ge=0, description="as tensorflow_intra_op_parallelism, inter-op threads"
    )
    savedmodel_warmup: bool = Field(
        default=True,
        description="run a SavedModel's TF Serving warm-up records "
        "(<version>/assets.extra/tf_serving_warmup_requests) when it loads",
    )
    monitoring_config_file: str = Field(
        default="",
        description="TF Serving's MonitoringConfig text proto: with prometheus_config "
        "enabled, TF Serving's metrics (:tensorflow:serving:...) on its path of the HTTP port",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="a listener of its own answering /metrics with Triton's metric names "
        "(nv_inference_*), as tritonserver's --metrics-port (0: none)",
    )
    startup_models: tuple[str, ...] = Field(
        default=("*",),
        description="models loaded at start, e.g. 'a,b' ('*': all; empty: none, the "
        "repository API loads them: tritonserver's --model-control-mode explicit)",
    )
    exit_on_error: bool = Field(
        default=False,
        description="stop the server when a model fails to load at start (tritonserver's "
        "--exit-on-error)",
    )
    # -- tasks (long jobs in containers) ---------------------------------------------------
    data_dir: str = Field(
        default=".modelport",
        description="where tasks keep their records, files and work, and uploads are spooled",
    )
    data_dir_mode: Literal["private", "group"] = Field(
        default="private",
        description="who may read data_dir: 'private' (0700, files 0600) or 'group' "
        "(0750, files 0640, for a group that backs up or inspects it)",
    )
    task_store: str = Field(
        default="",
        description="task records: a SQLAlchemy URL, e.g. postgresql://... with the postgres "
        "extra (default: SQLite in data_dir)",
    )
    task_files: str = Field(
        default="", description="task files: a folder or fsspec URL (default in data_dir)"
    )
    task_slots: int = Field(default=1, ge=0, description="CPU task slots (0: run no tasks)")
    task_gpus: str = Field(
        default="", description="GPU ids for task slots, e.g. '0,1': one task per GPU"
    )
    task_max_attempts: int = Field(
        default=3, ge=1, description="times a task is started before a lost run fails it"
    )
    task_retention_hours: float = Field(
        default=168.0, ge=0, description="keep finished tasks' files this long (0: forever)"
    )
    task_max_upload_bytes: int = Field(default=1024**3, ge=1024)
    task_max_unpacked_bytes: int = Field(default=4 * 1024**3, ge=1024)
    task_max_zip_ratio: float = Field(default=200.0, ge=1)
    task_max_zip_members: int = Field(default=10_000, ge=1)
    # -- tasks as Kubernetes Jobs (README "Kubernetes"; tasks/kubernetes_jobs.py) ----------
    task_executor: Literal["docker", "kubernetes"] = Field(
        default="docker",
        description="what runs container tasks: 'docker' (the Docker engine) or "
        "'kubernetes' (one Job a task, files through the task_files bucket)",
    )
    kubernetes_namespace: str = Field(
        default="", description="namespace of the task Jobs (default: the worker pod's own)"
    )
    kubernetes_files_image: str = Field(
        default="",
        description="the modelport image whose containers move a Job's files (required "
        "with task_executor = 'kubernetes')",
    )
    kubernetes_files_secret: str = Field(
        default="",
        description="a Secret whose keys the files containers get as environment: the "
        "task_files bucket's credentials (AWS_ACCESS_KEY_ID, ...)",
    )
    kubernetes_service_account: str = Field(
        default="", description="service account of the task pods (their token is never mounted)"
    )
    kubernetes_image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        default="IfNotPresent", description="pull policy of kubernetes_files_image"
    )
    kubernetes_models_claim: str = Field(
        default="",
        description="a PersistentVolumeClaim holding the model repository, mounted read-only "
        "at /model (default: each task's version folder goes through task_files)",
    )
    kubernetes_job_ttl_seconds: int = Field(
        default=3600,
        ge=0,
        description="Kubernetes removes a finished Job no worker came back for after this",
    )
    compat_inference_server: str = Field(
        default="/compat/inference-server",
        description="prefix of the zip-task cluster server's API ('' turns it off)",
    )
    compat_allow_model_posting: bool = Field(
        default=False, description="let clients add container models through that API"
    )
    # -- ABLInfer's InferServer (container models for 3D Slicer; spec/ablinfer.py) ----------
    ablinfer_models: str = Field(
        default="",
        description="folder of ABLInfer JSON model specs served by the 'ablinfer' listener "
        "('' : none)",
    )
    ablinfer_session_ttl_s: float = Field(
        default=3600.0,
        ge=0,
        description="remove an ABLInfer session and its files after this many seconds "
        "without a request for it (never while it is queued or running; 0: keep forever)",
    )
    ablinfer_check_filetypes: bool = Field(
        default=True, description="sniff uploaded .nii/.nii.gz/.nrrd volumes against the spec"
    )
    ablinfer_convert_inputs: bool = Field(
        default=True,
        description="convert between .nii, .nii.gz and .nrrd at upload (needs the medical "
        "extra, SimpleITK)",
    )
    ablinfer_cpus: float | None = Field(default=None, gt=0, description="CPUs per ABLInfer run")
    ablinfer_memory: str | None = Field(
        default=None, description="memory limit of an ABLInfer run, e.g. '8g'"
    )
    ablinfer_timeout_s: float = Field(default=3600.0, gt=0, description="an ABLInfer run's limit")
    ablinfer_network: Literal["none", "bridge"] = Field(
        default="none", description="network of ABLInfer containers: none or bridge"
    )
    ablinfer_user: str = Field(
        default="image",
        description="user of ABLInfer containers: 'image' keeps the image's own (upstream's "
        "images expect it), 'auto' a non-root one, or 'uid:gid'",
    )
    compat: tuple[CompatListener, ...] = Field(
        default=(),
        description="upstream APIs served at the root of listeners of their own, "
        "'NAME=[HOST:]PORT' comma-separated (env), a TOML table {NAME = PORT} or the same "
        "string; e.g. 'inference-server=8123'",
    )
    compat_open: tuple[str, ...] = Field(
        default=(),
        description="compat listeners that take calls without an API key (a lab network); "
        "the rest ask for a key once keys exist (Bearer, or HTTP Basic with the key as "
        "password). Posting models still needs an admin key",
    )
    tasks_open: bool = Field(
        default=False,
        description="let anyone run the container models (the tasks APIs) while modelport "
        "listens beyond loopback without API keys; off: such calls are refused like admin "
        "calls",
    )
    compat_container_shm_size: str = Field(
        default="2g",
        description="/dev/shm of the containers of posted models (their images ran with "
        "ipc_mode=host: PyTorch data loaders need more than Docker's 64m); '' for "
        "Docker's default",
    )
    compat_container_ipc: Literal["private", "host"] = Field(
        default="private",
        description="'host' shares the host's IPC namespace with posted models' containers",
    )
    compat_container_network: Literal["none", "bridge"] = Field(
        default="none", description="network of posted models' containers: none or bridge"
    )
    compat_container_user: str = Field(
        default="auto",
        description="user of posted models' containers: auto (the server's own, or "
        "nobody), image (the image's own) or uid:gid",
    )
    # -- scale-out (Redis; see cluster/) -----------------------------------------------------
    broker: str = Field(
        default="",
        description="redis://host:6379/0 shares tasks and online requests with "
        "'modelport worker' nodes (default: in-process, this server only)",
    )
    redis_prefix: str = Field(default="modelport", description="prefix of every Redis key")
    worker_id: str = Field(default="", description="this node's id (default: host-pid)")
    worker_models: str = Field(
        default="", description="models a worker hosts, e.g. 'a,b' (default: all)"
    )
    cluster_timeout_seconds: float = Field(
        default=30.0, gt=0, description="how long a gateway waits for a worker's answer"
    )
    task_visibility_seconds: float = Field(
        default=60.0,
        gt=0,
        description="a task whose worker stops extending its claim this long is run again "
        "by another worker",
    )
    # -- where models may come from (allow-lists; see SECURITY.md) -------------------------
    model_sources: tuple[str, ...] = Field(
        default=(),
        description="URLs models may name (remote.url in model.yaml), as globs such as "
        "'grpc://triton-*:8001' or 'https://models.example.com/*'; the repository "
        "given to serve or pull is always allowed",
    )
    model_images: tuple[str, ...] = Field(
        default=(),
        description="container images clients may post as models (compat API), as globs "
        "such as 'registry.example.com/lab/*'; none by default",
    )
    remote: tuple[RemoteRepositorySpec, ...] = Field(
        default=(),
        description="remote repositories whose every model is served here: [[remote]] "
        "tables of modelport.toml (remote_repository = URL, ...), or JSON in MODELPORT_REMOTE",
    )

    @field_validator("remote", mode="before")
    @classmethod
    def _remote_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else ()
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON list of remote repositories: {exc}") from None
        return value

    @field_validator("compat", mode="before")
    @classmethod
    def _compat_listeners(cls, value: Any) -> Any:
        # 'a=8123,b=host:5000' (env, flag, TOML string), ['a=8123', ...] (repeated flags),
        # or a TOML table {a = 8123, b = "host:5000"}.
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, Mapping):
            value = [f"{name}={address}" for name, address in value.items()]
        if isinstance(value, list | tuple):
            listeners = []
            for item in value:
                if isinstance(item, str):
                    name, sep, address = item.partition("=")
                    if not sep or not name.strip():
                        raise ValueError(f"expected NAME=[HOST:]PORT, got {item!r}")
                    item = CompatListener.parse(name, address)
                listeners.append(item)
            names = [getattr(item, "name", None) for item in listeners]
            if len(set(names)) != len(names):
                raise ValueError("an API is named twice")
            return tuple(listeners)
        return value

    @field_validator(
        "kubernetes_namespace",
        "kubernetes_files_secret",
        "kubernetes_service_account",
        "kubernetes_models_claim",
    )
    @classmethod
    def _kubernetes_name(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", value):
            raise ValueError(f"expected a Kubernetes object name (lower case, '-', '.'): {value!r}")
        return value

    @model_validator(mode="after")
    def _kubernetes_executor(self) -> Settings:
        if self.task_executor != "kubernetes":
            return self
        if not self.kubernetes_files_image:
            raise ValueError(
                "task_executor 'kubernetes' needs kubernetes_files_image: the modelport image "
                "that moves each Job's files"
            )
        if "://" not in self.task_files or self.task_files.startswith("file:"):
            raise ValueError(
                "task_executor 'kubernetes' needs task_files in a bucket the task pods reach "
                "(s3://..., gs://...), not a folder of the worker's"
            )
        return self

    @field_validator("compat_container_user")
    @classmethod
    def _container_user(cls, value: str) -> str:
        if value not in ("auto", "image") and not re.match(r"^[0-9]{1,10}(:[0-9]{1,10})?$", value):
            raise ValueError(f"expected 'auto', 'image' or 'uid:gid' (numbers), got {value!r}")
        return value

    @field_validator("compat_container_shm_size")
    @classmethod
    def _shm_size(cls, value: str) -> str:
        if value and not re.match(r"^[1-9][0-9]*[bkmg]?$", value.lower()):
            raise ValueError("expected bytes with an optional unit b, k, m or g, e.g. '2g'")
        return value.lower()

    @field_validator("model_folders")
    @classmethod
    def _named_folders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = []
        for item in value:
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip() or "/" in name:
                raise ValueError(f"expected NAME=PATH, got {item!r}")
            names.append(name.strip())
        if len(set(names)) != len(names):
            raise ValueError("a model name is given twice")
        return value

    @field_validator(
        "model_sources",
        "model_images",
        "compat_open",
        "cors_origins",
        "extra_repositories",
        "model_folders",
        "startup_models",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        # From the environment or a flag a list arrives as 'a,b'; from TOML as a list.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("task_gpus", "gpus")
    @classmethod
    def _gpu_ids(cls, value: str, info: ValidationInfo) -> str:
        value = value.replace(" ", "")
        # Model placement (gpus) may be turned off; task slots are off when empty.
        if info.field_name == "gpus" and value.lower() == "none":
            return "none"
        if value and not all(natural(g) is not None for g in value.split(",")):
            also = ", or 'none'" if info.field_name == "gpus" else ""
            raise ValueError(f"expected GPU ids like '0,1'{also}, got {value!r}")
        return value

    @property
    def repository_path(self) -> Path:
        """The local folder models load from: the repository, or its pulled copy."""
        if "://" in self.repository:
            return Path(self.repository_cache or Path(self.data_dir) / "repository")
        return Path(self.repository)

    @property
    def keys_path(self) -> Path:
        return Path(self.keys_file or Path(self.data_dir) / "keys.json")

    @property
    def task_gpu_ids(self) -> list[int]:
        return [int(g) for g in self.task_gpus.split(",") if g]

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config: Path | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Merge the three sources; ``None`` flags mean 'not given'. ``defaults`` stand
        below all three (an upstream server's own defaults, such as tritonserver's ports:
        the environment and modelport.toml still override them)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = dict(defaults or {})
        sources: dict[str, str] = dict.fromkeys(values, "the command's defaults")
        path = config or Path(environ.get(f"{ENV_PREFIX}CONFIG", CONFIG_FILE))
        if path.is_file():
            try:
                doc = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"{path}: {exc}") from None
            values.update(doc.get("server", doc))
            if "server" in doc and "remote" in doc:  # [[remote]] tables beside [server]
                values["remote"] = doc["remote"]
            sources.update(dict.fromkeys(values, str(path)))
        elif config is not None:
            raise SettingsError(f"{config}: no such settings file")
        for name in cls.model_fields:
            env = environ.get(ENV_PREFIX + name.upper())
            if env is not None:
                values[name] = env
                sources[name] = ENV_PREFIX + name.upper()
        given = {k: v for k, v in (flags or {}).items() if v is not None}
        values.update(given)
        sources.update(dict.fromkeys(given, "command line"))
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                + (f" (from {sources[e['loc'][0]]})" if e["loc"] and e["loc"][0] in sources else "")
                for e in exc.errors()
            )
            raise SettingsError(f"bad settings ({problems})") from None


LOOPBACK_HOSTS = frozenset({"localhost", "::1"})


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def admin_refusal(settings: Settings, keys_enforced: bool = False, host: str = "") -> str:
    """Why admin calls are refused with these settings, or "" when they are allowed.

    A server reachable from the network with no API keys must not let anyone load,
    unload or post models (inference servers have been taken over that way), so "auto"
    allows admin calls only on a loopback address, or when API keys are enforced (the
    caller then needs a key with the admin scope). ``host``: the listener's address
    (default: the server's).
    """
    if settings.admin == "on":
        return ""
    if settings.admin == "off":
        return "admin calls are off on this server (admin = off); set MODELPORT_ADMIN=on"
    host = host or settings.host
    if is_loopback(host) or keys_enforced:
        return ""
    return (
        f"admin calls (load, unload, model posting) are refused because modelport listens "
        f"on {host} without API keys; create an admin key (modelport keys create NAME "
        "--scope admin) and send it, bind to 127.0.0.1, or set MODELPORT_ADMIN=on (or "
        'admin = "on" in modelport.toml) to allow them anyway'
    )


def tasks_refusal(settings: Settings, host: str = "") -> str:
    """Why task calls (the tasks API, the compat task APIs) are refused while no key is
    asked for, or "" when they are allowed: on a loopback address, or with tasks_open.
    Anyone who can reach such a server would otherwise run the operator's containers.
    ``host``: the listener's address (default: the server's)."""
    host = host or settings.host
    if settings.tasks_open or is_loopback(host):
        return ""
    return (
        f"task calls are refused because modelport listens on {host} without API keys "
        "(anyone could run the container models); create a key (modelport keys create "
        "NAME --scope tasks) and send it (Bearer, or HTTP Basic with the key as password), "
        "bind to 127.0.0.1, or set tasks_open = true (MODELPORT_TASKS_OPEN=true) to allow "
        "them anyway"
    )
