"""Run a stream spec: source → steps → serializer → sinks, in one or several worker processes.

Each worker owns a share of the run's events (``source.partition``), sends its messages to
every sink (its first message carrying the stream's description, :mod:`beamstream.description`), and ends with one end-of-stream message saying how many it sent and whether it
finished (``status`` ok, error or aborted). Workers are local processes
(:func:`run_local`) or MPI ranks (:func:`run_mpi`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from beamstream.batch import Batch
from beamstream.description import describe_stream, first_batch
from beamstream.errors import BeamstreamError, OptionError
from beamstream.security.streamkey import StreamKey
from beamstream.spec import spec_from_json, spec_to_json
from beamstream.stages import SinkContext
from beamstream.steps.batch import BatchStep
from beamstream.wire import EndMessage, message_from_batch


@dataclass(slots=True)
class WorkerStats:
    """What one worker has sent so far."""

    rank: int
    events: int = 0
    messages: int = 0
    bytes: int = 0
    started: float = 0.0
    finished: float = 0.0
    status: str = "running"
    reason: str = ""


def new_stream_id() -> str:
    """A short random stream id."""
    return uuid.uuid4().hex[:12]


def pipeline(spec: Any, source_batches: Iterator[Batch]) -> Iterator[Batch]:
    """The spec's steps applied to ``source_batches``; one event per message unless a batch step says otherwise."""
    batches = source_batches
    for step in spec.steps:
        batches = step.build()(batches)
    if not any(isinstance(step, BatchStep) for step in spec.steps):
        batches = BatchStep(size=1).build()(batches)
    return batches


STOP_GRACE_S = 10.0
"""Seconds stopped workers get to send their end messages before they are killed."""
ABORTED_END_S = 5.0
"""Seconds a stopped worker waits for its end message to be taken (its consumer or buffer may be gone too)
before it gives up and exits: a worker whose parent was killed never waits out ``send_timeout_s``."""
PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for this process when its parent dies


class _Aborted(BaseException):
    """Raised inside a worker on SIGTERM or SIGINT so it can still send its end message."""


class _EndAbandoned(BaseException):
    """Raised inside a stopped worker whose end message was not taken within :data:`ABORTED_END_S`."""


