"""A real PostgreSQL for the tests: Debian's server binaries, run for the session.

``postgres_server`` runs ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``
(``scripts/test`` installs the ``postgresql`` package) on a free loopback port with trust
auth, its data in a temporary folder, and stops it at the end. PostgreSQL refuses to run
as root, so under root it runs as the ``postgres`` user the package creates.
``postgres_url`` is a fresh, empty database on it for each test. Without the binaries,
the user or psycopg (the ``postgres`` extra) these tests fail, saying so: they are never
skipped.

Imported by ``tests/tasks/conftest.py``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_BINARIES = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30


def _bin_dir() -> Path:
    """The newest installed server's bin folder."""
    found = [d for d in POSTGRES_BINARIES.glob("*/bin") if (d / "pg_ctl").is_file()]
    if not found:
        pytest.fail(
            f"no PostgreSQL server binaries under {POSTGRES_BINARIES}/*/bin; "
            "scripts/test installs the postgresql package"
        )
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def _as_server_user() -> list[str]:
    """The command prefix that drops root, which PostgreSQL refuses, to ``postgres``."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root, and there is no postgres user to run PostgreSQL as")
    return ["runuser", "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(command: list[str], timeout: float) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the session: the URL of its ``postgres`` database."""
    bin_dir = _bin_dir()
    prefix = _as_server_user()
    # Not under pytest's tmp_path: root's folders there are closed to the server user.
    root = Path(tempfile.mkdtemp(prefix="modelport-postgres-"))
    if prefix:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, log = root / "data", root / "server.log"
    port = _free_port()
    # fsync off: the data is thrown away at the end, and it makes each CREATE DATABASE fast.
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    try:
        _run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-sync"],
            timeout=60,
        )  # fmt: skip
        # -w waits until the server accepts connections, at most -t seconds.
        started = subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-l", str(log),
             "-o", options, "-w", "-t", str(START_TIMEOUT_S)],
            capture_output=True, text=True, timeout=START_TIMEOUT_S + 10,
        )  # fmt: skip
        if started.returncode != 0:
            server_log = log.read_text() if log.is_file() else "(no log)"
            pytest.fail(f"PostgreSQL did not start: {started.stderr}{started.stdout}\n{server_log}")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run(
                [*prefix, str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast",
                 "-w", "-t", str(STOP_TIMEOUT_S)],
                timeout=STOP_TIMEOUT_S + 10,
            )  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A new empty database on the session's server, dropped after the test."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError as exc:
        pytest.fail(f"psycopg is missing ({exc}); pip install -e '.[postgres]'")
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            # FORCE: a connection the test left open must not keep the database alive.
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
