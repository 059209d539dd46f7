"""The REST API of the request service (FastAPI): streams under ``/v1``, ``/healthz``, ``/metrics``, OpenAPI;
the pages ``/``, ``/docs`` and ``/redoc`` (:mod:`beamstream.service.pages`).

``create_app(settings)`` builds the application over a :class:`~beamstream.service.store.JobStore`.
Every request body is bounded (:data:`MAX_BODY_BYTES`) before it is parsed; a stream spec is
validated exactly as ``beamstream spec check`` does, and refused with 422 naming each problem at
its location. An unknown stream id is 404.

Who is asking is said in one place, :func:`identity`; what they may do is decided by the service's
:class:`~beamstream.service.policy.Authorizer`: a request for data the caller may not read is 403
naming the experiment, and someone else's stream (unless the caller is an admin) is 404 on every
route, exactly as an unknown id, so its existence is not revealed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from urllib.parse import urlencode
from importlib.metadata import version
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Path as Path_
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response, WebSocket, WebSocketException
from fastapi.exceptions import RequestValidationError
from fastapi.requests import HTTPConnection
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from beamstream.buffer.config import BufferConfig
from beamstream.errors import SpecError
from beamstream.modes import make_dirs
from beamstream.service.at_rest import ServiceKey
from beamstream.service.catalogue import Catalogue, Run, RunNotFound
from beamstream.service.callbacks import SIGNATURE, TIMESTAMP, CallbackRefused, Verifier
from beamstream.service.dispatcher import VerdictBody, end_with_verdict, with_stream_sink
from beamstream.service.executors import CannotRun
from beamstream.service.events import change_events
from beamstream.service.figures import LiveFigures
from beamstream.service.job_paths import PathGrant, PathRefused, confined, output_file, output_files, stream_folder
from beamstream.service.pages import add_pages
from beamstream.service.policy import Authorizer
from beamstream.service.relay import add_relay
from beamstream.service.revocation import Revocations
from beamstream.service.settings import ServiceSettings
from beamstream.service.states import State, TransitionError
from beamstream.service.store import JobStore, StreamNotFound, StreamRecord
from beamstream.service.tokens import DEFAULT_TTL_S, MAX_TTL_S, Caller, bearer, digest, grant_of, new_secret
from beamstream.sources.hdf5 import CXI_DATA
from beamstream.spec import parse_spec, spec_json_schema

logger = logging.getLogger(__name__)
IDENTITY_KEY = "beamstream.identity"  # the ASGI scope key an authentication layer puts the verified identity in
CERTIFICATE_KEY = "beamstream.certificate"  # and the serial number (hex) of the certificate that proved it
MAX_BODY_BYTES = 1 << 20  # a request (a stream spec and its resources): as large as a spec file may be
MAX_LOG_BYTES = 16 << 20  # of each job's output, in one answer
MAX_EVENT_STREAMS = 256  # Server-Sent Event streams open at once


class Resources(BaseModel):
    """What a stream's jobs may use."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(1, ge=1, le=4096, description="producer workers (local processes or MPI/srun ranks)")
    nodes: int = Field(1, ge=1, le=1024, description="nodes for the producer job (slurm)")
    time_limit_s: float | None = Field(None, gt=0, le=7 * 86400, description="wall-clock limit of the jobs")
    executor: Literal["local", "slurm"] | None = Field(None, description="where the jobs run (default: the service's)")
    buffer: BufferConfig | None = Field(None, description="buffer settings (endpoints and the admission key are "
                                                          "the service's)")

    @field_validator("buffer")
    @classmethod
    def _no_key_file(cls, buffer: BufferConfig | None) -> BufferConfig | None:
        if buffer is not None and buffer.admission_key_file is not None:
            raise ValueError("admission_key_file is the service's to give: it gives each stream's buffer that "
                             "stream's admission key; leave it out")
        return buffer


class StreamRequest(BaseModel):
    """A request for a stream: its spec (the model ``beamstream spec check`` reads) and resources."""

    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any] = Field(default_factory=dict,
                                 description="the stream spec, as in a spec file; its sinks may be left out "
                                             "(the service adds a stream sink to the stream's buffer), and all of "
                                             "it with experiment and run (a source that reads the run's files)")
    resources: Resources = Field(default_factory=Resources)
    name: str | None = Field(None, max_length=256)
    # with both, a source that reads files but names none (psana2, hdf5, or no type) reads the catalogue's
    experiment: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.-]+$")
    run: int | None = Field(None, ge=0, le=10**9)


