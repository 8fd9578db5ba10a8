"""Where a model runs when it is not in this process: ``runtime: remote`` (another
inference server) and ``runtime: container`` (a Docker image run per task)."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from modelport.redaction import redact_headers, redact_url
from modelport.spec.base import Strict as _Strict

REMOTE_SCHEMES = ("http", "https", "grpc")


class HealthSpec(_Strict):
    """How the replicas of a ``remote`` model (``urls``) are watched: each is checked
    every ``interval`` seconds (its model ready, as at load), and one that fails
    ``eject_after`` times in a row (requests or checks) leaves the rotation until a
    check passes again. The last replica in the rotation is never ejected."""

    interval: float = Field(default=2.0, gt=0)
    eject_after: int = Field(default=3, ge=1)


class RemoteSpec(_Strict):
    """Where a ``runtime: remote`` model really runs: another server speaking KServe v2
    (Triton, another modelport) over HTTP or gRPC, or TF Serving's gRPC API. modelport
    keeps the routing, batching, metrics and friendly outputs; the remote only runs the
    batches::

        runtime: remote
        max_batch_size: 32
        remote:
          url: grpc://triton-3:8001
          protocol: v2           # or tfserving (TF Serving's gRPC API, grpc:// only)
          model: resnet50        # the remote's name for it; default: this model's name
          timeout: 5             # seconds per request
          headers: {authorization: Bearer abc}

    ``urls: [...]`` instead of ``url`` names replicas of one remote model: each batch
    goes to the least loaded replica in the rotation, a replica that cannot answer is
    failed over to the next, and one that keeps failing is ejected until its health
    check passes (``health``). ``version: same`` asks the remote for the version of the
    local version's number (a mirrored repository's models do).
    """

    url: str = ""
    urls: tuple[str, ...] = ()
    protocol: Literal["v2", "tfserving"] = "v2"
    model: str = ""
    version: int | Literal["same"] | None = Field(default=None)
    signature: str = ""
    timeout: float = Field(default=10.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    health: HealthSpec = HealthSpec()

    def redacted(self) -> RemoteSpec:
        """This section as modelport may show it: no user info, no credential headers."""
        return self.model_copy(
            update={
                "url": redact_url(self.url),
                "urls": tuple(redact_url(u) for u in self.urls),
                "headers": redact_headers(self.headers),
            }
        )

    @property
    def pinned_version(self) -> int | None:
        """The remote version asked for (``same`` is resolved by the runtime first)."""
        return self.version if isinstance(self.version, int) else None

    @property
    def replicas(self) -> tuple[str, ...]:
        """Every URL the model runs at: ``urls``, or the one ``url``."""
        return self.urls or (self.url,)

    @model_validator(mode="after")
    def _protocol_fits(self) -> RemoteSpec:
        if self.url and self.urls:
            raise ValueError("give 'url' (one remote) or 'urls' (its replicas), not both")
        if not self.replicas[0]:
            raise ValueError("give 'url' (one remote) or 'urls' (its replicas)")
        if "health" in self.model_fields_set and not self.urls:
            raise ValueError("'health' watches replicas: give them as 'urls'")
        if self.protocol == "tfserving" and not all(u.startswith("grpc://") for u in self.replicas):
            raise ValueError(
                "protocol: tfserving speaks TF Serving's gRPC API; give its grpc://host:8500"
            )
        if self.signature and self.protocol != "tfserving":
            raise ValueError(
                "'signature' names a TF Serving signature; it needs protocol: tfserving"
            )
        return self

    @field_validator("version")
    @classmethod
    def _positive(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("a version is a positive integer (or 'same')")
        return value

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        return remote_url(value) if value else value

    @field_validator("urls")
    @classmethod
    def _valid_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        urls = tuple(remote_url(u) for u in value)
        if len(set(urls)) != len(urls):
            raise ValueError("a replica is named twice")
        return urls


def remote_url(value: str) -> str:
    """``value`` checked as a remote server's address, without a trailing '/'."""
    parts = urlsplit(value)
    if parts.scheme not in REMOTE_SCHEMES or not parts.hostname:
        raise ValueError(
            f"expected http://host:port, https://host:port or grpc://host:port, "
            f"got {redact_url(value)!r}"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{redact_url(value)!r} has an invalid port") from None
    if parts.scheme == "grpc" and (port is None or parts.path not in ("", "/")):
        raise ValueError(f"a gRPC url is grpc://host:port, with no path; got {redact_url(value)!r}")
    return value.rstrip("/")


_MEMORY = re.compile(r"^[1-9][0-9]*[bkmg]?$")
_USER = re.compile(r"^[0-9]{1,10}(?::[0-9]{1,10})?$")
CONTAINER_RUNTIME = "container"


class ContainerSpec(_Strict):
    """How a ``runtime: container`` model runs: one container per task.

    The container reads its files from ``/input``, writes its results to ``/output``
    (and may write a number 0..1 to ``/output/.progress``), and finds the version
    folder read-only at ``/model``. Task parameters arrive as JSON in the environment
    variable ``MODELPORT_PARAMETERS``::

        runtime: container
        container:
          image: lab/segmenter:2.1
          command: [python, /app/run.py, --in, /input, --out, /output]
          gpus: 1            # a count, or a list of GPU ids; 0 runs on a CPU slot
          cpus: 4
          memory: 8g
          timeout: 3600      # seconds; the container is killed after it
          shm_size: 2g       # /dev/shm (Docker's default is 64m; PyTorch data loaders need more)
          network: none      # or bridge (Docker's default network)
          user: auto         # auto, image (the image's own user) or uid:gid

    Existing images that ran with ``ipc_mode=host`` (the zip-task cluster server's) want a
    large ``/dev/shm``: ``shm_size`` gives one without sharing the host's IPC namespace;
    ``ipc: host`` shares it, as they did.
    """

    image: str = Field(min_length=1)
    command: tuple[str, ...] | str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    gpus: int | tuple[int, ...] = Field(default=0)
    cpus: float | None = Field(default=None, gt=0)
    memory: str | None = None
    timeout: float = Field(default=3600.0, gt=0)
    network: Literal["none", "bridge"] = Field(
        default="none",
        description="'none' (no network) or 'bridge' (Docker's default network); "
        "true and false mean bridge and none",
    )
    user: str = Field(
        default="auto",
        description="'auto' runs as a non-root user; 'image' keeps the image's own; or 'uid:gid'",
    )
    shm_size: str | None = Field(
        default=None, description="size of /dev/shm, e.g. '2g' (Docker's default: 64m)"
    )
    ipc: Literal["private", "host"] = Field(
        default="private", description="'host' shares the host's IPC namespace (ipc_mode=host)"
    )
    pull: Literal["missing", "never", "always"] = "missing"

    @field_validator("network", mode="before")
    @classmethod
    def _network(cls, value: Any) -> Any:
        if isinstance(value, bool):  # model.yaml files written before 'bridge' existed
            return "bridge" if value else "none"
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if value not in ("auto", "image") and not _USER.match(value):
            raise ValueError(f"expected 'auto', 'image' or 'uid:gid' (numbers), got {value!r}")
        return value

    @field_validator("memory", "shm_size", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        if isinstance(value, int):
            value = str(value)
        if value is not None and not _MEMORY.match(str(value).lower()):
            raise ValueError("expected bytes with an optional unit b, k, m or g, e.g. '8g'")
        return None if value is None else str(value).lower()

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: int | tuple[int, ...]) -> int | tuple[int, ...]:
        if isinstance(value, int) and value < 0:
            raise ValueError("a GPU count is 0 or more")
        if isinstance(value, tuple) and any(g < 0 for g in value):
            raise ValueError("GPU ids are 0 or more")
        return value

    @property
    def gpu_count(self) -> int:
        return len(self.gpus) if isinstance(self.gpus, tuple) else self.gpus
