"""Settings: the one reader of flags, ``MODELPORT_*`` environment and ``modelport.toml``.

Precedence, highest first: command-line flags, environment (``MODELPORT_PORT=9000``),
the ``[server]`` table of ``modelport.toml`` (in the working folder, or the file named
by ``--config`` / ``MODELPORT_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "MODELPORT_"
CONFIG_FILE = "modelport.toml"
EXAMPLES = Path(__file__).parent / "examples"


class SettingsError(ValueError):
    """A setting with a bad value; the message names its source."""


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
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    grpc_port: int = Field(
        default=8001, ge=0, le=65535, description="gRPC port (KServe v2); 0 turns gRPC off"
    )
    grpc_max_message_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="largest gRPC message, either way"
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=0, ge=0, description="gRPC calls running at once (0: no limit)"
    )
    grpc_listeners: int = Field(
        default=16,
        ge=1,
        le=64,
        description="grpc.aio servers sharing the gRPC port, each accepting calls "
        "(more accept more calls at once; 1 with grpc_max_concurrent_rpcs)",
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
    # -- tasks (long jobs in containers) ---------------------------------------------------
    data_dir: str = Field(
        default=".modelport", description="where tasks keep their records, files and work"
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
    compat_inference_server: str = Field(
        default="/compat/inference-server",
        description="prefix of the zip-task cluster server's API ('' turns it off)",
    )
    compat_allow_model_posting: bool = Field(
        default=False, description="let clients add container models through that API"
    )

    @field_validator("task_gpus")
    @classmethod
    def _gpu_ids(cls, value: str) -> str:
        value = value.replace(" ", "")
        if value and not all(g.isdigit() for g in value.split(",")):
            raise ValueError(f"expected GPU ids like '0,1', got {value!r}")
        return value

    @property
    def repository_path(self) -> Path:
        """The local folder models load from: the repository, or its pulled copy."""
        if "://" in self.repository:
            return Path(self.repository_cache or Path(self.data_dir) / "repository")
        return Path(self.repository)

    @property
    def task_gpu_ids(self) -> list[int]:
        return [int(g) for g in self.task_gpus.split(",") if g]

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config: Path | None = None,
    ) -> Settings:
        """Merge the three sources; ``None`` flags mean 'not given'."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}  # setting -> where its value came from, for errors
        path = config or Path(environ.get(f"{ENV_PREFIX}CONFIG", CONFIG_FILE))
        if path.is_file():
            try:
                doc = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"{path}: {exc}") from None
            values.update(doc.get("server", doc))
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


def admin_refusal(settings: Settings) -> str:
    """Why admin calls are refused with these settings, or "" when they are allowed.

    A server reachable from the network with no API keys must not let anyone load,
    unload or post models (inference servers have been taken over that way), so "auto"
    allows admin calls only on a loopback address.
    """
    if settings.admin == "on":
        return ""
    if settings.admin == "off":
        return "admin calls are off on this server (admin = off); set MODELPORT_ADMIN=on"
    host = settings.host
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return ""
    return (
        f"admin calls (load, unload, model posting) are refused because modelport listens "
        f"on {host} and API keys are not available yet; bind to 127.0.0.1, or set "
        'MODELPORT_ADMIN=on (or admin = "on" in modelport.toml) to allow them anyway'
    )
