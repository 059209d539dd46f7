"""The service's scheduler: starts queued streams within the limits, watches their jobs, ends them.

One thread calls :meth:`Dispatcher.tick` every ``interval`` seconds, and at once when woken
(:meth:`Dispatcher.wake`: the API does so when a stream is requested or a job calls back). A round:

1. **Start** queued streams, oldest first, while fewer than ``max_streams`` (in total) and
   ``max_streams_per_user`` (per owner) are starting or running: write the stream's folder
   (its spec, the buffer's settings, the private callback file), submit the buffer job
   (``beamstream buffer --callback``, on free ports) → ``starting``, and the producers job with it, so
   that both start at once (a stream whose buffer fails stops them). With an executor whose jobs run
   on the service's host (local), the buffer takes its producers on an ipc socket in the stream's
   folder, and the producers wait for it to listen; with one whose jobs may run elsewhere (Slurm),
   the producers wait for the service to tell them the buffer's endpoint
   (:mod:`beamstream.endpoint_file`). Until a submitted job is recorded, a marker in the stream's folder
   (``ROLE.submitting``) says it may run unrecorded: a service that starts after one died there stops such a
   job first (found by its folder, or by its name on Slurm), so that the stream, still queued, never runs twice.
2. **Watch** each starting or running stream (and stop any job still running of a stream that
   has ended, e.g. one cancelled while its buffer job was being submitted; a cancelled stream's
   buffer only once its producers have ended and :data:`CANCEL_LINGER_S` passed, so that their
   aborted ends reach its readers as the stream's end):
   - the buffer job ended before it called back → ``failed``, with its exit code and log tail;
   - once the buffer listens (its callback made the stream ``running``), unless its producers were told
     already: connect to each of the buffer's endpoints as advertised (:func:`unreachable`; one this host
     cannot reach fails the stream, naming it and ``data_advertise``), then write the producer endpoint
     to the file the producers wait for, or (a local folder too deep for an ipc socket) submit the producers job
     (``beamstream produce`` with a stream sink to the buffer, the stream id the service's): ``--workers N``
     local processes (one worker: ``--rank 0``, in the job's own process), or, with an executor that
     launches ranks (Slurm), N ranks (``srun``) on the request's nodes, each ``--rank-from-env``;
   - the buffer job ended: if its verdict is in its folder (:data:`VERDICT_FILE`, written before it
     calls back) the stream ends as the verdict says, as if the callback had come; if not →
     producers stopped, ``failed`` (a buffer told to stop gets :data:`VERDICT_GRACE_S` first);
   - the producers ended and every group has acknowledged everything (read from the buffer's
     metrics), or ``drain_grace_s`` passed → the buffer is asked to stop; it sends the verdict,
     which makes the stream ``completed``, or ``failed`` with :func:`verdict_reason`: the missing
     ranges and how the producers job ended (exit code or signal, its log's tail).

A job that cannot be submitted (e.g. more nodes than the partition has) fails the stream with the
executor's words, and a job of the stream already running (its buffer) is then stopped.

Everything it decides is in the job store, so a restarted service's dispatcher goes on where the
last one stopped: jobs are found again by their native ids (:mod:`beamstream.service.executors`),
and :meth:`Dispatcher.start` first points the callback files of the streams still starting or
running at this service's URL (their jobs re-read the file at each callback attempt).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from beamstream.buffer.config import RENAMED
from beamstream.endpoint_file import ENDPOINT_FILE, write_endpoint
from beamstream.errors import TransportError
from beamstream.metrics_reading import fetch_status
from beamstream.modes import make_dirs
from beamstream.protocol.slurm import SlurmOptions
from beamstream.security.streamkey import StreamKey, write_key_file
from beamstream.service.callbacks import VERDICT_FILE, write_callback_file
from beamstream.service.executors import CannotRun, Executor, JobRequest, JobState, JobStatus, LocalExecutor, SlurmExecutor
from beamstream.service.job_endings import end_with_verdict, log_tail, outcome, read_verdict
from beamstream.service.job_paths import stream_folder
from beamstream.transport import unreachable as reach_problem
from beamstream.spec import as_the_service_runs_it
from beamstream.service.settings import ServiceSettings
from beamstream.protocol.states import State, TransitionError
from beamstream.service.store import Job, JobStore, StreamRecord
from beamstream.service.unrecorded_jobs import end_unrecorded, job_label, submission_marker

logger = logging.getLogger(__name__)
KEY_FILE = "stream.key"  # the stream's key, for its producers job
ADMISSION_KEY_FILE = "admission.key"  # only the admission key derived from it, for its buffer job
VERDICT_GRACE_S = 30.0  # a buffer job told to stop has this long to leave its verdict, though it seems ended
CANCEL_LINGER_S = 3.0  # a cancelled stream's buffer outlives its ended producers this long, to tell its readers
PRODUCERS_SOCKET = "producers.ipc"  # the buffer's producer endpoint in the stream's folder, when jobs run here
IPC_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path, less its NUL)


class Dispatcher:
    """Runs the streams in ``store``; :meth:`start` a thread that ticks, :meth:`close` it.

    ``service_url``: where jobs reach this service (its ``public_url`` setting, else the bound URL).
    """

    def __init__(self, store: JobStore, settings: ServiceSettings, service_url: str,
                 executors: dict[str, Executor] | None = None, interval: float = 0.5) -> None:
        self.store = store
        self.settings = settings
        self.service_url = service_url
        self.executors = executors or make_executors(settings)
        self.interval = interval
        self._stopping = threading.Event()
        self._woken = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Dispatcher:
        """End the jobs an earlier service submitted and did not see through
        (:func:`~beamstream.service.unrecorded_jobs.end_unrecorded`), point the callback files of the streams still
        starting or running at this service, warm up the local executor
        (:meth:`~beamstream.service.executors.LocalExecutor.warm_up`), then tick on a thread."""
        end_unrecorded(self.store, self.settings.state_dir, self.executor)
        for state in (State.STARTING, State.RUNNING):
            for record in self.store.list(state=state, limit=10_000)[0]:
                self._write_callback(record)
        for executor in self.executors.values():
            if isinstance(executor, LocalExecutor):  # its jobs start a second sooner, forked warm
                executor.warm_up()
        self._thread = threading.Thread(target=self._run, name="beamstream-dispatcher", daemon=True)
        self._thread.start()
        return self

    def check_resources(self, resources: dict[str, Any]) -> None:
        """Raise :class:`~beamstream.service.executors.CannotRun` if a stream asking for ``resources`` could not
        run on its executor (asked when it is requested: nothing is submitted, nothing is left behind)."""
        executor = self.executors[resources.get("executor") or self.settings.executor]
        workers = int(resources.get("workers") or 1)
        if not executor.launches_ranks and workers > self.settings.max_local_workers:
            raise CannotRun(f"workers: {workers} is more than this service runs as local processes for one stream "
                            f"({self.settings.max_local_workers}); ask for fewer")
        ranks = workers if executor.launches_ranks else None
        executor.check(JobRequest("producers", [], self.settings.state_dir, ranks=ranks,
                                  nodes=int(resources.get("nodes") or 1),
                                  time_limit_s=resources.get("time_limit_s") or self.settings.job_time_limit_s,
                                  slurm=job_options(resources.get("slurm"), "producers")))

    def wake(self) -> None:
        """Run the next round now (something changed that it may act on), not after the interval."""
        self._woken.set()

    def close(self) -> None:
        self._stopping.set()
        self._woken.set()
        if self._thread is not None:
            self._thread.join()
        for executor in self.executors.values():
            if isinstance(executor, LocalExecutor):
                executor.close()

    def _run(self) -> None:
        while True:
            self._woken.wait(self.interval)
            self._woken.clear()
            if self._stopping.is_set():
                return
            try:
                self.tick()
            except Exception:  # one bad round must not end the scheduler; the next one retries
                logger.exception("dispatcher round failed")

    def tick(self) -> None:
        """One round: start what may start, then watch every starting and running stream."""
        self._start_queued()
        for state in (State.STARTING, State.RUNNING):
            for record in self.store.list(state=state, limit=10_000, oldest_first=True)[0]:
                self._watch(record)
        ended = sorted(self.store.jobs_of_ended_streams(), key=lambda job: job.role == "buffer")  # buffers last
        for job in ended:  # an ended stream keeps no job: stop it, see it end, reap it
            if job.role == "buffer" and self._producers_stopping(job.stream_id):
                continue
            if self._status(job).state is JobState.RUNNING and job.stop_requested is None:
                self.executors[job.executor].cancel(job.native_id)
                self.store.update_job(job.id, stop_requested=time.time())

    # --- starting ------------------------------------------------------------------------------

    def _start_queued(self) -> None:
        for record in self.store.list(state=State.QUEUED, limit=10_000, oldest_first=True)[0]:
            if self.store.count_active() >= self.settings.max_streams:
                return
            if self.store.count_active(record.owner) >= self.settings.max_streams_per_user:
                continue
            self._start(record)

    def _start(self, record: StreamRecord) -> None:
        directory = self.folder(record)
        make_dirs(directory)
        callback = self._write_callback(record)
        host = self.settings.data_host
        asked = {key: value for key, value in (record.resources.get("buffer") or {}).items()
                 if value is not None and key not in RENAMED}  # a stream stored before the endpoints' rename
        early = self._early_producer_endpoint(record)
        buffer = {**asked, "producer_endpoint": early or f"tcp://{host}:0", "consumer_endpoint": f"tcp://{host}:0",
                  "metrics_port": 0, "metrics_addr": host}
        _write_json(directory / "buffer-spec.json", {**as_the_service_runs_it(record.spec), "buffer": buffer})
        argv = [sys.executable, "-m", "beamstream.cli", "buffer", "--spec", "buffer-spec.json",
                "--callback", str(callback)]
        if record.key is not None:  # the buffer holds the admission key only: it cannot open a payload
            write_key_file(directory / ADMISSION_KEY_FILE, StreamKey.from_text(record.key).admission)
            argv += ["--admission-key-file", str(directory / ADMISSION_KEY_FILE)]
        if not self._submit(record, "buffer", argv, state=State.STARTING):
            return
        if early is not None:
            self._submit_producers(record, early)
        elif not self.executor(record).shares_host:  # they wait for ENDPOINT_FILE, written once the buffer listens
            self._submit_producers(record, None)

    def _early_producer_endpoint(self, record: StreamRecord) -> str | None:
        """Where the producers reach the buffer when their job starts with the buffer's (the request's first event
        then waits for one job start, not two in turn): an ipc socket in the stream's folder, for an executor whose
        jobs run on the service's host; None for the others (the buffer's tcp port is known once it listens) and
        for a folder whose path is too long for a socket's."""
        if not self.executor(record).shares_host:
            return None
        endpoint = f"ipc://{self.folder(record).resolve() / PRODUCERS_SOCKET}"
        return endpoint if len(endpoint.removeprefix("ipc://").encode()) <= IPC_PATH_MAX else None

    def _write_callback(self, record: StreamRecord) -> Path:
        """Write the stream's callback file (where its jobs call this service back, and the secret); its path."""
        path = self.folder(record) / "callback.json"
        jobs = self.settings.jobs_certificate  # with mutual TLS: the CA that verifies the service, the jobs' cert
        tls = None if jobs is None else {"ca": str(self.settings.tls_ca), "cert": str(jobs[0]), "key": str(jobs[1])}
        write_callback_file(path, f"{self.service_url}/v1/streams/{record.id}/callback", record.secret, tls)
        return path

    def _submit(self, record: StreamRecord, role: str, argv: list[str], ranks: int | None = None,
                state: State | None = None) -> bool:
        """Submit ``record``'s ``role`` job; False (the stream failed, saying why) if it could not be. A marker in the
        stream's folder says, until the job is recorded, that it may run unrecorded (:mod:`unrecorded_jobs`)."""
        executor = self.executor(record)
        request = JobRequest(role, argv, self.folder(record), ranks=ranks,
                             nodes=int(record.resources.get("nodes") or 1),
                             time_limit_s=record.resources.get("time_limit_s") or self.settings.job_time_limit_s,
                             label=job_label(record.id, role), slurm=job_options(record.resources.get("slurm"), role))
        marker = submission_marker(request.directory, role)
        marker.touch()
        try:
            native_id = executor.submit(request)
        except OSError as exc:
            marker.unlink()
            self._fail(record, f"could not submit the {role} job ({executor.name}): {exc}")
            return False
        self.store.add_job(record.id, role, executor.name, native_id, str(request.directory))
        reason = f"{role} job submitted ({executor.name} {native_id})"
        try:
            if state is None:
                logger.info("stream %s: %s", record.id, reason)
            else:
                self.store.change_state(record.id, state, reason)
        finally:
            marker.unlink()
        return True

    # --- watching ------------------------------------------------------------------------------

    def _watch(self, record: StreamRecord) -> None:
        jobs = self.store.jobs(record.id)
        buffer = jobs.get("buffer")
        if buffer is None:
            return
        buffer_status = self._status(buffer)
        if buffer_status.state is not JobState.RUNNING:
            verdict = read_verdict(self.folder(record) / VERDICT_FILE)
            if verdict is not None and record.state is State.RUNNING:  # its callback did not arrive (yet)
                self.stop_jobs(record.id)
                with contextlib.suppress(TransitionError):  # unless it just did
                    end_with_verdict(self.store, record.id, verdict)
                return
            if buffer.stop_requested is not None and time.time() - buffer.stop_requested < VERDICT_GRACE_S:
                return  # told to stop, it may be writing its verdict still (Slurm says a job ended once told to)
            self.stop_jobs(record.id)
            what = "before it listened" if record.state is State.STARTING else "without a verdict"
            ended = outcome(buffer_status.state, buffer_status.exit_code)
            self._fail(record, f"the buffer job ended {what} ({ended}){log_tail(buffer)}")
            return
        if record.state is not State.RUNNING:
            return
        producers = jobs.get("producers")
        if producers is None or self._endpoint_untold(record):
            if (why := unreachable(record.endpoints)) is not None:
                self.stop_jobs(record.id)
                now = (f"it is {self.settings.data_advertise}" if self.settings.data_advertise else
                       f"unset: the buffer reports its endpoints as bound, at data_host {self.settings.data_host}")
                self._fail(record, f"{why}; set data_advertise to the name or address of the buffer jobs' host as "
                                   f"the service, producers and consumers reach it ({now})")
                return
            if producers is None:
                self._submit_producers(record, record.endpoints["producers"])
            else:
                write_endpoint(self.folder(record) / ENDPOINT_FILE, record.endpoints["producers"])
            return
        if self._status(producers).state is JobState.RUNNING or buffer.stop_requested is not None:
            return
        ended = self.store.jobs(record.id)["producers"].ended or time.time()
        if self._drained(record) or time.time() - ended > self.settings.drain_grace_s:
            self.executor(record).cancel(buffer.native_id)
            self.store.update_job(buffer.id, stop_requested=time.time())

    def _submit_producers(self, record: StreamRecord, endpoint: str | None) -> None:
        """Submit the producers job, its stream sink to the buffer's producer ``endpoint``; None: to the endpoint
        the service writes to :data:`~beamstream.endpoint_file.ENDPOINT_FILE` once the buffer listens."""
        spec = as_the_service_runs_it(record.spec, *([] if endpoint is None else [endpoint]))
        spec.pop("buffer", None)
        _write_json(self.folder(record) / "producers-spec.json", spec)
        workers = int(record.resources.get("workers") or 1)
        argv = [sys.executable, "-m", "beamstream.cli", "produce", "producers-spec.json", "--stream-id", record.id]
        if endpoint is None:
            argv += ["--endpoint-from", str(self.folder(record).resolve() / ENDPOINT_FILE)]
        if record.key is not None:
            key_file = write_key_file(self.folder(record) / KEY_FILE, StreamKey.from_text(record.key))
            argv += ["--key-file", str(key_file)]
        if self.executor(record).launches_ranks:
            self._submit(record, "producers", [*argv, "--rank-from-env"], ranks=workers)
        elif workers == 1:  # the one rank runs in the job's own process: no worker process to start
            self._submit(record, "producers", [*argv, "--rank", "0", "--producers", "1"])
        else:
            self._submit(record, "producers", [*argv, "--workers", str(workers)])

    def _endpoint_untold(self, record: StreamRecord) -> bool:
        """True while producers started with the buffer (an executor whose jobs run on other hosts) have not yet been
        told where it listens."""
        return not self.executor(record).shares_host and not (self.folder(record) / ENDPOINT_FILE).exists()

    def _status(self, job: Job) -> JobStatus:
        """The job's status; its end is recorded the first time it is seen."""
        status = self.executors[job.executor].status(job.native_id, JobRequest(job.role, [], Path(job.directory)))
        if status.state is not JobState.RUNNING and job.ended is None:
            self.store.update_job(job.id, ended=time.time(), outcome=status.state.value, exit_code=status.exit_code)
            logger.info("stream %s: %s job ended (%s)", job.stream_id, job.role,
                        outcome(status.state, status.exit_code))
        return status

    def _drained(self, record: StreamRecord) -> bool:
        """True if the buffer's metrics show at least one group and every group with nothing unacknowledged."""
        url = (record.endpoints or {}).get("metrics")
        if not url:
            return False
        try:
            groups = fetch_status(url, timeout=5).groups
        except TransportError:
            return False
        lags = [group["group_lag"] for group in groups.values() if "group_lag" in group]
        return bool(lags) and not any(lags)

    # --- ending ----------------------------------------------------------------------------------

    def stop_jobs(self, stream_id: str, buffer_last: bool = False) -> None:
        """Ask every job of the stream that still runs to stop (producers send aborted ends, the buffer its verdict).
        With ``buffer_last`` (a stream being cancelled) the buffer is left running: :meth:`tick` stops it once
        the producers have ended and :data:`CANCEL_LINGER_S` passed, time for their aborted ends to reach the
        stream's readers, who then know the stream has ended instead of waiting for their timeout."""
        for job in self.store.jobs(stream_id).values():
            if job.ended is None and not (buffer_last and job.role == "buffer"):
                self.executors[job.executor].cancel(job.native_id)
                self.store.update_job(job.id, stop_requested=time.time())

    def _producers_stopping(self, stream_id: str) -> bool:
        """True while an ended stream's producers job is being stopped, or ended less than CANCEL_LINGER_S ago
        (at most VERDICT_GRACE_S after it was told to stop: a job that ignores being stopped holds nothing up)."""
        producers = self.store.jobs(stream_id).get("producers")
        if producers is None or producers.stop_requested is None:
            return False
        if producers.ended is not None:
            return time.time() - producers.ended < CANCEL_LINGER_S
        return time.time() - producers.stop_requested < VERDICT_GRACE_S

    def _fail(self, record: StreamRecord, reason: str) -> None:
        try:
            self.store.change_state(record.id, State.FAILED, reason)
        except TransitionError:
            pass  # it ended meanwhile (a callback came first)

    def executor(self, record: StreamRecord) -> Executor:
        return self.executors[record.resources.get("executor") or self.settings.executor]

    def folder(self, record: StreamRecord) -> Path:
        return stream_folder(self.settings.state_dir, record.id)


