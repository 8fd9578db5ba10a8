"""The tasks fixtures (tests/support/task_fixtures.py): Docker engine, busybox image, servers; and a
real PostgreSQL for the task store (tests/support/postgres_fixtures.py)."""

from support.postgres_fixtures import postgres_server, postgres_url
from support.task_fixtures import docker_image, task_repository, task_server

__all__ = [
    "docker_image",
    "postgres_server",
    "postgres_url",
    "task_repository",
    "task_server",
]
