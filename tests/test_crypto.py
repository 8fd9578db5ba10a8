"""crypto.py: the encrypted file format, keys and their errors (which never hold a key)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from modelport.supply.encryption import (
    KEY_ENV,
    MAGIC,
    NONCE_BYTES,
    DecryptionFailed,
    KeyUnavailable,
    decrypt_bytes,
    encrypt_bytes,
    encrypt_file,
    key_provider,
    new_key,
    parse_key,
)

KEY = bytes(range(32))
DATA = b"\x08\x07 an onnx model, or any bytes" * 100


def test_round_trip() -> None:
    blob = encrypt_bytes(DATA, KEY)
    assert blob.startswith(MAGIC) and DATA not in blob
    assert decrypt_bytes(blob, KEY) == DATA
    assert decrypt_bytes(encrypt_bytes(b"", KEY), KEY) == b""


def test_each_encryption_has_its_own_nonce() -> None:
    first, second = encrypt_bytes(DATA, KEY), encrypt_bytes(DATA, KEY)
    nonces = {blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES] for blob in (first, second)}
    assert first != second and len(nonces) == 2


def test_wrong_key() -> None:
    blob = encrypt_bytes(DATA, KEY)
    with pytest.raises(DecryptionFailed, match="encrypted with a different key"):
        decrypt_bytes(blob, bytes(32))


@pytest.mark.parametrize("where", [0, len(MAGIC), len(MAGIC) + NONCE_BYTES, -1])
def test_tampered_byte(where: int) -> None:
    blob = bytearray(encrypt_bytes(DATA, KEY))
    blob[where] ^= 0x01
    # A changed magic is no longer our file; any other changed byte fails authentication.
    match = "not a modelport encrypted file" if where == 0 else "altered"
    with pytest.raises(DecryptionFailed, match=match):
        decrypt_bytes(bytes(blob), KEY)


def test_truncated_file() -> None:
    blob = encrypt_bytes(DATA, KEY)
    with pytest.raises(DecryptionFailed, match="truncated"):
        decrypt_bytes(blob[: len(MAGIC) + NONCE_BYTES + 3], KEY)
    with pytest.raises(DecryptionFailed, match="altered or truncated"):
        decrypt_bytes(blob[:-1], KEY)


def test_plain_file_is_refused() -> None:
    with pytest.raises(DecryptionFailed, match="no MPENC1 header"):
        decrypt_bytes(DATA, KEY)


def test_key_formats() -> None:
    assert parse_key(KEY.hex()) == KEY
    assert parse_key(KEY.hex().upper() + "\n") == KEY
    assert parse_key(base64.b64encode(KEY).decode()) == KEY
    assert parse_key(base64.urlsafe_b64encode(KEY).decode().rstrip("=")) == KEY
    assert len(parse_key(new_key())) == 32
    assert new_key() != new_key()


@pytest.mark.parametrize(
    "text",
    ["", "not a key", KEY.hex()[:-2], base64.b64encode(bytes(16)).decode(), "zz" * 32],
)
def test_bad_key_formats(text: str) -> None:
    with pytest.raises(KeyUnavailable, match="MODELPORT_MODEL_KEY does not hold a model key"):
        parse_key(text)


def test_key_of_the_wrong_length_is_refused_when_used() -> None:
    with pytest.raises(KeyUnavailable, match="32 bytes, not 16"):
        encrypt_bytes(DATA, bytes(16))


def test_key_from_the_environment_or_a_file(tmp_path: Path) -> None:
    secret = base64.b64encode(KEY).decode()
    assert key_provider(environ={KEY_ENV: secret})() == KEY
    key_file = tmp_path / "model.key"
    key_file.write_text(KEY.hex() + "\n")
    # The key file, when set, wins over the environment.
    assert key_provider(str(key_file), {KEY_ENV: new_key()})() == KEY


def test_key_errors_say_how_to_fix_them_and_never_show_the_key(tmp_path: Path) -> None:
    with pytest.raises(KeyUnavailable, match="set MODELPORT_MODEL_KEY or model_key_file"):
        key_provider(environ={})()
    missing = tmp_path / "nope.key"
    with pytest.raises(KeyUnavailable, match=f"model_key_file {missing}: No such file"):
        key_provider(str(missing), {})()
    almost = KEY.hex()[:-1]  # 63 digits: a paste gone wrong
    bad = tmp_path / "bad.key"
    bad.write_text(almost)
    with pytest.raises(KeyUnavailable) as info:
        key_provider(str(bad), {})()
    assert f"model_key_file {bad} does not hold a model key" in str(info.value)
    assert almost not in str(info.value)
    with pytest.raises(KeyUnavailable) as info:
        key_provider(environ={KEY_ENV: almost})()
    assert almost not in str(info.value)


def test_encrypt_file(tmp_path: Path) -> None:
    plain = tmp_path / "model.onnx"
    plain.write_bytes(DATA)
    target = encrypt_file(plain, KEY)
    assert target == tmp_path / "model.onnx.enc" and plain.exists()
    assert decrypt_bytes(target.read_bytes(), KEY) == DATA
    assert encrypt_file(plain, KEY, remove_plain=True) == target
    assert not plain.exists()
    assert sorted(os.listdir(tmp_path)) == ["model.onnx.enc"]  # no partial file left behind
