"""The viewer's web application: the page, its script and style, and the frames it draws.

What :func:`create_app` promises:

- ``/`` is the page (``static/index.html``); its script, style and icon come from ``/static``, from files
  installed with the package: nothing from a CDN or the internet. Every answer carries a
  Content-Security-Policy (:data:`POLICY`) that keeps the browser to this server.
- ``GET /frame?since=V&field=&scale=&lo=&hi=&size=`` (:func:`frame`) answers one binary message
  (:func:`~beamstream.viewer.frames.encode`: the :class:`~beamstream.viewer.frames.Look` from the query) as soon
  as there is a version newer than ``since`` (the one the page drew last), or after :data:`WAIT_S` seconds with
  the figures only. The page asks for the next frame when it starts drawing the last one, so that it has one
  request in flight at most: it is sent what it can draw, and what arrives meanwhile is never encoded nor sent.
  (A request per frame rather than a WebSocket message: Chromium spends about twice the CPU receiving a
  1 MiB WebSocket message as a 1 MiB response body, measured; see benchmarks/README.md.)
- Waiting and encoding run on worker threads, never in the event loop, so that one page's frame does not
  hold up another's.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from beamstream.viewer.frames import Look, encode
from beamstream.viewer.latest import Latest

STATIC = files("beamstream.viewer") / "static"
WAIT_S = 0.5  # a page hears at least this often (figures only) while no new event arrives
POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "base-uri 'self'; form-action 'self'; frame-ancestors 'self'")


def create_app(latest: Latest) -> ASGIApp:
    """The viewer's application, showing what is offered to ``latest``."""

    async def page(request: Request) -> Response:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    async def icon(request: Request) -> Response:
        return FileResponse(str(STATIC / "icon.svg"), media_type="image/svg+xml")

    async def next_frame(request: Request) -> Response:
        return await frame(request, latest)

    app = Starlette(routes=[Route("/", page), Route("/favicon.ico", icon), Route("/frame", next_frame),
                            Mount("/static", StaticFiles(directory=str(STATIC)), name="static")])
    return confined(app)


async def frame(request: Request, latest: Latest) -> Response:
    """The answer to a page's request for the next frame of ``latest`` (see the module), never stored by a cache."""
    try:
        since = int(request.query_params.get("since", "-1"))
    except ValueError:
        since = -1
    body = await asyncio.to_thread(answer, latest, since, Look.from_query(request.query_params))
    return Response(body, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})


def answer(latest: Latest, since: int, look: Look) -> bytes:
    """The message for a page that drew version ``since`` and looks with ``look``: the newest event once there
    is one newer (waiting :data:`WAIT_S` at most), else the figures only."""
    data, status = latest.newer(since, WAIT_S)
    return encode(data, look, status)


def confined(app: ASGIApp) -> ASGIApp:
    """``app`` whose every HTTP answer carries the :data:`POLICY`."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def with_policy(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"content-security-policy", POLICY.encode())]
            await send(message)

        await app(scope, receive, with_policy)

    return wrapped