def make_executors(settings: ServiceSettings) -> dict[str, Executor]:
    """The executors ``settings`` names (Slurm's work files under the state directory)."""
    names = set(settings.executors) | {settings.executor}
    launchers = {"buffer": settings.buffer_launcher, "producers": settings.producers_launcher}
    executors: dict[str, Executor] = {"local": LocalExecutor(launchers)} if "local" in names else {}
    if "slurm" in names:
        executors["slurm"] = SlurmExecutor(settings.state_dir.resolve() / "slurm")
    return executors


def unreachable(endpoints: dict[str, str | None]) -> str | None:
    """Why the service's host cannot reach one of a buffer's ``tcp://`` and ``http://`` ``endpoints``
    (:func:`beamstream.transport.unreachable`), naming it; None if it reaches each."""
    for role, endpoint in endpoints.items():
        if endpoint and (why := reach_problem(endpoint)) is not None:
            return f"the buffer's {role} endpoint {endpoint} cannot be reached from the service's host: {why}"
    return None


def job_options(slurm: dict[str, Any] | None, role: str) -> SlurmOptions:
    """A stream's sbatch options as its ``role`` job takes them: the buffer, one task, takes no GPU and no node of
    its own (``exclusive`` and ``gpus_per_task`` are for the producer ranks)."""
    options = SlurmOptions.model_validate(slurm or {})
    return options if role == "producers" else options.model_copy(update={"gpus_per_task": None, "exclusive": False})


def _write_json(path: Path, data: Any) -> None:
    from beamstream.atomic import write_atomically

    write_atomically(path, json.dumps(data, indent=2).encode())
