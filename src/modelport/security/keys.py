"""API keys: created, listed and revoked by ``modelport keys``, checked by the server.

A key is a token ``mp_<id>_<secret>``: the id is public (it names the key in
``modelport keys list`` and in logs), the secret is 32 random bytes. Only the SHA-256 of
the secret is stored (a high-entropy secret needs no slow hash), with the key's name,
scopes and creation time, in one JSON file (``data_dir/keys.json`` or the ``keys_file``
setting), written atomically with mode 0600.

A running server sees keys created or revoked by the CLI without a restart:
:meth:`KeyStore.lookup` reads the file again when it has changed, checking at most once
a :data:`RECHECK_SECONDS`. The file is the switch: once it exists, even empty, the
server asks every call for a key (revoking the last key never opens the server).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("modelport.security.keys")

SCOPES = ("infer", "tasks", "admin")
TOKEN_PREFIX = "mp"
RECHECK_SECONDS = 1.0
FILE_VERSION = 1


class KeyFileError(ValueError):
    """A keys file that cannot be read or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as stored: never its secret, only the secret's SHA-256."""

    id: str
    name: str
    scopes: frozenset[str]
    created: str  # ISO 8601, UTC
    digest: str  # hex SHA-256 of the secret

    def public(self) -> dict[str, Any]:
        """What ``keys list`` shows: everything but the digest."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just created, with the token to hand to its user (shown once)."""

    key: ApiKey
    token: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not key_id or not secret:
        return None
    return key_id, secret


def check_scopes(scopes: list[str] | tuple[str, ...]) -> frozenset[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {', '.join(unknown)}; scopes are {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError(f"give at least one scope ({', '.join(SCOPES)})")
    return frozenset(scopes)


class KeyStore:
    """The keys file: read by the server (:meth:`lookup`), changed by the CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, ApiKey] = {}
        self._exists = False
        self._signature: tuple[int, int, int] | None = None
        self._checked = -RECHECK_SECONDS
        self.refresh(force=True)

    # -- the server's side ---------------------------------------------------------------
    @property
    def configured(self) -> bool:
        """Whether keys are on: the file exists (as of the last check)."""
        self.refresh()
        return self._exists

    def lookup(self, token: str) -> ApiKey | None:
        """The key a token belongs to, or None for a malformed, unknown or revoked one."""
        self.refresh()
        parts = split_token(token)
        if parts is None:
            return None
        key = self._keys.get(parts[0])
        if key is None or not hmac.compare_digest(key.digest, _digest(parts[1])):
            return None
        return key

    def refresh(self, force: bool = False) -> None:
        """Read the file again if it changed; at most once a RECHECK_SECONDS unless forced."""
        now = time.monotonic()
        if not force and now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._keys, self._exists, self._signature = {}, False, None
            return
        signature = (st.st_mtime_ns, st.st_ino, st.st_size)
        if signature == self._signature and not force:
            return
        self._signature, self._exists = signature, True
        try:
            self._keys = _parse(self.path)
        except KeyFileError as exc:
            if force:
                raise
            # Fail closed: a broken file lets nobody in until it is fixed.
            log.error("%s; every call needing a key is refused until it is fixed", exc)
            self._keys = {}

    # -- the CLI's side ------------------------------------------------------------------
    def all(self) -> list[ApiKey]:
        self.refresh(force=True)
        return sorted(self._keys.values(), key=lambda k: (k.created, k.id))

    def create(self, name: str, scopes: list[str] | tuple[str, ...]) -> NewKey:
        allowed = check_scopes(scopes)
        if not name.strip():
            raise ValueError("give the key a name (who or what uses it)")
        with self._locked() as keys:
            key_id = secrets.token_hex(4)
            while key_id in keys:
                key_id = secrets.token_hex(4)
            secret = secrets.token_urlsafe(32)
            created = datetime.now(UTC).replace(microsecond=0).isoformat()
            key = ApiKey(key_id, name.strip(), allowed, created, _digest(secret))
            keys[key_id] = key
        return NewKey(key, f"{TOKEN_PREFIX}_{key_id}_{secret}")

    def revoke(self, key_id: str) -> ApiKey:
        """Remove a key (KeyError when there is none with that id)."""
        with self._locked() as keys:
            if key_id not in keys:
                raise KeyError(key_id)
            return keys.pop(key_id)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, ApiKey]]:
        """The keys, read under a lock and written back atomically (mode 0600)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = _parse(self.path) if self.path.exists() else {}
            yield keys
            _write(self.path, keys)
        self.refresh(force=True)


def _parse(path: Path) -> dict[str, ApiKey]:
    try:
        doc = json.loads(path.read_text())
        keys = [
            ApiKey(r["id"], r["name"], check_scopes(r["scopes"]), r["created"], r["sha256"])
            for r in doc["keys"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(
            f"keys file {path} cannot be read ({type(exc).__name__}: {exc}); fix or delete "
            "it and create the keys again with `modelport keys create`"
        ) from None
    return {k.id: k for k in keys}


def _write(path: Path, keys: dict[str, ApiKey]) -> None:
    rows = [{**k.public(), "sha256": k.digest} for k in keys.values()]
    text = json.dumps({"version": FILE_VERSION, "keys": rows}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
