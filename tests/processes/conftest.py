"""Fixtures of the tasks tests (the Docker engine, the busybox image, the repository),
for tasks submitted to a server of several processes."""

from support.task_fixtures import docker_image, task_repository

__all__ = ["docker_image", "task_repository"]
