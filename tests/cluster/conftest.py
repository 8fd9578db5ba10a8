"""Cluster fixtures (tests/support/cluster_fixtures.py): Redis, workers; and PostgreSQL and the
busybox image for tasks across workers."""

from support.cluster_fixtures import redis_server, worker_factory
from support.postgres_fixtures import postgres_server, postgres_url
from support.task_fixtures import docker_image

__all__ = ["docker_image", "postgres_server", "postgres_url", "redis_server", "worker_factory"]
