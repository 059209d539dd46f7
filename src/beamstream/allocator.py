"""How a process that moves large messages (the local buffer, the service's relay) asks glibc to reuse freed
message memory while busy, and to give it back when idle. Below both: the service imports no buffer internals."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    """glibc, or None where it is not the C library (then the allocator is left alone); looked up once.

    Through the symbols the process already has (``dlopen(NULL)``), not ``ctypes.util.find_library``: that runs
    ``ldconfig`` in a subprocess, in every DataLoader worker of :mod:`beamstream.torch` at every epoch."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (AttributeError where the C library is not glibc)
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_buffers(threshold: int = 32 << 20) -> bool:
    """Make glibc reuse freed message buffers while the buffer is busy; :func:`trim_freed_buffers` gives them back.

    A received message is written by the kernel into memory that libzmq allocates. Memory the
    process never touched costs a page fault and a page of zeroes per 4 KiB, which measured
    as half of the buffer's CPU time with 8 MiB messages when every message got fresh memory
    (mmap per allocation). So messages up to ``threshold`` bytes (glibc's limit: 32 MiB) come
    from the heap, and the heap is not shrunk on every free: a message evicted from the log
    leaves memory the next one reuses. Resident memory then stays at the peak the log and the
    ZeroMQ queues reached (bounded as :mod:`beamstream.buffer.local` says) until the buffer goes idle and
    :meth:`LocalBuffer.serve <beamstream.buffer.local.LocalBuffer.serve>` calls :func:`trim_freed_buffers`.
    Returns False where glibc's ``mallopt`` is not available (nothing changes).
    """
    libc = _libc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))


def trim_freed_buffers() -> bool:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``).

    True if some was given back; False if there was none, or where glibc is not the C library.
    """
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
