"""``GET /api/v1/config``: the configuration being served, as JSON, for smoke tests and
dashboards (the compose bundle's ``curl localhost:8000/api/v1/config``).

It answers the server's name and version, its listeners, and each model: versions,
state (and why not READY), runtime, signature, batching, instances and aliases. It is
built from an allow-list of fields, never from the settings or model.yaml as a whole,
so no secret can reach it: no API key, no credential of a remote model (its URL is
given without user, password or query, its headers not at all), no model key, no TLS
key. Reasons are scrubbed the same way, since a failed load may quote a URL.
It needs the ``infer`` scope once keys are on, like the v2 metadata routes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from fastapi import APIRouter, Response

from modelport.core.service import InferenceService, ModelView
from modelport.spec import TensorSpec

CONFIG_PATH = "/api/v1/config"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    """One address the server answers on, and what it speaks there."""

    name: str  # "http", "grpc", or a compat API's name
    address: str  # host:port
    protocols: tuple[str, ...]
    tls: bool = False
    path: str = "/"  # where on it the API is mounted


def build_config_router(service: InferenceService, listeners: Sequence[Listener]) -> APIRouter:
    router = APIRouter(tags=["repository"])

    @router.get(CONFIG_PATH, summary="The served configuration (no secrets)")
    async def config() -> Response:
        body = served_config(service, listeners)
        return Response(orjson.dumps(body), media_type="application/json")

    return router


def served_config(service: InferenceService, listeners: Sequence[Listener]) -> dict[str, Any]:
    """What ``GET /api/v1/config`` answers (see the module docstring)."""
    names = sorted({row.name for row in service.index()})
    return {
        "server": {"name": service.name, "version": service.version},
        "listeners": [
            {
                "name": listener.name,
                "address": listener.address,
                "protocols": list(listener.protocols),
                "tls": listener.tls,
                "path": listener.path,
            }
            for listener in listeners
        ],
        "models": [_model_json(service.model(name)) for name in names],
    }


def _model_json(view: ModelView) -> dict[str, Any]:
    model: dict[str, Any] = {
        "name": view.name,
        "state": view.state.value,
        "reason": without_credentials(view.reason),
        "versions": [str(v.version) for v in view.versions],
    }
    spec = view.spec
    if spec is None:
        return model
    latest = view.latest
    inputs = latest.signature.inputs if latest is not None else spec.inputs
    outputs = latest.signature.outputs if latest is not None else spec.outputs
    model |= {
        "runtime": spec.runtime,
        "platform": view.platform,
        "description": spec.description,
        "aliases": list(spec.aliases),
        "signature": {"inputs": _tensors(inputs), "outputs": _tensors(outputs)},
        "max_batch_size": spec.max_batch_size,
        "batching": spec.batching.model_dump(mode="json"),
        "instances": spec.instances.model_dump(mode="json"),
        "version_labels": spec.version_labels,
    }
    if spec.remote is not None:
        # Where it runs, without credentials; the headers (tokens) are left out whole.
        model["remote"] = {
            "url": _bare_url(spec.remote.url),
            "protocol": spec.remote.protocol,
            "model": spec.remote.model,
        }
        if spec.remote.urls:
            model["remote"]["urls"] = [_bare_url(url) for url in spec.remote.urls]
    if spec.container is not None:
        model["container"] = {"image": spec.container.image}
    return model


def _tensors(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json", exclude_none=True) for t in specs]


def _bare_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def without_credentials(text: str) -> str:
    """``text`` with each URL in it bare: no user, password, query or fragment."""
    return _URL.sub(lambda match: _bare_url(match.group(0)), text)
