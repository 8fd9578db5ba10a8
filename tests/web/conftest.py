"""The browser fixtures (tests/support/browser_fixtures.py), and the tasks fixtures
(tests/support/task_fixtures.py) for the tasks view."""

from support.browser_fixtures import browser, page
from support.task_fixtures import docker_image

__all__ = ["browser", "docker_image", "page"]
