"""The server's processes as peers (``processes = N``): which one this is, the shared
port, and what one asks the others over their private Unix sockets.

Each process binds the HTTP and gRPC ports with ``SO_REUSEPORT`` (the kernel spreads new
connections over them), loads its own copy of every model and batches its own requests.
What must stay one server across them:

- **load and unload** through the API: the process that takes the call applies it,
  then tells its peers over their private Unix sockets (``data_dir/run/process-<i>.sock``,
  mode 0600, no API keys: only this user can reach them); the call answers once every
  process has done it.
- **/metrics**: any process answers with every process's samples, labelled
  ``process="<i>"`` (Prometheus sums them).
- **Triton's statistics extension** (HTTP and gRPC): any process answers with every
  process's counters added up (``InferenceService.gather_statistics``).
- **tasks**: process 0 alone recovers and runs them; tasks submitted to another process
  are stored and taken up by process 0 within a second (``TaskUpkeep.reconcile``).

What a process answers on its socket is ``modelport.api.peer``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from modelport.core.service import VersionStats
from modelport.core.shared_memory import RegionStatus
from modelport.core.stats import ModelStats
from modelport.errors import ModelUnavailable

PEER_TIMEOUT_S = 120.0  # a load may take a while (warm-up)
MAX_SOCKET_PATH = 100  # bytes; sun_path holds 107 and a NUL


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """Which of the server's processes this is."""

    index: int
    count: int
    run_dir: Path

    def socket_path(self, index: int) -> Path:
        """Process ``index``'s peer socket; under the system's temp folder, named after
        ``run_dir``, when that is too deep for a Unix socket's 107-byte path."""
        path = self.run_dir / f"process-{index}.sock"
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(os.fsencode(self.run_dir)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"modelport-{digest}-{index}.sock"

    @property
    def primary(self) -> bool:
        return self.index == 0


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket that other processes of this user may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def peer_request(
    info: ProcessInfo, index: int, *, method: str, path: str, timeout_s: float
) -> httpx.Response:
    """One request to process ``index``'s peer socket."""
    transport = httpx.AsyncHTTPTransport(uds=str(info.socket_path(index)))
    async with httpx.AsyncClient(transport=transport, timeout=timeout_s) as client:
        return await client.request(method, f"http://process-{index}{path}")


class SocketPeers:
    """This process's view of the others: tell them of admin calls, gather metrics."""

    def __init__(self, me: ProcessInfo) -> None:
        self.me = me

    def _others(self) -> list[int]:
        return [i for i in range(self.me.count) if i != self.me.index]

    async def _call(self, index: int, method: str, path: str) -> httpx.Response:
        return await peer_request(
            self.me, index, method=method, path=path, timeout_s=PEER_TIMEOUT_S
        )

    async def _post_everywhere(self, path: str, what: str) -> None:
        """POST ``path`` to every other process; ModelUnavailable names ``what`` was
        done here and the processes that could not do it."""

        async def one(index: int) -> str:
            try:
                answer = await self._call(index, "POST", path)
            except httpx.HTTPError as exc:
                return f"process {index}: {exc or type(exc).__name__}"
            if answer.status_code != 200:
                return f"process {index}: {answer.json().get('error', answer.text)}"
            return ""

        problems = [p for p in await asyncio.gather(*map(one, self._others())) if p]
        if problems:
            raise ModelUnavailable(
                f"{what} done in process {self.me.index}, but not everywhere: "
                + "; ".join(problems)
            )

    async def broadcast(self, action: str, model: str) -> None:
        """Apply a load or unload in every other process; ModelUnavailable names the
        processes that could not."""
        await self._post_everywhere(f"/peer/{action}/{model}", f"{action} of '{model}'")

    async def share_region(self, region: RegionStatus) -> None:
        """Register (or, with no key, unregister) a shared-memory region in every other
        process; ModelUnavailable names the processes that could not."""
        query = urlencode(
            {
                "name": region.name,
                "key": region.key,
                "offset": region.offset,
                "byte_size": region.byte_size,
            }
        )
        what = f"change of shared memory region '{region.name}'"
        await self._post_everywhere(f"/peer/region?{query}", what)

    async def statistics(self, model: str, version: str) -> list[VersionStats]:
        """The other processes' counters of ``model`` (every model if ""), for
        ``InferenceService.gather_statistics``; a process restarting is left out."""

        async def one(index: int) -> list[VersionStats]:
            path = f"/peer/stats?model={quote(model)}&version={quote(version)}"
            try:
                answer = await self._call(index, "GET", path)
            except httpx.HTTPError:
                return []
            if answer.status_code != 200:
                return []
            found = []
            for entry in answer.json():
                stats = ModelStats()
                stats.add_counters(entry["counters"])
                found.append(VersionStats(entry["name"], entry["version"], stats))
            return found

        found = await asyncio.gather(*map(one, self._others()))
        return [entry for entries in found for entry in entries]

    async def metrics(self, local: CollectorRegistry) -> bytes:
        """Every process's metrics, each sample labelled with its process."""
        texts = [(self.me.index, generate_latest(local).decode())]

        async def one(index: int) -> tuple[int, str] | None:
            try:
                answer = await self._call(index, "GET", "/peer/metrics")
            except httpx.HTTPError:
                return None  # restarting: its samples are missing from this scrape
            return (index, answer.text) if answer.status_code == 200 else None

        texts += [t for t in await asyncio.gather(*map(one, self._others())) if t]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Labelled(sorted(texts)))
        return generate_latest(registry)


class _Labelled:
    """Exposition texts of several processes as one, a ``process`` label on each sample."""

    def __init__(self, texts: list[tuple[int, str]]) -> None:
        self.texts = texts

    def collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        for index, text in self.texts:
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                for s in family.samples:
                    labels = {**s.labels, "process": str(index)}
                    merged.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
        return list(families.values())
