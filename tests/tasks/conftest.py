"""The tasks fixtures (tests/task_fixtures.py): Docker engine, busybox image, servers."""

from task_fixtures import docker_image, task_repository, task_server

__all__ = ["docker_image", "task_repository", "task_server"]
