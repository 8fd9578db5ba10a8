"""Copy a model repository from a bucket (or any fsspec URL) into a local folder.

``modelport pull s3://bucket/models ./models`` and ``modelport serve s3://bucket/models``
both go through :func:`pull`. The source is listed once; a file is copied only when the
manifest of the last pull (``DEST/.modelport-pull.json``) does not record the same size
and checksum for it (the store's ETag or MD5 where it gives one, else size and
modification time), or when the local copy is missing or has another size. Each file is
written to a hidden temporary name beside its target and renamed into place, so the
registry and the watcher never see half a file. Files an earlier pull copied that the
source no longer has are removed; files the pull did not write are left alone.

Credentials come from where the store's library looks for them (for S3: the
``AWS_*`` environment, ``~/.aws/credentials``, instance roles); an S3-compatible
endpoint (MinIO, moto) from ``endpoint_url`` or ``AWS_ENDPOINT_URL``. Neither is logged
or printed: messages name the URL without any ``user:password@`` part.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from modelport.core.watcher import RepositoryWatcher, WatchedModels
from modelport.redaction import redact_text, redact_url

MANIFEST = ".modelport-pull.json"
CHUNK = 1024 * 1024
# Keys of fsspec's file info that identify a file's content, best first: S3 (and
# S3-compatible stores) give an ETag, GCS an MD5 and a CRC32C.
CONTENT_KEYS = ("ETag", "etag", "md5Hash", "md5", "crc32c")
# Where a store gives none of those: when the file last changed.
TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified")

log = logging.getLogger("modelport.supply.pull")


class PullError(Exception):
    """The source cannot be listed or read, or the destination cannot be written; the
    message names the (redacted) URL and the reason."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteFile:
    """One file of the source: its path under the URL ('/'-separated), size, checksum."""

    key: str
    path: str
    size: int
    checksum: str


@dataclass(slots=True)
class PullResult:
    """What one pull did, by key."""

    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_copied: int = 0


def is_url(location: str) -> bool:
    """True for ``scheme://...`` (s3://, gs://, file://...), False for a local path."""
    return "://" in location


def open_store(url: str, endpoint_url: str = "") -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root path for ``url``; S3 gets ``endpoint_url`` (or
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) for S3-compatible stores."""
    options: dict[str, Any] = {}
    if url.startswith(("s3://", "s3a://")):
        endpoint = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint:
            options["endpoint_url"] = endpoint
    try:
        fs, root = url_to_fs(url, **options)
    except ImportError as exc:  # s3fs or gcsfs not installed
        raise PullError(f"{redact_url(url)}: {redact_text(str(exc))}") from None
    return fs, str(root).rstrip("/")


def checksum(info: dict[str, Any]) -> str:
    """How the store identifies this file's content: ``etag:...``, ``md5Hash:...``, or
    ``mtime:...`` where it gives no content hash (then size and time decide)."""
    for key in (*CONTENT_KEYS, *TIME_KEYS):
        value = info.get(key)
        if value not in (None, ""):
            return f"{key.lower()}:{str(value).strip(chr(34))}"
    return ""


def list_source(fs: fsspec.AbstractFileSystem, root: str, url: str) -> list[RemoteFile]:
    """Every file under ``root``, hidden ones (``.name``) aside."""
    fs.invalidate_cache()  # s3fs caches listings: a re-pull must see the bucket as it is
    try:
        found: dict[str, dict[str, Any]] = fs.find(root, detail=True)
    except Exception as exc:  # each store raises its own errors (botocore's, OSError...)
        raise PullError(f"cannot list {redact_url(url)}: {_reason(exc)}") from None
    files = []
    for path, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        key = path[len(root) :].lstrip("/") if path.startswith(root) else ""
        parts = key.split("/")
        if not key or any(p in ("", "..") for p in parts):
            raise PullError(f"{redact_url(url)}: unexpected path {path!r} in the listing")
        if any(p.startswith(".") for p in parts):
            continue
        files.append(
            RemoteFile(key=key, path=path, size=int(info.get("size") or 0), checksum=checksum(info))
        )
    if not files:
        raise PullError(f"{redact_url(url)}: no files there (a missing bucket or prefix?)")
    return files


def _reason(exc: BaseException) -> str:
    message = redact_text(str(exc)) or type(exc).__name__  # a store may quote its URL
    return f"{type(exc).__name__}: {message}"


def _read_manifest(dest: Path, url: str) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("source") != redact_url(url):
        return {}  # another source's copy: trust none of it
    files = doc.get("files")
    return files if isinstance(files, dict) else {}


def _write_atomic(target: Path, write: Callable[[Any], None]) -> None:
    """Write ``target`` through a hidden temporary file beside it, then rename it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _local_target(dest: Path, key: str) -> Path:
    target = (dest / key).resolve()
    if not target.is_relative_to(dest):
        raise PullError(f"refusing to write {key!r} outside {dest}")
    return target


