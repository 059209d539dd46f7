"""Run a stream spec: source → steps → serializer → sinks, in one or several worker processes.

Each worker owns a share of the run's events (``source.partition``), sends its messages to
every sink (its first message carrying the stream's description, :mod:`beamstream.description`), and ends with one end-of-stream message saying how many it sent and whether it
finished (``status`` ok, error or aborted). Workers are local processes
(:func:`run_local`) or MPI ranks (:func:`run_mpi`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from beamstream.batch import Batch
from beamstream.description import describe_stream, first_batch
from beamstream.errors import BeamstreamError, MissingDependency, OptionError, needs_extra
from beamstream.security.streamkey import StreamKey
from beamstream.spec import receivers, spec_from_json, spec_to_json
from beamstream.stages import SinkContext
from beamstream.steps.batch import BatchStep
from beamstream.wire import EndMessage, message_from_batch
from beamstream.worker_signals import (STOP_GRACE_S, STOP_RELAY_S, Aborted, EndAbandoned, abort_on_signals,
                                       raise_if_stopped, sigint_held, stopped_end,
                                       stops_deferred)


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


def build_steps(spec: Any) -> list[Any]:
    """The spec's steps, built in order; one event per message unless a batch step says otherwise."""
    steps = [step.build() for step in spec.steps]
    if not any(isinstance(step, BatchStep) for step in spec.steps):
        steps.append(BatchStep(size=1).build())
    return steps


def pipeline(steps: list[Any], source_batches: Iterator[Batch]) -> Iterator[Batch]:
    """``steps`` (see :func:`build_steps`) applied to ``source_batches``."""
    batches = source_batches
    for step in steps:
        batches = step(batches)
    return batches


def omitted_by(*stages: Any) -> np.ndarray:
    """The sequence numbers the source and steps in ``stages`` left out on purpose since last asked (the union of
    their ``take_omitted()``, for those that have one), increasing."""
    taken = [np.asarray(take(), dtype="<i8") for stage in stages if (take := getattr(stage, "take_omitted", None))]
    return np.unique(np.concatenate(taken)) if taken else np.empty(0, dtype="<i8")


def run_worker(spec: Any, rank: int, producers: int, stream_id: str,
               report: Callable[[WorkerStats], None] = lambda stats: None, key: StreamKey | None = None) -> WorkerStats:
    """Produce rank ``rank``'s share of ``spec``; return what was sent. With ``key`` every message a sink
    sends is sealed with it (docs/wire-format.md, "Sealed messages").

    ``report`` is called after every message with the running totals. On an error the
    worker still sends an end message with status ``error`` and the reason (to every sink,
    even if closing one fails), then re-raises that error.
    """
    if receivers(spec) > producers:
        raise OptionError(f"the stream sink spreads the producers over {receivers(spec)} endpoints, but there are "
                          f"{producers} producers: an endpoint would get none (run at least {receivers(spec)} "
                          "producers, or list fewer endpoints)")
    stats = WorkerStats(rank=rank, started=time.time())
    source = spec.source.open()
    share = source.partition(rank, producers)
    codec = spec.serializer.build()
    context = SinkContext(stream_id=stream_id, rank=rank, producers=producers, key=key)
    sinks: list[Any] = []
    last_seq = None
    steps: list[Any] = []
    reading = False
    try:
        for sink in spec.sinks:  # whole, one by one: a stop while they open ends those already open
            with stops_deferred():
                sinks.append(sink.open(context))
        reading = True
        checksum = key is None and any(sink.checksummed for sink in spec.sinks)  # a seal authenticates instead
        first, batches = first_batch(source.read(share))
        spec, metadata = describe_stream(spec, source, first)  # steps that take options from the description
        steps = build_steps(spec)
        for batch in pipeline(steps, batches):
            raise_if_stopped()
            message = message_from_batch(batch, codec, stream=stream_id, rank=rank, producers=producers,
                                         index=stats.messages, share=share, omitted=omitted_by(source, *steps),
                                         metadata=metadata if stats.messages == 0 else None,
                                         checksum=checksum,
                                         receivers=receivers(spec))
            for sink in sinks:
                sink.send(message)
            stats.messages += 1
            stats.events += len(batch)
            stats.bytes += message.nbytes
            last_seq = message.last_seq
            report(stats)
        stats.status = "ok"
    except Aborted as exc:
        stats.status, stats.reason = "aborted", str(exc)
    except Exception as exc:
        stats.status, stats.reason = "error", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        stats.finished = time.time()
        if not reading and (abandon := getattr(source, "abandon", None)) is not None:
            abandon()  # it failed or was stopped first: ranks that read together (psana's MPI mode) would wait
        end = EndMessage(stream=stream_id, rank=rank, producers=producers, share=share, messages=stats.messages,
                         events=stats.events, last_seq=last_seq, status=stats.status, reason=stats.reason,
                         omitted=omitted_by(source, *steps).astype("<i8").tobytes(), receivers=receivers(spec))
        failures = []
        try:
            with stopped_end() if stats.status == "aborted" else nullcontext():
                for sink in sinks:
                    try:
                        sink.close(end)
                    except Exception as exc:  # every sink gets its end; the first failure is raised below
                        failures.append(exc)
        except (EndAbandoned, Aborted) as exc:  # out of time, or stopped again (a parent's death can signal twice)
            stats.reason = f"{stats.reason}; its end message was abandoned: {exc}"
        report(stats)
        if failures and stats.status != "error":  # an error already on its way is the one to report
            raise failures[0]
    return stats


# --- local worker processes -------------------------------------------------------------

