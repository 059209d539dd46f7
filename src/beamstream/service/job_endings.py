"""How a stream's jobs ended, in words, and the verdict its buffer leaves: read, and turned into the stream's end."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from beamstream.accounting import format_ranges
from beamstream.service.executors import JobState
from beamstream.service.store import Job, JobStore, State, StreamRecord

logger = logging.getLogger(__name__)

LOG_TAIL = 2000  # characters of a failed job's log quoted in the stream's history
MAX_VERDICT_BYTES = 1 << 20


def outcome(state: JobState, exit_code: int | None) -> str:
    """How a job ended, in words: ``exit code 1``, ``exit code 137 (SIGKILL)`` (128 + a signal, as shells and
    jobrun record a command a signal ended), or that it is gone or left no exit code (e.g. cancelled by Slurm)."""
    if state is JobState.LOST:
        return "it is gone, with no exit code recorded"
    if exit_code is None:
        return "no exit code"
    if exit_code is not None and 128 < exit_code < 128 + signal.NSIG:
        return f"exit code {exit_code} ({signal.Signals(exit_code - 128).name})"
    return f"exit code {exit_code}"


def log_tail(job: Job) -> str:
    """``; its log ends: ...``: the last :data:`LOG_TAIL` characters of the job's output (its ``.log``, then its
    ``.err`` where the executor keeps standard error apart), or "" if there is none."""
    parts = []
    for suffix in (".log", ".err"):
        try:
            with open(Path(job.directory) / f"{job.role}{suffix}", "rb") as file:
                file.seek(0, 2)
                file.seek(max(0, file.tell() - LOG_TAIL))
                parts.append(file.read().decode(errors="replace").strip())
        except OSError:
            pass
    text = "\n".join(part for part in parts if part)[-LOG_TAIL:]
    return f"; its log ends: {text}" if text else ""


class VerdictBody(BaseModel):
    """A stream's verdict as its buffer job reports it (in its callback, and in
    :data:`~beamstream.service.callbacks.VERDICT_FILE`)."""

    complete: bool
    summary: str = Field(max_length=1 << 16)
    missing: list[tuple[int, int]] = Field(max_length=1000)


def read_verdict(path: Path) -> dict[str, Any] | None:
    """The verdict a buffer job wrote to ``path`` before it called back, if it is there, well-formed and no larger
    than :data:`MAX_VERDICT_BYTES`."""
    try:
        with open(path, "rb") as file:
            text = file.read(MAX_VERDICT_BYTES + 1)
        if len(text) > MAX_VERDICT_BYTES:
            raise ValueError(f"larger than {MAX_VERDICT_BYTES} bytes")
        return VerdictBody.model_validate_json(text).model_dump()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignored the verdict file %s: %s", path, exc)
        return None


def end_with_verdict(store: JobStore, stream_id: str, verdict: dict[str, Any]) -> StreamRecord:
    """End the stream as its buffer's ``verdict`` says: completed or failed, with :func:`verdict_reason`.
    Raises TransitionError if it has ended already."""
    state = State.COMPLETED if verdict["complete"] else State.FAILED
    return store.change_state(stream_id, state, verdict_reason(verdict, store.jobs(stream_id).get("producers")),
                              verdict=verdict)


def verdict_reason(verdict: dict[str, Any], producers: Job | None) -> str:
    """Why a stream ended as its buffer's ``verdict`` says: the verdict's first line; when it is incomplete, also
    the missing sequence ranges and how the ``producers`` job ended (with its log's tail if it failed)."""
    summary = verdict.get("summary") or ""
    reason = summary.splitlines()[0] if summary else "the buffer ended"
    if verdict.get("complete"):
        return reason
    if verdict.get("missing"):
        reason += f"; missing sequence ranges: {format_ranges([tuple(r) for r in verdict['missing']])}"
    if producers is None:
        return f"{reason}; no producers job was started"
    if producers.ended is None:
        return f"{reason}; the producers job was still running"
    state = JobState(producers.outcome)
    ended = "ended" if state is JobState.LOST else state.value
    said = f"{reason}; the producers job {ended} ({outcome(state, producers.exit_code)})"
    return said if state is JobState.SUCCEEDED else said + log_tail(producers)
