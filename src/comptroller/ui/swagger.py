"""Swagger UI for the admin API, from vendored assets (``swagger-ui-dist``; no CDN, works offline).

FastAPI's default ``/docs`` page loads its script, stylesheet and favicon from
jsDelivr and fastapi.tiangolo.com; these routes serve the same page with every asset
from ``comptroller/ui/static/swagger`` (the npm package's ``swagger-ui-bundle.js``,
``swagger-ui.css``, favicon and licence) and the online spec validator turned off.
"""

from __future__ import annotations

from importlib import resources

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["docs_routes"]

SWAGGER_DIR = str(resources.files("comptroller.ui") / "static" / "swagger")


def docs_routes(title: str) -> list[BaseRoute]:
    """``/docs`` (Swagger UI on ``openapi.json``), ``/`` redirecting to it, and ``/static/swagger/...``.

    Paths are relative to where the app is mounted (``root_path``), e.g. ``/admin/docs``.
    """

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}/static/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/static/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/swagger/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None})

    async def home(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{root}/docs", status_code=307)

    return [Route("/docs", docs, methods=["GET"], include_in_schema=False),
            Route("/", home, methods=["GET"], include_in_schema=False),
            Mount("/static/swagger", app=StaticFiles(directory=SWAGGER_DIR), name="swagger")]
