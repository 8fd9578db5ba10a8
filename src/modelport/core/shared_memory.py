"""Triton's system shared-memory extension: tensors passed through ``/dev/shm``.

A client on the same host creates a POSIX shared-memory object (``shm_open`` with a key
such as ``/input_data``, what ``tritonclient.utils.shared_memory`` does), registers a
region of it under a name, and then names that region, an offset and a size in place of
an input's data or an output's answer. The server maps the object once at registration
and copies tensors in and out of the mapping; no tensor bytes cross the socket.

Registering maps a file of the server's user in ``/dev/shm``, so it is an admin call
(the adapters ask for the ``admin`` need, as loading models does): on a server bound
beyond loopback without keys it is refused, and with keys it needs the admin scope.
CUDA shared memory has no data path here yet: those calls are :class:`Unsupported`.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from modelport.codecs.regions import RegionSlice
from modelport.errors import Conflict, InvalidInput, ModelNotFound, Unsupported

SHM_ROOT = Path("/dev/shm")
# POSIX shm_open names: one leading '/', then no other '/'.
_KEY = re.compile(r"^/?[A-Za-z0-9._\-]{1,255}$")

CUDA_UNSUPPORTED = (
    "CUDA shared memory is not supported by modelport yet (it has no GPU data path); "
    "use system shared memory (tritonclient.utils.shared_memory) or send the tensors "
    "in the request"
)


@dataclass(frozen=True, slots=True)
class RegionStatus:
    """A registered region, as the status calls report it."""

    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    __slots__ = ("map", "status")

    def __init__(self, status: RegionStatus, mapping: mmap.mmap) -> None:
        self.status = status
        self.map = mapping


class SystemSharedMemory:
    """The registered regions of one server, shared by HTTP and gRPC."""

    def __init__(self, root: Path = SHM_ROOT) -> None:
        self.root = root
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, *, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of the shared-memory object ``key``
        under ``name``; Conflict if the name is taken, InvalidInput if the object does
        not exist or is smaller than the region."""
        if not name:
            raise InvalidInput("a shared memory region needs a name")
        if not _KEY.match(key) or key.strip("/") in ("", ".", ".."):
            raise InvalidInput(
                f"shared memory key {key!r} is not a POSIX shared memory name "
                "('/name', letters, digits, '.', '_' or '-')"
            )
        if offset < 0 or byte_size <= 0:
            raise InvalidInput(
                f"shared memory region '{name}': offset {offset} and byte_size {byte_size} "
                "must be >= 0 and > 0"
            )
        with self._lock:
            if name in self._regions:
                raise Conflict(
                    f"shared memory region '{name}' is already registered; unregister it "
                    "first or choose another name"
                )
            mapping = self._map(key, offset=offset, byte_size=byte_size)
            self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), mapping)

    def _map(self, key: str, *, offset: int, byte_size: int) -> mmap.mmap:
        path = self.root / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise InvalidInput(
                f"no shared memory object {key!r} on this host; create it first "
                "(shared_memory.create_shared_memory_region) on the server's machine"
            ) from None
        except OSError as exc:
            raise InvalidInput(
                f"shared memory object {key!r} cannot be opened: {exc.strerror}"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidInput(
                    f"shared memory object {key!r} has {size} bytes; a region of {byte_size} "
                    f"bytes at offset {offset} does not fit in it"
                )
            return mmap.mmap(fd, offset + byte_size)
        finally:
            os.close(fd)

    def unregister(self, name: str = "") -> None:
        """Forget ``name`` (every region when empty); unknown names are no error, as in
        Triton."""
        with self._lock:
            names = [name] if name else list(self._regions)
            for each in names:
                region = self._regions.pop(each, None)
                if region is not None:
                    region.map.close()

    def status(self, name: str = "") -> list[RegionStatus]:
        """Every registered region, or the one named; ModelNotFound for an unknown name."""
        with self._lock:
            if not name:
                return [r.status for r in self._regions.values()]
            return [self._get(name).status]

    def read(self, where: RegionSlice) -> bytes:
        """A copy of the bytes a tensor's parameters point at."""
        with self._lock:
            region = self._get(where.region)
            start = self._bounds(region, where)
            return region.map[start : start + where.byte_size]

    def write(self, where: RegionSlice, data: bytes) -> None:
        """Put an output's bytes where the client asked for them."""
        with self._lock:
            region = self._get(where.region)
            if len(data) > where.byte_size:
                raise InvalidInput(
                    f"the output needs {len(data)} bytes but shared memory region "
                    f"'{where.region}' was given {where.byte_size} for it; register a larger "
                    "region or ask for fewer rows"
                )
            start = self._bounds(region, where)
            region.map[start : start + len(data)] = data

    def close(self) -> None:
        self.unregister()

    def _get(self, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise ModelNotFound(
                f"unable to find system shared memory region: '{name}'; register it first"
            )
        return region

    @staticmethod
    def _bounds(region: _Region, where: RegionSlice) -> int:
        status = region.status
        if where.offset < 0 or where.byte_size < 0:
            raise InvalidInput(
                f"shared memory region '{where.region}': offset and byte size must be >= 0"
            )
        if where.offset + where.byte_size > status.byte_size:
            raise InvalidInput(
                f"{where.byte_size} bytes at offset {where.offset} run past shared memory "
                f"region '{where.region}' ({status.byte_size} bytes)"
            )
        return status.offset + where.offset


def refuse_cuda() -> Unsupported:
    return Unsupported(CUDA_UNSUPPORTED)
