"""The zip-task cluster server's own client, unchanged, against a real ``modelport serve``
with ``--compat inference-server=PORT`` and the real Docker engine.

The client (``support/inference_server_client.py``, written from its wire facts) joins
absolute paths onto its base URL, sends scalars as query parameters and no headers; it
must work by changing only its base address. Also: its bad input answered in upstream's
shape, keys as HTTP Basic auth, an open listener, and task calls refused on a network
address without keys.
"""

from __future__ import annotations

import socket
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from modelport.security.keys import KeyStore
from support.inference_server_client import Model, PublicClient
from support.task_fixtures import make_zip

pytestmark = pytest.mark.timeout(120)

COMPAT = "inference-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class CompatServer:
    url: str  # the main port
    compat: str  # the listener's root
    proc: Any


def _start(
    server_factory: Any, repo: Path, *, env: dict[str, str], args: tuple[str, ...] = ()
) -> CompatServer:
    port = _free_port()
    env = {"MODELPORT_TASK_SLOTS": "2", **env}
    proc = server_factory(repo=repo, env=env, args=["--compat", f"{COMPAT}={port}", *args])
    return CompatServer(proc.url, f"http://127.0.0.1:{port}/", proc)


@pytest.fixture(scope="module")
def posting(server_factory: Any, task_repository: Path, upstream_image: str) -> CompatServer:
    """A loopback server that lets clients post models of the upstream test image."""
    env = {"MODELPORT_COMPAT_ALLOW_MODEL_POSTING": "true", "MODELPORT_MODEL_IMAGES": upstream_image}
    return _start(server_factory, task_repository, env=env)


def _zip_file(folder: Path, name: str, members: dict[str, bytes]) -> Path:
    path = folder / name
    path.write_bytes(make_zip(members))
    return path


def _poll(client: PublicClient, uid: str, out: Path, timeout: float = 60) -> requests.Response:
    """The client's loop: get_output_zip_by_uid until it answers 200 (or fails)."""
    deadline = time.monotonic() + timeout
    while True:
        res = client.get_output_zip_by_uid(uid, out)
        if res.status_code not in (551, 554) or time.monotonic() > deadline:
            return res
        time.sleep(0.2)


def test_the_real_client_flow(posting: CompatServer, upstream_image: str, tmp_path: Path) -> None:
    # Any path in the base URL is dropped by the client's urljoin: the API is at the root.
    client = PublicClient(posting.compat + "some/path/")
    assert b"Hello world" in client.get_hello_world()

    # As the client's example model and the upstream e2e test: no /model zip.
    plain = client.post_model(
        Model(
            human_readable_id=f"hello_world_{datetime.now()}",  # spaces and colons
            container_tag=upstream_image,
            model_available=False,
            use_gpu=False,
        )
    )
    assert plain.uid and plain.description is None and plain.model_available is False
    assert plain.human_readable_id.startswith("hello_world_") and ":" in plain.human_readable_id

    weights = _zip_file(tmp_path, "model.zip", {"weights.txt": b"w-1"})
    with_files = client.post_model(
        Model(
            human_readable_id="-seg_model",  # token_urlsafe ids may start with '-'
            container_tag=upstream_image,
            description="segments",
            model_available=True,
        ),
        zip_file=weights,
    )
    assert with_files.model_available is True and with_files.description == "segments"

    # A container that writes nothing: 200 with an empty zip, as upstream.
    empty = client.post_task(
        plain.human_readable_id, _zip_file(tmp_path, "a.zip", {"nothing": b""})
    )
    assert isinstance(empty, str) and len(empty) >= 32
    out = tmp_path / "empty.zip"
    assert _poll(client, empty, out).status_code == 200
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == []

    uid = client.post_task(
        with_files.human_readable_id, _zip_file(tmp_path, "b.zip", {"scan.txt": b"abc"})
    )
    out = tmp_path / "out.zip"
    res = _poll(client, uid, out)
    assert res.status_code == 200, res.text
    with zipfile.ZipFile(out) as archive:
        assert archive.read("scan.txt") == b"ABC"
        assert archive.read("model.txt") == b"w-1"
        shm_kib = int(archive.read("shm").split()[1])
        assert shm_kib == 2 * 1024 * 1024  # compat_container_shm_size, not Docker's 64m

    listed = requests.get(posting.compat + "api/models/", timeout=10).json()
    mine = {m["human_readable_id"]: m for m in listed}
    assert mine[plain.human_readable_id]["uid"] == plain.uid
    assert mine["-seg_model"]["model_available"] is True
    assert set(mine["-seg_model"]) >= {"uid", "human_readable_id", "description",
                                       "container_tag", "use_gpu", "model_available",
                                       "model_volume_id"}  # fmt: skip

    # The native tasks API sees the same task queue; it keeps failing empty output.
    native = requests.get(f"{posting.url}/api/tasks/{uid}", timeout=10).json()
    assert native["status"] == "succeeded" and native["accept_empty_output"] is True

    assert client.delete_task_by_uid(uid).status_code == 200
    gone = client.get_output_zip_by_uid(uid, out)
    assert gone.status_code == 554 and gone.json() == {"detail": {"detail": "Task not found"}}


