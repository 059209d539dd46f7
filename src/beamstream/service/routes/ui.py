"""The request service's pages for its users: their streams in a browser, live, under the API's own authorization.

What :func:`add_ui` promises:

- ``/ui/`` lists the caller's streams (state, owner, experiment, run, events/s, verdict), kept up to date;
  ``/ui/streams/{id}`` shows one: its figures, its history (live, from ``GET /v1/streams/{id}/events``), its jobs'
  logs, and the live viewer (:mod:`beamstream.viewer`) in a frame, ``/ui/streams/{id}/view/``.
- The pages are the same for everyone and carry no data (as ``/docs``): their scripts (``/ui/static``) read
  everything from the API with the caller's identity — a client certificate the browser presents, or a bearer
  token given after ``#token=`` in the page's address (a fragment: never sent to the server, nor logged; the
  scripts send it as ``Authorization: Bearer``, or ``?token=`` where a browser sends no headers). So what a page
  shows is what the API decided to answer: another user's stream is as unknown there as in the API.
- ``/ui/streams/{id}/view/frame`` answers the viewer's requests for frames (:func:`beamstream.viewer.app.frame`)
  for a stream the caller may relay (:attr:`~beamstream.service.access.Action.RELAY`: one decision, in
  :mod:`~beamstream.service.access`); anyone else's is a 404, as for an unknown stream. The service reads a
  running stream from its buffer as a member of the lossy group ``web-viewer`` with the stream's key, one
  reader per stream shared by its pages (:mod:`beamstream.viewer.watch`), so that viewing never holds the
  stream back. A stream not running yet, or ended and no longer watched, is a 409 saying so (the page tries
  again each second).
- Every page carries the Content-Security-Policy of :mod:`~beamstream.service.pages`: the browser loads and
  connects to this service only.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from beamstream.errors import BeamstreamError
from beamstream.protocol.states import State
from beamstream.service import access
from beamstream.service.access import Action
from beamstream.service.context import Context
from beamstream.service.pages import confined
from beamstream.service.principal import Caller
from beamstream.service.problems import Conflict, NotFound, Unavailable
from beamstream.viewer.app import STATIC as VIEWER_STATIC
from beamstream.viewer.app import frame
from beamstream.viewer.watch import Watches

PAGES = files("beamstream.service") / "ui"
VIEWER_FILES = {"viewer.js": "text/javascript", "viewer.css": "text/css", "icon.svg": "image/svg+xml"}


def add_ui(app: FastAPI) -> None:
    """Serve the pages (see the module) in ``app``; none of them is in the OpenAPI document."""
    watches = Watches()
    app.mount("/ui/static", StaticFiles(directory=str(PAGES)), name="ui-assets")

    def page(name: str) -> Response:
        return confined(FileResponse(str(PAGES / name), media_type="text/html"))

    @app.get("/ui/", include_in_schema=False)
    def streams_page() -> Response:
        return page("streams.html")

    @app.get("/ui/streams/{stream_id}", include_in_schema=False)
    def stream_page(stream_id: str) -> Response:
        return page("stream.html")

    @app.get("/ui/streams/{stream_id}/view/", include_in_schema=False)
    def viewer_page(stream_id: str) -> Response:
        return confined(FileResponse(str(VIEWER_STATIC / "index.html"), media_type="text/html"))

    @app.get("/ui/streams/{stream_id}/view/frame", include_in_schema=False)  # before the assets' catch-all
    async def viewer_frame(request: Request, stream_id: str, principal: Caller, context: Context) -> Response:
        record = await asyncio.to_thread(access.stream, context, principal, stream_id, Action.RELAY)
        if not watches.watching(record.id):
            if record.state.final:
                raise Conflict(f"stream {record.id} has ended ({record.state.value})")
            if record.state is not State.RUNNING or not record.endpoints:
                raise Conflict(f"stream {record.id} is {record.state.value}: not running yet")
        try:
            latest = watches.latest(record.id, (record.endpoints or {}).get("consumers", ""), record.key,
                                    f"stream {record.id} of {record.owner}")
        except BeamstreamError as exc:
            raise Unavailable(f"cannot read stream {record.id}: {exc}") from exc
        return await frame(request, latest)

    @app.get("/ui/streams/{stream_id}/view/static/{name}", include_in_schema=False)
    @app.get("/ui/streams/{stream_id}/view/{name}", include_in_schema=False)
    def viewer_asset(stream_id: str, name: str) -> Response:
        name = "icon.svg" if name == "favicon.ico" else name
        if name not in VIEWER_FILES:
            raise NotFound(f"the viewer has no file {name!r}")
        return confined(FileResponse(str(VIEWER_STATIC / name), media_type=VIEWER_FILES[name]))
