"""Scratch space for uploads on their way in: a folder the server owns (``data_dir/spool``).

Every server process claims a folder of its own under the spool and holds an exclusive
``flock`` on it for its life; the kernel lets go of it when the process ends, however it
ends. So at start, a folder nobody holds is a leftover of a process that was killed
mid-upload (``kill -9``), and is removed, while a sibling process's folder (``--processes``)
is left alone. A folder is locked before it gets the name others look at, so none is
ever seen unlocked while its process lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("modelport.tasks")

# A folder being claimed: it is locked and renamed within microseconds, so the sweep
# leaves it alone unless it is older than this (a kill in that instant).
CLAIMING = ".claiming-"
CLAIMING_GRACE_S = 60.0


class Spool:
    """This process's folder under ``root``; :meth:`scratch` hands out folders in it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        removed = _remove_leftovers(root)
        if removed:
            log.info("removed %d upload folders left by stopped server processes", removed)
        claiming = Path(tempfile.mkdtemp(prefix=CLAIMING, dir=root))
        self._lock = os.open(claiming, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.folder = root / uuid.uuid4().hex
        claiming.rename(self.folder)  # the lock goes with the folder: same inode

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A new empty folder, removed with what it holds when the block ends."""
        with tempfile.TemporaryDirectory(dir=self.folder) as folder:
            yield Path(folder)

    def close(self) -> None:
        """Remove this process's folder and let go of it."""
        if self._lock < 0:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        os.close(self._lock)
        self._lock = -1


def _remove_leftovers(root: Path) -> int:
    removed = 0
    for folder in root.iterdir():
        if not folder.is_dir() or folder.is_symlink():
            continue
        if folder.name.startswith(CLAIMING) and _age_s(folder) < CLAIMING_GRACE_S:
            continue
        try:
            handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # removed meanwhile by a sibling's sweep
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live process's
        else:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        finally:
            os.close(handle)
    return removed


def _age_s(folder: Path) -> float:
    try:
        return time.time() - folder.stat().st_mtime
    except OSError:
        return 0.0
