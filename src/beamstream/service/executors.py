"""Where a stream's jobs run: :class:`LocalExecutor` (processes on the service's machine) and :class:`SlurmExecutor`.

An executor submits a :class:`JobRequest` and returns the job's native id, a string the job
store keeps, so that a restarted service finds the job again (:meth:`Executor.status`) and can
stop it (:meth:`Executor.cancel`). Jobs do not depend on the service process: it may die and
come back while they run.

Local jobs run in a session of their own through :mod:`beamstream.service.jobrun`, which writes
the job's exit code to a file when it ends, so that its outcome is known also to a service that
did not start it; a service's executor forks them from a warm starter that has imported beamstream
already (:meth:`LocalExecutor.warm_up`, :mod:`beamstream.service.warm_start`). The native id is
``PID:START`` (``START``: the process's start time in clock ticks since boot, as psutil reads it),
so a reused pid is not taken for the job.

Slurm jobs are submitted through PSI/J (``psij-python``: one interface for Slurm, PBS, LSF and
Flux, so another batch system is a name away); the native id is Slurm's job id, and a restarted
service attaches to it. PSI/J's states are used, not squeue's: Slurm records a job that exited
non-zero as completed, PSI/J as failed with its exit code (docs/slurm.md). A job asked to run as
ranks (:attr:`JobRequest.ranks`) is launched by ``srun``, one task per rank, each task seeing its
rank in ``SLURM_PROCID`` and their number in ``SLURM_NTASKS``; other jobs are one task on one node.
An executor that cannot launch ranks (``launches_ranks`` false: the local one) is never given a
job with ranks: its caller runs the workers itself instead.
"""

from __future__ import annotations

import math
import os
import signal
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

import psutil

from beamstream.protocol.slurm import SlurmOptions
from beamstream.service.warm_start import WarmStarter

