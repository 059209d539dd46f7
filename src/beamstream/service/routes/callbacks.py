"""``/v1/streams/{id}/callback``: the reports of a stream's jobs, signed with the stream's secret
(:mod:`beamstream.service.callbacks`): its buffer listens (the stream runs), its buffer has stopped (its verdict)."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from beamstream.protocol.models import Problem
from beamstream.protocol.states import State
from beamstream.service.callbacks import SIGNATURE, TIMESTAMP, CallbackRefused, advertised
from beamstream.service.context import Context
from beamstream.service.job_endings import VerdictBody, end_with_verdict
from beamstream.service.problems import Invalid

logger = logging.getLogger("beamstream.service.callbacks")
router = APIRouter(tags=["jobs"])


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


class Callback(BaseModel):
    body: Annotated[Listening | Ended, Field(discriminator="event")]


@router.post("/v1/streams/{stream_id}/callback", status_code=204,
             responses={403: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem}})
async def job_callback(stream_id: str, request: Request, context: Context) -> None:
    """A stream's job reports (signed with the stream's secret; see :mod:`beamstream.service.callbacks`): 403 if
    it is not signed rightly, 409 for a stream that has ended already."""
    record = context.store.get(stream_id)
    body = await request.body()
    try:
        context.verifier.check(record.secret, request.headers.get(TIMESTAMP), request.headers.get(SIGNATURE), body)
    except CallbackRefused as exc:
        logger.warning("refused a callback for stream %s from %s: %s", stream_id,
                       request.client.host if request.client else "?", exc)
        raise
    try:
        event = Callback.model_validate({"body": json.loads(body)}).body
    except (ValueError, ValidationError) as exc:
        raise Invalid(f"callback body: {exc}") from None
    if isinstance(event, Listening):
        context.store.change_state(stream_id, State.RUNNING, "the buffer is listening",
                                   endpoints=advertised(event.model_dump(exclude={"event"}),
                                                        context.settings.data_advertise))
    else:
        end_with_verdict(context.store, stream_id, event.verdict.model_dump())
    context.wake()
