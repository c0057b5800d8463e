"""The interactive API docs (`/docs`: Swagger UI, `/redoc`: ReDoc) with their scripts and styles served by
the service itself, from the `fastapi-offline` package's copy, instead of FastAPI's default CDN links
(cdn.jsdelivr.net, Google Fonts): on a network without internet access those pages stayed blank.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the pages' assets are served from.
ASSETS_PATH = "/docs-assets"
DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"

router = APIRouter(include_in_schema=False)


def assets_directory() -> Path:
    """The folder of `fastapi-offline`'s Swagger UI and ReDoc files (read, never imported as code)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the service's docs need the fastapi-offline package: pip install '.[service]'")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def mount_assets(app: FastAPI) -> None:
    """Serve the docs' assets under `ASSETS_PATH` (call once, when building the app)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_directory()), name="docs-assets")


def _prefix(request: Request) -> str:
    # Behind a proxy that mounts the service under a path, the links must carry it (as FastAPI's own do).
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/")


@router.get(DOCS_PATH)
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over the service's OpenAPI document."""
    prefix = _prefix(request)
    return get_swagger_ui_html(
        openapi_url=f"{prefix}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{prefix}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{prefix}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{prefix}{ASSETS_PATH}/favicon.png",
        oauth2_redirect_url=f"{prefix}{OAUTH2_REDIRECT_PATH}",
    )


@router.get(OAUTH2_REDIRECT_PATH)
def swagger_ui_oauth2_redirect() -> HTMLResponse:
    """Where Swagger UI's "Authorize" returns after an OAuth2 flow."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_PATH)
def redoc(request: Request) -> HTMLResponse:
    """ReDoc over the service's OpenAPI document, without Google Fonts (the system's fonts instead)."""
    prefix = _prefix(request)
    return get_redoc_html(
        openapi_url=f"{prefix}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{prefix}{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{prefix}{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )
