"""Who may make a call: API keys, their scopes, and each key's calls in progress.

The HTTP and gRPC adapters each say what a call needs (a :data:`Need`: its scope, or
one of the public kinds) and hand over the ``Authorization`` value; :meth:`Guard.admit`
answers with a :class:`Grant` to release when the call ends, or raises
:class:`~modelport.errors.Unauthenticated` (no key, or not a valid one),
:class:`~modelport.errors.Forbidden` (a key without the scope) or
:class:`~modelport.errors.TooManyRequests` (the key's limit of calls in progress).

Scopes do not imply each other: ``infer`` runs models and reads their metadata,
``tasks`` submits and follows tasks, ``admin`` loads, unloads and posts models. Health
and metrics answer without a key unless ``public_health`` / ``public_metrics`` are
off; then any valid key reads them. The web page's files never need one.

A key comes as ``Authorization: Bearer <key>``, or as HTTP Basic auth with the key as
the password (any user name), for clients that cannot send headers but take a URL with
credentials (``https://x:KEY@host:8123/``). Each listener has its :class:`Listener`
rules: an ``open`` one lets task calls in without a key, and while no key is asked for,
calls that would let anyone who reaches the address change models (admin) or run
containers (tasks) are refused, with the reason.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from modelport.errors import Forbidden, TooManyRequests, Unauthenticated
from modelport.security.keys import ApiKey, KeyStore

Need = Literal["infer", "tasks", "admin", "health", "metrics", "page"]
BEARER = "bearer "
BASIC = "basic "

HOW_TO_SEND = (
    "send it as 'Authorization: Bearer <key>' (HTTP header or gRPC metadata) or as the "
    "password of HTTP Basic auth (https://any-user:KEY@host/); an operator creates keys "
    "with `modelport keys create NAME --scope infer`"
)


class Grant:
    """A call let in; :meth:`release` (idempotent) gives back its place under the key's
    limit of calls in progress."""

    __slots__ = ("_release", "key")

    def __init__(self, key: ApiKey | None, release: Callable[[], None] | None = None) -> None:
        self.key = key
        self._release = release

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


OPEN = Grant(None)  # a call that needed no key: nothing to release


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    """One listener's rules. ``open``: task calls need no key there (an operator's
    choice for a lab network); ``admin_refusal`` / ``tasks_refusal``: why admin or task
    calls are refused while no key is asked for ("" allows them)."""

    open: bool = False
    admin_refusal: str = ""
    tasks_refusal: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessPolicy:
    """The settings the guard applies (from Settings, in server/build.py)."""

    mode: Literal["auto", "on", "off"] = "auto"
    public_health: bool = True
    public_metrics: bool = True
    max_concurrent_per_key: int = 64
    # Why admin calls are refused while no key is asked for ("" allows them).
    admin_refusal_without_keys: str = ""


class Guard:
    """Checks calls against the key store; one per server, shared by HTTP and gRPC.

    Everything runs on the server's event loop, so the counters need no lock.
    """

    def __init__(self, store: KeyStore, policy: AccessPolicy) -> None:
        self.store = store
        self.policy = policy
        self._in_progress: dict[str, int] = {}

    @property
    def enforcing(self) -> bool:
        """Whether calls need a key now: auth = on, or auto and the keys file exists."""
        mode = self.policy.mode
        return mode == "on" or (mode == "auto" and self.store.configured)

    def admit(
        self, need: Need, authorization: str | None, listener: Listener | None = None
    ) -> Grant:
        """Let a call in or raise; release the grant when the call has ended. ``listener``:
        the rules of the listener it came to (default: the main port's)."""
        if need == "page":
            return OPEN
        if listener is None:
            listener = Listener(admin_refusal=self.policy.admin_refusal_without_keys)
        if need == "tasks" and listener.open:
            return OPEN
        if not self.enforcing:
            if need == "admin" and listener.admin_refusal:
                raise Forbidden(listener.admin_refusal)
            if need == "tasks" and listener.tasks_refusal:
                raise Forbidden(listener.tasks_refusal)
            return OPEN
        if (need == "health" and self.policy.public_health) or (
            need == "metrics" and self.policy.public_metrics
        ):
            return OPEN
        key = self._authenticate(authorization)
        if need in ("infer", "tasks", "admin") and need not in key.scopes:
            raise Forbidden(
                f"this call needs an API key with the '{need}' scope; key {key.id} "
                f"({key.name}) has {', '.join(sorted(key.scopes))}. Create one with "
                f"`modelport keys create NAME --scope {need}`"
            )
        return self._hold(key)

    def _authenticate(self, authorization: str | None) -> ApiKey:
        if not authorization:
            raise Unauthenticated(f"this server needs an API key: {HOW_TO_SEND}")
        token = presented_key(authorization)
        if token is None:
            raise Unauthenticated(
                "the Authorization value is not 'Bearer <key>' nor HTTP Basic with the key "
                f"as password; {HOW_TO_SEND}"
            )
        key = self.store.lookup(token)
        if key is None:
            raise Unauthenticated(
                f"the API key is not valid (mistyped, revoked, or of another server); {HOW_TO_SEND}"
            )
        return key

    def _hold(self, key: ApiKey) -> Grant:
        limit = self.policy.max_concurrent_per_key
        if not limit:
            return Grant(key)
        held = self._in_progress.get(key.id, 0)
        if held >= limit:
            raise TooManyRequests(
                f"API key {key.id} ({key.name}) already has {held} calls in progress, its "
                "limit (max_concurrent_per_key); wait for some to finish, or ask the "
                "operator to raise the limit"
            )
        self._in_progress[key.id] = held + 1
        return Grant(key, lambda: self._let_go(key.id))

    def _let_go(self, key_id: str) -> None:
        left = self._in_progress.get(key_id, 1) - 1
        if left > 0:
            self._in_progress[key_id] = left
        else:
            self._in_progress.pop(key_id, None)


def presented_key(authorization: str) -> str | None:
    """The key in an Authorization value: ``Bearer <key>``, or HTTP Basic
    ``base64(user:key)`` (the user name is ignored); None when it is neither."""
    scheme = authorization[: len(BEARER)].lower()
    if scheme == BEARER:
        return authorization[len(BEARER) :].strip()
    if scheme[: len(BASIC)] != BASIC:
        return None
    try:
        decoded = base64.b64decode(authorization[len(BASIC) :].strip(), validate=True)
        _, colon, password = decoded.decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if colon and password else None
