"""Interactive API docs (``/docs`` Swagger UI, ``/redoc`` ReDoc) served from files packaged with the server.

The JavaScript, CSS and favicon come from the ``fastapi-offline`` package, so the docs work on a
hospital network without internet access; the pages load nothing from another host.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the packaged documentation assets are served.
ASSETS_URL = "/docs-assets"


def assets_dir() -> Path:
    """The folder of Swagger UI and ReDoc files shipped by ``fastapi-offline``."""
    return Path(str(resources.files("fastapi_offline") / "static"))


def add_offline_docs(app: FastAPI, openapi_url: str) -> None:
    """Serve ``/docs`` and ``/redoc`` for ``openapi_url`` with local assets only."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    title = f"{app.title} – API docs"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