def pull(
    url: str, dest: Path, *, endpoint_url: str = "", console: Console | None = None
) -> PullResult:
    """Bring ``dest`` in line with the repository at ``url`` (see the module docstring).

    With ``console``, a progress bar of the bytes copied is shown on it.
    """
    dest = dest.resolve()
    fs, root = open_store(url, endpoint_url)
    files = list_source(fs, root, url)
    before = _read_manifest(dest, url)
    result = PullResult()
    manifest: dict[str, dict[str, Any]] = {}
    todo: list[RemoteFile] = []
    for remote in files:
        known = before.get(remote.key)
        local = dest / remote.key
        if (
            known is not None
            and known.get("size") == remote.size
            and known.get("checksum") == remote.checksum
            and local.is_file()
            and local.stat().st_size == remote.size
        ):
            manifest[remote.key] = known
            result.skipped.append(remote.key)
        else:
            todo.append(remote)
    try:
        with _progress(console, sum(f.size for f in todo)) as advance:
            for remote in todo:
                manifest[remote.key] = _copy(fs, remote, dest=dest, url=url, advance=advance)
                result.copied.append(remote.key)
                result.bytes_copied += remote.size
        keys = {f.key for f in files}
        for key in sorted(before.keys() - keys):
            result.removed.append(key)
            _remove(dest, key)
    finally:
        # Even a failed pull records what it did copy, so the next one skips it.
        dest.mkdir(parents=True, exist_ok=True)
        doc = {"source": redact_url(url), "files": manifest}
        _write_atomic(dest / MANIFEST, lambda out: out.write(json.dumps(doc, indent=1).encode()))
    log.info(
        "pulled %s into %s: %d copied (%d bytes), %d unchanged, %d removed",
        redact_url(url),
        dest,
        len(result.copied),
        result.bytes_copied,
        len(result.skipped),
        len(result.removed),
    )
    return result


@contextlib.contextmanager
def _progress(console: Console | None, total: int) -> Any:
    if console is None:
        yield lambda n: None
        return
    columns = (
        TextColumn("[bold]pulling"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("pull", total=total)
        yield lambda n: bar.advance(task, n)


def _copy(
    fs: fsspec.AbstractFileSystem,
    remote: RemoteFile,
    *,
    dest: Path,
    url: str,
    advance: Callable[[int], None],
) -> dict[str, Any]:
    """Copy one file into place; its manifest entry (with the MD5 of what arrived)."""
    target = _local_target(dest, remote.key)
    digest = hashlib.md5(usedforsecurity=False)

    def write(out: Any) -> None:
        with fs.open(remote.path, "rb") as src:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                advance(len(chunk))

    try:
        _write_atomic(target, write)
    except PullError:
        raise
    except Exception as exc:
        raise PullError(f"cannot copy {redact_url(url)}/{remote.key}: {_reason(exc)}") from None
    return {"size": remote.size, "checksum": remote.checksum, "md5": digest.hexdigest()}


def _remove(dest: Path, key: str) -> None:
    """Remove a file an earlier pull wrote, and the folders it leaves empty."""
    target = _local_target(dest, key)
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    for folder in target.parents:
        if folder == dest or not folder.is_relative_to(dest):
            break
        try:
            folder.rmdir()
        except OSError:  # not empty
            break


class PullingWatcher(RepositoryWatcher):
    """A :class:`RepositoryWatcher` over a pulled copy: each poll pulls again, then scans
    the copy. A failed pull is logged and skips that scan, so the models keep serving."""

    def __init__(
        self,
        models: WatchedModels,
        interval_s: float,
        pull_again: Callable[[], Awaitable[object]],
    ) -> None:
        super().__init__(models, interval_s)
        self._pull_again = pull_again

    async def scan(self) -> None:
        try:
            await self._pull_again()
        except PullError as exc:
            log.warning("pulling the repository again failed: %s", exc)
            return
        await super().scan()


async def pull_in_thread(url: str, dest: Path, endpoint_url: str = "") -> PullResult:
    """:func:`pull` off the event loop (the stores' clients block)."""
    return await asyncio.to_thread(pull, url, dest, endpoint_url=endpoint_url)