logger = logging.getLogger(__name__)
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
    """One job: its command, the folder it runs in and writes its output to, and what it may use.

    ``ranks``: None runs ``argv`` once; N runs it as N ranks spread over ``nodes`` nodes (only for an
    executor that ``launches_ranks``). ``nodes`` applies to ranks only: a job without is one node. ``label``: the
    name a scheduler shows for it (``squeue``), ``name`` if empty; ``name`` also names its output files.
    ``slurm``: sbatch's options for it (the slurm executor's).
    """

    name: str
    argv: list[str]
    directory: Path
    ranks: int | None = None
    nodes: int = 1
    time_limit_s: float | None = None
    environment: dict[str, str] = field(default_factory=dict)
    label: str = ""
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    @property
    def output(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def exit_file(self) -> Path:
        return self.directory / f"{self.name}.exit"


class CannotRun(Exception):
    """A job that cannot run here: ``unavailable`` if the executor does not answer (try again later), else the
    request asks for what the executor will never give (ask for less)."""

    def __init__(self, message: str, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


class Executor(Protocol):
    name: str
    launches_ranks: bool  # whether it takes a JobRequest with ranks (else the job runs its workers itself)
    shares_host: bool  # whether its jobs run on the service's host (they may then meet on an ipc socket)

    def check(self, job: JobRequest) -> None:
        """Raise :class:`CannotRun` if ``job`` could not run here; nothing is submitted."""
        ...

    def submit(self, job: JobRequest) -> str:
        """Start ``job``; its native id."""
        ...

    def status(self, native_id: str, job: JobRequest) -> JobStatus:
        """Whether the job runs, or how it ended."""
        ...

    def cancel(self, native_id: str) -> None:
        """Ask the job to stop (SIGTERM: producers send their end messages, a buffer its verdict)."""
        ...

    def leftovers(self, job: JobRequest) -> list[str]:
        """The native ids of ``job``'s jobs running now, found by its folder or its name, not by a record: those an
        earlier service submitted and died before recording."""
        ...


class LocalExecutor:
    """Jobs as processes started from this machine, each in its own session (they outlive the service).

    ``launchers`` maps a job's role (``buffer``, ``producers``) to a command put before the job's, which runs it on
    another host (the settings ``buffer_launcher``, ``producers_launcher``: ``ssh HOST``, ``ip netns exec NS``);
    the job is then whatever that command's process is here: its end, its exit code (through jobrun's exit file in
    the job's folder, which that host must share) and SIGTERM go through it. With any launcher, jobs do not
    share the service's host (no ipc socket between them)."""

    name = "local"
    launches_ranks = False

    def __init__(self, launchers: dict[str, list[str]] | None = None) -> None:
        self.launchers = {role: list(command) for role, command in (launchers or {}).items() if command}
        self.shares_host = not self.launchers
        self.starter: WarmStarter | None = None

    def warm_up(self) -> None:
        """Start a warm job starter (:mod:`beamstream.service.warm_start`): from now on, the jobs of a role without
        a launcher are forked from a process that has imported beamstream already, not started cold (a second
        sooner, the same processes otherwise). :meth:`close` ends it."""
        if self.starter is None:
            self.starter = WarmStarter()

    def close(self) -> None:
        """End the warm job starter, if any (not the jobs: they outlive it)."""
        if self.starter is not None:
            self.starter.close()
            self.starter = None

    def check(self, job: JobRequest) -> None:
        """Any job runs here (the service's settings bound how many workers a stream may ask for)."""

    def submit(self, job: JobRequest) -> str:
        job.directory.mkdir(parents=True, exist_ok=True)
        job.exit_file.unlink(missing_ok=True)
        launcher = self.launchers.get(job.name, [])
        command = [*launcher, sys.executable, str(JOBRUN), str(job.exit_file), str(job.time_limit_s or 0), "--",
                   *job.argv]
        environment = {**os.environ, **job.environment}
        with open(job.output, "ab") as output:
            pid = None
            if self.starter is not None and not launcher:
                pid = self.starter.start(command, job.directory, output.fileno(), environment)
            if pid is None:
                pid = subprocess.Popen(command, cwd=job.directory, stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, env=environment).pid
        start = _start_time(pid)
        return f"{pid}:{'' if start is None else start}"

    def status(self, native_id: str, job: JobRequest) -> JobStatus:
        if _alive(native_id):  # also between jobrun writing its exit file and exiting: the end is seen (and the
            return JobStatus(JobState.RUNNING)  # process reaped) once it has exited, or it would stay a zombie
        _reap(native_id)
        if job.exit_file.exists():
            code = int(job.exit_file.read_text().strip() or 1)
            return JobStatus(JobState.SUCCEEDED if code == 0 else JobState.FAILED, code)
        return JobStatus(JobState.LOST)

    def leftovers(self, job: JobRequest) -> list[str]:
        """The jobrun processes (or their launchers) whose command names ``job``'s exit file."""
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if str(job.exit_file) in (process.info["cmdline"] or []) and (start := _start_time(process.pid)):
                found.append(f"{process.pid}:{start}")
        return found

    def cancel(self, native_id: str) -> None:
        if (process := _process(native_id)) is not None:  # jobrun passes it on to the job, which stops its own
            try:  # children
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:  # it ended meanwhile
                pass


class SlurmExecutor:
    """Jobs as Slurm batch jobs, through PSI/J; one PSI/J executor polls squeue every ``polling_s`` seconds."""

    name = "slurm"
    launches_ranks = True
    shares_host = False
    FOREVER_S = 365 * 86400  # PSI/J's default walltime is 10 minutes: a job without a limit gets this
    ANSWER_WITHIN_S = 10.0  # for sbatch --test-only

    def __init__(self, work_directory: Path, polling_s: float = 1.0) -> None:
        import psij
        from psij.executors.batch.slurm import SlurmExecutorConfig

        self.psij = psij
        work_directory.mkdir(parents=True, exist_ok=True)
        self.executor = psij.JobExecutor.get_instance("slurm", config=SlurmExecutorConfig(
            work_directory=work_directory, queue_polling_interval=polling_s, initial_queue_polling_delay=0,
            keep_files=True))
        self.jobs: dict[str, object] = {}  # native id → PSI/J job, submitted or attached by this service

    def check(self, job: JobRequest) -> None:
        """Ask ``sbatch --test-only`` whether Slurm would take a job of ``job``'s nodes, tasks and time limit
        (a request the partition can never meet is refused there, with ``EnforcePartLimits``)."""
        try:
            self._resources(job)
        except OSError as exc:
            raise CannotRun(str(exc)) from None
        minutes = math.ceil((job.time_limit_s or self.FOREVER_S) / 60)
        argv = ["sbatch", "--test-only", f"--nodes={job.nodes if job.ranks else 1}", f"--ntasks={job.ranks or 1}",
                f"--time={minutes}", *job.slurm.sbatch(), "--wrap=true"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.ANSWER_WITHIN_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CannotRun(f"Slurm does not answer (sbatch --test-only: {exc})", unavailable=True) from None
        if done.returncode != 0:
            words = " ".join(done.stderr.split()) or f"exit code {done.returncode}"
            unreachable = any(sign in words for sign in ("Unable to contact", "Socket timed out", "Connection refused"))
            raise CannotRun(f"Slurm would not take the job: {words}", unavailable=unreachable)

    def _resources(self, job: JobRequest) -> object:
        try:
            return self.psij.ResourceSpecV1(node_count=job.nodes if job.ranks else 1, process_count=job.ranks or 1,
                                            gpu_cores_per_process=job.slurm.gpus_per_task,
                                            exclusive_node_use=job.slurm.exclusive)
        except self.psij.InvalidJobException as exc:  # e.g. ranks not a multiple of nodes
            raise OSError(f"the job cannot be laid out: {exc}") from None

    def submit(self, job: JobRequest) -> str:
        from datetime import timedelta

        job.directory.mkdir(parents=True, exist_ok=True)
        resources = self._resources(job)
        spec = self.psij.JobSpec(
            executable=job.argv[0], arguments=job.argv[1:], directory=job.directory, name=job.label or job.name,
            stdout_path=job.output, stderr_path=job.directory / f"{job.name}.err", environment=job.environment,
            resources=resources, launcher="srun" if job.ranks else "single",
            attributes=self.psij.JobAttributes(  # PSI/J's template leaves the job's name out: Slurm's own option
                duration=timedelta(seconds=job.time_limit_s or self.FOREVER_S), queue_name=job.slurm.partition,
                account=job.slurm.account, reservation_id=job.slurm.reservation,
                custom_attributes={"slurm.job-name": job.label or job.name,
                                   **({"slurm.qos": job.slurm.qos} if job.slurm.qos else {}),
                                   **{f"slurm.{name}": value for name, value in job.slurm.extra.items()}}))
        psij_job = self.psij.Job(spec)
        try:
            self.executor.submit(psij_job)
        except self.psij.SubmitException as exc:
            raise OSError(f"Slurm refused the job: {exc}") from None
        self.jobs[psij_job.native_id] = psij_job
        return psij_job.native_id

    def status(self, native_id: str, job: JobRequest) -> JobStatus:
        state = self._job(native_id).status
        name = state.state.name
        if name in ("NEW", "QUEUED", "ACTIVE"):
            return JobStatus(JobState.RUNNING)
        if name == "COMPLETED":
            return JobStatus(JobState.SUCCEEDED, state.exit_code or 0)
        return JobStatus(JobState.FAILED, state.exit_code)

    def cancel(self, native_id: str) -> None:
        self.executor.cancel(self._job(native_id))  # scancel: SIGTERM to the job's processes

    def leftovers(self, job: JobRequest) -> list[str]:
        """The ids of this user's pending or running jobs named ``job``'s label (``squeue --name``); none if Slurm
        does not answer (logged)."""
        argv = ["squeue", "--noheader", "--format=%i", f"--name={job.label or job.name}"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.ANSWER_WITHIN_S, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("could not look for %s's jobs left by an earlier service (squeue: %s)", job.label, exc)
            return []
        return done.stdout.split()

    def _job(self, native_id: str) -> object:
        if native_id not in self.jobs:  # a job a previous service submitted
            job = self.psij.Job()
            self.executor.attach(job, native_id)
            self.jobs[native_id] = job
        return self.jobs[native_id]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of a START


def _running(pid: int) -> tuple[psutil.Process, int] | None:
    """The process ``pid`` and its start time in clock ticks since boot, unless it is gone or a zombie.

    psutil gives the start in seconds since the epoch: the ticks the kernel keeps (/proc/PID/stat), divided, plus
    the boot time it read (``psutil.boot_time()``, which it keeps for the processes made after). Taking that
    boot time away again gives back the ticks, which, unlike the time since the epoch, do not change when the
    system clock is set: a service restarted after that still knows its jobs."""
    try:
        boot = psutil.boot_time()  # read first: the process made next reckons its start from it
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process, round((process.create_time() - boot) * CLOCK_TICKS)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _start_time(pid: int) -> int | None:
    """The start of process ``pid`` in clock ticks since boot; None if it is gone."""
    running = _running(pid)
    return None if running is None else running[1]


def _process(native_id: str) -> psutil.Process | None:
    """The process named by ``PID:START`` while it runs (not a zombie, not another process with its pid)."""
    pid, _, start = native_id.partition(":")
    running = _running(int(pid))
    return running[0] if running is not None and start and str(running[1]) == start else None


def _alive(native_id: str) -> bool:
    """True while the process named by ``PID:START`` runs (not a zombie, not another process with its pid)."""
    return _process(native_id) is not None


def _reap(native_id: str) -> None:
    """Collect the exit of a job this service started (so no zombie stays); nothing for others'."""
    try:
        os.waitpid(int(native_id.split(":")[0]), os.WNOHANG)
    except ChildProcessError:
        pass