class ChangeView(BaseModel):
    state: State
    reason: str
    at: float = Field(description="seconds since the Unix epoch")


class StreamView(BaseModel):
    """A stream as the API shows it."""

    id: str
    owner: str
    name: str | None
    experiment: str | None
    run: int | None
    state: State
    created: float
    updated: float
    history: list[ChangeView]
    endpoints: dict[str, Any] | None = Field(description="where to read the stream, once it runs")
    verdict: dict[str, Any] | None = Field(description="the stream's verdict, once it ended")
    resources: dict[str, Any]
    figures: dict[str, Any] | None = Field(None, description="a running stream's live figures, from its buffer "
                                                                "(only in GET /v1/streams/{id})")

    @classmethod
    def of(cls, record: StreamRecord) -> StreamView:
        """The view of ``record``: its attributes by name (the secret and the spec are not shown)."""
        return cls.model_validate(record, from_attributes=True)


class Credentials(BaseModel):
    """A stream's credentials: its key, for its owner only (docs/security.md, Stream credentials). Producers seal
    the stream's messages with it, consumers open them, the buffer admits those who prove they hold it."""

    stream: str = Field(description="the stream's id")
    key: str = Field(description="the stream's key (URL-safe base64): beamstream.security.streamkey.StreamKey")


class StreamCreated(StreamView):
    """A stream just requested, as the API shows it, with its credentials (in this answer to its owner only)."""

    credentials: Credentials | None = Field(description="the stream's credentials (None: the service keeps none)")


NO_STORE = {"Cache-Control": "no-store"}  # on every answer that carries credentials


class StreamPage(BaseModel):
    items: list[StreamView]
    total: int
    limit: int
    offset: int


class OutputFile(BaseModel):
    path: str = Field(description="relative to the stream's output folder (a files sink's relative dir is there)")
    size: int = Field(description="bytes")


class OutputFiles(BaseModel):
    """What a stream's jobs wrote into its output folder."""

    stream: str
    files: list[OutputFile]


class Problem(BaseModel):
    detail: str | list[str]


class Listening(BaseModel):
    """The buffer job is serving: where producers and consumers reach it."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["listening"]
    producers: str = Field(max_length=1024)
    consumers: str = Field(max_length=1024)
    metrics: str | None = Field(None, max_length=1024)


class Ended(BaseModel):
    """The buffer job has stopped: the stream's verdict."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["ended"]
    verdict: VerdictBody


class TokenRequest(BaseModel):
    """A token to mint: how long it lives, and what it is limited to (by default: all the caller may)."""

    model_config = ConfigDict(extra="forbid")

    ttl_s: int = Field(DEFAULT_TTL_S, ge=1, le=MAX_TTL_S, description="seconds until it expires")
    experiments: list[Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.-]+$")]] | None = (
        Field(None, max_length=64, description="only streams (and runs) of these experiments"))
    stream: str | None = Field(None, min_length=1, max_length=32, pattern=r"^[0-9a-f]+$",
                               description="only this stream (one of the caller's)")


class TokenView(BaseModel):
    """A minted token: the secret (shown this once, never stored), its id (to revoke it) and its limits."""

    token: str
    id: str
    expires: float = Field(description="seconds since the Unix epoch")
    experiments: list[str] | None
    stream: str | None


class Callback(BaseModel):
    body: Annotated[Listening | Ended, Field(discriminator="event")]


