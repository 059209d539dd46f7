"""A warm job starter: local jobs forked from a process that has already imported beamstream, not started cold.

A fresh ``python -m beamstream.cli buffer …`` spends most of a second importing (numpy, pydantic, zmq, rich,
beamstream's modules) before it does anything; a request's first event waits for that twice over, once for
its buffer job and once for its producers job. :class:`WarmStarter` starts one process with the service
(``python -m beamstream.service.warm_start FD``) that imports what those jobs import, then forks each job
the service asks it for. A job started so is, as seen from outside, the job :class:`LocalExecutor` would have
started cold:

- the same two processes: :mod:`beamstream.service.jobrun`'s wrapper (session leader of a new session, its
  exit code to the exit file, signals passed on, the time limit) and, its child, the job's command; the
  wrapper's pid is the job's native id, SIGTERM to it stops the job, kill -9 ends it, as before;
- the same command lines (``/proc/PID/cmdline``: what ``ps`` and psutil show) and environment
  (``/proc/PID/environ``), set with ``prctl(PR_SET_MM_MAP)``; the same folder, standard input
  (``/dev/null``), standard output and error (the job's log, opened by the service), signal handlers
  (Python's defaults) and ``sys.argv``/``sys.path``, ``__main__`` being ``beamstream.cli`` as with ``-m``;
- a command other than ``python -m beamstream.cli …``, or an environment other than the starter's own, is
  exec'd in the forked child (what a cold start runs, less the wrapper's start-up).

Two things differ, both for the better: SIGTERM and SIGINT are held from the fork until jobrun's handlers are
in place, so a job told to stop as it starts stops with its exit code recorded (a cold wrapper that gets one
in its first tens of milliseconds dies of it, and its job is lost); and the wrapper ends without finalising
the modules it inherited (a cold one imported none). Each wrapper shares the starter's memory copy-on-write.

Jobs outlive the starter, as they outlive the service: the starter ends when the service's end of its
socket closes (the service ended, even by SIGKILL, or :meth:`WarmStarter.close`), and its children are
not its to stop. Where the starter cannot start a job so (no ``prctl(PR_SET_MM_MAP)`` on this kernel, a
thread running in it, a request over :data:`MESSAGE_MAX`, the starter gone), :meth:`WarmStarter.start`
says so (None) and the executor starts the job cold, as it does when its role has a launcher.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import logging
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)
MESSAGE_MAX = 1 << 20  # bytes of one request (its command and environment)
PRELOADED = (  # what the buffer and producers jobs import (python -X importtime): the CLI, their commands, plugins
    "beamstream.cli", "beamstream.service.jobrun", "rich.logging", "rich._emoji_codes", "typer._adapters",
    "beamstream.spec", "beamstream.buffer.base", "beamstream.buffer.run", "beamstream.buffer.local",
    "beamstream.service.callbacks", "httpcore", "encodings.idna", "beamstream.atomic", "beamstream.producer",
    "beamstream.launchers", "beamstream.worker_signals", "beamstream.transport", "msgspec", "numpy.random",
    "h5py", "hdf5plugin", "beamstream.codecs.arrays", "beamstream.codecs.hdf5", "beamstream.codecs.simplon",
    "beamstream.sources.psana_runs", "beamstream.sources.psana_fields", "beamstream.sources.hdf5_metadata",
    "beamstream.steps.calibrate", "beamstream.serializers.storage", "beamstream.saving", "beamstream.sinks.cxi",
    "cryptography.hazmat.primitives.hashes", "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.kdf.hkdf")
WARM_COMMAND = [sys.executable, "-m", "beamstream.cli"]  # the commands run in the forked child itself
CLOSE_WITHIN_S = 5.0
STOPPING = {signal.SIGTERM, signal.SIGINT}  # what jobrun passes on to the job


class WarmStarter:
    """The service's end of a warm starter process, started now (it imports in the background).

    :meth:`start` forks one job; it waits for the starter to have imported (about a second after it was
    started), so the first job started soon after the service pays what a cold start would."""

    def __init__(self) -> None:
        self._channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "beamstream.service.warm_start", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        self._lock = threading.Lock()
        self._gone = False

    def start(self, command: list[str], directory: Path, output: int, environment: dict[str, str]) -> int | None:
        """Fork ``command`` (jobrun's, the job's after it) in ``directory``, its standard output and error the
        open file ``output``, its environment ``environment``, in a session of its own; its pid, or None if the
        starter cannot start it (start it cold)."""
        request = json.dumps({"command": command, "directory": str(directory), "environment": environment}).encode()
        if len(request) > MESSAGE_MAX:
            return None
        with self._lock:
            if self._gone:
                return None
            try:
                socket.send_fds(self._channel, [request], [output])
                answer = self._channel.recv(64)
            except OSError:
                answer = b""
            if not answer:
                self._gone = True
                logger.warning("the warm job starter ended (exit code %s): local jobs start cold from now on",
                               self.process.poll())
                return None
        return int(answer) or None  # 0: it could not (a thread runs in it, or no prctl(PR_SET_MM_MAP) here)

    def close(self) -> None:
        """End the starter (not the jobs it started) and reap it."""
        with self._lock:
            self._gone = True
            self._channel.close()
        try:
            self.process.wait(timeout=CLOSE_WITHIN_S)
        except subprocess.TimeoutExpired:  # still importing: nothing of it is needed
            self.process.kill()
            self.process.wait()


# --- the starter process -------------------------------------------------------------------------------------


@dataclass
class Request:
    command: list[str]
    directory: str
    environment: dict[str, str]
    output: int
    told: int = -1  # in the child: closed once it shows the job's command line


def serve(channel: socket.socket) -> Request | None:
    """Answer requests on ``channel`` until it closes (None), forking a child for each; in a child, its request.

    A request still queued when the service ended (a service killed while the starter was importing) is not
    started: as with a cold start, no job starts after its service has ended, unknown to the next one.
    Children are not waited for here (SIGCHLD is ignored, so the kernel reaps them): the exit code that counts
    is the one their wrapper writes to the exit file, and whoever checks on a job sees its pid gone."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    service = select.poll()
    service.register(channel, select.POLLRDHUP)
    while True:
        message, fds, _, _ = socket.recv_fds(channel, MESSAGE_MAX, 1)
        if not message or service.poll(0):  # the service ended: a request it sent before is started by nobody
            return None
        request = Request(**json.loads(message), output=fds[0])
        if threading.active_count() > 1 or not _can_set_command_line():
            os.close(request.output)
            channel.send(b"0")
            continue
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)  # until the child has jobrun's handlers
        ready, told = os.pipe()
        pid = os.fork()
        if pid == 0:
            channel.close()
            os.close(ready)
            request.told = told
            return request
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        os.close(request.output)
        os.close(told)
        os.read(ready, 1)  # the child shows its command line: whoever looks for the job by it finds it
        os.close(ready)
        channel.send(str(pid).encode())


