"""Zip files from strangers, unpacked safely; folders packed into zips.

:func:`check_zip` refuses, before anything is written, what the extractor would refuse
or what would be unsafe to write, naming the member: a file that is not a zip; more
members than allowed; encrypted members; compression methods other than stored,
deflate, bzip2 and LZMA; names that climb out (``../``), absolute names (``/etc/x``,
``C:\\x``), names that are empty or ``.``, a segment over 255 bytes, a name over 4,096
bytes or more than 64 folders deep; symbolic links; two members with one name, or a
file that is also a folder (``a`` and ``a/b``); a total unpacked size over the limit and
a total compression ratio over the limit (a zip bomb). :func:`verify_zip` also reads
every member through, as the extractor will, so a CRC or a size that lies is refused at
submit too. :func:`extract_zip` checks again while writing, since a zip's headers may
lie about the sizes, and writes only regular files and folders, inside the destination.

Messages name members, never a path of the server.
"""

from __future__ import annotations

import contextlib
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from modelport.errors import InvalidInput

CHUNK = 1024 * 1024
# Small archives compress text very well; only judge the ratio past this many bytes.
RATIO_FLOOR_BYTES = 1024 * 1024
# What zipfile can inflate (bzip2 and LZMA are in the standard library).
METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "LZMA",
}
ENCRYPTED_FLAG = 0x1
MAX_SEGMENT_BYTES = 255  # NAME_MAX of the common filesystems
MAX_NAME_BYTES = 4096  # PATH_MAX
MAX_DEPTH = 64
# What reading a member that lies (a CRC, a size, its data) raises from zipfile.
READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    RuntimeError,
    ValueError,
    NotImplementedError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class ZipLimits:
    max_members: int = 10_000
    max_unpacked_bytes: int = 4 * 1024**3
    max_ratio: float = 200.0


def _safe_name(name: str) -> PurePosixPath:
    """The member's path inside the archive; InvalidInput for one that cannot be written
    there (outside it, absolute, empty, ``.``, or too long or deep for a filesystem)."""
    normal = name.replace("\\", "/")
    path = PurePosixPath(normal)
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        raise InvalidInput(f"zip member '{name}' has an absolute path")
    if ".." in path.parts:
        raise InvalidInput(f"zip member '{name}' points outside the archive ('..')")
    if not path.parts:
        raise InvalidInput(f"zip member '{name}' has no name ('.')")
    if len(normal.encode()) > MAX_NAME_BYTES:
        raise InvalidInput(f"zip member '{name[:64]}...' has a name over {MAX_NAME_BYTES} bytes")
    if any(len(part.encode()) > MAX_SEGMENT_BYTES for part in path.parts):
        raise InvalidInput(
            f"zip member '{name[:64]}...' has a folder or file name over {MAX_SEGMENT_BYTES} bytes"
        )
    if len(path.parts) > MAX_DEPTH + 1:
        raise InvalidInput(
            f"zip member '{name[:64]}...' is {len(path.parts) - 1} folders deep; "
            f"the limit is {MAX_DEPTH}"
        )
    return path


