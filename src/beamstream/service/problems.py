"""Every refusal of the request service, answered in one place: a domain error (a stream not found, a request not
allowed, a state change that cannot be made, jobs that cannot run, a malformed spec) becomes an HTTP answer whose
body is a :class:`~beamstream.protocol.models.Problem` carrying the request's id, which the answer's
``X-Request-ID`` header and the service's log line about the refusal carry too.

Routes raise the errors of the layer they call (:class:`~beamstream.service.store.StreamNotFound`,
:class:`~beamstream.protocol.states.TransitionError`, ...) or one of the :class:`Refusal` kinds here; none builds
an HTTP answer itself.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from beamstream.errors import SpecError
from beamstream.protocol.models import Problem
from beamstream.protocol.states import TransitionError
from beamstream.service.callbacks import CallbackRefused
from beamstream.service.catalogue import RunNotFound
from beamstream.service.executors import CannotRun
from beamstream.service.job_paths import PathRefused
from beamstream.service.store import StreamNotFound

logger = logging.getLogger("beamstream.service")
REQUEST_ID = "X-Request-ID"
GIVEN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a client's own request id, kept if it looks like one
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("beamstream_request_id", default=None)


class Refusal(Exception):
    """A request the service will not do: ``status``, ``detail`` (a sentence, or one line per problem)."""

    status = 400

    def __init__(self, detail: str | list[str], headers: dict[str, str] | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else "; ".join(detail))
        self.detail = detail
        self.headers = headers or {}


class NotFound(Refusal):
    status = 404


class NotAllowed(Refusal):
    status = 403


class NotAuthenticated(Refusal):
    """No identity: answered with ``WWW-Authenticate: Bearer`` (a WebSocket is closed with 4401 instead)."""

    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": "Bearer"})


class Conflict(Refusal):
    status = 409


class Invalid(Refusal):
    status = 422


class Unavailable(Refusal):
    status = 503


def unknown_stream(stream_id: str) -> NotFound:
    """The one answer for a stream that is not there, and for one the caller may not see: the same words."""
    return NotFound(f"no stream {stream_id!r}")


def _as_refusal(exc: Exception) -> Refusal:
    """The refusal a domain error means."""
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, StreamNotFound):
        return unknown_stream(str(exc.args[0]) if exc.args else "")
    if isinstance(exc, RunNotFound):
        return NotFound(str(exc))
    if isinstance(exc, TransitionError):
        return Conflict(str(exc))
    if isinstance(exc, CannotRun):
        return (Unavailable if exc.unavailable else Invalid)(f"resources: {exc}")
    if isinstance(exc, SpecError):
        return Invalid([line.strip() for line in str(exc).splitlines()])
    if isinstance(exc, PathRefused):
        return NotAllowed(exc.problems)
    if isinstance(exc, CallbackRefused):
        return NotAllowed(f"callback refused: {exc}")
    raise TypeError(f"not a domain error: {exc!r}")


def problem(status: int, detail: str | list[str], headers: dict[str, str] | None = None) -> JSONResponse:
    """The answer ``status`` with ``detail``, and the current request's id in its body (:class:`RequestIds` puts it
    in the header)."""
    body = Problem(detail=detail, request_id=request_id.get()).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    refusal = _as_refusal(exc)
    level = logging.WARNING if refusal.status in (401, 403) else logging.INFO
    logger.log(level, "%s %s refused %d: %s [request %s]", request.method, request.url.path, refusal.status,
               refusal, request_id.get())
    return problem(refusal.status, refusal.detail, refusal.headers)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """An answer the framework makes (an unknown path, a method not allowed), with the request's id."""
    return problem(exc.status_code, exc.detail, dict(exc.headers or {}))


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 whose ``detail`` lists each problem as ``LOCATION: message``, as a malformed spec's does (a body's
    locations from its top, ``resources.workers``; a parameter's with where it is, ``query.limit``)."""
    lines = []
    for error in exc.errors():
        location = list(error["loc"][1:] if error["loc"][:1] == ("body",) else error["loc"])
        lines.append(f"{'.'.join(str(part) for part in location)}: {error['msg']}" if location else error["msg"])
    logger.info("%s %s refused 422: %s [request %s]", request.method, request.url.path, "; ".join(lines),
                request_id.get())
    return problem(422, lines)


DOMAIN_ERRORS = (Refusal, StreamNotFound, RunNotFound, TransitionError, CannotRun, SpecError, PathRefused,
                 CallbackRefused)


def add_problem_answers(app: FastAPI) -> None:
    """Answer every domain error, framework error and invalid request on ``app`` as a :class:`Problem` with the
    request's id (:class:`RequestIds` gives each request one)."""
    for kind in DOMAIN_ERRORS:
        app.add_exception_handler(kind, _refused)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_middleware(RequestIds)


class RequestIds:
    """ASGI middleware: each HTTP request gets an id — the client's ``X-Request-ID`` if it gave a sane one, else a
    new random one — in :data:`request_id` while it is served and in its answer's ``X-Request-ID`` header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID.lower().encode(), b"").decode(errors="replace")
        current = given if GIVEN_ID.match(given) else secrets.token_hex(8)
        token = request_id.set(current)

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", [])
                           if name.lower() != REQUEST_ID.lower().encode()]
                message = {**message, "headers": [*headers, (REQUEST_ID.lower().encode(), current.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
