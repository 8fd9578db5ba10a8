"""ABLInfer's InferServer API, served at the root of a listener of its own, so 3D
Slicer's ABLInfer module and ``ablinfer.remote.DispatchRemote`` only change their
server address.

Upstream's envelopes: ``{"data": ...}`` on success, ``{"errors": [{"detail": ...}]}``
on failure (one object per line of the reason). Where upstream answered an error with
HTTP 200 (an unknown or required IO at session creation, a disabled output), this one
answers 400: the client raises on either. Routes:

- ``GET /``: ``{"server": "inferserver", "version": "1.1.0"}`` (what the client checks).
- ``GET /models``, ``GET /models/{id}`` (the normalized spec).
- ``POST /models/{id}``: a session for the JSON body's params, inputs and outputs.
- ``POST /models/{id}/inputs/{name}/check``: the file type of the first bytes (at most
  4096), whether it is acceptable, whether the server can convert it.
- ``PUT /sessions/{sid}/inputs/{name}``: the upload (sha256); the last one queues the run.
- ``GET /sessions/{sid}``: ``status``, ``needed``, ``info``.
- ``GET /sessions/{sid}/logs``: the queue position each second, then the container's
  output as it comes (a ``\\0`` line after 5 s of quiet), or the saved log once finished.
- ``GET /sessions/{sid}/outputs/{name}``: an output file of a complete session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from modelport.api.http.errors import error_parts
from modelport.errors import InvalidInput, ModelportError, TooLarge, Unauthenticated
from modelport.numbers import declared_over
from modelport.security.access import Need
from modelport.tasks.ablinfer_sessions import AblinferSessions

KEEP_ALIVE_S = 5.0
KEEP_ALIVE = b"\0\n"  # a line the client drops
log = logging.getLogger("modelport.ablinfer")
SERVER = {"server": "inferserver", "version": "1.1.0"}  # the client checks "server" only
MAX_CHECK_BYTES = 4096


def _data(data: Any) -> Response:
    return Response(orjson.dumps({"data": data}), media_type="application/json")


def error_parts_upstream(exc: ModelportError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, upstream's ``{"errors": [{"detail": ...}]}`` body (a line each) and headers
    for a core error (401 asks for HTTP Basic auth: the client takes a session with auth)."""
    status, _, headers = error_parts(exc)
    if isinstance(exc, Unauthenticated):
        headers = [(b"www-authenticate", b'Basic realm="modelport"')]
    details = [{"detail": line} for line in exc.message.splitlines() or [""]]
    return status, orjson.dumps({"errors": details}), headers


def errors_response(exc: ModelportError) -> Response:
    """A core error in upstream's envelope, with the status its kind maps to."""
    status, body, headers = error_parts_upstream(exc)
    response = Response(body, status, media_type="application/json")
    for key, value in headers:
        response.headers[key.decode()] = value.decode()
    return response


def route_need(method: str, path: str) -> Need:
    """Every call of this API runs or reads container models' sessions: ``tasks``."""
    return "tasks"


def build_ablinfer_app(sessions: AblinferSessions) -> FastAPI:
    """The InferServer app over ``sessions`` (started and closed by the caller), to be
    served at the root of its own listener (behind the same auth middleware as the main
    app, every route needing the ``tasks`` scope)."""
    app = FastAPI(title="modelport: ABLInfer InferServer", openapi_url=None, docs_url=None)

    @app.exception_handler(ModelportError)
    async def _error(_request: Request, exc: ModelportError) -> Response:
        return errors_response(exc)

    @app.get("/")
    async def root() -> Response:
        return _data(SERVER)

    @app.get("/models")
    async def models() -> Response:
        return _data(await sessions.model_ids())

    @app.get("/models/{model}")
    async def model(model: str) -> Response:
        return _data(await sessions.model(model))

    @app.post("/models/{model}")
    async def create(model: str, request: Request) -> Response:
        await sessions.model(model)  # an unknown model is a 404 before the body matters
        body = await request.body()
        is_json = "json" in request.headers.get("content-type", "")
        try:
            parsed = orjson.loads(body) if is_json else None
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidInput("Must pass the model parameters as JSON")
        return _data({"session_id": await sessions.create(model, parsed)})

    @app.post("/models/{model}/inputs/{name}/check")
    async def check(model: str, name: str, request: Request) -> Response:
        await sessions.model(model)
        declared = request.headers.get("content-length", "")
        if declared_over(declared, MAX_CHECK_BYTES):
            raise TooLarge(f"Request too large, needs at most {MAX_CHECK_BYTES}")
        header = await _read_at_most(request, MAX_CHECK_BYTES)
        found = await sessions.check(model, name, header)
        return _data(
            {
                "filetype": found.filetype,
                "acceptable": found.acceptable,
                "can_convert": found.can_convert,
            }
        )

    @app.put("/sessions/{session_id}/inputs/{name}")
    async def upload(session_id: str, name: str, request: Request) -> Response:
        digest = await sessions.upload(session_id, name, request.stream())
        return _data({"sha256": digest})

    @app.get("/sessions/{session_id}")
    async def status(session_id: str) -> Response:
        found = await sessions.status(session_id)
        return _data({"status": found.state.value, "needed": found.needed, "info": found.info})

    @app.get("/sessions/{session_id}/logs")
    async def logs(session_id: str) -> Response:
        found = await sessions.logs(session_id)
        if found.stream is None:
            return Response(found.saved or b"", media_type="text/plain")
        return StreamingResponse(
            keep_alive(found.stream, KEEP_ALIVE_S),
            media_type="text/plain",
            headers={"X-Accel-Buffering": "no"},
        )

    @app.get("/sessions/{session_id}/outputs/{name}")
    async def output(session_id: str, name: str) -> Response:
        path = await sessions.output(session_id, name)
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    return app


async def _read_at_most(request: Request, limit: int) -> bytes:
    """The body, refused past ``limit`` bytes (a body without a Content-Length too)."""
    body = bytearray()
    stream: AsyncIterator[bytes] = request.stream()
    async for chunk in stream:
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"Request too large, needs at most {limit}")
    return bytes(body)


async def keep_alive(chunks: AsyncIterator[bytes], every_s: float) -> AsyncIterator[bytes]:
    """``chunks``, with a ``\\0`` line sent after ``every_s`` of quiet (only between lines,
    so it never splits one), so proxies and the client keep the stream open. A failure
    of ``chunks`` ends the stream cleanly: the session's status says how the run went."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)

    async def pump() -> None:
        try:
            async for chunk in chunks:
                await queue.put(chunk)
        finally:
            await queue.put(None)

    pumping = asyncio.create_task(pump())
    at_line_start = True
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(queue.get(), every_s)
            except TimeoutError:
                if at_line_start:
                    yield KEEP_ALIVE
                continue
            if chunk is None:
                break
            if chunk:
                at_line_start = chunk.endswith(b"\n")
                yield chunk
    except BaseException:
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        raise
    try:
        await pumping
    except Exception:
        log.exception("following an ABLInfer session's log failed")
