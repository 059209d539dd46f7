"""The request service's application: :func:`create_app` builds it, and its lifespan owns what runs while it
serves — the dispatcher that runs the streams' jobs, and the relay's ZeroMQ context.

Routes: ``/v1/streams`` (:mod:`~beamstream.service.routes.streams`), ``/v1/experiments/{experiment}/runs``
(:mod:`~beamstream.service.routes.runs`), ``/v1/tokens`` (:mod:`~beamstream.service.routes.tokens`), the jobs'
callbacks (:mod:`~beamstream.service.routes.callbacks`), the relay (:mod:`~beamstream.service.relay`),
``/healthz`` and ``/metrics`` (:mod:`~beamstream.service.routes.health`), the pages ``/``, ``/docs`` and
``/redoc`` (:mod:`~beamstream.service.pages`) and the OpenAPI document (:mod:`~beamstream.service.openapi`).

Every request body is bounded (:data:`MAX_BODY_BYTES`) before it is parsed; a stream spec is validated exactly
as ``beamstream spec check --for-service`` does, and refused with 422 naming each problem at its location. Who is
asking is said in one place (:mod:`~beamstream.service.principal`), what they may do decided in one
(:mod:`~beamstream.service.access`), and every refusal answered in one (:mod:`~beamstream.service.problems`), with
the request's id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import zmq.asyncio
from fastapi import FastAPI

from beamstream.modes import make_dirs
from beamstream.service.at_rest import ServiceKey
from beamstream.service.context import ServiceContext
from beamstream.service.openapi import COMMON_ERRORS, openapi_document
from beamstream.service.pages import add_pages
from beamstream.service.problems import add_problem_answers, problem
from beamstream.service.relay import router as relay_router
from beamstream.service.routes import callbacks, health, runs, streams, tokens
from beamstream.service.routes.ui import add_ui
from beamstream.service.settings import ServiceSettings
from beamstream.service.store import JobStore

MAX_BODY_BYTES = 1 << 20  # a request (a stream spec and its resources): as large as a spec file may be


def create_app(settings: ServiceSettings, store: JobStore | None = None, service_url: str | None = None,
               on_started: Callable[[], None] | None = None) -> FastAPI:
    """The application, over ``store`` — else the store at ``settings.database_url``, opened with its secrets
    sealed under the service key (``settings.service_key_path``, made if missing). With ``service_url`` (where its
    jobs reach it), its lifespan runs a dispatcher that starts and watches the streams' jobs, and then calls
    ``on_started``; without, it takes requests and runs nothing. Raises StoreError or ServiceKeyError, saying what
    to fix, for a store at another schema revision or a store or key file others may read; PolicyError for a
    policy file that is not valid."""
    if store is None:
        make_dirs(settings.service_key_path.parent)
        store = JobStore.open(settings.database_url, ServiceKey.from_file(settings.service_key_path))
    context = ServiceContext.of(settings, store)
    app = FastAPI(title="beamstream request service", version=version("beamstream"), responses=COMMON_ERRORS,
                  description="Ask for a stream of an experiment's data; the service runs and watches its jobs.",
                  docs_url=None, redoc_url=None,  # add_pages serves them, without a CDN
                  lifespan=_lifespan(context, service_url, on_started))
    app.state.context = context
    app.openapi = lambda: openapi_document(app)
    add_pages(app)
    add_ui(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    add_problem_answers(app)  # its request ids outside BodyLimit: a body refused as too large has one too
    for module in (health, streams, runs, tokens, callbacks):
        app.include_router(module.router)
    app.include_router(relay_router)
    health.mount_metrics(app, store)
    return app


def _lifespan(context: ServiceContext, service_url: str | None, on_started: Callable[[], None] | None) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """While the application serves: the relay's ZeroMQ context, and with ``service_url`` the dispatcher
        (which has pointed its streams' jobs at ``service_url`` when ``on_started`` is called)."""
        from beamstream.service.dispatcher import Dispatcher

        context.relay_context = zmq.asyncio.Context()
        if service_url is not None:
            context.dispatcher = Dispatcher(context.store, context.settings, service_url).start()
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            if context.dispatcher is not None:
                context.dispatcher.close()
                context.dispatcher = None
            context.relay_context.destroy(linger=0)  # a relay still open at shutdown: its sockets too
            context.relay_context = None

    return lifespan


class BodyLimit:
    """ASGI middleware: a request whose body is larger than ``max_bytes`` gets 413 before it is read whole."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def bounded_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, bounded_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        await problem(413, f"request body larger than {self.max_bytes} bytes")(scope, receive, send)


class _TooLarge(Exception):
    pass
