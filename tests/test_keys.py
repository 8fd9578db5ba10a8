"""API keys: the key store (keys.py), the guard's rules (access.py), and ``modelport keys``
run as a real process."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.errors import Forbidden, TooManyRequests, Unauthenticated
from modelport.security.access import AccessPolicy, Guard, Listener, presented_key
from modelport.security.keys import KeyFileError, KeyStore, split_token

pytestmark = pytest.mark.timeout(30)


def test_a_created_key_is_stored_hashed_and_found_by_its_token(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    assert not store.configured
    new = store.create("camera-3", ["infer"])
    assert new.token.startswith(f"mp_{new.key.id}_")
    assert store.lookup(new.token) == new.key
    text = (tmp_path / "keys.json").read_text()
    assert split_token(new.token)[1] not in text  # type: ignore[index]
    assert new.key.digest in text and "camera-3" in text
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    assert store.configured


@pytest.mark.parametrize(
    "token",
    ["", "mp_", "mp_abcd", "xx_abcd_secret", "Bearer x", "mp_0000_not-the-secret"],
)
def test_malformed_or_unknown_tokens_are_not_keys(tmp_path: Path, token: str) -> None:
    store = KeyStore(tmp_path / "keys.json")
    new = store.create("a", ["infer"])
    assert store.lookup(token) is None
    wrong_secret = f"mp_{new.key.id}_{'x' * 43}"
    assert store.lookup(wrong_secret) is None


def test_another_process_sees_creates_and_revokes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    server_side, cli_side = KeyStore(path), KeyStore(path)
    new = cli_side.create("a", ["infer", "tasks"])
    server_side.refresh(force=True)
    assert server_side.lookup(new.token) == new.key
    assert cli_side.revoke(new.key.id) == new.key
    server_side.refresh(force=True)
    assert server_side.lookup(new.token) is None
    assert server_side.configured  # the file stays: revoking never turns keys off
    with pytest.raises(KeyError):
        cli_side.revoke(new.key.id)


def test_bad_scopes_and_names_are_refused_with_the_choices(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    with pytest.raises(ValueError, match="unknown scope everything; scopes are infer, tasks"):
        store.create("a", ["everything"])
    with pytest.raises(ValueError, match="at least one scope"):
        store.create("a", [])
    with pytest.raises(ValueError, match="name"):
        store.create("  ", ["infer"])


def test_a_broken_keys_file_is_an_error_at_start_and_closed_afterwards(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(KeyFileError, match=r"keys\.json cannot be read.*modelport keys create"):
        KeyStore(path)
    path.unlink()
    store = KeyStore(path)
    new = store.create("a", ["infer"])
    path.write_text('{"keys": [{"id": 1}]}')
    store.refresh(force=False)  # within the recheck interval: still the old view
    store._checked = -1e9  # as if the interval had passed
    store.refresh()
    assert store.lookup(new.token) is None  # fails closed: nobody gets in
    assert store.configured


def _guard(tmp_path: Path, **policy: object) -> tuple[Guard, KeyStore]:
    store = KeyStore(tmp_path / "keys.json")
    return Guard(store, AccessPolicy(**policy)), store  # type: ignore[arg-type]


def test_without_keys_everything_is_open_but_network_admin(tmp_path: Path) -> None:
    guard, _ = _guard(tmp_path, admin_refusal_without_keys="refused: listens on 0.0.0.0")
    assert not guard.enforcing
    assert guard.admit("infer", None).key is None
    with pytest.raises(Forbidden, match=r"0\.0\.0\.0"):
        guard.admit("admin", None)
    assert _guard(tmp_path / "x", mode="on")[0].enforcing


def test_the_guard_asks_for_a_valid_key_with_the_scope(tmp_path: Path) -> None:
    guard, store = _guard(tmp_path)
    infer = store.create("reader", ["infer"]).token
    assert guard.admit("health", None).key is None
    assert guard.admit("metrics", None).key is None
    assert guard.admit("page", None).key is None
    with pytest.raises(Unauthenticated, match="Authorization: Bearer <key>"):
        guard.admit("infer", None)
    with pytest.raises(Unauthenticated, match="not 'Bearer <key>'"):
        guard.admit("infer", f"Basic {infer}")
    with pytest.raises(Unauthenticated, match="not valid"):
        guard.admit("infer", "Bearer mp_nope_nope")
    assert guard.admit("infer", f"bearer {infer}").key is not None
    with pytest.raises(Forbidden, match=r"needs an API key with the 'tasks' scope.*--scope tasks"):
        guard.admit("tasks", f"Bearer {infer}")
    with pytest.raises(Forbidden, match="'admin' scope"):
        guard.admit("admin", f"Bearer {infer}")


def test_private_health_and_metrics_take_any_valid_key(tmp_path: Path) -> None:
    guard, store = _guard(tmp_path, public_health=False, public_metrics=False)
    tasks = store.create("worker", ["tasks"]).token
    for need in ("health", "metrics"):
        with pytest.raises(Unauthenticated):
            guard.admit(need, None)  # type: ignore[arg-type]
        assert guard.admit(need, f"Bearer {tasks}").key is not None  # type: ignore[arg-type]


def test_each_key_has_its_limit_of_calls_in_progress(tmp_path: Path) -> None:
    guard, store = _guard(tmp_path, max_concurrent_per_key=2)
    a, b = store.create("a", ["infer"]).token, store.create("b", ["infer"]).token
    held = [guard.admit("infer", f"Bearer {a}") for _ in range(2)]
    with pytest.raises(TooManyRequests, match=r"2 calls in progress.*max_concurrent_per_key"):
        guard.admit("infer", f"Bearer {a}")
    guard.admit("infer", f"Bearer {b}")  # another key has its own count
    held[0].release()
    held[0].release()  # releasing twice gives back one place only
    third = guard.admit("infer", f"Bearer {a}")
    with pytest.raises(TooManyRequests):
        guard.admit("infer", f"Bearer {a}")
    third.release()
    held[1].release()
    unlimited, store2 = _guard(tmp_path / "u", max_concurrent_per_key=0)
    c = store2.create("c", ["infer"]).token
    for _ in range(100):
        unlimited.admit("infer", f"Bearer {c}")


def modelport(*args: str, keys: Path) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "MODELPORT_KEYS_FILE": str(keys)}
    return subprocess.run(
        [sys.executable, "-m", "modelport", "keys", *args],
        capture_output=True, text=True, env=environ, timeout=20,
    )  # fmt: skip


def test_the_keys_command_creates_lists_and_revokes(tmp_path: Path) -> None:
    keys = tmp_path / "data" / "keys.json"
    made = modelport("create", "camera-3", "--scope", "infer", "--scope", "tasks", keys=keys)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    key_id = split_token(token)[0]  # type: ignore[index]
    assert "shown only now" in made.stderr and key_id in made.stderr
    assert KeyStore(keys).lookup(token) is not None

    listed = modelport("list", keys=keys)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if key_id in line]
    assert "camera-3" in row and "infer, tasks" in row
    digest = json.loads(keys.read_text())["keys"][0]["sha256"]
    assert token not in listed.stdout and digest not in listed.stdout

    bad = modelport("create", "x", "--scope", "root", keys=keys)
    assert bad.returncode == 2 and "unknown scope root" in bad.stderr
    missing = modelport("revoke", "nope", keys=keys)
    assert missing.returncode == 1 and "no key 'nope'" in missing.stderr

    revoked = modelport("revoke", key_id, keys=keys)
    assert revoked.returncode == 0 and f"revoked key {key_id}" in revoked.stdout
    assert KeyStore(keys).lookup(token) is None
    empty = modelport("list", keys=keys)
    assert "refuses every call" in empty.stderr and "delete" in empty.stderr


def test_a_key_comes_as_basic_auth_with_any_user_name(tmp_path: Path) -> None:
    guard, store = _guard(tmp_path)
    tasks = store.create("lab", ["tasks"]).token

    def basic(user_and_password: str) -> str:
        return "Basic " + base64.b64encode(user_and_password.encode()).decode()

    assert guard.admit("tasks", basic(f"x:{tasks}")).key is not None
    assert guard.admit("tasks", basic(f":{tasks}")).key is not None
    for value in (basic(tasks), basic("x:"), "Basic !!!", basic("x:mp_nope_nope")):
        with pytest.raises(Unauthenticated):
            guard.admit("tasks", value)
    assert presented_key(basic("user:pa:ss")) == "pa:ss"


def test_listener_rules_open_tasks_and_refusals_without_keys(tmp_path: Path) -> None:
    guard, store = _guard(tmp_path)
    admin = store.create("ops", ["admin"]).token
    opened = Listener(open=True)
    assert guard.admit("tasks", None, opened).key is None  # keys exist, yet no key asked
    with pytest.raises(Unauthenticated):
        guard.admit("admin", None, opened)  # posting models still needs the admin key
    assert guard.admit("admin", f"Bearer {admin}", opened).key is not None
    keyless, _ = _guard(tmp_path / "none")
    refusing = Listener(tasks_refusal="refused: tasks_open", admin_refusal="refused: admin")
    with pytest.raises(Forbidden, match="tasks_open"):
        keyless.admit("tasks", None, refusing)
    with pytest.raises(Forbidden, match="refused: admin"):
        keyless.admit("admin", None, refusing)
    assert keyless.admit("infer", None, refusing).key is None
    assert keyless.admit("tasks", None, Listener(open=True, tasks_refusal="x")).key is None
