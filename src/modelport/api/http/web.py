"""The built-in page: ``/`` and its files under ``/web/``, read once from the package's
``web/`` folder (plain HTML, JS and CSS; no build step, nothing fetched from elsewhere)."""

from __future__ import annotations

import mimetypes
from importlib import resources

from fastapi import APIRouter, Response

WEB_PACKAGE = "modelport"
WEB_FOLDER = "web"
INDEX = "index.html"
# The page's files change only with the package; a reload picks up a new version.
CACHE = "no-cache"


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Every file of the page: name -> (bytes, content type)."""
    folder = resources.files(WEB_PACKAGE).joinpath(WEB_FOLDER)
    assets: dict[str, tuple[bytes, str]] = {}
    for item in folder.iterdir():
        if item.is_file() and not item.name.startswith((".", "_")):
            media = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
            if media.startswith("text/") or media.endswith(("javascript", "json")):
                media += "; charset=utf-8"
            assets[item.name] = (item.read_bytes(), media)
    return assets


def build_web_router() -> APIRouter:
    router = APIRouter(tags=["web page"])
    assets = load_assets()

    def answer(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            return Response(b'{"error": "no such file"}', 404, media_type="application/json")
        body, media = found
        return Response(body, media_type=media, headers={"cache-control": CACHE})

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        return answer(INDEX)

    @router.get("/web/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        return answer(name)

    return router
