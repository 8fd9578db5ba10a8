"""The images' fixtures (tests/support/image_fixtures.py) and the busybox task image."""

from support.image_fixtures import service_images
from support.task_fixtures import docker_image, task_repository

__all__ = ["docker_image", "service_images", "task_repository"]
