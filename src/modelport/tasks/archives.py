"""Zip files from strangers, unpacked safely; folders packed into zips.

:func:`check_zip` refuses, before anything is written: a file that is not a zip, member
names that climb out (``../``), absolute names (``/etc/x``, ``C:\\x``), symbolic links,
more members than allowed, a total unpacked size over the limit, and a total
compression ratio over the limit (a zip bomb). :func:`extract_zip` checks again while
writing, since a zip's headers may lie about the sizes, and writes only regular files
and folders, inside the destination.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelport.errors import InvalidInput

CHUNK = 1024 * 1024
# Small archives compress text very well; only judge the ratio past this many bytes.
RATIO_FLOOR_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ZipLimits:
    max_members: int = 10_000
    max_unpacked_bytes: int = 4 * 1024**3
    max_ratio: float = 200.0


def _safe_name(name: str) -> PurePosixPath:
    normal = name.replace("\\", "/")
    path = PurePosixPath(normal)
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        raise InvalidInput(f"zip member '{name}' has an absolute path")
    if ".." in path.parts:
        raise InvalidInput(f"zip member '{name}' points outside the archive ('..')")
    return path


def check_zip(path: Path, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    """The members of a zip that is safe to unpack under ``limits``; InvalidInput if not."""
    if not zipfile.is_zipfile(path):
        raise InvalidInput("the upload is not a zip file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise InvalidInput(f"the zip file cannot be read: {exc}") from None
    if len(members) > limits.max_members:
        raise InvalidInput(f"the zip has {len(members)} members; the limit is {limits.max_members}")
    unpacked = packed = 0
    for info in members:
        _safe_name(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInput(f"zip member '{info.filename}' is a symbolic link")
        unpacked += info.file_size
        packed += info.compress_size
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


def extract_zip(path: Path, dest: Path, limits: ZipLimits) -> int:
    """Unpack a zip checked by :func:`check_zip` into ``dest``; the bytes written."""
    members = check_zip(path, limits)
    try:
        return _unpack(path, members, dest.resolve(), limits)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, ValueError,
            NotImplementedError) as exc:  # fmt: skip
        # A member whose data is corrupt, encrypted or compressed in an unknown way, or
        # whose name clashes with another's (a file 'a' and a folder 'a/').
        raise InvalidInput(f"the zip file cannot be unpacked: {exc}") from None


def _unpack(path: Path, members: list[zipfile.ZipInfo], root: Path, limits: ZipLimits) -> int:
    """Write ``members`` under ``root``; the bytes written."""
    written = 0
    with zipfile.ZipFile(path) as archive:
        for info in members:
            target = (root / _safe_name(info.filename)).resolve()
            if target != root and root not in target.parents:
                raise InvalidInput(f"zip member '{info.filename}' points outside the archive")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: never write through a link, should one ever be there.
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
            with archive.open(info) as src, os.fdopen(os.open(target, flags, 0o644), "wb") as out:
                while chunk := src.read(CHUNK):
                    written += len(chunk)
                    if written > limits.max_unpacked_bytes:
                        raise InvalidInput(
                            f"the zip unpacks to more than {limits.max_unpacked_bytes} bytes"
                        )
                    out.write(chunk)
    return written


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