_COUNTERS = ("events", "messages", "bytes")


def _local_worker(spec_json: str, rank: int, producers: int, stream_id: str, counters: Any, errors: Any,
                  key_text: str | None = None) -> None:
    """One worker of :func:`run_local`: its share of the spec, its totals in ``counters``, its failure (or a stop
    before it could send an end message: while it started, say) in ``errors`` and exit code 1. Once its share has
    ended, a stop signal is ignored: there is nothing left to stop (one while the process exits would print a
    traceback)."""
    def report(stats: WorkerStats) -> None:
        base = rank * len(_COUNTERS)
        for offset, name in enumerate(_COUNTERS):
            counters[base + offset] = getattr(stats, name)

    try:
        abort_on_signals()
        spec = spec_from_json(spec_json)
        key = None if key_text is None else StreamKey.from_text(key_text)
        stats = run_worker(spec, rank, producers, stream_id, report, key=key)
        failure = None if stats.status == "ok" else stats.reason
    except Aborted as exc:
        failure = f"{exc}; it sent no end message"
    except BeamstreamError as exc:
        failure = str(exc)
    except Exception as exc:
        errors.put((rank, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    if failure is not None:
        errors.put((rank, failure))
        raise SystemExit(1)


@dataclass(slots=True)
class RunResult:
    """Outcome of a producer run: per-worker stats, errors by rank, wall time."""

    stream_id: str
    workers: list[WorkerStats]
    errors: dict[int, str]
    seconds: float
    stopped_by: signal.Signals | None = None  # the first signal that stopped the run, if one did

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
              poll_interval: float = 0.5, key: StreamKey | None = None,
              stop: threading.Event | None = None) -> RunResult:
    """Run ``spec`` in ``workers`` local processes and wait for all of them (sealing every message with ``key``,
    if given: the workers get it through their start-up pipe, never on a command line).

    ``on_progress`` receives every worker's running totals about every ``poll_interval`` seconds.
    A worker that dies is reported in ``RunResult.errors`` with its exit code (or the signal that
    killed it). SIGTERM or SIGINT (when called from the main thread), or ``stop`` being set (seen
    within ``poll_interval``), stops the workers: each ends its share with an ``aborted`` end message,
    those still running after :data:`STOP_GRACE_S` are killed (at once on a second signal), and the
    result reports them and the signal (``stopped_by``). A SIGINT is passed on to the workers only
    :data:`STOP_RELAY_S` after it came (on a terminal, Ctrl-C reached them too); a SIGTERM, a second
    signal or ``stop`` at once. Workers start with SIGINT held (see :func:`abort_on_signals`), so a
    Ctrl-C while they start prints no traceback. No worker outlives this call.
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

    def snapshot() -> list[WorkerStats]:
        result = []
        for rank, process in enumerate(processes):
            values = counters[rank * len(_COUNTERS) : (rank + 1) * len(_COUNTERS)]
            status = "running" if process.exitcode is None else "ok" if process.exitcode == 0 else "failed"
            result.append(WorkerStats(rank, *values, started=started, status=status))
        return result

    with _StopSignals() as signals:
        try:
            with sigint_held():
                for process in processes:
                    process.start()
            while any(process.is_alive() for process in processes):
                signals.wait([process.sentinel for process in processes if process.is_alive()], poll_interval)
                on_progress(snapshot())
                if signals.relay_in() == 0 or (stop is not None and stop.is_set()):
                    _stop_workers(processes, kill=len(signals.received) > 1)
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
    stopped_by = signal.Signals(signals.received[0]) if signals.received else None
    return RunResult(stream_id, final, errors, time.time() - started, stopped_by)


class _StopSignals:
    """While active (in the main thread), SIGTERM and SIGINT are recorded in ``received`` instead of ending
    the process, so that :func:`run_local` can stop its workers and still report on them; :meth:`wait` wakes up
    as soon as one comes."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.first_at = 0.0
        self.previous: dict[int, Any] = {}
        self.woken, self.waker = os.pipe()  # the handler writes to it, so that wait() wakes up at once

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        os.close(self.woken)
        os.close(self.waker)

    def _record(self, signum: int, frame: Any) -> None:
        if not self.received:
            self.first_at = time.monotonic()
        self.received.append(signum)
        os.write(self.waker, b"!")

    def wait(self, sentinels: list[Any], timeout: float) -> None:
        """Return once one of ``sentinels`` is ready, a signal came, it is time to pass a SIGINT on
        (:meth:`relay_in`), or ``timeout`` seconds have passed."""
        ready = multiprocessing.connection.wait([*sentinels, self.woken], timeout=min(timeout, self.relay_in()))
        if self.woken in ready:
            os.read(self.woken, 64)

    def relay_in(self) -> float:
        """Seconds until the workers are to be told to stop: 0 once they are (a SIGTERM or a second signal: now;
        a SIGINT alone: :data:`STOP_RELAY_S` after it came), infinity before any signal."""
        if not self.received:
            return float("inf")
        if self.received != [signal.SIGINT]:
            return 0.0
        return max(0.0, self.first_at + STOP_RELAY_S - time.monotonic())


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

def run_mpi(spec: Any, stream_id: str | None = None, key: StreamKey | None = None) -> RunResult | None:
    """Run this MPI rank's share of ``spec`` (sealed with ``key``, if given); rank 0 returns everyone's result,
    other ranks None.

    Every rank reaches the final gather even when its share fails, so one failure never
    leaves the others hanging; the failure is reported in ``RunResult.errors``.
    """
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MissingDependency(needs_extra("running under mpirun", "mpi", package="mpi4py", cause=exc)) from None
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
