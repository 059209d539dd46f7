"""``/v1/streams``: request a stream, list them, show one, follow its changes, read its jobs' logs and output
files, fetch its credentials, cancel it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, TypeVar

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from sse_starlette import EventSourceResponse

from beamstream.protocol.models import (Credentials, OutputFile, OutputFiles, Problem, StreamCreated, StreamPage,
                                        StreamRequest, StreamView)
from beamstream.protocol.states import State, TransitionError
from beamstream.service import access
from beamstream.service.access import Action, stream_for
from beamstream.service.context import MAX_FOLLOWED, Context, ServiceContext
from beamstream.service.changes import change_events, event_source
from beamstream.service.job_logs import DEFAULT_TAIL, MAX_LOG_BYTES, MAX_LOG_LINES, follow_logs, logs_text
from beamstream.service.job_paths import output_file, output_files, stream_folder
from beamstream.service.openapi import COMMON_ERRORS, problem_as_json
from beamstream.service.principal import Caller
from beamstream.service.problems import Conflict, NotFound, Unavailable
from beamstream.service.requesting import accept
from beamstream.service.store import StreamRecord

router = APIRouter(prefix="/v1/streams", tags=["streams"])
NO_STORE = {"Cache-Control": "no-store"}  # on every answer that carries credentials
NOT_FOUND = {404: {"model": Problem}}
Sent = TypeVar("Sent")


def view_of(record: StreamRecord) -> StreamView:
    """The view of ``record``: its attributes by name (the secret and the spec are not shown)."""
    return StreamView.model_validate(record, from_attributes=True)


def credentials_of(record: StreamRecord) -> Credentials | None:
    return None if record.key is None else Credentials(stream=record.id, key=record.key)


@router.post("", status_code=201, response_model=StreamCreated,
             responses={403: {"model": Problem}, 404: {"model": Problem}, 422: {"model": Problem},
                        503: {"model": Problem}})
def request_stream(request: StreamRequest, principal: Caller, context: Context, response: Response) -> StreamCreated:
    """Ask for a stream: it is queued at once and started when the limits allow. One its executor could not
    run is refused before anything is made: 422 if it asks for more than the executor gives (Slurm would
    refuse its nodes, tasks or time), 503 if the executor does not answer (Slurm is down). Under a policy, 403
    for an experiment the caller may not read, and (but for admins) for data other than a catalogue run of
    the request's experiment or a simulated source. The answer carries the stream's credentials (its key),
    which the service gives to the stream's owner only (again: ``GET /v1/streams/{id}/credentials``)."""
    record = accept(context, principal, request)
    response.headers.update(NO_STORE)
    return StreamCreated(**view_of(record).model_dump(), credentials=credentials_of(record))


