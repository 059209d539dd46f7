"""Run one local job and record how it ended: ``python .../service/jobrun.py EXIT_FILE LIMIT_S -- ARGV...``.

The command runs as a child; its exit code (or 128 + the signal that ended it) is written to
``EXIT_FILE`` atomically when it ends, so whoever watches the job — also a service restarted
meanwhile — knows its outcome. SIGTERM and SIGINT are passed on to the child (one arriving
before the child has started stops it as soon as it has); a ``LIMIT_S`` above 0 is a
wall-clock limit (SIGTERM, then SIGKILL 10 s later), as a batch system's would be. Only the
standard library is imported, and it runs as a script (not ``-m``, which would import the
beamstream package first), so its signal handlers are in place within milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

KILL_AFTER_S = 10.0
received: list[int] = []
child: subprocess.Popen | None = None


def _pass_on(signum: int, _frame: object) -> None:
    received.append(signum)
    if child is not None:
        child.send_signal(signum)


def _wait(process: subprocess.Popen, limit: float) -> int:
    try:
        return process.wait(timeout=limit or None)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            return process.wait(timeout=KILL_AFTER_S)
        except subprocess.TimeoutExpired:
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


def main(arguments: list[str]) -> int:
    global child
    exit_file, limit, _, *argv = arguments
    child = subprocess.Popen(argv)
    for signum in received[:1]:  # a signal that came while the child was being started
        child.send_signal(signum)
    code = _wait(child, float(limit))
    code = 128 - code if code < 0 else code
    _record(exit_file, code)
    return code


for _signum in (signal.SIGTERM, signal.SIGINT):  # passed on once: a second signal means "now" to produce
    signal.signal(_signum, _pass_on)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
