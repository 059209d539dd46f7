"""Jobs a service submitted but did not see through: it died between starting a job and recording it (or before
the stream left ``queued``). While a job is being submitted, a marker in its stream's folder
(:func:`submission_marker`) says so; a service that starts and finds one stops such jobs before anything else
(:func:`end_unrecorded`), so that the stream, started again, never runs twice and the job never runs for ever."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from beamstream.protocol.states import State
from beamstream.service.executors import Executor, JobRequest, JobState
from beamstream.service.store import JobStore, StreamNotFound, StreamRecord

logger = logging.getLogger(__name__)
SUBMITTING = ".submitting"  # ROLE.submitting in a stream's folder: its ROLE job may have been submitted, not recorded
LEFTOVER_END_S = 10.0  # how long a starting service waits for an unrecorded job on its host to end


def job_label(stream_id: str, role: str) -> str:
    """The name a stream's ``role`` job has at its executor (what ``squeue`` shows)."""
    return f"beamstream-{stream_id[:12]}-{role}"


def submission_marker(directory: Path, role: str) -> Path:
    """The file that says, in a stream's folder ``directory``, that its ``role`` job is being submitted."""
    return directory / f"{role}{SUBMITTING}"


def end_unrecorded(store: JobStore, state_dir: Path, executor_of: Callable[[StreamRecord], Executor]) -> None:
    """Stop every job whose marker is left in its stream's folder under ``state_dir`` and that the store does not
    know, or whose stream is still queued (a stream still queued has no job of its own: one recorded is from a start
    that did not become one), found by the executor (:meth:`~beamstream.service.executors.Executor.leftovers`).
    Jobs on this host are given :data:`LEFTOVER_END_S` to end, as the stream started again uses the same folder."""
    for marker in sorted((state_dir.resolve() / "streams").glob(f"*/*{SUBMITTING}")):
        stream_id, role = marker.parent.name, marker.name.removesuffix(SUBMITTING)
        try:
            record = store.get(stream_id)
        except StreamNotFound:
            marker.unlink()
            continue
        executor = executor_of(record)
        request = JobRequest(role, [], marker.parent, label=job_label(stream_id, role))
        recorded = set() if record.state is State.QUEUED else {job.native_id for job in store.jobs(stream_id).values()}
        for native_id in sorted(set(executor.leftovers(request)) - recorded):
            logger.warning("stream %s: stopping its %s job %s, which an earlier service submitted but did not see "
                           "through", stream_id, role, native_id)
            executor.cancel(native_id)
            deadline = time.monotonic() + LEFTOVER_END_S
            while (executor.shares_host and time.monotonic() < deadline
                   and executor.status(native_id, request).state is JobState.RUNNING):
                time.sleep(0.05)
        marker.unlink()