@router.get("", response_model=StreamPage)
def list_streams(principal: Caller, context: Context, state: State | None = None, experiment: str | None = None,
                 owner: str | None = None, limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
                 offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> StreamPage:
    """The caller's streams (an admin's: everyone's), newest first, filtered by state, experiment and owner
    (another owner's: none, but for admins)."""
    limit = limit or context.settings.page_size
    shown = access.listing(context, principal, owner)
    if shown is None:
        return StreamPage(items=[], total=0, limit=limit, offset=offset)
    records, total = context.store.list(state=state, experiment=experiment, owner=shown.owner, limit=limit,
                                        offset=offset, ids=shown.ids, experiments=shown.experiments)
    return StreamPage(items=[view_of(record) for record in records], total=total, limit=limit, offset=offset)


@router.get("/{stream_id}", response_model=StreamView, responses=NOT_FOUND)
def show_stream(context: Context, record: StreamRecord = stream_for(Action.SEE)) -> StreamView:
    """One stream: its state, the history of its state changes, where to read it, its live figures while it
    runs (from its buffer), its verdict once it ended."""
    view = view_of(record)
    metrics = (record.endpoints or {}).get("metrics")
    if record.state is State.RUNNING and metrics:
        view.figures = context.live.of(record.id, metrics, record.history[-1].at)
    elif record.state.final:
        context.live.forget(record.id)
    return view


@router.get("/{stream_id}/credentials", response_model=Credentials, responses=NOT_FOUND)
def stream_credentials(response: Response, record: StreamRecord = stream_for(Action.FETCH_CREDENTIALS)) -> Credentials:
    """The stream's credentials, for its owner only: anyone else (an admin too) gets 404, exactly as for an
    unknown stream. A token may fetch them if its holder owns the stream and its limits cover it. 404 too for
    a stream requested before the service kept credentials."""
    credentials = credentials_of(record)
    if credentials is None:
        raise NotFound(f"stream {record.id} has no credentials: it was requested before the service kept them")
    response.headers.update(NO_STORE)
    return credentials


@router.get("/{stream_id}/files", response_model=OutputFiles, responses=NOT_FOUND)
def stream_files(context: Context, record: StreamRecord = stream_for(Action.LIST_FILES)) -> OutputFiles:
    """What the stream's jobs wrote into its output folder (a files sink's relative ``dir`` is there), for its
    owner only: anyone else (an admin too) gets 404, as for the credentials."""
    found = output_files(stream_folder(context.settings.state_dir, record.id))
    return OutputFiles(stream=record.id, files=[OutputFile(path=path, size=size) for path, size in found])


@router.get("/{stream_id}/files/{path:path}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, **NOT_FOUND})
def stream_file(path: str, context: Context, record: StreamRecord = stream_for(Action.FETCH_FILE)) -> FileResponse:
    """One file of the stream's output folder (a path as ``/files`` lists it), for its owner only."""
    found = output_file(stream_folder(context.settings.state_dir, record.id), path)
    if found is None:
        raise NotFound(f"stream {record.id} has no output file {path!r}")
    return FileResponse(found, media_type="application/octet-stream", filename=found.name)


@router.get("/{stream_id}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}}, 503: {"model": Problem}, **NOT_FOUND})
def stream_events(context: Context, record: StreamRecord = stream_for(Action.FOLLOW),
                  after: Annotated[int, Query(ge=-1, le=10**6)] = -1,
                  last_event_id: Annotated[str, Header(pattern=r"^(|-1|[0-9]{1,6})$")] = "") -> EventSourceResponse:
    """The stream's state changes as Server-Sent Events (see :mod:`beamstream.service.changes`): those already
    made, then each as it happens, until a final one; after the ``after``-th (or ``Last-Event-ID``) only. 503
    while the service follows as many streams as it serves (:data:`~beamstream.service.context.MAX_FOLLOWED`)."""
    start = int(last_event_id) if last_event_id else after
    changes = change_events(context.store, record.id, start, lambda changed: view_of(changed).model_dump(mode="json"))
    return event_source(followed(context, changes))


@router.get("/{stream_id}/logs", response_class=PlainTextResponse, response_model=None,
            responses={**{status: problem_as_json(status) for status in (*COMMON_ERRORS, 404, 503)},
                       200: {"content": {"text/plain": {}}}})
def stream_logs(context: Context, record: StreamRecord = stream_for(Action.READ_LOGS),
                tail: Annotated[int | None, Query(ge=1, le=MAX_LOG_BYTES, description=(
                    f"bytes from the end of each job's output (default {DEFAULT_TAIL}; with lines, "
                    f"{MAX_LOG_BYTES}); alone, exactly that many, which may start mid-line"))] = None,
                lines: Annotated[int | None, Query(ge=1, le=MAX_LOG_LINES, description=(
                    "the last lines of each job's output, whole (within its last tail bytes)"))] = None,
                follow: Annotated[bool, Query(description=(
                    "go on sending what the jobs write, in whole lines, until the stream has ended and its "
                    "jobs' output has been sent to its end"))] = False,
                ) -> str | StreamingResponse:
    """The output of the stream's jobs, buffer first, each file headed ``==> ROLE (FILE) <==``: the end of each
    (``tail`` bytes, ``lines`` lines: see :mod:`beamstream.service.job_logs`), and with ``follow``, what they
    write next, as they write it (503 while the service follows as many streams as it serves)."""
    if follow:
        return StreamingResponse(followed(context, follow_logs(context.store, record.id, tail, lines)),
                                 media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    return logs_text(context.store.jobs(record.id).values(), tail, lines)


def followed(context: ServiceContext, texts: AsyncIterator[Sent]) -> AsyncIterator[Sent]:
    """``texts`` (a followed stream's events or logs), counted among those the service follows: Unavailable if it
    follows :data:`~beamstream.service.context.MAX_FOLLOWED` already (each holds a connection)."""
    if context.followed >= MAX_FOLLOWED:
        raise Unavailable(f"{MAX_FOLLOWED} streams of events or logs are followed on this service, the most it "
                          "serves; try again later, or poll GET /v1/streams/{id} (or /logs)")
    return _counted(context, texts)


async def _counted(context: ServiceContext, texts: AsyncIterator[Sent]) -> AsyncIterator[Sent]:
    context.followed += 1
    try:
        async for text in texts:
            yield text
    finally:
        context.followed -= 1


@router.delete("/{stream_id}", response_model=StreamView, responses={409: {"model": Problem}, **NOT_FOUND})
def cancel_stream(principal: Caller, context: Context, record: StreamRecord = stream_for(Action.CANCEL)) -> StreamView:
    """Cancel a stream that has not ended; 409 for one that has."""
    if record.state.final:
        raise Conflict(f"stream {record.id} has already ended ({record.state.value})")
    context.stop_jobs(record.id)
    try:
        cancelled = view_of(context.store.change_state(record.id, State.CANCELLED, f"cancelled by {principal}"))
    except TransitionError:  # it ended meanwhile
        raise Conflict(f"stream {record.id} has already ended ({record.state.value})") from None
    context.wake()  # the dispatcher stops the buffer once the producers have told its readers
    return cancelled
