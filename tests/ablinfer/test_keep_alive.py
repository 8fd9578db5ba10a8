"""The log stream's keep-alive: a ``\\0`` line after quiet, only between lines, and a
failing source ends the stream cleanly (upstream sent ``\\0`` lines forever instead)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from modelport.api.http.compat.ablinfer import KEEP_ALIVE, keep_alive


async def _quiet_between(*pieces: bytes, pause_s: float = 0.3) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
        await asyncio.sleep(pause_s)


async def test_keep_alive_lines_come_only_between_lines() -> None:
    got = [c async for c in keep_alive(_quiet_between(b"one\n", b"par", b"tial\n"), 0.1)]
    joined = b"".join(got)
    assert joined.replace(KEEP_ALIVE, b"") == b"one\npartial\n"
    assert b"one\n" + KEEP_ALIVE in joined
    assert b"par" + KEEP_ALIVE not in joined


async def test_a_failing_source_ends_the_stream() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"started\n"
        raise OSError("log file gone")

    got = [c async for c in keep_alive(broken(), 0.1)]
    assert got == [b"started\n"]
