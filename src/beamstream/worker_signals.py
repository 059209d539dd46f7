"""How a producer worker ends when it is stopped: with an ``aborted`` end message, sent within a bound.

SIGTERM (Slurm's scancel, a time limit, the parent stopping) and SIGINT (Ctrl-C on the terminal's process group)
raise :class:`Aborted` in a worker wherever it is (:func:`abort_on_signals`). Where it lands in code that cannot pass
it on (a weakref callback or a finaliser, whose exceptions Python prints as "Exception ignored" and drops), the
worker's loop raises it again at its next batch (:func:`raise_if_stopped`). The worker then sends its end
messages within :func:`stopped_end`, which abandons them (:class:`EndAbandoned`) once :data:`ABORTED_END_S` passed,
or :data:`STOPPED_AGAIN_S` after a second stop. :func:`sigint_held` lets a parent start workers with SIGINT held.
The parent's side (relaying a stop, killing after :data:`STOP_GRACE_S`) is :func:`beamstream.producer.run_local`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from beamstream.parent_death import terminate_with_parent

STOP_GRACE_S = 10.0
"""Seconds stopped workers get to send their end messages before they are killed."""
ABORTED_END_S = 5.0
"""Seconds a stopped worker waits for its end message to be taken (its consumer or buffer may be gone too)
before it gives up and exits: a worker whose parent was killed never waits out ``send_timeout_s``."""
STOPPED_AGAIN_S = 0.1
"""Seconds a worker stopped twice before it sends its end message gives it (abandoning it at once would have to
happen before the sink's ``close``, which then could not release its socket)."""
STOP_RELAY_S = 1.0
"""Seconds :func:`run_local` waits after a SIGINT before it passes the stop on to workers still running: Ctrl-C on a
terminal reaches the workers too, and a second signal would make one abandon the end message it is sending."""


class Aborted(BaseException):
    """Raised inside a worker on SIGTERM or SIGINT so it can still send its end message."""


class EndAbandoned(BaseException):
    """Raised inside a stopped worker whose end message was not taken in time (:data:`ABORTED_END_S`, or
    :data:`STOPPED_AGAIN_S` once it was stopped again)."""


_stop_signals: list[int] = []  # the stop signals this process received, once abort_on_signals() set their handler
_abandon_on_stop = False  # True while a stopped worker sends its end message: a further stop signal abandons it
_deferring = False  # True within stops_deferred(): a stop is recorded, and raised when the block ends


def _raise_aborted(signum: int, frame: Any) -> None:
    """The first stop signal raises Aborted wherever the worker is; a further one only while a stopped worker sends
    its end message (abandoned then), else :func:`stopped_end` finds it recorded. So a second signal, though it
    came at the same moment (Ctrl-C on the terminal, and the parent passing a stop on), never lands inside the
    handling of the first, where it would leave the end message to be sent without a time bound."""
    _stop_signals.append(signum)
    if (len(_stop_signals) == 1 and not _deferring) or _abandon_on_stop:
        raise Aborted(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Within the block a stop is only recorded; it is raised (Aborted) when the block ends. For what must be done
    whole or not at all, such as opening a sink (a file half made, a socket not yet handed back)."""
    global _deferring
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
    raise_if_stopped()


def raise_if_stopped() -> None:
    """Raise :class:`Aborted` if a stop signal came: between batches, for a stop whose Aborted was dropped where it
    landed (see the module)."""
    if _stop_signals:
        raise Aborted(f"stopped by {signal.Signals(_stop_signals[0]).name}")


@contextmanager
def stopped_end() -> Iterator[None]:
    """Around a stopped worker's sending of its end messages: Aborted when it is stopped again, and EndAbandoned
    once :data:`ABORTED_END_S` have passed (a SIGALRM timer), or :data:`STOPPED_AGAIN_S` if it was stopped again
    already. Outside the main thread, where signals cannot be handled, nothing."""
    global _abandon_on_stop
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    again = [signal.Signals(signum).name for signum in _stop_signals[1:2]]
    seconds = STOPPED_AGAIN_S if again else ABORTED_END_S

    def expire(signum: int, frame: Any) -> None:
        raise EndAbandoned(f"stopped again by {again[0]}" if again else
                            f"its end message was not taken within {seconds:g} s of the stop")

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        _abandon_on_stop = True
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        _abandon_on_stop = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def abort_on_signals() -> None:
    """In a producer process: SIGTERM (Slurm's scancel, a time limit, the parent stopping) and SIGINT (Ctrl-C on the
    terminal's process group) end its share with an ``aborted`` end message; so does its parent's death.

    SIGINT is unblocked: :func:`run_local` starts its workers with it blocked, so that a Ctrl-C while one starts
    (imports, no handler yet) is held instead of ending it with a KeyboardInterrupt traceback; one held is raised
    here, as :class:`Aborted`."""
    _stop_signals.clear()
    signal.signal(signal.SIGTERM, _raise_aborted)
    signal.signal(signal.SIGINT, _raise_aborted)
    terminate_with_parent()  # so that no worker outlives a killed `produce`
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextmanager
def sigint_held() -> Iterator[None]:
    """Within the block, SIGINT is blocked in this thread (held until the block ends, then handled as usual), and so
    in the processes it starts (they inherit the mask)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