def _check_member(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & ENCRYPTED_FLAG:
        raise InvalidInput(f"zip member '{info.filename}' is encrypted")
    if info.compress_type not in METHODS:
        allowed = ", ".join(METHODS.values())
        raise InvalidInput(
            f"zip member '{info.filename}' is compressed with method {info.compress_type}; "
            f"allowed: {allowed}"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InvalidInput(f"zip member '{info.filename}' is a symbolic link")


def _check_layout(members: Iterable[zipfile.ZipInfo]) -> None:
    """Refuse two members with one name, and a file that is also a folder."""
    files: dict[PurePosixPath, str] = {}
    folders: set[PurePosixPath] = set()
    for info in members:
        path = _safe_name(info.filename)
        if path in files:
            raise InvalidInput(f"zip member '{info.filename}' comes twice, or is also a file")
        if info.is_dir():
            folders.add(path)
        elif path in folders:
            raise InvalidInput(f"zip member '{info.filename}' is also a folder")
        else:
            files[path] = info.filename
        for parent in path.parents:
            if parent in files:
                raise InvalidInput(
                    f"zip member '{info.filename}' is inside '{files[parent]}', which is a file"
                )
            folders.add(parent)


def check_zip(path: Path, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    """The members of a zip that is safe to unpack under ``limits``; InvalidInput if not."""
    if not zipfile.is_zipfile(path):
        raise InvalidInput("the upload is not a zip file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise InvalidInput(f"the zip file cannot be read: {_reason(exc)}") from None
    if len(members) > limits.max_members:
        raise InvalidInput(f"the zip has {len(members)} members; the limit is {limits.max_members}")
    unpacked = packed = 0
    for info in members:
        _check_member(info)
        unpacked += info.file_size
        packed += info.compress_size
    _check_layout(members)
    if unpacked > limits.max_unpacked_bytes:
        raise InvalidInput(
            f"the zip unpacks to {unpacked} bytes; the limit is {limits.max_unpacked_bytes}"
        )
    if unpacked > RATIO_FLOOR_BYTES and unpacked > limits.max_ratio * max(packed, 1):
        raise InvalidInput(
            f"the zip's compression ratio {unpacked / max(packed, 1):.0f} is over the "
            f"limit {limits.max_ratio:.0f} (a zip bomb?)"
        )
    return members


def verify_zip(path: Path, limits: ZipLimits) -> None:
    """:func:`check_zip`, then every member read through as the extractor will (its CRC
    and sizes checked, the total bounded), writing nothing: a zip that passes unpacks."""
    members = check_zip(path, limits)
    _copy_members(path, members, limits=limits, open_target=lambda _: None)


def extract_zip(path: Path, dest: Path, limits: ZipLimits) -> int:
    """Unpack a zip checked by :func:`check_zip` into ``dest``; the bytes written."""
    members = check_zip(path, limits)
    root = dest.resolve()
    root.mkdir(parents=True, exist_ok=True)

    def open_target(info: zipfile.ZipInfo) -> IO[bytes] | None:
        target = (root / _safe_name(info.filename)).resolve()
        if target != root and root not in target.parents:
            raise InvalidInput(f"zip member '{info.filename}' points outside the archive")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: never write through a link, should one ever be there.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        handle = os.open(target, flags, 0o644)
        # The container may run as another user: it must read what was unpacked, whatever
        # the server's umask (data_dir, closed to other users, is what keeps it private).
        os.fchmod(handle, 0o644)
        return os.fdopen(handle, "wb")

    written = _copy_members(path, members, limits=limits, open_target=open_target)
    root.chmod(0o755)  # mounted as it is (/input, /model): the container must enter it
    for folder in root.rglob("*"):
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    return written


def _copy_members(
    path: Path,
    members: list[zipfile.ZipInfo],
    *,
    limits: ZipLimits,
    open_target: Callable[[zipfile.ZipInfo], IO[bytes] | None],
) -> int:
    """Read each member through into what ``open_target`` opens for it (None: nothing to
    write); the bytes read. InvalidInput names the member that cannot be read."""
    budget = _Budget(limits.max_unpacked_bytes)
    with zipfile.ZipFile(path) as archive:
        for info in members:
            try:
                with contextlib.ExitStack() as files:
                    target = open_target(info)
                    if target is not None:
                        files.enter_context(target)
                    if not info.is_dir():
                        src = files.enter_context(archive.open(info))
                        _copy_member(info, src, target=target, budget=budget)
            except READ_ERRORS as exc:
                # Corrupt data, a CRC or size that lies, or a name the filesystem refuses.
                raise InvalidInput(
                    f"zip member '{info.filename}' cannot be unpacked: {_reason(exc)}"
                ) from None
    return budget.spent


def _copy_member(
    info: zipfile.ZipInfo, src: IO[bytes], *, target: IO[bytes] | None, budget: _Budget
) -> None:
    """Read one member through (into ``target``); it must hold what its header says."""
    size = 0
    while chunk := src.read(CHUNK):
        size += len(chunk)
        budget.spend(len(chunk))
        if target is not None:
            target.write(chunk)
    if size != info.file_size:
        raise InvalidInput(
            f"zip member '{info.filename}' holds {size} bytes but its header says {info.file_size}"
        )


@dataclass(slots=True)
class _Budget:
    """The bytes unpacked so far, against the limit (the headers' sizes may lie)."""

    limit: int
    spent: int = 0

    def spend(self, size: int) -> None:
        self.spent += size
        if self.spent > self.limit:
            raise InvalidInput(f"the zip unpacks to more than {self.limit} bytes")


def _reason(exc: BaseException) -> str:
    """What went wrong, without the file paths an OSError names."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def zip_folder(src: Path, dest: Path, skip: frozenset[str] = frozenset()) -> int:
    """Pack the regular files under ``src`` into ``dest``; the number of files packed.

    Links are left out, never followed: a container could leave ``/output/x`` pointing
    at a file of the host that only the server may read.
    """
    count = 0
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for folder, dirs, files in os.walk(src, followlinks=False):
            base = Path(folder)
            dirs[:] = sorted(d for d in dirs if not (base / d).is_symlink())
            for name in sorted(files):
                path = base / name
                relative = path.relative_to(src).as_posix()
                if relative in skip or not stat.S_ISREG(path.lstat().st_mode):
                    continue
                archive.write(path, relative)
                count += 1
    return count
