"""Ctrl-C that is never lost: a KeyboardInterrupt raised where Python cannot propagate it is delivered again, and
one that comes while a few steps must run whole is held until they have (:func:`deferred`)."""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

AGAIN_S = 0.05  # after this the main thread gets a lost KeyboardInterrupt again (its hook has returned by then)


def deliver_lost_interrupts() -> None:
    """From now on, a KeyboardInterrupt raised where it cannot propagate — in a finaliser: pyzmq checks for signals
    while it frees a zero-copy frame — is not printed as "Exception ignored" and dropped, which would leave a
    command running as if Ctrl-C had not been typed: SIGINT's handler runs again in the main thread
    :data:`AGAIN_S` later (``_thread.interrupt_main``; nothing if SIGINT is ignored by then), where the
    KeyboardInterrupt can propagate. Other unraisable exceptions go to the hook that was in place."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            again = threading.Timer(AGAIN_S, _thread.interrupt_main)  # not now: it would be raised in this hook
            again.daemon = True  # a command that ends meanwhile is not kept
            again.start()
        else:
            previous(unraisable)

    sys.unraisablehook = hook


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) off while the block runs, and raise its KeyboardInterrupt once the block has ended: for
    steps that must run whole (a file finished, renamed and listed), so that a Ctrl-C between two of them does not
    leave it half done. Where SIGINT is not Python's own handler, or off the main thread, the block runs as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
