"""The ABLInfer InferServer tests: a real Docker engine, the busybox model image, real
servers of the ABLInfer app, and the real ``ablinfer`` client from PyPI."""

from support.ablinfer_fixtures import ablinfer_image, ablinfer_server, spec_folder
from support.task_fixtures import docker_image

__all__ = ["ablinfer_image", "ablinfer_server", "docker_image", "spec_folder"]