def identity(connection: HTTPConnection) -> str:
    """Who is asking, on an HTTP request or a WebSocket: the single place that says so.

    An authentication layer (an ASGI middleware that verifies the TLS peer certificate or a
    token) puts the identity it verified in the ASGI scope under :data:`IDENTITY_KEY`; nothing a
    client sends (a header, a body, a query) can set it. Without such a layer, the first-run
    default, every request is made for the settings' ``default_owner``. With TLS on (``app.state.tls``,
    set by :func:`create_app` from the settings: beamstream.service.tls puts the client certificate's
    common name there) that default never applies: a connection without an identity is refused, 401
    (a WebSocket: closed with code 4401).

    Without a certificate's identity, a bearer token (``Authorization: Bearer TOKEN``; on the live pages a
    browser opens without headers, the relay's WebSocket and a stream's events, also ``?token=``) names it:
    the answer is then a :class:`~beamstream.service.tokens.Caller` carrying the token's grant, whose limits
    the routes apply. A token presented but not valid is 401.
    """
    found = connection.scope.get(IDENTITY_KEY)
    if found:
        return Caller(found, certificate=connection.scope.get(CERTIFICATE_KEY))
    websocket = connection.scope["type"] == "websocket"
    token = bearer(connection.headers.get("authorization"))
    if token is None and (websocket or connection.url.path.endswith("/events")):  # WebSocket, EventSource: no headers
        token = connection.query_params.get("token")
        if token is not None:  # out of the scope once read: what logs the path with its query must not log it
            kept = [(name, value) for name, value in connection.query_params.multi_items() if name != "token"]
            connection.scope["query_string"] = urlencode(kept).encode()
    if token is not None:
        grant = grant_of(connection.app.state.store, token)
        if grant is None:
            _unauthenticated(websocket, "the bearer token is not valid (unknown, expired or revoked)")
        if grant.certificate is not None and connection.app.state.revocations.revoked(grant.certificate):
            logger.warning("refused token %s of %s: the certificate it was minted with (serial %s) is revoked",
                           grant.id, grant.identity, grant.certificate)
            _unauthenticated(websocket, "the bearer token is not valid: the certificate it was minted with is revoked")
        return Caller(grant.identity, grant)
    if connection.app.state.tls:
        _unauthenticated(websocket, "no identity: no client certificate naming one (its subject common name), "
                                    "and no bearer token")
    return Caller(connection.app.state.settings.default_owner)


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "the body could not be parsed"},
    401: {"model": Problem, "description": "no identity: no client certificate naming one and no valid bearer token "
                                           "(header WWW-Authenticate: Bearer)"},
    422: {"model": Problem, "description": "a parameter or the body is not valid: one line per problem, "
                                           "LOCATION: what is wrong"},
}
"""Responses any route may give, described once for the whole OpenAPI document."""


