"""TensorFlow Serving's own files, read as tensorflow_model_server reads them.

Each is a text protobuf, parsed into TF Serving's messages (``protos/tensorflow_serving``)
and turned into modelport's terms:

``--model_config_file`` (``ModelServerConfig`` with a ``model_config_list``)
    Each ``config`` entry is a :class:`~modelport.core.repositories.FolderModel`:
    ``name``, ``base_path`` (the model's folder of version folders; a relative one is
    relative to the working folder, as in TF Serving), ``model_platform``
    (``tensorflow``, the default), ``model_version_policy`` (``latest``, ``all``,
    ``specific``) and ``version_labels``.
    :class:`ModelConfigFile` reads it again when asked to poll.
``--batching_parameters_file`` (``BatchingParameters``)
    :class:`TfBatching`, which maps onto model.yaml's batching fields
    (:meth:`TfBatching.overrides`).
``--monitoring_config_file`` (``MonitoringConfig``)
    The HTTP path of TF Serving's Prometheus metrics, "" when they are off.

A file that cannot be used raises :class:`~modelport.settings.SettingsError` naming the
file, the line and column or the field, and the flag that named it.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import text_format
from google.protobuf.message import Message

from modelport.core.repositories import FolderModel
from modelport.protos.tensorflow_serving.config import (
    model_server_config_pb2,
    monitoring_config_pb2,
)
from modelport.protos.tensorflow_serving.servables.tensorflow import session_bundle_config_pb2
from modelport.settings import SettingsError

log = logging.getLogger("modelport.tfserving")

TENSORFLOW_PLATFORM = "tensorflow"
# Where TF Serving answers its metrics when prometheus_config gives no path.
DEFAULT_MONITORING_PATH = "/monitoring/prometheus/metrics"
# SharedBatchScheduler's defaults, which TF Serving uses for a field the file leaves out.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10

M = TypeVar("M", bound=Message)


def _parse(path: Path, message: M, flag: str) -> M:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path} ({flag}): cannot be read: {exc}") from None
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        where = f"{path}:{exc.GetLine()}:{exc.GetColumn()}" if exc.GetLine() else str(path)
        # The message repeats the position first ("3:5 : ..."): shown once, in front.
        reason = str(exc).split(" : ", 1)[-1]
        raise SettingsError(
            f"{where} ({flag}): {reason}; the file is TF Serving's "
            f"{message.DESCRIPTOR.full_name} in protobuf text format"
        ) from None
    return message


# -- model_config_list ---------------------------------------------------------------------


def read_model_config_list(
    path: Path, *, overrides: Mapping[str, Any] | None = None
) -> tuple[FolderModel, ...]:
    """The models a ``--model_config_file`` lists; ``overrides`` (model.yaml fields, such
    as the batching parameters') are set on every one of them."""
    flag = "--model_config_file"
    config = _parse(path, model_server_config_pb2.ModelServerConfig(), flag)
    if config.WhichOneof("config") == "custom_model_config":
        raise SettingsError(
            f"{path} ({flag}): custom_model_config is not read here; list the models in "
            "model_config_list { config { name: ... base_path: ... } }"
        )
    models: list[FolderModel] = []
    seen: set[str] = set()
    for index, entry in enumerate(config.model_config_list.config):
        where = f"{path} ({flag}), config #{index + 1}"
        if not entry.name or "/" in entry.name:
            raise SettingsError(f"{where}: field 'name': give the model a name without '/'")
        where = f"{path} ({flag}), model '{entry.name}'"
        if entry.name in seen:
            raise SettingsError(f"{where}: the name is listed twice")
        seen.add(entry.name)
        models.append(_folder_model(path, entry, where=where, overrides=overrides or {}))
    return tuple(models)


def _folder_model(
    path: Path,
    entry: model_server_config_pb2.ModelConfig,
    *,
    where: str,
    overrides: Mapping[str, Any],
) -> FolderModel:
    platform = entry.model_platform or TENSORFLOW_PLATFORM
    if platform != TENSORFLOW_PLATFORM:
        raise SettingsError(
            f"{where}: field 'model_platform': {platform!r} is not served here; "
            f"tensorflow_model_server's models are {TENSORFLOW_PLATFORM!r} SavedModels (put "
            "other models in a repository folder with a model.yaml)"
        )
    if not entry.base_path:
        raise SettingsError(f"{where}: field 'base_path': required (the model's folder)")
    if "://" in entry.base_path:
        raise SettingsError(
            f"{where}: field 'base_path': {entry.base_path} is a URL; base paths are "
            "local folders here (copy a bucket with 'modelport pull URL FOLDER' first)"
        )
    fields: dict[str, Any] = dict(overrides)
    policy = _version_policy(entry.model_version_policy)
    if policy is not None:
        fields["version_policy"] = policy
    if entry.version_labels:
        fields["version_labels"] = dict(entry.version_labels)
    return FolderModel(
        name=entry.name,
        path=Path(entry.base_path).resolve(),
        declared_in=where,
        overrides=fields,
    )


def _version_policy(policy: Any) -> dict[str, Any] | None:
    """model.yaml's version_policy for a ServableVersionPolicy (None: not set)."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "latest":
        return {"latest": policy.latest.num_versions or 1}
    if kind == "all":
        return {"all": True}
    if kind == "specific":
        return {"specific": list(policy.specific.versions)}
    return None


class ModelConfigFile:
    """A ``--model_config_file``, read at start (SettingsError when it is unusable) and,
    with ``poll_s``, again when it changed and ``poll_s`` passed since the last read; a
    changed file that is unusable is logged and the last good list kept, as TF Serving
    keeps serving its last good config."""

    def __init__(
        self, path: Path, *, poll_s: float = 0.0, overrides: Mapping[str, Any] | None = None
    ) -> None:
        self.path = path
        self.poll_s = poll_s
        self.overrides = dict(overrides or {})
        self._stamp = _stamp(path)
        self._read_at = time.monotonic()
        self._models = read_model_config_list(path, overrides=self.overrides)

    def entries(self) -> tuple[FolderModel, ...]:
        """The models the file lists now."""
        if self.poll_s and time.monotonic() - self._read_at >= self.poll_s:
            self._read_at = time.monotonic()
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._models = read_model_config_list(self.path, overrides=self.overrides)
                    log.info("%s changed: %d models", self.path, len(self._models))
                except SettingsError as exc:
                    log.error("%s; still serving the models it listed before", exc)
        return self._models


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


# -- batching parameters -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TfBatching:
    """TF Serving's batching parameters (``--enable_batching``), with its defaults for
    what a file leaves out; ``num_batch_threads`` is None when not given."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int | None = None
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def overrides(self) -> dict[str, Any]:
        """The model.yaml fields these parameters set. A batch waits for company at most
        ``batch_timeout_micros``; the queue holds ``max_enqueued_batches`` full batches
        of requests; ``allowed_batch_sizes`` are the sizes the batcher prefers to form;
        ``num_batch_threads`` batches run at once, each on an instance (a copy of the
        model) of its own."""
        fields: dict[str, Any] = {
            "max_batch_size": self.max_batch_size,
            "batching": {
                "max_queue_delay_us": self.batch_timeout_micros,
                "max_queue_size": self.max_enqueued_batches * self.max_batch_size,
                "preferred_batch_sizes": list(self.allowed_batch_sizes),
            },
        }
        if self.num_batch_threads is not None:
            fields["instances"] = {"count": self.num_batch_threads}
        return fields


def read_batching_parameters(path: Path | None) -> TfBatching:
    """The parameters of a ``--batching_parameters_file`` (TF Serving's defaults when
    None); SettingsError for a value TF Serving would refuse too."""
    if path is None:
        return TfBatching()
    flag = "--batching_parameters_file"
    message = _parse(path, session_bundle_config_pb2.BatchingParameters(), flag)

    def value(name: str, default: int) -> int:
        got = int(getattr(message, name).value) if message.HasField(name) else default
        if got < 1 and name != "batch_timeout_micros":
            raise SettingsError(f"{path} ({flag}): field '{name}': must be at least 1")
        if got < 0:
            raise SettingsError(f"{path} ({flag}): field '{name}': must not be negative")
        return got

    batching = TfBatching(
        max_batch_size=value("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
        batch_timeout_micros=value("batch_timeout_micros", 0),
        max_enqueued_batches=value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES),
        num_batch_threads=(
            value("num_batch_threads", 1) if message.HasField("num_batch_threads") else None
        ),
        allowed_batch_sizes=tuple(message.allowed_batch_sizes),
        pad_variable_length_inputs=message.pad_variable_length_inputs,
    )
    sizes = batching.allowed_batch_sizes
    if sizes and (
        any(b <= a for a, b in itertools.pairwise(sizes))
        or sizes[0] < 1
        or sizes[-1] != batching.max_batch_size
    ):
        raise SettingsError(
            f"{path} ({flag}): field 'allowed_batch_sizes': {list(sizes)} must increase and "
            f"end with max_batch_size ({batching.max_batch_size}), as TF Serving requires"
        )
    if batching.pad_variable_length_inputs:
        log.warning(
            "%s: pad_variable_length_inputs is not applied: modelport batches together "
            "only requests whose shapes agree past the batch dimension",
            path,
        )
    return batching


# -- monitoring config ---------------------------------------------------------------------


def read_monitoring_path(path: Path) -> str:
    """The HTTP path a ``--monitoring_config_file`` asks TF Serving's metrics on, "" when
    its ``prometheus_config`` is not enabled."""
    flag = "--monitoring_config_file"
    config = _parse(path, monitoring_config_pb2.MonitoringConfig(), flag)
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return ""
    metrics_path = prometheus.path or DEFAULT_MONITORING_PATH
    if not metrics_path.startswith("/"):
        raise SettingsError(
            f"{path} ({flag}): field 'prometheus_config.path': {metrics_path!r} must start with '/'"
        )
    return metrics_path
