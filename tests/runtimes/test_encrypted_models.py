"""Encrypted ONNX models (``model.onnx.enc``): decrypted in memory with the key from the
settings, served like plain ones; without the right key only that model is UNAVAILABLE.
Wired as app.py wires them (``build_service``), in process and as a real server; and
``modelport encrypt`` as a command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelport.core.service import InferenceService
from modelport.server.build import build_service
from modelport.settings import Settings
from modelport.supply.encryption import KEY_ENV, decrypt_bytes, encrypt_file, new_key, parse_key
from modelport.tensors import InferenceRequest, Tensor
from support.builders import add_sub_onnx, mlp_onnx, write_model

KEY = new_key()
MLP = (16, 32, 10)

Serve = Callable[..., Awaitable[InferenceService]]


@pytest.fixture
async def serve_app(repo: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Serve]:
    """``await serve_app(key=..., key_file=...)``: app.py's service over ``repo``, with
    MODELPORT_MODEL_KEY set to ``key`` (unset if empty)."""
    services: list[InferenceService] = []

    async def start(key: str = "", key_file: str = "") -> InferenceService:
        if key:
            monkeypatch.setenv(KEY_ENV, key)
        else:
            monkeypatch.delenv(KEY_ENV, raising=False)
        service = build_service(Settings(repository=str(repo), model_key_file=key_file))
        services.append(service)
        await service.open()
        return service

    yield start
    for service in services:
        await service.close()


def _encrypted_mlp(repo: Path, name: str, key: str = KEY) -> Path:
    folder = write_model(repo, name, "runtime: onnx\nmax_batch_size: 8\n")
    mlp_onnx(folder / "1" / "model.onnx", sizes=MLP)
    encrypt_file(folder / "1" / "model.onnx", parse_key(key), remove_plain=True)
    return folder / "1" / "model.onnx.enc"


def _row(service: InferenceService, name: str) -> tuple[str, str]:
    (row,) = [r for r in service.index() if r.name == name]
    return row.state, row.reason


async def _infer(service: InferenceService, name: str, x: np.ndarray) -> np.ndarray:
    response = await service.infer(InferenceRequest(name, (Tensor("INPUT0", "FP32", x),)))
    return response.outputs[0].data


async def test_encrypted_model_serves_like_the_plain_one(repo: Path, serve_app: Serve) -> None:
    write_model(repo, "plain", "runtime: onnx\nmax_batch_size: 8\n")
    mlp_onnx(repo / "plain" / "1" / "model.onnx", sizes=MLP)
    enc = _encrypted_mlp(repo, "secret")
    assert not (enc.parent / "model.onnx").exists()
    service = await serve_app(key=KEY)
    assert _row(service, "secret") == ("READY", "")
    signature = service.get_version("secret").signature
    assert signature == service.get_version("plain").signature
    x = np.random.default_rng(0).standard_normal((3, MLP[0])).astype(np.float32)
    expected = await _infer(service, "plain", x)
    np.testing.assert_array_equal(await _infer(service, "secret", x), expected)
    # Nothing decrypted was left on disk beside the encrypted file.
    assert sorted(p.name for p in enc.parent.iterdir()) == ["model.onnx.enc"]


async def test_key_from_a_key_file(repo: Path, serve_app: Serve, tmp_path: Path) -> None:
    _encrypted_mlp(repo, "secret")
    key_file = tmp_path / "model.key"
    key_file.write_text(KEY + "\n")
    service = await serve_app(key_file=str(key_file))
    assert _row(service, "secret") == ("READY", "")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "no model key: set MODELPORT_MODEL_KEY or model_key_file"),
        (new_key(), "cannot decrypt: encrypted with a different key"),
        ("0123", "MODELPORT_MODEL_KEY does not hold a model key"),
    ],
)
async def test_without_the_right_key_only_that_model_is_unavailable(
    repo: Path, serve_app: Serve, key: str, reason: str
) -> None:
    enc = _encrypted_mlp(repo, "secret")
    write_model(repo, "plain", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(repo / "plain" / "1" / "model.onnx")
    service = await serve_app(key=key)
    state, why = _row(service, "secret")
    assert state == "UNAVAILABLE"
    assert why.startswith(f"model 'secret': {enc}: ") and reason in why
    if key:
        assert key not in why
    assert _row(service, "plain") == ("READY", "")


async def test_tampered_file_is_unavailable(repo: Path, serve_app: Serve) -> None:
    enc = _encrypted_mlp(repo, "secret")
    blob = bytearray(enc.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    enc.write_bytes(bytes(blob))
    service = await serve_app(key=KEY)
    state, why = _row(service, "secret")
    assert state == "UNAVAILABLE" and "altered" in why


async def test_plain_file_wins_when_both_are_there(repo: Path, serve_app: Serve) -> None:
    enc = _encrypted_mlp(repo, "both")
    mlp_onnx(enc.parent / "model.onnx", sizes=MLP)
    service = await serve_app()  # no key needed: the plain file is served
    assert _row(service, "both") == ("READY", "")


def test_real_server_serves_an_encrypted_model(
    tmp_path: Path, server_factory: Callable[..., Any]
) -> None:
    repo = tmp_path / "models"
    _encrypted_mlp(repo, "secret")
    server = server_factory(repo=repo, env={KEY_ENV: KEY})
    url = server.url
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, MLP[0]],
                        "data": [0.5] * MLP[0]}]}  # fmt: skip
    response = httpx.post(f"{url}/v2/models/secret/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    assert out["shape"] == [1, MLP[-1]]
    assert KEY not in server.log()


def _modelport(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_MODEL_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        capture_output=True,
        text=True,
        # Wide enough that rich's error box never breaks a message across lines.
        env={**environ, "COLUMNS": "400", **(env or {})},
        timeout=60,
    )


def test_cli_new_key_and_encrypt(tmp_path: Path) -> None:
    made = _modelport("encrypt", "--new-key")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert len(parse_key(key)) == 32 and made.stdout.count("\n") == 1
    key_file = tmp_path / "model.key"
    key_file.write_text(key)
    repo = tmp_path / "models"
    for version in (1, 2):
        mlp_onnx(repo / "m" / str(version) / "model.onnx", sizes=MLP)
    single = tmp_path / "other.onnx"
    single.write_bytes(b"any file")

    done = _modelport("encrypt", str(repo / "m"), "--key-file", str(key_file), "--remove-plain")
    assert done.returncode == 0, done.stderr
    for version in (1, 2):
        assert sorted(p.name for p in (repo / "m" / str(version)).iterdir()) == ["model.onnx.enc"]
    done = _modelport("encrypt", str(single), env={KEY_ENV: key})
    assert done.returncode == 0, done.stderr
    assert single.exists()
    assert decrypt_bytes(Path(f"{single}.enc").read_bytes(), parse_key(key)) == b"any file"


def test_cli_encrypt_errors(tmp_path: Path) -> None:
    plain = tmp_path / "model.onnx"
    plain.write_bytes(b"x")
    no_key = _modelport("encrypt", str(plain))
    assert no_key.returncode == 2 and "set MODELPORT_MODEL_KEY or model_key_file" in no_key.stderr
    assert not Path(f"{plain}.enc").exists()
    missing = _modelport("encrypt", str(tmp_path / "nope.onnx"), env={KEY_ENV: new_key()})
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
