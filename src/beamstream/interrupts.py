"""Ctrl-C that is never lost: a KeyboardInterrupt raised where Python cannot propagate it is delivered again."""

from __future__ import annotations

import _thread
import sys
import threading
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