def _problem_as_json(status: int) -> dict[str, Any]:
    """The OpenAPI response of a :class:`Problem` as JSON, for a route whose own answers are of another type."""
    described = COMMON_ERRORS.get(status, {}).get("description", "not found")
    return {"description": described,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 whose ``detail`` lists each problem as ``LOCATION: message``, as a malformed spec's does (a body's
    locations from its top, ``resources.workers``; a parameter's with where it is, ``query.limit``)."""
    lines = []
    for error in exc.errors():
        location = list(error["loc"][1:] if error["loc"][:1] == ("body",) else error["loc"])
        lines.append(f"{'.'.join(str(part) for part in location)}: {error['msg']}" if location else error["msg"])
    return JSONResponse(status_code=422, content={"detail": lines})


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with a request's ``spec`` described by the stream spec's own JSON Schema (the
    installed plugins'; its sinks may be left out), and how callers prove who they are: a client certificate
    (mutual TLS) or a bearer token (``POST /v1/tokens``); a service without TLS settings asks for neither."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        spec = spec_json_schema()
        for name, definition in spec.pop("$defs", {}).items():
            schemas[f"Spec.{name}"] = _spec_refs(definition)
        spec["required"] = [name for name in spec.get("required", []) if name != "sinks"]
        schemas["StreamSpec"] = _spec_refs(spec)
        described = schemas["StreamRequest"]["properties"]["spec"].get("description", "")
        schemas["StreamRequest"]["properties"]["spec"] = {"$ref": "#/components/schemas/StreamSpec",
                                                          "description": described}
        document["components"]["securitySchemes"] = {
            "clientCertificate": {"type": "mutualTLS", "description": "a certificate of the facility's CA; its "
                                                                      "subject common name is the identity"},
            "bearerToken": {"type": "http", "scheme": "bearer", "description": "a token from POST /v1/tokens"},
        }
        document["security"] = [{"clientCertificate": []}, {"bearerToken": []}, {}]
        app.openapi_schema = document
    return app.openapi_schema


def _spec_refs(node: Any) -> Any:
    """``node`` (part of the spec's JSON Schema) with its ``#/$defs/NAME`` references made ``Spec.NAME`` components."""
    if isinstance(node, dict):
        return {key: (f"#/components/schemas/Spec.{value.removeprefix('#/$defs/')}" if key == "$ref"
                      and isinstance(value, str) and value.startswith("#/$defs/") else _spec_refs(value))
                for key, value in node.items()}
    if isinstance(node, list):
        return [_spec_refs(item) for item in node]
    return node


def _unauthenticated(websocket: bool, why: str) -> None:
    if websocket:
        raise WebSocketException(4401, why)
    raise HTTPException(401, why, headers={"WWW-Authenticate": "Bearer"})


Owner = Annotated[str, Depends(identity)]  # a Caller: with the token's grant when a token said who is asking


def _grant(caller: str):  # noqa: ANN202
    return getattr(caller, "grant", None)


def create_app(settings: ServiceSettings, store: JobStore | None = None) -> FastAPI:
    """The application; it opens (and migrates) the store at ``settings.database_url`` unless one is given, its
    secrets sealed under the service key (``settings.service_key_path``, made if missing). Raises StoreError or
    ServiceKeyError, saying what to fix, for a store or key file others may read."""
    if store is None:
        make_dirs(settings.service_key_path.parent)
        store = JobStore.open(settings.database_url, ServiceKey.from_file(settings.service_key_path))
    app = FastAPI(title="beamstream request service", version=version("beamstream"), responses=COMMON_ERRORS,
                  description="Ask for a stream of an experiment's data; the service runs and watches its jobs.",
                  docs_url=None, redoc_url=None)  # add_pages serves them, without a CDN
    add_pages(app)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.openapi = lambda: _openapi(app)
    app.state.store = store
    app.state.dispatcher = None  # set by whoever runs the jobs (beamstream service), once it knows its URL
    app.state.executors = set(settings.executors) | {settings.executor}
    verifier = Verifier()
    live = LiveFigures()
    event_streams = EventStreamLimit(MAX_EVENT_STREAMS)
    catalogue = Catalogue(settings.xtc_root, settings.hdf5_pattern, settings.calib_pattern)
    authorizer = Authorizer(settings.policy_file)
    app.state.settings = settings
    app.state.tls = settings.tls  # identity() then refuses a request without a verified identity
    app.state.revocations = Revocations(settings.tls_crl)  # a token dies with the certificate that minted it
    app.state.authorizer = authorizer
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamCollector(store))
    app.mount("/metrics", make_asgi_app(registry))

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        """``ok`` while the service and its job store answer."""
        try:
            store.healthy()
        except Exception as exc:  # any database failure: unhealthy, said in words
            raise HTTPException(503, f"job store unavailable: {type(exc).__name__}") from None
        return {"status": "ok"}

    @app.post("/v1/streams", status_code=201, response_model=StreamCreated, tags=["streams"],
              responses={403: {"model": Problem}, 404: {"model": Problem}, 422: {"model": Problem},
                         503: {"model": Problem}})
    def request_stream(request: StreamRequest, owner: Owner, response: Response) -> StreamCreated:
        """Ask for a stream: it is queued at once and started when the limits allow. One its executor could not
        run is refused before anything is made: 422 if it asks for more than the executor gives (Slurm would
        refuse its nodes, tasks or time), 503 if the executor does not answer (Slurm is down). Under a policy, 403
        for an experiment the caller may not read, and (but for admins) for data other than a catalogue run of
        the request's experiment or a simulated source. The answer carries the stream's credentials (its key),
        which the service gives to the stream's owner only (again: ``GET /v1/streams/{id}/credentials``)."""
        requested = dict(request.spec)
        source = requested.get("source") if isinstance(requested.get("source"), dict) else {}
        reads_files = source.get("type") in (None, "psana2", "hdf5") and "files" not in source
        from_catalogue = request.experiment is not None and request.run is not None and reads_files
        if (grant := _grant(owner)) is not None and (grant.stream is not None
                                                     or not grant.permits_experiment(request.experiment)):
            raise HTTPException(403, "this token may not request this stream: it is limited to "
                                     + (f"stream {grant.stream}" if grant.stream else
                                        f"experiments {', '.join(grant.experiments)}"))
        decision = authorizer.may_request(owner, request.experiment,
                                          own_data=source.get("type") != "simulated" and not from_catalogue)
        if not decision.allowed:
            raise HTTPException(403, decision.told)
        run = _found(catalogue, request.experiment, request.run) if from_catalogue else None
        if run is not None:
            requested = with_run_files(requested, run)
        try:  # the service adds the stream sink to the stream's buffer: a request need not name one
            spec = parse_spec(with_stream_sink(requested), origin="spec")
        except SpecError as exc:
            raise HTTPException(422, [line.strip() for line in str(exc).splitlines()]) from None
        grant = path_grant(owner, request.experiment, run)
        try:
            requested = confined(requested, spec, grant, "spec")
            resources = confined(request.resources.model_dump(mode="json"), request.resources, grant, "resources")
        except PathRefused as exc:
            raise HTTPException(403, exc.problems) from None
        executor = request.resources.executor or settings.executor
        if executor not in app.state.executors:
            raise HTTPException(422, f"resources.executor: {executor!r} is not available on this service; "
                                     f"it runs jobs with: {', '.join(sorted(app.state.executors))}")
        if app.state.dispatcher is not None:
            try:
                app.state.dispatcher.admit(request.resources.model_dump(mode="json"))
            except CannotRun as exc:
                raise HTTPException(503 if exc.unavailable else 422, f"resources: {exc}") from None
        record = store.create(owner=owner, spec=requested, resources=resources,
                              name=request.name or spec.name, experiment=request.experiment, run=request.run)
        _wake(app)
        response.headers.update(NO_STORE)
        return StreamCreated(**StreamView.of(record).model_dump(), credentials=_credentials(record))

    def path_grant(owner: str, experiment: str | None, run: Run | None) -> PathGrant:
        """What a request of ``owner`` for ``experiment`` (``run``: the catalogue run it reads) may make jobs open."""
        if authorizer.may_open_any_path(owner).allowed:
            return PathGrant(any_path=True)
        folder = catalogue.calibration_folder(experiment) if experiment is not None else None
        files = frozenset(run.files) if run is not None else frozenset()
        if folder is None and not files:
            return PathGrant(any_path=False)
        named = [f"the files of run {run.run} of experiment {experiment!r} that the service finds"] if run else []
        named += [f"files under the calibration folder of experiment {experiment!r}, {folder}/"] if folder else []
        return PathGrant(any_path=False, files=files, folders=(os.path.realpath(folder),) if folder else (),
                         where=" or ".join(named))

    @app.get("/v1/experiments/{experiment}/runs", tags=["runs"], responses={404: {"model": Problem}})
    def experiment_runs(experiment: str, caller: Owner) -> dict[str, Any]:
        """The runs of an experiment that the catalogue finds, with their files (404 for an experiment the caller
        may not read, as for one the catalogue does not know)."""
        grant = _grant(caller)
        if (grant is not None and not grant.permits_experiment(experiment)
                or not authorizer.may_read_experiment(caller, experiment).allowed):
            raise HTTPException(404, f"no experiment {experiment!r} you may read")
        try:
            runs = catalogue.runs(experiment)
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        return {"experiment": experiment,
                "runs": [{"run": run.run, "source": run.source, "files": run.files} for run in runs]}

    @app.get("/v1/streams", response_model=StreamPage, tags=["streams"])
    def list_streams(caller: Owner, state: State | None = None, experiment: str | None = None,
                     owner: str | None = None, limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
                     offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> StreamPage:
        """The caller's streams (an admin's: everyone's), newest first, filtered by state, experiment and owner
        (another owner's: none, but for admins)."""
        limit = limit or settings.page_size
        if not authorizer.may_list(caller, owner).allowed:
            return StreamPage(items=[], total=0, limit=limit, offset=offset)
        if owner is None and not authorizer.is_admin(caller):
            owner = caller
        grant = _grant(caller)
        records, total = store.list(state=state, experiment=experiment, owner=owner, limit=limit, offset=offset,
                                    ids=None if grant is None or grant.stream is None else [grant.stream],
                                    experiments=None if grant is None or grant.experiments is None
                                    else list(grant.experiments))
        return StreamPage(items=[StreamView.of(record) for record in records], total=total, limit=limit,
                          offset=offset)

    @app.get("/v1/streams/{stream_id}", response_model=StreamView, tags=["streams"],
             responses={404: {"model": Problem}})
    def show_stream(stream_id: str, caller: Owner) -> StreamView:
        """One stream: its state, the history of its state changes, where to read it, its live figures while it
        runs (from its buffer), its verdict once it ended."""
        record = visible(stream_id, caller, "see")
        view = StreamView.of(record)
        metrics = (record.endpoints or {}).get("metrics")
        if record.state is State.RUNNING and metrics:
            view.figures = live.of(record.id, metrics, record.history[-1].at)
        elif record.state.final:
            live.forget(record.id)
        return view

    @app.get("/v1/streams/{stream_id}/credentials", response_model=Credentials, tags=["streams"],
             responses={404: {"model": Problem}})
    def stream_credentials(stream_id: str, caller: Owner, response: Response) -> Credentials:
        """The stream's credentials, for its owner only: anyone else (an admin too) gets 404, exactly as for an
        unknown stream. A token may fetch them if its holder owns the stream and its limits cover it. 404 too for
        a stream requested before the service kept credentials."""
        record = owned(stream_id, caller, "fetch the credentials of")
        credentials = _credentials(record)
        if credentials is None:
            raise HTTPException(404, f"stream {stream_id} has no credentials: it was requested before the "
                                     "service kept them")
        response.headers.update(NO_STORE)
        return credentials

    def owned(stream_id: str, caller: str, action: str) -> StreamRecord:
        """The stream if ``caller`` owns it (and its token covers it); 404 alike for unknown streams and others'."""
        try:
            record = authorizer.owned_stream(store, stream_id, caller, action=action)
        except StreamNotFound:
            raise _unknown(stream_id) from None
        return within_token(record, caller, action)

    @app.get("/v1/streams/{stream_id}/files", response_model=OutputFiles, tags=["streams"],
             responses={404: {"model": Problem}})
    def stream_files(stream_id: str, caller: Owner) -> OutputFiles:
        """What the stream's jobs wrote into its output folder (a files sink's relative ``dir`` is there), for its
        owner only: anyone else (an admin too) gets 404, as for the credentials."""
        record = owned(stream_id, caller, "list the files of")
        found = output_files(stream_folder(settings.state_dir, record.id))
        return OutputFiles(stream=record.id, files=[OutputFile(path=path, size=size) for path, size in found])

    @app.get("/v1/streams/{stream_id}/files/{path:path}", response_class=FileResponse, tags=["streams"],
             responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": Problem}})
    def stream_file(stream_id: str, path: str, caller: Owner) -> FileResponse:
        """One file of the stream's output folder (a path as ``/files`` lists it), for its owner only."""
        record = owned(stream_id, caller, "fetch a file of")
        found = output_file(stream_folder(settings.state_dir, record.id), path)
        if found is None:
            raise HTTPException(404, f"stream {stream_id} has no output file {path!r}")
        return FileResponse(found, media_type="application/octet-stream", filename=found.name)

    @app.get("/v1/streams/{stream_id}/events", tags=["streams"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}, 404: {"model": Problem},
                        503: {"model": Problem}})
    def stream_events(stream_id: str, caller: Owner, after: Annotated[int, Query(ge=-1, le=10**6)] = -1,
                      last_event_id: Annotated[str, Header(pattern=r"^(|-1|[0-9]{1,6})$")] = "",
                      ) -> StreamingResponse:
        """The stream's state changes as Server-Sent Events (see :mod:`beamstream.service.events`): those already
        made, then each as it happens, until a final one; after the ``after``-th (or ``Last-Event-ID``) only."""
        visible(stream_id, caller, "follow the events of")
        start = int(last_event_id) if last_event_id else after
        return StreamingResponse(event_streams.guard(change_events(store, stream_id, start, _public_view)),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/v1/streams/{stream_id}/logs", response_class=PlainTextResponse, tags=["streams"],
             responses={status: _problem_as_json(status) for status in (*COMMON_ERRORS, 404)})
    def stream_logs(stream_id: str, caller: Owner,
                    tail: Annotated[int, Query(ge=1, le=MAX_LOG_BYTES)] = 65536) -> str:
        """The output of the stream's jobs (the last ``tail`` bytes of each), buffer first."""
        record = visible(stream_id, caller, "read the logs of")
        parts = []
        for job in store.jobs(record.id).values():
            for path in sorted(Path(job.directory).glob(f"{job.role}.*")):
                if path.suffix in (".log", ".err") and path.stat().st_size:
                    with open(path, "rb") as file:
                        file.seek(max(0, path.stat().st_size - tail))
                        parts.append(f"==> {job.role} ({path.name}) <==\n{file.read().decode(errors='replace')}")
        return "\n".join(parts)

    @app.delete("/v1/streams/{stream_id}", response_model=StreamView, tags=["streams"],
                responses={404: {"model": Problem}, 409: {"model": Problem}})
    def cancel_stream(stream_id: str, owner: Owner) -> StreamView:
        """Cancel a stream that has not ended; 409 for one that has."""
        record = visible(stream_id, owner, "cancel")
        if record.state.final:
            raise HTTPException(409, f"stream {stream_id} has already ended ({record.state.value})")
        if app.state.dispatcher is not None:
            app.state.dispatcher.stop_jobs(record.id, buffer_last=True)
        try:
            cancelled = StreamView.of(store.change_state(record.id, State.CANCELLED, f"cancelled by {owner}"))
        except TransitionError:
            raise HTTPException(409, f"stream {stream_id} has already ended ({record.state.value})") from None
        if app.state.dispatcher is not None:
            app.state.dispatcher.wake()  # it stops the buffer once the producers have told its readers
        return cancelled

    @app.post("/v1/streams/{stream_id}/callback", status_code=204, tags=["jobs"],
              responses={403: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem}})
    async def job_callback(stream_id: str, request: Request) -> None:
        """A stream's job reports (signed with the stream's secret; see :mod:`beamstream.service.callbacks`)."""
        record = _find(store, stream_id)
        body = await request.body()
        try:
            verifier.check(record.secret, request.headers.get(TIMESTAMP), request.headers.get(SIGNATURE), body)
        except CallbackRefused as exc:
            logger.warning("refused a callback for stream %s from %s: %s", stream_id,
                           request.client.host if request.client else "?", exc)
            raise HTTPException(403, f"callback refused: {exc}") from None
        try:
            event = Callback.model_validate({"body": json.loads(body)}).body
        except (ValueError, ValidationError) as exc:
            raise HTTPException(422, f"callback body: {exc}") from None
        try:
            if isinstance(event, Listening):
                store.change_state(stream_id, State.RUNNING, "the buffer is listening",
                                   endpoints=event.model_dump(exclude={"event"}))
            else:
                end_with_verdict(store, stream_id, event.verdict.model_dump())
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from None
        _wake(app)

    def visible(stream_id: str, caller: str, action: str) -> StreamRecord:
        """The stream if ``caller`` may see it (and its token, if it came with one, covers it); 404 alike for an
        unknown stream and for someone else's (or one outside the token's limits)."""
        try:
            record = authorizer.visible_stream(store, stream_id, caller, action=action)
        except StreamNotFound:
            raise _unknown(stream_id) from None
        return within_token(record, caller, action)

    def within_token(record: StreamRecord, caller: str, action: str) -> StreamRecord:
        """``record``, unless the caller came with a token whose limits exclude it: then 404, as for an unknown
        stream (the refusal logged)."""
        grant = _grant(caller)
        if grant is not None and not grant.permits_stream(record.id, record.experiment):
            logger.warning("refused %s to %s stream %s: outside the limits of token %s", caller, action, record.id,
                           grant.id)
            raise _unknown(record.id)
        return record

    @app.post("/v1/tokens", status_code=201, response_model=TokenView, tags=["tokens"],
              responses={403: {"model": Problem}, 404: {"model": Problem}})
    def mint_token(request: TokenRequest, caller: Owner) -> TokenView:
        """A short-lived bearer token that acts as the caller, limited to ``experiments`` and ``stream`` if given,
        for ``ttl_s`` seconds; only for a caller with a client certificate (TLS on): a token cannot mint tokens.
        The token is shown this once; the service keeps only its SHA-256."""
        if _grant(caller) is not None:
            raise HTTPException(403, "a token cannot mint tokens: present your client certificate")
        if not settings.tls:
            raise HTTPException(403, "tokens are minted only with TLS on, for a caller with a client certificate")
        for experiment in request.experiments or []:
            if not authorizer.may_read_experiment(caller, experiment).allowed:
                raise HTTPException(403, f"you may not read experiment {experiment!r}")
        if request.stream is not None:
            visible(request.stream, caller, "mint a token for")
        secret = new_secret()
        grant = store.add_token(digest=digest(secret), identity=str(caller), expires=time.time() + request.ttl_s,
                                experiments=request.experiments, stream=request.stream,
                                certificate=caller.certificate)
        logger.info("issued token %s to %s (expires in %d s, experiments %s, stream %s)", grant.id, caller,
                    request.ttl_s, request.experiments or "all", request.stream or "any")
        return TokenView(token=secret, id=grant.id, expires=grant.expires, experiments=request.experiments,
                         stream=grant.stream)

    @app.delete("/v1/tokens/{token_id}", status_code=204, tags=["tokens"], responses={404: {"model": Problem}})
    def revoke_token(token_id: Annotated[str, Path_(max_length=64)], caller: Owner) -> None:
        """Revoke a token (the caller's own; an admin: anyone's); 404 for an unknown token or someone else's."""
        found = store.token(token_id)
        if found is None or found.identity != caller and not authorizer.is_admin(caller):
            raise HTTPException(404, f"no token {token_id!r}")
        store.revoke_token(token_id)
        logger.info("%s revoked token %s (of %s)", caller, token_id, found.identity)

    def relay_identity(websocket: WebSocket, stream_id: str) -> str:
        """:func:`identity` for the relay; a token limited elsewhere is refused here as for an unknown stream."""
        caller = identity(websocket)
        grant = _grant(caller)
        if grant is not None:
            try:
                record = store.get(stream_id)
            except StreamNotFound:
                record = None
            if record is None or not grant.permits_stream(record.id, record.experiment):
                raise WebSocketException(4404, f"no stream {stream_id!r} on this service")
        return caller

    add_relay(app, relay_identity)
    return app


def _wake(app: FastAPI) -> None:
    """Let the dispatcher act on a change now (a new request, a job's report), if this app has one."""
    if app.state.dispatcher is not None:
        app.state.dispatcher.wake()


def _credentials(record: StreamRecord) -> Credentials | None:
    return None if record.key is None else Credentials(stream=record.id, key=record.key)


def _public_view(record: StreamRecord) -> dict[str, Any]:
    return StreamView.of(record).model_dump(mode="json")


def with_run_files(spec: dict[str, Any], run: Run) -> dict[str, Any]:
    """``spec`` whose source reads ``run``'s files (the source type the run needs, unless the spec names one; the
    files unless it names some; a psana2 source's ``exp`` and ``run`` labels; an hdf5 source's CXI detector data
    as the field ``image``, unless it names its datasets), and whose description says which experiment and run it
    is (unless the spec's ``metadata:`` says otherwise)."""
    source = dict(spec.get("source") or {})
    source.setdefault("type", run.source)
    source.setdefault("files", run.files)
    if source["type"] == "psana2":
        source.setdefault("exp", run.experiment)
        source.setdefault("run", run.run)
    if source["type"] == "hdf5":
        source.setdefault("datasets", {"image": CXI_DATA})
    metadata = {"experiment": run.experiment, "run": run.run, **(spec.get("metadata") or {})}
    return {**spec, "source": source, "metadata": metadata}


def _found(catalogue: Catalogue, experiment: str, run: int) -> Run:
    try:
        return catalogue.find(experiment, run)
    except RunNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _find(store: JobStore, stream_id: str) -> StreamRecord:
    try:
        return store.get(stream_id)
    except StreamNotFound:
        raise _unknown(stream_id) from None


def _unknown(stream_id: str) -> HTTPException:
    return HTTPException(404, f"no stream {stream_id!r}")


class StreamCollector(Collector):
    """``beamstream_service_streams{state}``: streams in each state, read from the store at each scrape."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self):  # noqa: ANN201 (prometheus_client's signature)
        family = GaugeMetricFamily("beamstream_service_streams", "Streams in each state.", labels=["state"])
        for state, count in self.store.count_by_state().items():
            family.add_metric([state.value], count)
        yield family


class EventStreamLimit:
    """At most ``limit`` event streams open at once; one more is refused with 503 (each holds a connection and
    polls the store)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def guard(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        if self.open >= self.limit:
            raise HTTPException(503, f"{self.limit} event streams are open on this service, the most it serves; "
                                     "try again later, or poll GET /v1/streams/{id}")
        return self._counted(events)

    async def _counted(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        self.open += 1
        try:
            async for text in events:
                yield text
        finally:
            self.open -= 1


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
        response = JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
