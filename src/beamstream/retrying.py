"""Trying again what fails for a while (a service restarting, a connection refused): one helper over stamina.

::

    for attempt in retrying(httpx.TransportError, for_s=60):
        with attempt:
            ...  # raising one of those exceptions: tried again after a pause; anything else goes through

The pauses grow exponentially from :data:`WAIT_INITIAL_S` to :data:`WAIT_MAX_S`, with a little jitter (so that
many jobs calling back a restarted service do not all come at once). Once ``for_s`` seconds have passed, or
``give_up()`` (asked after each failed try) says so, the last exception is raised.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

import stamina

WAIT_INITIAL_S = 0.2  # the first pause; doubled at each failed try …
WAIT_MAX_S = 5.0  # … up to this
WAIT_JITTER_S = 0.2  # at most this added at random to each pause


def retrying(retried: type[Exception] | tuple[type[Exception], ...], *, for_s: float,
             give_up: Callable[[], bool] = lambda: False) -> Iterator[stamina.Attempt]:
    """Attempts (context managers) of a block tried again while it raises ``retried``, for up to ``for_s`` seconds
    (no pause goes past them; 0: tried once) and until ``give_up()``."""
    deadline = time.monotonic() + for_s
    failed = 0

    def again(exc: Exception) -> bool | float:  # stamina's hook: whether, and after how long, to try again
        nonlocal failed
        pause = min(WAIT_INITIAL_S * 2 ** failed, WAIT_MAX_S) + random.uniform(0, WAIT_JITTER_S)
        failed += 1
        if not isinstance(exc, retried) or time.monotonic() + pause > deadline or give_up():
            return False
        return pause

    return stamina.retry_context(on=again, attempts=None, timeout=None)
