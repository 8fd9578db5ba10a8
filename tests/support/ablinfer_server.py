"""Serve ABLInfer's InferServer app alone on 127.0.0.1:PORT, built from Settings (the
``MODELPORT_*`` environment) with the builders ``modelport serve`` uses:
``python tests/support/ablinfer_server.py PORT``. (The tests' stand-in for ``modelport
serve --compat ablinfer=PORT`` until that listener is wired in.)"""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from modelport.api.http.compat.ablinfer import build_ablinfer_app
from modelport.server.build import build_ablinfer_sessions, build_task_service
from modelport.settings import Settings


async def main(port: int) -> None:
    settings = Settings.load()
    tasks = build_task_service(settings)
    sessions = build_ablinfer_sessions(settings, tasks)
    await tasks.start()
    await sessions.start()
    config = uvicorn.Config(
        build_ablinfer_app(sessions), host="127.0.0.1", port=port, lifespan="off"
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await sessions.close()
        await tasks.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
