"""``/docs``: Swagger UI served from the package (``swagger-ui-py`` ships its files), so
the page works offline and loads no script from another host. The page has no inline
script either (its start script is a file of its own), so the Content-Security-Policy
``asgi.SecurityHeaders`` sends holds for it too."""

from __future__ import annotations

import html
from pathlib import Path

import swagger_ui
from fastapi import FastAPI, Response
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
STATIC_PATH = "/docs/static"
START_PATH = "/docs/start.js"
SWAGGER_UI_FILES = Path(swagger_ui.__file__).parent / "static"

# Reads the document's URL from the page, so the same file serves every app.
START_JS = b"""window.addEventListener("load", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    presets: [SwaggerUIBundle.presets.apis],
  });
});
"""


def docs_page(title: str, openapi_url: str) -> bytes:
    """The page: Swagger UI's CSS and script from :data:`STATIC_PATH`, then the start
    script; nothing inline."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)} - API docs</title>
<link rel="stylesheet" href="{STATIC_PATH}/swagger-ui.css">
<link rel="icon" type="image/png" href="{STATIC_PATH}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{html.escape(openapi_url)}"></div>
<script src="{STATIC_PATH}/swagger-ui-bundle.js"></script>
<script src="{START_PATH}"></script>
</body>
</html>
""".encode()


def add_docs(app: FastAPI) -> None:
    """Serve ``/docs`` for ``app`` (made with ``docs_url=None, redoc_url=None``)."""
    page = docs_page(app.title, app.openapi_url or "/openapi.json")
    app.mount(STATIC_PATH, StaticFiles(directory=SWAGGER_UI_FILES), name="swagger-ui")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get(START_PATH, include_in_schema=False)
    async def start() -> Response:
        return Response(START_JS, media_type="text/javascript; charset=utf-8")
