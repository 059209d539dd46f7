"""The request service's pages for people: ``/``, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with no network.

What :func:`add_pages` promises:

- ``/`` answers a small HTML page naming the service and its version, linking ``/docs``, ``/redoc``,
  ``/openapi.json`` and ``/healthz``.
- ``/docs`` and ``/redoc`` are FastAPI's own pages (``get_swagger_ui_html``, ``get_redoc_html``) whose
  scripts, styles and icon come from this service, under :data:`ASSETS_URL`: the files the package
  ``fastapi-offline`` installs (Swagger UI 5 and ReDoc 2, the builds FastAPI's defaults take from a CDN),
  never from a CDN; no Google fonts, and Swagger UI's online validator is off (it would send the API's
  description to validator.swagger.io). So the pages work on a network without internet.
- Every page comes with a Content-Security-Policy (:data:`POLICY`) that lets the browser load, fetch and
  connect to this service only: what an asset would take from elsewhere (ReDoc's footer shows Redocly's logo
  from cdn.redoc.ly) is refused by the browser before any request leaves the machine.
- Every link and asset URL is under the request's ``root_path`` (a service behind a proxy's path prefix).
- None of these routes is in the OpenAPI document, and none needs an identity: they show what any caller
  may read at ``/openapi.json``.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/static/docs"
ASSETS = files("fastapi_offline") / "static"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
          "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
          "base-uri 'self'; form-action 'self'; frame-ancestors 'self'")  # inline: Swagger UI's start, ReDoc's styles
LINKS = (("/docs", "the API, to read and try (Swagger UI)"), ("/redoc", "the API, to read (ReDoc)"),
         ("/openapi.json", "the OpenAPI document"), ("/healthz", "whether the service and its job store answer"))


def add_pages(app: FastAPI) -> None:
    """Serve ``/``, ``/docs``, ``/redoc`` and their assets (under :data:`ASSETS_URL`) in ``app``, which must have
    been made with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_URL, StaticFiles(directory=str(ASSETS)), name="docs-assets")

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> HTMLResponse:
        return confined(HTMLResponse(home_page(app.title, app.version, app.description,
                                               request.scope.get("root_path", ""))))

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return confined(get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                                            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                                            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                                            swagger_ui_parameters={"validatorUrl": None}))

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return confined(get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                                       redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                                       redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False))


def confined(page: HTMLResponse) -> HTMLResponse:
    """``page`` with the :data:`POLICY` that keeps the browser to this service."""
    page.headers["Content-Security-Policy"] = POLICY
    return page


def home_page(title: str, version: str, description: str, root: str = "") -> str:
    """The HTML of ``/``: ``title`` and ``version``, ``description``, and the :data:`LINKS` (under ``root``)."""
    items = "\n".join(f'    <li><a href="{escape(root + path)}">{escape(path)}</a>: {escape(what)}</li>'
                      for path, what in LINKS)
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{escape(title)} {escape(version)}</title>
  <link rel="icon" href="{escape(root + ASSETS_URL)}/favicon.png">
</head>
<body>
  <h1>{escape(title)} <small>{escape(version)}</small></h1>
  <p>{escape(description)}</p>
  <ul>
{items}
  </ul>
</body>
</html>
"""