def test_only_the_upstream_api_is_on_the_listener(posting: CompatServer) -> None:
    root = posting.compat
    assert requests.get(root, timeout=10).json()["message"].startswith("Hello world")
    assert requests.get(root + "docs", timeout=10).status_code == 200
    paths = requests.get(root + "openapi.json", timeout=10).json()["paths"]
    assert set(paths) == {"/", "/api/models/", "/api/tasks/", "/api/tasks/{uid}"}
    for path in ("v2", "v2/models", "api/tasks", "metrics", "predictor/"):
        assert requests.get(root + path, timeout=10).status_code in (404, 405, 307), path
    # The main port keeps its own routes; the old prefix stays for string-built URLs.
    assert requests.get(posting.url + "/v2", timeout=10).status_code == 200
    prefixed = requests.get(posting.url + "/compat/inference-server/api/models/", timeout=10)
    assert prefixed.status_code == 200 and isinstance(prefixed.json(), list)
    assert "inference-server" in posting.proc.log()


def test_bad_input_is_a_clear_4xx_in_upstreams_shape(
    posting: CompatServer, upstream_image: str, tmp_path: Path
) -> None:
    root = posting.compat

    def post(path: str, params: dict[str, Any], files: dict[str, Any] | None = None) -> Any:
        return requests.post(root + path, params=params, files=files, timeout=30)

    missing = post("api/tasks/", {})
    assert missing.status_code == 422
    assert {tuple(e["loc"]) for e in missing.json()["detail"]} == {
        ("query", "model_human_readable_id"), ("body", "zip_file")}  # fmt: skip
    assert post("api/models/", {"container_tag": upstream_image}).status_code == 422
    unknown = post("api/tasks/", {"model_human_readable_id": "nope"}, {"zip_file": make_zip({})})
    assert unknown.status_code == 550 and unknown.json() == {"detail": "ModelNotFound"}

    model = {"container_tag": upstream_image, "human_readable_id": "bad-input"}
    assert post("api/models/", {**model, "model_available": False}).status_code == 200
    answers = {
        "not a zip": post("api/tasks/", {"model_human_readable_id": "bad-input"},
                          {"zip_file": ("in.zip", b"plain text")}),
        "zip slip": post("api/tasks/", {"model_human_readable_id": "bad-input"},
                         {"zip_file": make_zip({"../../etc/x": b"1"})}),
        "bomb": post("api/tasks/", {"model_human_readable_id": "bad-input"},
                     {"zip_file": make_zip({"zeros": bytes(50_000_000)})}),
        "duplicate model": post("api/models/", model),
        "image not allowed": post("api/models/", {**model, "container_tag": "evil/miner:1",
                                                  "human_readable_id": "other"}),
        "available without zip": post("api/models/", {**model, "human_readable_id": "x1",
                                                      "model_available": True}),
        "zip but not available": post("api/models/", {**model, "human_readable_id": "x2",
                                                      "model_available": False},
                                      {"zip_file": make_zip({"w": b"1"})}),
        "model zip slip": post("api/models/", {**model, "human_readable_id": "x3"},
                               {"zip_file": make_zip({"../w": b"1"})}),
        "id with a slash": post("api/models/", {**model, "human_readable_id": "a/b"}),
        "bad boolean": post("api/models/", {**model, "human_readable_id": "x4",
                                            "use_gpu": "maybe"}),
    }  # fmt: skip
    expected = {"duplicate model": 409, "image not allowed": 403, "bad boolean": 422}
    for case, answer in answers.items():
        assert answer.status_code == expected.get(case, 400), (case, answer.text)
        assert set(answer.json()) == {"detail"}, case
        assert "/tmp" not in answer.text, case  # no server paths
    assert "ratio" in answers["bomb"].json()["detail"]
    for method in (requests.get, requests.delete):
        res = method(root + "api/tasks/never-was", timeout=10)
        assert res.status_code == 554 and res.json() == {"detail": {"detail": "Task not found"}}
    assert requests.get(root, timeout=10).status_code == 200  # serving on


def test_a_gpu_model_on_a_worker_without_gpu_slots_fails_saying_why(
    posting: CompatServer, upstream_image: str, tmp_path: Path
) -> None:
    client = PublicClient(posting.compat)
    model = Model(human_readable_id="gpu model", container_tag=upstream_image, use_gpu=True)
    assert client.post_model(model).use_gpu is True
    uid = client.post_task("gpu model", _zip_file(tmp_path, "in.zip", {"a": b"x"}))
    res = _poll(client, uid, tmp_path / "out.zip")
    assert res.status_code == 552
    assert "needs a GPU" in res.json()["detail"]["detail"]
    assert "task_gpus" in res.json()["detail"]["detail"]


