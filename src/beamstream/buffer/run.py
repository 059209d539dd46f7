"""Open a buffer from its settings, and run it until it is told to stop: the one way every caller starts one.

The CLI (``beamstream buffer``), :meth:`BufferConfig.open <beamstream.buffer.config.BufferConfig.open>`
and the request service all go through :func:`open_buffer` (and :func:`run_buffer` to serve
in the foreground), so every setting in a :class:`~beamstream.buffer.config.BufferConfig`
means the same wherever a buffer is started.
"""

from __future__ import annotations

import resource
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from beamstream.accounting import StreamReport
from beamstream.allocator import release_freed_buffers
from beamstream.buffer.base import Buffer
from beamstream.errors import MissingDependency, needs_extra

if TYPE_CHECKING:
    from beamstream.buffer.config import BufferConfig


def open_buffer(config: BufferConfig) -> Buffer:
    """The buffer ``config`` describes, bound and ready, its metrics served if ``metrics_port`` is set.

    Raises TransportError if an endpoint or the metrics port cannot be bound (or, with a NATS
    backend, the server does not answer), MissingDependency if the NATS backend is asked for
    without nats-py, StreamKeyError if ``admission_key_file`` cannot be read, may be read by
    others, or holds no key.
    """
    admission = None
    if config.admission_key_file is not None:
        from beamstream.buffer.admission import load_admission_key

        admission = load_admission_key(config.admission_key_file)
    if config.backend is not None:
        try:
            from beamstream.buffer.nats_bridge import NatsBridge
        except ImportError as exc:
            raise MissingDependency(needs_extra("the NATS backend", "nats", package="nats-py", cause=exc)) from exc
        buffer: Buffer = NatsBridge(config.producer_endpoint, config.backend, hwm=config.hwm, max_bytes=config.max_spill,
                                    retention_s=config.retention_s, producer_timeout_s=config.producer_timeout_s,
                                    max_message=config.max_message, max_connections=config.max_connections,
                                    admission=admission)
    else:
        from beamstream.buffer.local import LocalBuffer

        buffer = LocalBuffer(config.producer_endpoint, config.consumer_endpoint, max_bytes=config.max_memory, hwm=config.hwm,
                             spill=config.spill_dir, max_spill=config.max_spill, retention_s=config.retention_s,
                             producer_timeout_s=config.producer_timeout_s, max_message=config.max_message,
                             group_stall_s=config.group_stall_s, max_consumers=config.max_consumers,
                             max_connections=config.max_connections, admission=admission, shm_bytes=config.shm_bytes)
    if config.metrics_port is not None:
        try:
            buffer.serve_metrics(config.metrics_port, config.metrics_addr)
        except BaseException:
            buffer.close()
            raise
    return buffer


def allow_all_descriptors() -> None:
    """Raise this process's limit of open files to the hard limit: every connection is a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_buffer(config: BufferConfig, on_ready: Callable[[Buffer], None] = lambda buffer: None) -> StreamReport:
    """Open the buffer ``config`` describes and serve it in this thread until SIGTERM, SIGINT (Ctrl-C) or
    ``buffer.stop()``; then close it and return its account of the stream.

    ``on_ready`` is called with the open buffer before it serves (e.g. to say where it listens).
    Makes glibc reuse freed message memory (:func:`~beamstream.allocator.release_freed_buffers`).
    """
    release_freed_buffers()
    allow_all_descriptors()
    buffer = open_buffer(config)
    previous = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, lambda *_: buffer.stop())
        on_ready(buffer)
        buffer.serve()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        buffer.close()
    return buffer.report
