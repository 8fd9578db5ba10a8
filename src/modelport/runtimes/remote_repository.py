"""Remote repositories (``spec/remote_repository.py``): every model a remote server
lists, served here as a ``runtime: remote`` model, beside the repository's folders.

:class:`RemoteRepositories` is the repository's extra
:class:`~modelport.core.repository.SourceProvider`. It reads the declarations (the
``remote`` setting, and each ``<repository>/*.remote.yaml`` file, again when it
changes) and lists each remote server:

- KServe v2 (Triton, modelport): its repository index (``ready`` models only, with
  their versions), and each model's configuration for its ``max_batch_size``;
- TF Serving: each model of ``models``'s status (its AVAILABLE versions).

A mirrored model serves the versions the remote serves, each asking the remote for
its own number, with ``max_batch_size`` as the remote has it (the front batches as the
remote would). The first listing of a declaration happens when the repository is
first asked for its names (the server's start), so its models load with the others;
later listings run in a thread of their own every ``refresh`` seconds, and a server
started with ``--poll`` loads the models that appeared and unloads the ones gone. A
server that cannot be listed is logged (without credentials) and lists nothing, and
its models already listed stay until it answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import orjson

from modelport.core.repository import ModelSource
from modelport.errors import ModelNotFound, ModelportError, ModelUnavailable, SpecError
from modelport.protos import grpc_service_pb2 as pb
from modelport.protos import grpc_service_pb2_grpc as pb_grpc
from modelport.protos.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
)
from modelport.redaction import redact_text, redact_url
from modelport.runtimes.remote_client import GRPC_OPTIONS
from modelport.settings import CONFIG_FILE
from modelport.spec import InstancesSpec, ModelSpec, VersionPolicy
from modelport.spec.remote_repository import (
    REMOTE_REPOSITORY_SUFFIX,
    RemoteRepositorySpec,
    parse_remote_repository,
)
from modelport.supply.allow_lists import AllowList

log = logging.getLogger("modelport.remote")

AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
# Where a repository of the ``remote`` setting was declared, in messages and paths.
SETTINGS_ORIGIN = Path(CONFIG_FILE) / "remote"


@dataclass(frozen=True, slots=True)
class ListedModel:
    """A model as its server lists it: its name there, the versions it serves (none
    named: the server's choice) and its max_batch_size."""

    name: str
    versions: tuple[int, ...]
    max_batch_size: int


@dataclass(frozen=True, slots=True)
class Declaration:
    """A remote repository, and where it was declared (a file, or the settings)."""

    spec: RemoteRepositorySpec
    origin: Path

    @property
    def key(self) -> str:
        return f"{self.origin}\n{self.spec.model_dump_json()}"


def list_v2_http(url: str, spec: RemoteRepositorySpec) -> list[ListedModel]:
    """A KServe v2 server's ready models, over HTTP."""
    with httpx.Client(base_url=url, timeout=spec.timeout, headers=spec.headers) as client:
        index = client.post("/v2/repository/index", json={"ready": True})
        index.raise_for_status()
        versions: dict[str, set[int]] = {}
        for row in orjson.loads(index.content):
            if row.get("state", "READY") == "READY":
                found = versions.setdefault(str(row["name"]), set())
                if str(row.get("version", "")).isdigit():
                    found.add(int(row["version"]))
        listed = []
        for name, numbers in sorted(versions.items()):
            if spec.models and name not in spec.models:
                continue
            config = client.get(f"/v2/models/{name}/config")
            # Without the configuration extension the front passes requests as they are.
            found_config = orjson.loads(config.content) if config.status_code == 200 else {}
            batch = int(found_config.get("max_batch_size") or 0)
            listed.append(ListedModel(name, tuple(sorted(numbers)), batch))
        return listed


def list_v2_grpc(url: str, spec: RemoteRepositorySpec) -> list[ListedModel]:
    """A KServe v2 server's ready models, over gRPC."""
    metadata = tuple((k.lower(), v) for k, v in spec.headers.items())
    with grpc.insecure_channel(url.removeprefix("grpc://"), options=GRPC_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(
            pb.RepositoryIndexRequest(ready=True), timeout=spec.timeout, metadata=metadata
        )
        versions: dict[str, set[int]] = {}
        for row in index.models:
            if row.state in ("", "READY"):
                found = versions.setdefault(row.name, set())
                if row.version.isdigit():
                    found.add(int(row.version))
        listed = []
        for name, numbers in sorted(versions.items()):
            if spec.models and name not in spec.models:
                continue
            config = stub.ModelConfig(
                pb.ModelConfigRequest(name=name), timeout=spec.timeout, metadata=metadata
            )
            listed.append(ListedModel(name, tuple(sorted(numbers)), config.config.max_batch_size))
        return listed


def list_tfserving(url: str, spec: RemoteRepositorySpec) -> list[ListedModel]:
    """The AVAILABLE versions of each model ``spec.models`` names (TF Serving lists
    none); a model it does not know is left out."""
    metadata = tuple((k.lower(), v) for k, v in spec.headers.items())
    with grpc.insecure_channel(url.removeprefix("grpc://"), options=GRPC_OPTIONS) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        listed = []
        for name in spec.models:
            request = get_model_status_pb2.GetModelStatusRequest(
                model_spec=model_pb2.ModelSpec(name=name)
            )
            try:
                status = stub.GetModelStatus(request, timeout=spec.timeout, metadata=metadata)
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.NOT_FOUND:
                    continue
                raise
            numbers = [s.version for s in status.model_version_status if s.state == AVAILABLE]
            if numbers:
                listed.append(ListedModel(name, tuple(sorted(numbers)), 0))
        return listed


def list_models(spec: RemoteRepositorySpec) -> list[ListedModel]:
    """What the first replica that answers lists; ModelUnavailable when none does."""
    failures = []
    for url in spec.remote_repository:
        lister: Callable[[str, RemoteRepositorySpec], list[ListedModel]]
        if spec.protocol == "tfserving":
            lister = list_tfserving
        elif url.startswith("grpc://"):
            lister = list_v2_grpc
        else:
            lister = list_v2_http
        try:
            return lister(url, spec)
        except (httpx.HTTPError, grpc.RpcError, ValueError, KeyError, TypeError) as exc:
            detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
            detail = redact_text(str(detail).replace(url, redact_url(url)))
            failures.append(f"{redact_url(url)}: {detail or type(exc).__name__}")
    raise ModelUnavailable(f"the remote repository cannot be listed ({'; '.join(failures)})")


class Mirror:
    """One declaration's listing: refreshed in a thread of its own when stale."""

    def __init__(self, declaration: Declaration, sources: AllowList) -> None:
        self.declaration = declaration
        self.sources = sources
        self.listing: dict[str, ListedModel] = {}  # by local name
        self._listed_at: float | None = None
        self._refreshing = threading.Lock()

    def names(self) -> list[str]:
        if self._listed_at is None:
            with self._refreshing:
                if self._listed_at is None:
                    self._refresh()
        elif (
            time.monotonic() - self._listed_at > self.declaration.spec.refresh
            and self._refreshing.acquire(blocking=False)
        ):
            threading.Thread(target=self._refresh_in_thread, daemon=True).start()
        return list(self.listing)

    def _refresh_in_thread(self) -> None:
        try:
            self._refresh()
        finally:
            self._refreshing.release()

    def _refresh(self) -> None:
        spec, origin = self.declaration.spec, self.declaration.origin
        try:
            for url in spec.remote_repository:
                self.sources.check_url(url, f"{origin}: remote_repository")
            listed = list_models(spec)
        except ModelportError as exc:
            log.warning("%s: %s", origin, exc.message)
        else:
            self.listing = {spec.prefix + m.name: m for m in listed}
        finally:
            self._listed_at = time.monotonic()

    def source(self, listed: ListedModel, name: str) -> ModelSource:
        """The source of ``listed``, served here as ``name``."""
        spec = self.declaration.spec
        model = ModelSpec(
            name=name,
            runtime="remote",
            description=f"model '{listed.name}' of the remote repository {spec.shown()}",
            max_batch_size=listed.max_batch_size,
            instances=InstancesSpec(count=spec.instances),
            version_policy=VersionPolicy(all=True),
            remote=spec.remote(listed.name, versioned=bool(listed.versions)),
        )
        path = self.declaration.origin / name
        return ModelSource(name, path, model, listed.versions or (1,))


class RemoteRepositories:
    """The models that remote repositories list (see the module docstring): the
    ``declared`` ones (the ``remote`` setting) and the ``*.remote.yaml`` files of the
    repository folder ``root``. ``sources``: the URLs they may be at (model_sources)."""

    def __init__(
        self, root: Path, declared: Sequence[RemoteRepositorySpec], sources: AllowList
    ) -> None:
        self.root = root
        self.sources = sources
        self._declared = tuple(Declaration(spec, SETTINGS_ORIGIN) for spec in declared)
        self._mirrors: dict[str, Mirror] = {}  # by Declaration.key
        self._files: dict[Path, tuple[int, Declaration | None]] = {}  # by mtime
        # names() runs on the event loop, source() in loading threads.
        self._lock = threading.Lock()

    def _declarations(self) -> list[Declaration]:
        found = list(self._declared)
        if self.root.is_dir():
            for path in sorted(self.root.glob("*" + REMOTE_REPOSITORY_SUFFIX)):
                declaration = self._read(path)
                if declaration is not None:
                    found.append(declaration)
        return found

    def _read(self, path: Path) -> Declaration | None:
        try:
            mtime = path.stat().st_mtime_ns
            known = self._files.get(path)
            if known is not None and known[0] == mtime:
                return known[1]
            spec = parse_remote_repository(path.read_text(encoding="utf-8"), str(path))
            declaration: Declaration | None = Declaration(spec, path)
        except SpecError as exc:
            log.warning("%s", exc.message)
            declaration = None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("%s: cannot be read: %s", path, exc)
            return None
        self._files[path] = (mtime, declaration)
        return declaration

    def _current(self) -> list[Mirror]:
        with self._lock:
            declarations = {d.key: d for d in self._declarations()}
            for gone in self._mirrors.keys() - declarations.keys():
                del self._mirrors[gone]
            for key, declaration in declarations.items():
                if key not in self._mirrors:
                    self._mirrors[key] = Mirror(declaration, self.sources)
            return [self._mirrors[key] for key in declarations]

    def names(self) -> list[str]:
        return sorted({name for mirror in self._current() for name in mirror.names()})

    def source(self, name: str) -> ModelSource:
        for mirror in self._current():
            # The first declaration that lists it wins; a refresh may replace the listing.
            listed = mirror.listing.get(name)
            if listed is not None:
                return mirror.source(listed, name)
        raise ModelNotFound(f"no remote repository lists a model '{name}'")