def test_posted_models_are_written_with_the_compat_container_settings(
    posting: CompatServer, task_repository: Path, upstream_image: str
) -> None:
    client = PublicClient(posting.compat)
    client.post_model(Model(human_readable_id="a b:c", container_tag=upstream_image))
    [folder] = [p for p in task_repository.iterdir() if p.name.startswith("a_b_c-")]
    spec = yaml.safe_load((folder / "model.yaml").read_text())
    assert spec["parameters"]["human_readable_id"] == "a b:c"
    assert spec["container"] == {"image": upstream_image, "gpus": 0, "network": "none",
                                 "user": "auto", "shm_size": "2g"}  # fmt: skip


@pytest.fixture(scope="module")
def keyed(
    server_factory: Any, task_repository: Path, upstream_image: str, tmp_path_factory: Any
) -> tuple[CompatServer, CompatServer, dict[str, str]]:
    """Two servers on 0.0.0.0 with keys: one listener asking for them, one open."""
    store = KeyStore(tmp_path_factory.mktemp("compat-keys") / "keys.json")
    tokens = {s: store.create(f"{s}-only", [s]).token for s in ("infer", "tasks", "admin")}
    env = {
        "MODELPORT_KEYS_FILE": str(store.path),
        "MODELPORT_COMPAT_ALLOW_MODEL_POSTING": "true",
        "MODELPORT_MODEL_IMAGES": upstream_image,
    }
    wide = ("--host", "0.0.0.0")
    keys = _start(server_factory, task_repository, env=env, args=wide)
    opened = _start(server_factory, task_repository, env={**env, "MODELPORT_COMPAT_OPEN": COMPAT},
                    args=wide)  # fmt: skip
    return keys, opened, tokens


def _with_key(root: str, key: str) -> str:
    return root.replace("http://", f"http://any-user:{key}@")


def test_a_key_comes_as_basic_auth_in_the_url(
    keyed: tuple[CompatServer, CompatServer, dict[str, str]], upstream_image: str, tmp_path: Path
) -> None:
    server, _, tokens = keyed
    refused = requests.get(server.compat + "api/models/", timeout=10)
    assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
    assert set(refused.json()) == {"detail"}
    assert requests.get(server.compat, timeout=10).status_code == 200  # hello is public

    tasks = PublicClient(_with_key(server.compat, tokens["tasks"]))
    model = Model(human_readable_id="keyed", container_tag=upstream_image)
    with pytest.raises(TypeError):  # the client parses the 403 body as a Model, as upstream
        tasks.post_model(model)
    admin = PublicClient(_with_key(server.compat, tokens["admin"]))
    assert admin.post_model(model).uid
    uid = tasks.post_task("keyed", _zip_file(tmp_path, "in.zip", {"a.txt": b"x"}))
    assert _poll(tasks, uid, tmp_path / "out.zip").status_code == 200

    wrong = PublicClient(_with_key(server.compat, "mp_not_a_key"))
    assert wrong.get_output_zip_by_uid(uid, tmp_path / "x.zip").status_code == 401
    # The main port takes Basic auth too.
    infer = _with_key(server.url, tokens["infer"])
    assert requests.get(infer + "/v2/models/upper", timeout=10).status_code != 401
    assert requests.get(server.url + "/v2/models/upper", timeout=10).status_code == 401


def test_an_open_listener_needs_no_key_but_posting_models_does(
    keyed: tuple[CompatServer, CompatServer, dict[str, str]], upstream_image: str, tmp_path: Path
) -> None:
    _, server, tokens = keyed
    client = PublicClient(server.compat)
    uid = client.post_task("upper", _zip_file(tmp_path, "in.zip", {"a.txt": b"x"}))
    assert _poll(client, uid, tmp_path / "out.zip").status_code == 200
    posted = requests.post(
        server.compat + "api/models/",
        params={"human_readable_id": "open", "container_tag": upstream_image},
        timeout=10,
    )
    assert posted.status_code == 401
    admin = PublicClient(_with_key(server.compat, tokens["admin"]))
    assert admin.post_model(Model(human_readable_id="open", container_tag=upstream_image)).uid
    # The main port still asks for keys.
    assert requests.get(server.url + "/api/tasks", timeout=10).status_code == 401
    assert "is open (compat_open)" in server.proc.log()


def test_task_calls_are_refused_on_a_network_address_without_keys(
    server_factory: Any, task_repository: Path, tmp_path: Path
) -> None:
    server = _start(server_factory, task_repository, env={}, args=("--host", "0.0.0.0"))
    native = requests.post(
        server.url + "/api/tasks", data={"model": "upper"},
        files={"files": ("a.txt", b"x")}, timeout=10,
    )  # fmt: skip
    assert native.status_code == 403 and "tasks_open" in native.json()["error"]
    compat = PublicClient(server.compat).post_task(
        "upper", _zip_file(tmp_path, "in.zip", {"a": b"x"})
    )
    assert compat.status_code == 403 and "tasks_open" in compat.json()["detail"]
    warning = [line for line in server.proc.log().splitlines() if "without API keys" in line]
    assert len(warning) == 1 and "run every model" in warning[0]
