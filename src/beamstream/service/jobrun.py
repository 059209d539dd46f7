"""Run one local job and record how it ended: ``python .../service/jobrun.py EXIT_FILE LIMIT_S -- ARGV...``.

The command runs as a child; its exit code (or 128 + the signal that ended it) is written to
``EXIT_FILE`` atomically when it ends, so whoever watches the job — also a service restarted
meanwhile — knows its outcome. SIGTERM and SIGINT are passed on to the child (one arriving
before the child has started stops it as soon as it has); a ``LIMIT_S`` above 0 is a
wall-clock limit (SIGTERM). A child that has not ended :data:`KILL_AFTER_S` seconds after it was
told to stop either way is killed (SIGKILL), as Slurm does after its ``KillWait``. Only the
standard library is imported, and it runs as a script (not ``-m``, which would import the
beamstream package first), so its signal handlers are in place within milliseconds. The warm job
starter (:mod:`beamstream.service.warm_start`) runs the same :func:`main` in a process it forked,
the child forked too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

KILL_AFTER_S = 30.0  # Slurm's default KillWait
POLL_S = 0.2
received: list[int] = []
stopped_at: list[float] = []  # when the child was first told to stop
child: subprocess.Popen | None = None


def _pass_on(signum: int, _frame: object) -> None:
    received.append(signum)
    stopped_at.append(time.monotonic())
    if child is not None:
        child.send_signal(signum)


def _wait(process: subprocess.Popen, limit: float) -> int:
    """The child's exit code, once it ended: told to stop (SIGTERM) after ``limit`` seconds (0: never), killed
    :data:`KILL_AFTER_S` after it was first told to stop."""
    started = time.monotonic()
    while True:
        try:
            return process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if limit and now - started > limit and not stopped_at:
            stopped_at.append(now)
            process.terminate()
        if stopped_at and now - stopped_at[0] > KILL_AFTER_S:
            process.kill()
            return process.wait()


def _record(exit_file: str, code: int) -> None:
    """Write ``code`` to ``exit_file`` so that it is there whole or not at all."""
    partial = f"{exit_file}.part"
    with open(partial, "w") as file:
        file.write(f"{code}\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, exit_file)


def main(arguments: list[str], start: Callable[[list[str]], subprocess.Popen] = subprocess.Popen) -> int:
    """Run ``EXIT_FILE LIMIT_S -- ARGV...``: ``start(ARGV)`` (the child; the warm starter's forks it), wait for it,
    record its exit code; that code."""
    global child
    exit_file, limit, _, *argv = arguments
    child = start(argv)
    for signum in received[:1]:  # a signal that came while the child was being started
        child.send_signal(signum)
    code = _wait(child, float(limit))
    code = 128 - code if code < 0 else code
    _record(exit_file, code)
    return code


def pass_signals_on() -> None:
    """From now on, SIGTERM and SIGINT go to the child (passed on once: a second signal means "now" to produce)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _pass_on)


if __name__ == "__main__":
    pass_signals_on()
    sys.exit(main(sys.argv[1:]))
