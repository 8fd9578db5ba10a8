#!/usr/bin/env python3
"""The images' health check (no curl in them): exit 0 when this container's node is up.

``python healthcheck.py``: the server answers ``GET /v2/health/ready`` on its HTTP port
(every model has finished loading). ``python healthcheck.py worker REDIS_URL WORKER_ID``:
the worker's heartbeat is in Redis (a worker has no HTTP port). The port, TLS and the
Redis key prefix come from the settings as the server reads them (``MODELPORT_*``
environment, ``modelport.toml``), not from its command-line flags: set those that
matter here (``MODELPORT_PORT``) in the environment.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request

from modelport.settings import Settings

TIMEOUT_S = 3.0


def server_ready(settings: Settings) -> str:
    """'' when the server says it is ready, else why not."""
    scheme = "https" if settings.tls_cert else "http"
    url = f"{scheme}://127.0.0.1:{settings.port}/v2/health/ready"
    # Our own server on loopback: its certificate names the public host, not 127.0.0.1.
    context = ssl._create_unverified_context() if settings.tls_cert else None
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as answer:
            return "" if answer.status == 200 else f"{url}: HTTP {answer.status}"
    except (OSError, urllib.error.URLError) as exc:
        return f"{url}: {exc}"


def worker_alive(settings: Settings, broker: str, worker_id: str) -> str:
    """'' when the worker's heartbeat key exists (it expires a few seconds after the
    last heartbeat), else why not."""
    import redis

    from modelport.cluster.keys import RedisKeys
    from modelport.redaction import redact_url

    key = RedisKeys(settings.redis_prefix).worker(worker_id)
    try:
        client = redis.from_url(broker, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        with client:
            found = client.exists(key)
    except (redis.RedisError, OSError, ValueError) as exc:
        return f"Redis at {redact_url(broker)}: {exc}"
    return "" if found else f"no heartbeat of worker {worker_id!r} in Redis ({key})"


def main(argv: list[str]) -> int:
    settings = Settings.load()
    if not argv:
        problem = server_ready(settings)
    elif argv[0] == "worker" and len(argv) == 3:
        problem = worker_alive(settings, argv[1], argv[2])
    else:
        print("usage: healthcheck.py [worker REDIS_URL WORKER_ID]", file=sys.stderr)
        return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
