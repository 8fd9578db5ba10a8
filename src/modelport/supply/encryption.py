"""Encrypted model files: AES-256-GCM, decrypted in memory at load.

An encrypted file is the plain file's name plus ``.enc`` (``model.onnx.enc``) and holds::

    b"MPENC1" | nonce (12 bytes, random per file) | ciphertext | GCM tag (16 bytes)

The header (magic and format version) is the associated data, so it is authenticated
too. The file's name is deliberately not: a file may be renamed or moved to another
version folder and still decrypt. Swapping one encrypted model for another made with
the same key is therefore not detected; whoever can write the repository can swap
models anyway, so the name would buy little and cost every rename.

The key is 32 random bytes, written as base64 or as 64 hex digits, read from the
environment (``MODELPORT_MODEL_KEY``) or from a file (setting ``model_key_file``, which
wins when both are set). ``new_key()`` makes one. No message here ever contains a key.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"MPENC1"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
ENCRYPTED_SUFFIX = ".enc"
KEY_ENV = "MODELPORT_MODEL_KEY"

KeyProvider = Callable[[], bytes]
"""Returns the model key, or raises :class:`KeyUnavailable` saying why there is none."""


class CryptoError(Exception):
    """Base of this module's errors; the message is safe to log (it holds no key)."""


class KeyUnavailable(CryptoError):
    """No key is configured, or the configured one cannot be read or is malformed."""


class DecryptionFailed(CryptoError):
    """The data is not a modelport encrypted file, or was encrypted with another key or
    altered since (AES-GCM cannot tell those two apart)."""


def new_key() -> str:
    """A fresh random key, base64-encoded, for ``MODELPORT_MODEL_KEY`` or a key file."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def parse_key(text: str, source: str = KEY_ENV) -> bytes:
    """32 bytes from base64 (standard or URL-safe) or 64 hex digits; ``source`` names
    where the text came from, for the error."""
    text = text.strip()
    key: bytes | None = None
    if len(text) == 2 * KEY_BYTES:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = None
    if key is None:
        try:
            padded = text + "=" * (-len(text) % 4)  # unpadded base64 is common too
            key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != KEY_BYTES:
        raise KeyUnavailable(
            f"{source} does not hold a model key: expected {KEY_BYTES} bytes as base64 or as "
            f"{2 * KEY_BYTES} hex digits (`modelport encrypt --new-key` makes one)"
        )
    return key


def key_provider(key_file: str = "", environ: Mapping[str, str] | None = None) -> KeyProvider:
    """Reads the key at each call (so a model reload picks up a rotated key file) from
    ``key_file`` if given, else from ``MODELPORT_MODEL_KEY``."""
    env = os.environ if environ is None else environ

    def read() -> bytes:
        if key_file:
            path = Path(key_file)
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
                raise KeyUnavailable(f"model_key_file {path}: {why}") from None
            return parse_key(text, f"model_key_file {path}")
        text = env.get(KEY_ENV, "")
        if not text.strip():
            raise KeyUnavailable(f"no model key: set {KEY_ENV} or model_key_file")
        return parse_key(text)

    return read


def encrypt_bytes(data: bytes, key: bytes) -> bytes:
    """``data`` as an encrypted file's content, under a fresh random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(_checked(key)).encrypt(nonce, data, MAGIC)


def decrypt_bytes(blob: bytes, key: bytes) -> bytes:
    """The plain content of an encrypted file; raises :class:`DecryptionFailed`."""
    if not blob.startswith(MAGIC):
        raise DecryptionFailed(f"not a modelport encrypted file (no {MAGIC.decode()} header)")
    if len(blob) < len(MAGIC) + NONCE_BYTES + TAG_BYTES:
        raise DecryptionFailed("too short for a modelport encrypted file (truncated?)")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    try:
        return AESGCM(_checked(key)).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], MAGIC)
    except InvalidTag:
        raise DecryptionFailed(
            "cannot decrypt: encrypted with a different key, or altered or truncated since"
        ) from None


def encrypted_path(path: Path) -> Path:
    """Where the encrypted copy of ``path`` lives: ``model.onnx`` -> ``model.onnx.enc``."""
    return path.with_name(path.name + ENCRYPTED_SUFFIX)


def encrypt_file(path: Path, key: bytes, remove_plain: bool = False) -> Path:
    """Write ``<path>.enc`` beside ``path`` and return it. The file appears whole (written
    aside, then renamed), so a server polling the repository never reads half of one."""
    target = encrypted_path(path)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(encrypt_bytes(path.read_bytes(), key))
    partial.replace(target)
    if remove_plain:
        path.unlink()
    return target


def _checked(key: bytes) -> bytes:
    if len(key) != KEY_BYTES:
        raise KeyUnavailable(f"a model key is {KEY_BYTES} bytes, not {len(key)}")
    return key
