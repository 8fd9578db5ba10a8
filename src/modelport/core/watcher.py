"""Hot reload: poll the repository and bring the registry in line with it.

Every ``interval_s`` the watcher takes a cheap fingerprint of each model folder (the
names, sizes and modification times of its files: ``model.yaml`` and the version
folders' files) and compares it with the last one. A new folder loads; a folder that
is gone unloads; a changed one (a new or removed version folder, an edited model.yaml,
replaced model files) reloads. Reloading builds the new versions while the old ones
serve, swaps the whole version set at once, and lets the old versions finish the
requests they accepted (:meth:`InferenceService.load_here`); a reload that fails leaves
the old versions serving. A model unloaded through the API, or evicted by the memory limits,
is left as it is (an evicted one reads its new files when it loads on demand).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Protocol

from modelport.errors import ModelportError

log = logging.getLogger("modelport.watcher")

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(folder: Path) -> Fingerprint:
    """(path, size, mtime) of every file and folder under ``folder``, hidden ones and
    ``_``-prefixed ones (``__pycache__``) aside, so runtimes' caches do not count."""
    found: list[tuple[str, int, int]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        for name in (*dirs, *files):
            if name.startswith((".", "_")):
                continue
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:  # removed while we looked: the next scan sees it
                continue
            is_dir = name in dirs
            size, mtime = (0, 0) if is_dir else (st.st_size, st.st_mtime_ns)
            found.append((os.path.relpath(path, folder), size, mtime))
    return tuple(sorted(found))


class WatchedModels(Protocol):
    """What a watcher needs of the models it keeps in line with their folders
    (:class:`~modelport.core.service.InferenceService` is one)."""

    def model_folders(self) -> dict[str, Path]:
        """Each model's folder, by name."""
        ...

    def follows_its_files(self, name: str) -> bool:
        """Whether a change of the model's files should load it again."""
        ...

    async def load_here(self, name: str, *, raise_errors: bool = True) -> None:
        """Load or reload the model (in this process)."""
        ...

    async def forget(self, name: str) -> None:
        """Unload a model whose folder is gone, and drop it."""
        ...


class RepositoryWatcher:
    """Polls the models' folders every ``interval_s`` seconds (see the module)."""

    def __init__(self, models: WatchedModels, interval_s: float) -> None:
        self.models = models
        self.interval_s = interval_s
        self._seen: dict[str, Fingerprint] = {}
        self._task: asyncio.Task[None] | None = None

    def _scan_files(self) -> dict[str, Fingerprint]:
        return {name: fingerprint(path) for name, path in self.models.model_folders().items()}

    async def start(self) -> None:
        """Take the first fingerprints (of what is loaded now) and start polling."""
        self._seen = await asyncio.to_thread(self._scan_files)
        self._task = asyncio.create_task(self._run(), name="repository-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.scan()
            except Exception:  # a poll must never stop polling
                log.exception("scanning the repository failed")

    async def scan(self) -> None:
        """One poll: load, reload and unload what changed since the last one."""
        now = await asyncio.to_thread(self._scan_files)
        before, self._seen = self._seen, now
        for name in sorted(before.keys() - now.keys()):
            log.info("model %s left the repository: unloading it", name)
            await self.models.forget(name)
        changed = [n for n in sorted(now) if before.get(n) != now[n]]
        await asyncio.gather(*(self._reload(name, name in before) for name in changed))

    async def _reload(self, name: str, known: bool) -> None:
        if not self.models.follows_its_files(name):
            return
        log.info("model %s %s: loading it", name, "changed" if known else "appeared")
        try:
            await self.models.load_here(name, raise_errors=False)
        except ModelportError as exc:  # e.g. gone again meanwhile
            log.warning("model %s: %s", name, exc.message)
