"""Where a stream's jobs run: :class:`LocalExecutor` (processes on the service's machine) and, later, Slurm.

An executor submits a :class:`JobRequest` and returns the job's native id, a string the job
store keeps, so that a restarted service finds the job again (:meth:`Executor.status`) and can
stop it (:meth:`Executor.cancel`). Jobs do not depend on the service process: it may die and
come back while they run.

Local jobs run in a session of their own through :mod:`beamstream.service.jobrun`, which writes
the job's exit code to a file when it ends, so that its outcome is known also to a service that
did not start it. The native id is ``PID:START`` (``START``: the process's start time in clock
ticks since boot, from ``/proc``), so a reused pid is not taken for the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol


JOBRUN = Path(__file__).with_name("jobrun.py")  # run as a script: no package import delays its signal handlers


class JobState(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"  # neither running nor with a recorded outcome


@dataclass(frozen=True, slots=True)
class JobStatus:
    state: JobState
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One job: its command, the folder it runs in and writes its output to, and what it may use."""

    name: str
    argv: list[str]
    directory: Path
    tasks: int = 1
    nodes: int = 1
    time_limit_s: float | None = None
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def exit_file(self) -> Path:
        return self.directory / f"{self.name}.exit"


class Executor(Protocol):
    name: str

    def submit(self, job: JobRequest) -> str:
        """Start ``job``; its native id."""
        ...

    def status(self, native_id: str, job: JobRequest) -> JobStatus:
        """Whether the job runs, or how it ended."""
        ...

    def cancel(self, native_id: str) -> None:
        """Ask the job to stop (SIGTERM: producers send their end messages, a buffer its verdict)."""
        ...


class LocalExecutor:
    """Jobs as processes on this machine, each in its own session (they outlive the service)."""

    name = "local"

    def submit(self, job: JobRequest) -> str:
        job.directory.mkdir(parents=True, exist_ok=True)
        job.exit_file.unlink(missing_ok=True)
        with open(job.output, "ab") as output:
            process = subprocess.Popen(
                [sys.executable, str(JOBRUN), str(job.exit_file),
                 str(job.time_limit_s or 0), "--", *job.argv],
                cwd=job.directory, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **job.environment})
        return f"{process.pid}:{_start_time(process.pid)}"

    def status(self, native_id: str, job: JobRequest) -> JobStatus:
        if job.exit_file.exists():
            code = int(job.exit_file.read_text().strip() or 1)
            _reap(native_id)
            return JobStatus(JobState.SUCCEEDED if code == 0 else JobState.FAILED, code)
        if _alive(native_id):
            return JobStatus(JobState.RUNNING)
        _reap(native_id)
        return JobStatus(JobState.LOST)

    def cancel(self, native_id: str) -> None:
        if _alive(native_id):  # jobrun passes it on to the job, which stops its own children
            os.kill(int(native_id.split(":")[0]), signal.SIGTERM)


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot), field 22 of /proc/PID/stat; "" if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(native_id: str) -> bool:
    pid, _, start = native_id.partition(":")
    return bool(start) and _start_time(int(pid)) == start and not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _reap(native_id: str) -> None:
    """Collect the exit of a job this service started (so no zombie stays); nothing for others'."""
    try:
        os.waitpid(int(native_id.split(":")[0]), os.WNOHANG)
    except ChildProcessError:
        pass