@contextmanager
def _bounded(seconds: float | None) -> Iterator[None]:
    """Within the block, _EndAbandoned once ``seconds`` have passed (a SIGALRM timer; None, or outside the main
    thread, where signals cannot be handled: no bound)."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _EndAbandoned(f"its end message was not taken within {seconds:g} s of the stop")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _raise_aborted(signum: int, frame: Any) -> None:
    raise _Aborted(f"stopped by {signal.Signals(signum).name}")


def abort_on_signals() -> None:
    """In a producer process: SIGTERM (Slurm's scancel, a time limit, the parent stopping) and SIGINT (Ctrl-C on the
    terminal's process group) end its share with an ``aborted`` end message; so does its parent's death."""
    signal.signal(signal.SIGTERM, _raise_aborted)
    signal.signal(signal.SIGINT, _raise_aborted)
    try:  # Linux: SIGTERM when the parent dies, so no worker outlives a killed `produce`
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass



def omitted_by(source: Any) -> np.ndarray:
    """The sequence numbers ``source`` left out on purpose since last asked (its ``take_omitted()``, if it has one)."""
    take = getattr(source, "take_omitted", None)
    return np.asarray(take() if take is not None else (), dtype="<i8")


def run_worker(spec: Any, rank: int, producers: int, stream_id: str,
               report: Callable[[WorkerStats], None] = lambda stats: None, key: StreamKey | None = None) -> WorkerStats:
    """Produce rank ``rank``'s share of ``spec``; return what was sent. With ``key`` every message a sink
    sends is sealed with it (docs/wire-format.md, "Sealed messages").

    ``report`` is called after every message with the running totals. On an error the
    worker still sends an end message with status ``error`` and the reason (to every sink,
    even if closing one fails), then re-raises that error.
    """
    stats = WorkerStats(rank=rank, started=time.time())
    source = spec.source.open()
    share = source.partition(rank, producers)
    codec = spec.serializer.build()
    context = SinkContext(stream_id=stream_id, rank=rank, producers=producers, key=key)
    sinks = [sink.open(context) for sink in spec.sinks]
    last_seq = None
    try:
        first, batches = first_batch(source.read(share))
        metadata = describe_stream(spec, source, first)
        for batch in pipeline(spec, batches):
            message = message_from_batch(batch, codec, stream=stream_id, rank=rank, producers=producers,
                                         index=stats.messages, share=share, omitted=omitted_by(source),
                                         metadata=metadata if stats.messages == 0 else None,
                                         checksum=key is None)  # a seal authenticates the payload instead
            for sink in sinks:
                sink.send(message)
            stats.messages += 1
            stats.events += len(batch)
            stats.bytes += message.nbytes
            last_seq = message.last_seq
            report(stats)
        stats.status = "ok"
    except _Aborted as exc:
        stats.status, stats.reason = "aborted", str(exc)
    except Exception as exc:
        stats.status, stats.reason = "error", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        stats.finished = time.time()
        end = EndMessage(stream=stream_id, rank=rank, producers=producers, share=share, messages=stats.messages,
                         events=stats.events, last_seq=last_seq, status=stats.status, reason=stats.reason,
                         omitted=omitted_by(source).astype("<i8").tobytes())
        failures = []
        try:
            with _bounded(ABORTED_END_S if stats.status == "aborted" else None):
                for sink in sinks:
                    try:
                        sink.close(end)
                    except Exception as exc:  # every sink gets its end; the first failure is raised below
                        failures.append(exc)
        except (_EndAbandoned, _Aborted) as exc:  # out of time, or stopped again (a parent's death can signal twice)
            stats.reason = f"{stats.reason}; its end message was abandoned: {exc}"
        report(stats)
        if failures and stats.status != "error":  # an error already on its way is the one to report
            raise failures[0]
    return stats


# --- local worker processes -------------------------------------------------------------

_COUNTERS = ("events", "messages", "bytes")


def _local_worker(spec_json: str, rank: int, producers: int, stream_id: str, counters: Any, errors: Any,
                  key_text: str | None = None) -> None:
    abort_on_signals()
    spec = spec_from_json(spec_json)
    key = None if key_text is None else StreamKey.from_text(key_text)

    def report(stats: WorkerStats) -> None:
        base = rank * len(_COUNTERS)
        for offset, name in enumerate(_COUNTERS):
            counters[base + offset] = getattr(stats, name)

    try:
        stats = run_worker(spec, rank, producers, stream_id, report, key=key)
    except BeamstreamError as exc:
        errors.put((rank, str(exc)))
        raise SystemExit(1) from None
    except Exception as exc:
        errors.put((rank, f"{type(exc).__name__}: {exc}"))
        raise
    if stats.status != "ok":
        errors.put((rank, stats.reason))
        raise SystemExit(1)


@dataclass(slots=True)
class RunResult:
    """Outcome of a producer run: per-worker stats, errors by rank, wall time."""

    stream_id: str
    workers: list[WorkerStats]
    errors: dict[int, str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def events(self) -> int:
        return sum(worker.events for worker in self.workers)

    @property
    def bytes(self) -> int:
        return sum(worker.bytes for worker in self.workers)


def run_local(spec: Any, workers: int = 1, stream_id: str | None = None,
              on_progress: Callable[[list[WorkerStats]], None] = lambda stats: None,
              poll_interval: float = 0.5, key: StreamKey | None = None) -> RunResult:
    """Run ``spec`` in ``workers`` local processes and wait for all of them (sealing every message with ``key``,
    if given: the workers get it through their start-up pipe, never on a command line).

    ``on_progress`` receives every worker's running totals about every ``poll_interval`` seconds.
    A worker that dies is reported in ``RunResult.errors`` with its exit code (or the signal that
    killed it). SIGTERM or SIGINT (when called from the main thread) stops the workers: each ends
    its share with an ``aborted`` end message, those still running after :data:`STOP_GRACE_S` are
    killed (at once on a second signal), and the result reports them. No worker outlives this call.
    """
    stream_id = stream_id or new_stream_id()
    ctx = multiprocessing.get_context("spawn")
    counters = ctx.Array("q", workers * len(_COUNTERS), lock=False)
    errors_queue = ctx.SimpleQueue()
    spec_json = spec_to_json(spec)
    processes = [
        ctx.Process(target=_local_worker, args=(spec_json, rank, workers, stream_id, counters, errors_queue,
                                                None if key is None else key.to_text()),
                    name=f"beamstream-worker-{rank}")
        for rank in range(workers)
    ]
    started = time.time()
    for process in processes:
        process.start()

    def snapshot() -> list[WorkerStats]:
        result = []
        for rank, process in enumerate(processes):
            values = counters[rank * len(_COUNTERS) : (rank + 1) * len(_COUNTERS)]
            status = "running" if process.exitcode is None else "ok" if process.exitcode == 0 else "failed"
            result.append(WorkerStats(rank, *values, started=started, status=status))
        return result

    with _StopSignals() as stop:
        try:
            while any(process.is_alive() for process in processes):
                alive = [process.sentinel for process in processes if process.is_alive()]
                multiprocessing.connection.wait(alive, timeout=poll_interval)
                on_progress(snapshot())
                if stop.received:
                    _stop_workers(processes, kill=len(stop.received) > 1)
        finally:
            _stop_workers(processes, kill=False)
    final = snapshot()
    errors: dict[int, str] = {}
    while not errors_queue.empty():
        rank, reason = errors_queue.get()
        errors[rank] = reason
    for rank, process in enumerate(processes):
        if process.exitcode != 0 and rank not in errors:
            code = process.exitcode
            errors[rank] = (f"worker killed by {signal.Signals(-code).name}" if code is not None and code < 0
                            else f"worker exited with code {code}")
        final[rank].finished = time.time()
    return RunResult(stream_id, final, errors, time.time() - started)


class _StopSignals:
    """While active (in the main thread), SIGTERM and SIGINT are recorded in ``received`` instead of ending
    the process, so that :func:`run_local` can stop its workers and still report on them."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, lambda number, frame: self.received.append(number))
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _stop_workers(processes: list[Any], kill: bool) -> None:
    """Stop the workers still running: SIGTERM (they send an ``aborted`` end), SIGKILL after
    :data:`STOP_GRACE_S` or at once with ``kill``; returns once none is left."""
    alive = [process for process in processes if process.is_alive()]
    for process in alive:
        process.kill() if kill else process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in alive:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


# --- MPI ranks --------------------------------------------------------------------------

LAUNCHER_RANKS = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
                  ("SLURM_PROCID", "SLURM_NTASKS"))
