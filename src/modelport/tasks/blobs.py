"""Task files through fsspec: a local folder by default, any fsspec URL (s3://...) else.

A task's files are named by :class:`TaskBlob` alone: keys are ``<task id>/<name>``
(``input.zip``, ``output.zip``, ``logs.txt``). Files are written to a temporary key and
moved into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

CHUNK = 1024 * 1024


class TaskBlob(StrEnum):
    """The files a task keeps: their names here, and nowhere else."""

    INPUT = "input.zip"
    OUTPUT = "output.zip"
    LOGS = "logs.txt"
    # A Kubernetes Job's files on their way (pod_files.py): the model's version folder
    # to the pod, its /output back to the worker; removed once the Job has ended.
    JOB_MODEL = "job-model.zip"
    JOB_OUTPUT = "job-output.zip"

    def key(self, task_id: str) -> str:
        """The file's key in the blob store."""
        return f"{task_id}/{self.value}"

    def beside(self, folder: Path) -> Path:
        """The file's local copy in a task's work ``folder``."""
        return folder / self.value


class BlobStore:
    """Files by key under one root (a folder or an fsspec URL)."""

    def __init__(self, url: str) -> None:
        fs, root = url_to_fs(url)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = root.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad blob key {key!r}")
        return f"{self.root}/{key}"

    def put_file(self, key: str, local: Path) -> None:
        path = self._path(key)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        partial = path + ".partial"
        self.fs.put_file(str(local), partial)
        self.fs.mv(partial, path)

    def get_file(self, key: str, local: Path) -> None:
        self.fs.get_file(self._path(key), str(local))

    def open(self, key: str) -> IO[bytes]:
        handle: Any = self.fs.open(self._path(key), "rb")
        return handle  # type: ignore[no-any-return]

    def read_chunks(self, key: str, start: int = 0) -> Iterator[bytes]:
        with self.open(key) as handle:
            handle.seek(start)
            while chunk := handle.read(CHUNK):
                yield chunk

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    @property
    def local_root(self) -> Path | None:
        """The folder of the files when the store is a local one."""
        return Path(self.root) if "file" in _protocols(self.fs) else None

    def delete(self, key: str) -> None:
        """Remove one file; nothing happens when it is not there."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        with contextlib.suppress(FileNotFoundError):
            if "file" in _protocols(self.fs):
                shutil.rmtree(path, ignore_errors=True)
            else:
                self.fs.rm(path, recursive=True)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
