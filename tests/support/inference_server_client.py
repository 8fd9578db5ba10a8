"""A small reimplementation of the zip-task cluster server's client
(``inference_server_client@714112e``, not on PyPI), written from the wire facts in
``shared/clients/inference-server.md`` so the tests send exactly what it sends.

What matters, kept as the client does it:
- every URL is ``urljoin(base_url, "/api/...")``: any path in the base URL is dropped;
- ``requests.*(url, params=..., files=..., verify=cert)``: scalars as query parameters
  (``None`` values dropped, booleans as ``True``/``False``), files as multipart, and no
  headers (a key can only come in the URL, as HTTP Basic auth);
- ``post_task`` answers ``json.loads(body)`` (the uid) on success, else the Response;
- ``get_output_zip_by_uid`` writes the body to a file when ``res.ok``, else prints
  ``json.loads(body)``; ``post_model`` parses the answer with ``Model(**json)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

TASKS = "/api/tasks/"
MODELS = "/api/models/"


@dataclass
class Model:
    """The client's model: ``Model(**json)`` of the server's answer, so an unexpected
    field is a TypeError here as it is there."""

    human_readable_id: str
    container_tag: str
    description: str | None = None
    use_gpu: bool = False
    model_available: bool = False
    input_mountpoint: str | None = None
    output_mountpoint: str | None = None
    model_mountpoint: str | None = None
    id: int | None = None
    uid: str | None = None
    model_zip: str | None = None
    model_volume_id: str | None = None


class ClientBackend:
    """``client_backend_requests_impl``: requests on ``urljoin(base_url, path)``."""

    def __init__(self, base_url: str, cert: str | bool | None = None) -> None:
        self.base_url = base_url
        self.cert = cert

    def _url(self, path: str) -> str:
        return urljoin(self.base_url, path)

    def get(self, path: str, params: dict[str, Any] | None = None) -> requests.Response:
        return requests.get(self._url(path), params=params, verify=self.cert, timeout=60)

    def post(
        self, path: str, params: dict[str, Any] | None = None, files: Any = None
    ) -> requests.Response:
        return requests.post(
            self._url(path), params=params, files=files, verify=self.cert, timeout=60
        )

    def delete(self, path: str, params: dict[str, Any] | None = None) -> requests.Response:
        return requests.delete(self._url(path), params=params, verify=self.cert, timeout=60)


def _dropping_none(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class PublicClient:
    """The client's public API calls."""

    def __init__(self, base_url: str, cert: str | bool | None = None) -> None:
        self.backend = ClientBackend(base_url, cert)

    def get_hello_world(self) -> bytes:
        return self.backend.get("/").content

    def post_model(self, model: Model, zip_file: Path | None = None) -> Model:
        params = _dropping_none({
            "human_readable_id": model.human_readable_id,
            "container_tag": model.container_tag,
            "use_gpu": model.use_gpu,
            "model_available": model.model_available,
            "input_mountpoint": model.input_mountpoint,
            "output_mountpoint": model.output_mountpoint,
            "model_mountpoint": model.model_mountpoint,
            "description": model.description,
        })  # fmt: skip
        if model.model_available:
            assert zip_file is not None
            with zip_file.open("rb") as handle:
                res = self.backend.post(MODELS, params=params, files={"zip_file": handle})
        else:
            res = self.backend.post(MODELS, params=params)
        return Model(**json.loads(res.content))

    def post_task(
        self,
        model_human_readable_id: str,
        zip_file_path: Path,
        relative_zip_file_path: str | None = None,
        uid: str | None = None,
    ) -> Any:
        params = _dropping_none({
            "model_human_readable_id": model_human_readable_id,
            "relative_zip_file_path": relative_zip_file_path,
            "uid": uid,
        })  # fmt: skip
        with zip_file_path.open("rb") as handle:
            res = self.backend.post(TASKS, params=params, files={"zip_file": handle})
        if res.ok:
            return json.loads(res.content)
        return res

    def get_output_zip_by_uid(self, uid: str, output_zip_path: Path) -> requests.Response:
        res = self.backend.get(TASKS + uid)
        if res.ok:
            output_zip_path.write_bytes(res.content)
        else:
            print(json.loads(res.content))
        return res

    def delete_task_by_uid(self, uid: str) -> requests.Response:
        return self.backend.delete(TASKS + uid)
