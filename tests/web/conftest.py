"""The browser fixtures (tests/browser_fixtures.py), and the tasks fixtures
(tests/task_fixtures.py) for the tasks view."""

from browser_fixtures import browser, page
from task_fixtures import docker_image

__all__ = ["browser", "docker_image", "page"]