def run_wrapper(request: Request) -> int:
    """In the forked child: become the job's wrapper (jobrun) as a cold start would have; its exit code."""
    from beamstream.service import jobrun

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    os.chdir(request.directory)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd in (1, 2):
        os.dup2(request.output, fd)
    os.close(null)
    os.close(request.output)
    same_environment = dict(os.environ) == request.environment
    os.environ.clear()
    os.environ.update(request.environment)
    _python, _jobrun, *arguments = request.command
    set_command_line(request.command, request.environment)
    os.close(request.told)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # as Popen's close_fds: only standard input, output and error
    jobrun.pass_signals_on()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING)
    return jobrun.main(arguments, start=lambda argv: ForkedChild(argv, warm=same_environment))


class ForkedChild:
    """The job's command in a child forked from the wrapper; what jobrun uses of a :class:`subprocess.Popen`."""

    def __init__(self, argv: list[str], warm: bool) -> None:
        self.returncode: int | None = None
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)  # for the child: none reaches jobrun's handlers
        self.pid = os.fork()
        if self.pid == 0:
            run_command(argv, warm, held)  # raises SystemExit (or the command's exception) up to the interpreter
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # one that came meanwhile: jobrun passes it on
        self._ended = os.pidfd_open(self.pid)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._ended], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(["job"], timeout)
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            os.close(self._ended)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run_command(argv: list[str], warm: bool, mask: set[signal.Signals]) -> None:
    """In the job's forked child: run ``argv`` as ``python -m beamstream.cli`` would, here, or exec it; its
    signal handlers Python's defaults, then its signal mask ``mask``."""
    set_command_line(argv, dict(os.environ))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if not (warm and argv[:3] == WARM_COMMAND):
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # as subprocess's restore_signals
            signal.signal(signum, signal.SIG_DFL)
        os.execvp(argv[0], argv)
    sys.argv = ["-m", *argv[3:]]
    sys.path[0] = os.getcwd()  # -m puts the folder it runs in first
    del sys.modules["beamstream.cli"]  # imported by the starter; ``-m`` runs it as ``__main__`` only
    runpy.run_module("beamstream.cli", run_name="__main__", alter_sys=True)
    sys.exit(0)


