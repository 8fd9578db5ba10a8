"""Several server processes on one port (``modelport serve --processes N``).

One Python process answers HTTP from one event loop, so on a machine with more cores
than that loop can use, the supervisor starts N copies of the server (``serve.py``),
each a peer of the others (``peers.py``). It restarts a process that dies after it was
ready; one that dies before (bad settings, a port in use) stops the whole server with
its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx
import uvloop

from modelport.server.build import claim_data_dir, pull_repository
from modelport.server.peers import ProcessInfo, peer_request
from modelport.server.serve import serve
from modelport.settings import Settings
from modelport.supply.pull import is_url

log = logging.getLogger("modelport.processes")

RESTART_PAUSE_S = 1.0
STOP_S = 20.0
PR_SET_PDEATHSIG = 1


def _child(*, settings: dict[str, Any], index: int, count: int, run_dir: str) -> None:
    """A server process (runs in a fresh interpreter: the spawn start method)."""
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
    count = settings.processes
    if is_url(settings.repository):
        await pull_repository(settings)  # once, before the processes read the copy
    claim_data_dir(settings)  # the processes it starts inherit the umask
    run_dir = (Path(settings.data_dir) / "run").resolve()
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir.chmod(0o700)
    context = multiprocessing.get_context("spawn")
    values = settings.model_dump()

    def start(index: int) -> BaseProcess:
        process = context.Process(
            target=_child,
            kwargs={"settings": values, "index": index, "count": count, "run_dir": str(run_dir)},
            name=f"modelport-{index}",
        )
        process.start()
        return process

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    info = ProcessInfo(-1, count, run_dir)
    running = [start(i) for i in range(count)]
    ready = [False] * count  # a process that dies before it was ever ready failed to start
    log.info(
        "modelport: %d processes on port %d (pids %s)",
        count,
        settings.port,
        [p.pid for p in running],
    )
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
                    log.error(
                        "process %d exited with %s before it was ready; stopping",
                        index,
                        process.exitcode,
                    )
                    code = max(process.exitcode or 1, 1)
                    stop.set()
                    break
                log.warning(
                    "process %d (pid %s) died with %s; starting it again",
                    index,
                    process.pid,
                    process.exitcode,
                )
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
        # Each process drains (drain_seconds) before it stops.
        deadline = time.monotonic() + settings.drain_seconds + STOP_S
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
        answer = await peer_request(info, index, method="GET", path="/peer/ready", timeout_s=2.0)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200
