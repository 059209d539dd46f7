"""The timing loop the stream benchmarks share: a Client's messages read from the first one to the last.

A rate counts from the first message received to the last: process start-up, connecting and the source's first
batch are left out. Bytes and events are those after the first message (the first one starts the clock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class Timed:
    """What a timed read received: ``seconds`` from the first message to the last, the payload ``bytes`` and
    ``events`` after the first, and every ``messages``."""

    seconds: float = 0.0
    bytes: int = 0
    events: int = 0
    messages: int = 0

    @property
    def gb_per_s(self) -> float:
        """Payload GB/s (0 when fewer than two messages came)."""
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


def timed(messages: Iterable[Any], each: Callable[[Any], None] | None = None) -> Timed:
    """Read every message of ``messages`` (a Client's ``messages()``), calling ``each(message)`` as it comes,
    and time them."""
    result = Timed()
    first = None
    for message in messages:
        now = time.perf_counter()
        result.messages += 1
        if each is not None:
            each(message)
        if first is None:
            first = now
            continue
        result.bytes += message.header.nbytes
        result.events += len(message.header.seq)
        result.seconds = now - first
    return result


def timed_run(client: Any, spec: Any, workers: int, *, key: Any = None, each: Callable[[Any], None] | None = None,
              name: str = "stream") -> Timed:
    """Run ``spec`` in ``workers`` producer processes (``run_local``, sealed with ``key`` if given) into ``client``,
    timing its messages (:func:`timed`); RuntimeError, naming ``name``, if the producers fail or the stream
    arrives incomplete or with forged messages."""
    from beamstream.producer import run_local

    outcome: dict = {}
    producers = threading.Thread(
        target=lambda: outcome.setdefault("run", run_local(spec, workers, poll_interval=2.0, key=key)), daemon=True)
    producers.start()
    try:
        received = timed(client.messages(), each)
    finally:
        producers.join(150)
    result = outcome.get("run")
    if result is None or not result.ok:
        raise RuntimeError(f"{name}: producers failed: {result.errors if result else 'no result'}")
    if not client.report.complete or client.report.forged:
        raise RuntimeError(f"{name}: stream incomplete or forged messages:\n{client.report.summary()}")
    return received