# --- command lines --------------------------------------------------------------------------------------------


class _MemoryMap(ctypes.Structure):
    """``struct prctl_mm_map`` (linux/prctl.h)."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack", "arg_start", "arg_end",
        "env_start", "env_end", "auxv")] + [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]


PR_SET_MM, PR_SET_MM_MAP = 35, 14
_libc = ctypes.CDLL(None, use_errno=True)
_libc.sbrk.restype = ctypes.c_void_p
_kept: list[ctypes.Array] = []  # the memory the kernel shows as this process's command line and environment


def set_command_line(argv: list[str], environment: dict[str, str]) -> bool:
    """Make ``/proc/self/cmdline`` and ``/proc/self/environ`` read ``argv`` and ``environment`` (what an exec'd
    process shows); False if the kernel does not let this process (no ``prctl(PR_SET_MM_MAP)``)."""
    stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    field = lambda number: int(stat[number - 3])  # noqa: E731 (proc(5) numbers fields from 1; 3 follows the name)
    blocks = [ctypes.create_string_buffer(b"".join(os.fsencode(word) + b"\0" for word in words))
              for words in (argv, [f"{name}={value}" for name, value in environment.items()])]
    (arguments, arguments_end), (names, names_end) = [
        (ctypes.addressof(block), ctypes.addressof(block) + len(block) - 1) for block in blocks]  # less the extra NUL
    memory = _MemoryMap(field(26), field(27), field(45), field(46), field(47), _libc.sbrk(0), field(28), arguments,
                        arguments_end, names, max(names, names_end), 0, 0, 0xFFFFFFFF)  # exe_fd -1: unchanged
    if _libc.prctl(PR_SET_MM, PR_SET_MM_MAP, ctypes.byref(memory), ctypes.sizeof(memory), 0) != 0:
        return False
    _kept[:] = blocks
    return True


def _can_set_command_line() -> bool:
    """Whether :func:`set_command_line` works here, and a pidfd (:class:`ForkedChild`'s wait) can be had; asked
    once, in the starter (it sets its own command line to what it is)."""
    if not _checked:
        try:
            os.close(os.pidfd_open(os.getpid()))
        except (AttributeError, OSError):  # Linux before 5.3
            _checked.append(False)
        else:
            _checked.append(set_command_line(sys.orig_argv, dict(os.environ)))
    return _checked[0]


_checked: list[bool] = []


def main(arguments: list[str]) -> int:
    for name in PRELOADED:
        with contextlib.suppress(ImportError):  # an optional dependency not installed: its jobs import nothing of it
            importlib.import_module(name)
    request = serve(socket.socket(fileno=int(arguments[0])))
    if request is None:
        return 0
    code = run_wrapper(request)  # the job's forked child raises SystemExit through here instead: it ends as usual
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as a cold wrapper, which imported nothing to finalise (a tenth of a second here)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C at the service's terminal: it ends with the service
    sys.exit(main(sys.argv[1:]))
