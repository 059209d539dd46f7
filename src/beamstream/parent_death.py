"""A child that ends with its parent: on Linux, SIGTERM for this process when the process that started it dies
(``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for this process when its parent dies
_PRCTL = getattr(ctypes.CDLL(None), "prctl", None)  # looked up at import: calling it is safe between fork and exec


def terminate_with_parent() -> None:
    """From now on, this process gets SIGTERM when its parent dies (Linux; elsewhere nothing). Safe as a
    ``preexec_fn``."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
