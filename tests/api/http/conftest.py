"""The tasks fixtures (tests/support/task_fixtures.py) for the tasks API tests."""

from support.task_fixtures import docker_image, task_repository, task_server, upstream_image

__all__ = ["docker_image", "task_repository", "task_server", "upstream_image"]
