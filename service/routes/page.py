"""The browser page at `/` and the API docs (`/docs`, `/redoc`), all served from the package: no CDN.

Static files are served by name from fixed sets, so every URL is a route template (bounded metric
labels) and no request path ever reaches the file system.
"""
from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE_FILES = {"app.css": "text/css", "app.js": "text/javascript", "favicon.svg": "image/svg+xml"}
# Swagger UI and ReDoc bundles as released by the pinned fastapi-offline package
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
              "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate (ETag) so a new release's page is picked up at once
# The pages load nothing from elsewhere; the browser enforces it (ReDoc's sidebar shows a logo from its CDN).
OWN_ORIGIN_ONLY = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                   "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; worker-src 'self' blob:"}

router = APIRouter(include_in_schema=False)


def _file(folder: Path, files: dict[str, str], name: str) -> FileResponse:
    if name not in files:
        raise HTTPException(404, f"no such file: {name}")
    return FileResponse(folder / name, media_type=files[name], headers=NO_CACHE)


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> FileResponse:
    """Predictive typing, sentence ranking, streamed generation and training jobs in one page."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE | OWN_ORIGIN_ONLY)


@router.api_route("/static/{name}", methods=["GET", "HEAD"])
async def page_file(name: str) -> FileResponse:
    return _file(STATIC, PAGE_FILES, name)


@router.api_route("/docs/assets/{name}", methods=["GET", "HEAD"])
async def docs_file(name: str) -> FileResponse:
    return _file(DOCS_ASSETS, DOCS_FILES, name)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    html = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon.png",
        # validatorUrl null: Swagger UI would otherwise send the spec to an online validator
        swagger_ui_parameters={"validatorUrl": None, **(request.app.swagger_ui_parameters or {})})
    html.headers.update(OWN_ORIGIN_ONLY)
    return html


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    html = get_redoc_html(openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - ReDoc",
                          redoc_js_url=f"{root}/docs/assets/redoc.standalone.js",
                          redoc_favicon_url=f"{root}/docs/assets/favicon.png", with_google_fonts=False)
    html.headers.update(OWN_ORIGIN_ONLY)
    return html