"""Where launchers put a process's rank and their number: Open MPI's mpirun, MPICH/Hydra's (and srun's PMI),
srun's own. The first pair set wins (an mpirun inside a Slurm job also sees the job's SLURM_PROCID)."""


def launcher_rank(environment: Mapping[str, str]) -> tuple[int, int]:
    """(rank, ranks) of this process, from the first of :data:`LAUNCHER_RANKS` set in ``environment``.

    Raises OptionError naming the variables when none is set, or when one holds no rank below its count.
    """
    for rank_name, size_name in LAUNCHER_RANKS:
        if rank_name in environment and size_name in environment:
            rank, size = environment[rank_name], environment[size_name]
            if not (rank.isdigit() and size.isdigit() and int(rank) < int(size)):
                raise OptionError(f"--rank-from-env: {rank_name}={rank!r} and {size_name}={size!r} are not a rank "
                                  "and a larger count of ranks")
            return int(rank), int(size)
    names = ", ".join(f"{rank_name}/{size_name}" for rank_name, size_name in LAUNCHER_RANKS)
    raise OptionError(f"--rank-from-env: no launcher set this process's rank (none of {names}); run it under srun "
                      "or mpirun, or give --rank and --producers")



def run_mpi(spec: Any, stream_id: str | None = None, key: StreamKey | None = None) -> RunResult | None:
    """Run this MPI rank's share of ``spec`` (sealed with ``key``, if given); rank 0 returns everyone's result,
    other ranks None.

    Every rank reaches the final gather even when its share fails, so one failure never
    leaves the others hanging; the failure is reported in ``RunResult.errors``.
    """
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise BeamstreamError(f"running under mpirun needs mpi4py: pip install 'beamstream[mpi]' ({exc})") from None
    comm = MPI.COMM_WORLD
    rank, producers = comm.Get_rank(), comm.Get_size()
    stream_id = comm.bcast(stream_id or new_stream_id() if rank == 0 else None, root=0)
    started = time.time()
    abort_on_signals()
    try:
        stats = run_worker(spec, rank, producers, stream_id, key=key)
        error = None if stats.status == "ok" else stats.reason
    except Exception as exc:
        stats, error = WorkerStats(rank=rank, started=started, finished=time.time(), status="error"), str(exc)
    gathered = comm.gather((stats, error), root=0)
    if rank != 0:
        return None
    errors = {worker.rank: reason for worker, reason in gathered if reason}
    return RunResult(stream_id, [worker for worker, _ in gathered], errors, time.time() - started)
