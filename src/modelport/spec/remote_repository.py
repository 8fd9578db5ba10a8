"""A remote repository: every model another server lists, served here as
``runtime: remote`` models, so that a fleet is fronted without a folder per model.

Declared in a file ``<repository>/<anything>.remote.yaml`` (in a model folder's place)
or as a ``[[remote]]`` table of ``modelport.toml``, with the same fields::

    # models/triton.remote.yaml
    remote_repository: http://triton-a:8000     # or a list: replicas of one server
    protocol: v2             # v2 (Triton, modelport: its repository index) or tfserving
    models: [resnet, bert]   # only these (TF Serving lists none: it needs them)
    prefix: "triton-"        # local names: triton-resnet, triton-bert (default: as listed)
    headers: {authorization: Bearer abc}
    timeout: 10              # seconds per request
    instances: 2             # connections per model, batches in parallel
    refresh: 30              # seconds between listings
    health: {interval: 2, eject_after: 3}   # replicas' checks (see RemoteSpec)
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from modelport.errors import SpecError
from modelport.redaction import redact_url
from modelport.spec.backends import HealthSpec, RemoteSpec, remote_url
from modelport.spec.base import Strict as _Strict

REMOTE_REPOSITORY_SUFFIX = ".remote.yaml"


class RemoteRepositorySpec(_Strict):
    """Every model a remote server lists, mirrored (see the module docstring)."""

    remote_repository: tuple[str, ...]
    protocol: Literal["v2", "tfserving"] = "v2"
    models: tuple[str, ...] = ()
    prefix: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=10.0, gt=0)
    instances: int = Field(default=1, ge=1, le=64)
    refresh: float = Field(default=30.0, gt=0)
    health: HealthSpec = HealthSpec()

    @field_validator("remote_repository", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        urls = (value,) if isinstance(value, str) else value
        if isinstance(urls, list | tuple):
            urls = tuple(remote_url(str(u)) for u in urls)
            if not urls:
                raise ValueError("name the server's URL (or its replicas' URLs)")
        return urls

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if "/" in value or value.startswith((".", "_")) or value != value.strip():
            raise ValueError("a prefix has no '/' or spaces and starts with no '.' or '_'")
        return value

    @model_validator(mode="after")
    def _fits(self) -> RemoteRepositorySpec:
        if self.protocol == "tfserving":
            if not self.models:
                raise ValueError("TF Serving lists no models: name them in 'models'")
            if not all(u.startswith("grpc://") for u in self.remote_repository):
                raise ValueError("protocol: tfserving speaks TF Serving's gRPC API: grpc://")
        return self

    def shown(self) -> str:
        """Where the models come from, as modelport may show it (no credentials)."""
        return ", ".join(redact_url(u) for u in self.remote_repository)

    def remote(self, model: str, *, versioned: bool) -> RemoteSpec:
        """The ``remote`` section of a mirrored model; ``versioned``: each local version
        asks for the remote version of its number."""
        return RemoteSpec(
            urls=self.remote_repository,
            protocol=self.protocol,
            model=model,
            version="same" if versioned else None,
            timeout=self.timeout,
            headers=self.headers,
            health=self.health,
        )


def parse_remote_repository(text: str, source: str) -> RemoteRepositorySpec:
    """A ``.remote.yaml`` file's text; SpecError naming ``source`` when it is unusable."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return RemoteRepositorySpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())  # type: ignore[arg-type]
        raise SpecError(f"{source}: {problems}") from None


def _problem(error: dict[str, Any]) -> str:
    where = ".".join(map(str, error["loc"])) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"field '{where}': unknown field"
    return f"field '{where}': " + str(error["msg"]).removeprefix("Value error, ")
