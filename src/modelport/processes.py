"""Several server processes on one port (``processes = N``): a supervisor and its peers.

One Python process answers HTTP from one event loop, so on a machine with more cores
than that loop can use, ``modelport serve --processes N`` starts N copies of the server.
Each binds the HTTP and gRPC ports with ``SO_REUSEPORT`` (the kernel spreads new
connections over them), loads its own copy of every model and batches its own
requests. What must stay one server across them:

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

The supervisor restarts a process that dies after it was ready; one that dies before
(bad settings, a port in use) stops the whole server with its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelport.core.service import InferenceService, VersionStats
from modelport.core.stats import ModelStats
from modelport.errors import ModelportError, ModelUnavailable
from modelport.settings import Settings

log = logging.getLogger("modelport.processes")

RESTART_PAUSE_S = 1.0
PEER_TIMEOUT_S = 120.0  # a load may take a while (warm-up)
STOP_S = 20.0
PR_SET_PDEATHSIG = 1
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


# -- peers ---------------------------------------------------------------------------------


async def peer_request(
    info: ProcessInfo, index: int, method: str, path: str, timeout_s: float
) -> httpx.Response:
    """One request to process ``index``'s peer socket."""
    transport = httpx.AsyncHTTPTransport(uds=str(info.socket_path(index)))
    async with httpx.AsyncClient(transport=transport, timeout=timeout_s) as client:
        return await client.request(method, f"http://process-{index}{path}")


class Peers:
    """This process's view of the others: tell them of admin calls, gather metrics."""

    def __init__(self, me: ProcessInfo) -> None:
        self.me = me

    def _others(self) -> list[int]:
        return [i for i in range(self.me.count) if i != self.me.index]

    async def _call(self, index: int, method: str, path: str) -> httpx.Response:
        return await peer_request(self.me, index, method, path, PEER_TIMEOUT_S)

    async def broadcast(self, action: str, model: str) -> None:
        """Apply a load or unload in every other process; ModelUnavailable names the
        processes that could not."""

        async def one(index: int) -> str:
            try:
                answer = await self._call(index, "POST", f"/peer/{action}/{model}")
            except httpx.HTTPError as exc:
                return f"process {index}: {exc or type(exc).__name__}"
            if answer.status_code != 200:
                return f"process {index}: {answer.json().get('error', answer.text)}"
            return ""

        problems = [p for p in await asyncio.gather(*map(one, self._others())) if p]
        if problems:
            raise ModelUnavailable(
                f"{action} of '{model}' done in process {self.me.index}, but not everywhere: "
                + "; ".join(problems)
            )

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


def peer_app(service: InferenceService, metrics: CollectorRegistry) -> Starlette:
    """What a process answers its peers on its Unix socket (no keys: mode 0600)."""

    async def load(request: Request) -> Response:
        return await _apply(service.registry.load, request.path_params["model"])

    async def unload(request: Request) -> Response:
        return await _apply(service.registry.unload, request.path_params["model"])

    async def local_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": service.ready()}, status_code=200 if service.ready() else 503)

    async def stats(request: Request) -> Response:
        model = request.query_params.get("model", "")
        version = request.query_params.get("version", "")
        try:
            found = service.statistics(model, version)
        except ModelportError as exc:
            return JSONResponse({"error": exc.message}, status_code=404)
        return JSONResponse(
            [{"name": s.name, "version": s.version, "counters": s.stats.counters()} for s in found]
        )

    return Starlette(routes=[
        Route("/peer/load/{model}", load, methods=["POST"]),
        Route("/peer/unload/{model}", unload, methods=["POST"]),
        Route("/peer/metrics", local_metrics),
        Route("/peer/stats", stats),
        Route("/peer/ready", ready),
    ])  # fmt: skip


async def _apply(action: Callable[[str], Awaitable[Any]], model: str) -> Response:
    try:
        await action(model)
    except ModelportError as exc:
        return JSONResponse({"error": exc.message}, status_code=409)
    return JSONResponse({})


# -- supervisor ----------------------------------------------------------------------------


def _child(settings: dict[str, Any], index: int, count: int, run_dir: str) -> None:
    """A server process (runs in a fresh interpreter: the spawn start method)."""
    import uvloop

    from modelport.app import serve

    _die_with_parent()
    info = ProcessInfo(index, count, Path(run_dir))
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(Settings.model_validate(settings), process=info))


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the supervisor dies, even by ``kill -9``."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def supervise(settings: Settings, on_ready: Callable[[], None] | None = None) -> int:
    """Run ``settings.processes`` server processes until SIGTERM or SIGINT; restart one
    that dies after starting. Returns the exit code."""
    from modelport.app import pull_repository
    from modelport.pull import is_url

    count = settings.processes
    if is_url(settings.repository):
        await pull_repository(settings)  # once, before the processes read the copy
    run_dir = (Path(settings.data_dir) / "run").resolve()
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir.chmod(0o700)
    context = multiprocessing.get_context("spawn")
    values = settings.model_dump()

    def start(index: int) -> BaseProcess:
        process = context.Process(
            target=_child, args=(values, index, count, str(run_dir)),
            name=f"modelport-{index}",
        )  # fmt: skip
        process.start()
        return process

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    info = ProcessInfo(-1, count, run_dir)
    running = [start(i) for i in range(count)]
    ready = [False] * count  # a process that dies before it was ever ready failed to start
    log.info("modelport: %d processes on port %d (pids %s)", count, settings.port,
             [p.pid for p in running])  # fmt: skip
    code = 0
    announced = on_ready is None
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            for index, process in enumerate(running):
                if stop.is_set():
                    break
                if process.is_alive():
                    ready[index] = ready[index] or await _ready(info, index)
                    continue
                if not ready[index]:
                    log.error("process %d exited with %s before it was ready; stopping",
                              index, process.exitcode)  # fmt: skip
                    code = max(process.exitcode or 1, 1)
                    stop.set()
                    break
                log.warning("process %d (pid %s) died with %s; starting it again", index,
                            process.pid, process.exitcode)  # fmt: skip
                await asyncio.sleep(RESTART_PAUSE_S)
                running[index], ready[index] = start(index), False
            if not announced and all(ready):
                announced = True
                assert on_ready is not None
                on_ready()
    finally:
        for process in running:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        deadline = time.monotonic() + STOP_S
        for process in running:
            await asyncio.to_thread(process.join, max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5)
    return code


async def _ready(info: ProcessInfo, index: int) -> bool:
    """Process ``index`` answers on its peer socket and says it is ready."""
    if not info.socket_path(index).exists():
        return False
    try:
        answer = await peer_request(info, index, "GET", "/peer/ready", 2.0)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200
