"""Remote repositories: every model a remote server lists, served by the front.

A second ``modelport serve`` process stands in for Triton (it speaks KServe v2 over
HTTP and gRPC, and TF Serving's gRPC API). The front declares it three ways, in a
``.remote.yaml`` file in a model folder's place (over HTTP, over gRPC, and as TF
Serving) and as a ``[[remote]]`` table of ``modelport.toml`` whose URL and headers
carry secrets, and serves its models without a folder for any of them.
"""

from __future__ import annotations

import socket
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from modelport.errors import SpecError
from modelport.redaction import REDACTED
from modelport.settings import Settings, SettingsError
from modelport.spec.remote_repository import parse_remote_repository
from support.builders import add_sub_onnx, mlp_onnx, write_model

pytestmark = pytest.mark.timeout(120)

PASSWORD = "mirror-pass-3"
TOKEN = "mirror-bearer-token"
WAIT_S = 30.0
A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.ones((2, 4), np.float32)


@dataclass
class Mirrors:
    fleet: Any  # conftest.ServerProcess
    fleet_repo: Path
    front: Any


def fleet_repository(root: Path) -> Path:
    yaml = "runtime: onnx\nmax_batch_size: 8\nversion_policy: {all: true}\n"
    folder = write_model(root, "add_sub", yaml)
    add_sub_onnx(folder / "1/model.onnx")
    add_sub_onnx(folder / "2/model.onnx")
    mlp_onnx(write_model(root, "mlp", "runtime: onnx\n") / "1/model.onnx", sizes=(16, 8, 4))
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def mirrors(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirrors]:
    fleet_repo = fleet_repository(tmp_path_factory.mktemp("mirror-fleet"))
    grpc_port = free_port()
    fleet = server_factory(repo=fleet_repo, grpc_port=grpc_port, args=["--poll", "0.2"])
    grpc = f"grpc://127.0.0.1:{grpc_port}"
    repo = tmp_path_factory.mktemp("mirror-front")
    (repo / "triton.remote.yaml").write_text(
        f"remote_repository: {fleet.url}\nprefix: t-\nrefresh: 0.2\ninstances: 2\n"
    )
    (repo / "grpc.remote.yaml").write_text(
        f"remote_repository: [{grpc}]\nprotocol: v2\nmodels: [mlp]\nprefix: g-\n"
    )
    (repo / "tfs.remote.yaml").write_text(
        f"remote_repository: {grpc}\nprotocol: tfserving\nmodels: [add_sub, nope]\nprefix: f-\n"
    )
    (repo / "broken.remote.yaml").write_text("remote_repository: ftp://nowhere\n")
    secret_url = fleet.url.replace("http://", f"http://bob:{PASSWORD}@")
    config = repo.parent / "mirror-modelport.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [server]
            model_sources = ["http://127.0.0.1:*", "grpc://127.0.0.1:*"]

            [[remote]]
            remote_repository = "{secret_url}"
            prefix = "s-"
            models = ["add_sub"]
            headers = {{authorization = "Bearer {TOKEN}"}}
            """
        )
    )
    front = server_factory(repo=repo, env={"MODELPORT_CONFIG": str(config)}, args=["--poll", "0.2"])
    yield Mirrors(fleet, fleet_repo, front)
    front.stop()
    fleet.stop()


def index(url: str) -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = {}
    for row in httpx.post(url + "/v2/repository/index", json={}, timeout=10).json():
        rows.setdefault(row["name"], []).append(row)
    return rows


def add_sub(url: str, model: str, version: str = "") -> np.ndarray:
    with triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=30) as client:
        inputs = []
        for name, array in (("INPUT0", A), ("INPUT1", B)):
            tensor = triton.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result: np.ndarray = client.infer(model, inputs, model_version=version).as_numpy("OUTPUT0")
        return result


def version_rows(url: str, model: str, version: str) -> int:
    found = httpx.get(f"{url}/v2/models/{model}/versions/{version}/stats", timeout=10).json()
    return sum(int(s["inference_count"]) for s in found["model_stats"])


def test_every_listed_model_is_served(mirrors: Mirrors) -> None:
    rows = index(mirrors.front.url)
    mirrored = {"t-add_sub", "t-mlp", "g-mlp", "f-add_sub", "s-add_sub"}
    assert mirrored <= set(rows), sorted(rows)
    assert not {"g-add_sub", "f-nope", "s-mlp"} & set(rows)  # models: [...] limits them
    for name in mirrored:
        assert all(r["state"] == "READY" for r in rows[name]), rows[name]
    for name in ("t-add_sub", "f-add_sub", "s-add_sub"):
        assert [r["version"] for r in rows[name]] == ["1", "2"]
    for name in ("t-add_sub", "f-add_sub", "s-add_sub"):
        np.testing.assert_array_equal(add_sub(mirrors.front.url, name), A + B)
    config = httpx.get(f"{mirrors.front.url}/v2/models/t-add_sub/config", timeout=10).json()
    assert config["max_batch_size"] == 8  # as the remote has it: the front batches
    assert config["platform"] == "remote"


def test_each_version_asks_the_remote_for_its_own(mirrors: Mirrors) -> None:
    fleet, front = mirrors.fleet.url, mirrors.front.url
    before = {v: version_rows(fleet, "add_sub", v) for v in ("1", "2")}
    for model in ("t-add_sub", "f-add_sub"):
        add_sub(front, model, "1")
        add_sub(front, model, "1")
        add_sub(front, model, "2")
    after = {v: version_rows(fleet, "add_sub", v) for v in ("1", "2")}
    assert after["1"] - before["1"] == 4 * len(A)
    assert after["2"] - before["2"] == 2 * len(A)


def test_a_model_the_remote_adds_is_mirrored(mirrors: Mirrors) -> None:
    folder = write_model(mirrors.fleet_repo, "late", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(folder / "1/model.onnx")
    deadline = time.monotonic() + WAIT_S
    while [r.get("state") for r in index(mirrors.front.url).get("t-late", [])] != ["READY"]:
        if time.monotonic() > deadline:
            pytest.fail(f"t-late never served:\n{mirrors.front.log()}")
        time.sleep(0.1)
    np.testing.assert_array_equal(add_sub(mirrors.front.url, "t-late"), A + B)


def test_no_surface_shows_a_mirrors_secret(mirrors: Mirrors) -> None:
    url = mirrors.front.url
    seen = [httpx.post(url + "/v2/repository/index", json={}, timeout=10).text]
    config = httpx.get(f"{url}/v2/models/s-add_sub/config", timeout=10)
    assert REDACTED in config.text, config.text
    seen += [config.text, httpx.get(f"{url}/api/v1/config", timeout=10).text]
    seen += [httpx.get(f"{url}/metrics", timeout=10).text, mirrors.front.log()]
    for text in seen:
        assert PASSWORD not in text and TOKEN not in text
    # The broken declaration is logged, and the others serve regardless.
    assert "broken.remote.yaml" in mirrors.front.log()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("protocol: tfserving\nremote_repository: grpc://a:1\n", "name them in 'models'"),
        ("remote_repository: http://a:1\nprotocol: tfserving\nmodels: [m]\n", "grpc://"),
        ("remote_repository: []\n", "name the server's URL"),
        ("remote_repository: 'ftp://u:secret@a:1'\n", "expected http://"),
        ("remote_repository: http://a:1\nprefix: a/b\n", "'prefix'"),
        ("remote_repository: http://a:1\nurl: http://b:1\n", "'url': unknown"),
    ],
)
def test_declaration_errors(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_remote_repository(text, "models/x.remote.yaml")
    message = caught.value.message
    assert message.startswith("models/x.remote.yaml: ") and expected in message, message
    assert "secret" not in message


def test_the_remote_setting(tmp_path: Path) -> None:
    config = tmp_path / "modelport.toml"
    config.write_text(
        '[server]\nport = 9000\n\n[[remote]]\nremote_repository = "http://a:1"\n\n'
        '[[remote]]\nremote_repository = ["grpc://b:1", "grpc://c:1"]\nprefix = "b-"\n'
    )
    settings = Settings.load(environ={}, config=config)
    assert settings.port == 9000
    assert [r.remote_repository for r in settings.remote] == [
        ("http://a:1",),
        ("grpc://b:1", "grpc://c:1"),
    ]
    from_env = Settings.load(
        environ={"MODELPORT_REMOTE": '[{"remote_repository": "http://d:1", "prefix": "d-"}]'}
    )
    assert [(r.remote_repository, r.prefix) for r in from_env.remote] == [(("http://d:1",), "d-")]
    with pytest.raises(SettingsError) as caught:
        Settings.load(environ={"MODELPORT_REMOTE": "[{"})
    assert "MODELPORT_REMOTE" in str(caught.value)
