"""The warm job starter: local jobs forked from a process that imported beamstream, indistinguishable from cold ones
to whoever finds, watches, stops or kills them."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

import psutil
import pytest

from beamstream.service.executors import JOBRUN, JobRequest, JobState, JobStatus, LocalExecutor
from beamstream.service.warm_start import WarmStarter
from conftest import wait_until

SLEEPER = [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(60)"]


@pytest.fixture(scope="module")
def warm():
    """A local executor with its warm starter (one for the module: it imports for about a second)."""
    executor = LocalExecutor()
    executor.warm_up()
    yield executor
    executor.close()


def ended(executor: LocalExecutor, native_id: str, job: JobRequest) -> JobStatus:
    wait_until(lambda: executor.status(native_id, job).state is not JobState.RUNNING, "the job to end", timeout=60)
    return executor.status(native_id, job)


def process_of(native_id: str) -> psutil.Process:
    return psutil.Process(int(native_id.split(":")[0]))


def test_a_warm_job_runs_the_cli_in_its_folder_and_records_its_exit_code(warm, tmp_path):
    """``python -m beamstream.cli`` runs in the forked job itself, as ``-m`` would run it (its error and exit code
    1 in the job's log and exit file); the wrapper is the starter's child, not this process's."""
    job = JobRequest("buffer", [sys.executable, "-m", "beamstream.cli", "produce", "missing.json"], tmp_path / "job")
    native_id = warm.submit(job)
    assert process_of(native_id).ppid() == warm.starter.process.pid
    assert ended(warm, native_id, job) == JobStatus(JobState.FAILED, 1)
    assert job.exit_file.read_text() == "1\n"
    log = job.output.read_text()
    assert "missing.json: no such spec file" in log and "RuntimeWarning" not in log, log


def test_a_warm_job_shows_the_command_line_environment_and_folder_of_a_cold_one(warm, tmp_path):
    shown = {}
    for executor, name in ((LocalExecutor(), "cold"), (warm, "warm")):
        job = JobRequest("producers", SLEEPER, tmp_path / name, environment={"WARM_TEST": name})
        native_id = executor.submit(job)
        wrapper = process_of(native_id)
        wait_until(lambda: "sleeping" in job.output.read_text(), "the job to start")
        (child,) = wrapper.children()
        shown[name] = [([part.replace(str(job.directory), "FOLDER") for part in process.cmdline()],
                        process.cwd() == str(job.directory), process.environ().get("WARM_TEST"),
                        os.getsid(process.pid) == wrapper.pid) for process in (wrapper, child)]
        executor.cancel(native_id)
        assert ended(executor, native_id, job) == JobStatus(JobState.FAILED, 128 + signal.SIGTERM)
    assert shown["cold"][1] == (SLEEPER, True, "cold", True)
    assert shown["warm"] == [(line, cwd, "warm", session) for line, cwd, _, session in shown["cold"]]


def test_a_warm_job_told_to_stop_as_it_starts_stops_with_its_exit_code_recorded(warm, tmp_path):
    """SIGTERM before the job's command has started (its wrapper holds it until it can pass it on)."""
    for number in range(5):
        job = JobRequest("buffer", SLEEPER, tmp_path / str(number))
        native_id = warm.submit(job)
        warm.cancel(native_id)
        assert ended(warm, native_id, job) == JobStatus(JobState.FAILED, 128 + signal.SIGTERM)


def test_a_killed_warm_job_and_a_time_limit_are_recorded_as_for_a_cold_one(warm, tmp_path):
    killed = JobRequest("buffer", SLEEPER, tmp_path / "killed")
    native_id = warm.submit(killed)
    wait_until(lambda: "sleeping" in killed.output.read_text(), "the job to start")
    process_of(native_id).children()[0].kill()
    assert ended(warm, native_id, killed) == JobStatus(JobState.FAILED, 128 + signal.SIGKILL)
    limited = JobRequest("buffer", SLEEPER, tmp_path / "limited", time_limit_s=0.5)
    native_id = warm.submit(limited)
    assert ended(warm, native_id, limited) == JobStatus(JobState.FAILED, 128 + signal.SIGTERM)
    wrapper_killed = JobRequest("buffer", SLEEPER, tmp_path / "wrapper")
    native_id = warm.submit(wrapper_killed)
    wait_until(lambda: "sleeping" in wrapper_killed.output.read_text(), "the job to start")
    (child,) = process_of(native_id).children()
    process_of(native_id).kill()  # kill -9 of the job itself: no exit code recorded, the job is lost
    assert ended(warm, native_id, wrapper_killed) == JobStatus(JobState.LOST)
    child.kill()


def test_jobs_outlive_the_starter_and_a_gone_starter_means_cold_starts(tmp_path):
    executor = LocalExecutor()
    executor.warm_up()
    starter = executor.starter
    first = JobRequest("buffer", SLEEPER, tmp_path / "first")
    native_id = executor.submit(first)
    assert process_of(native_id).ppid() == starter.process.pid
    starter.process.kill()
    starter.process.wait()
    assert executor.status(native_id, first).state is JobState.RUNNING, "a job outlives its starter"
    second = JobRequest("producers", SLEEPER, tmp_path / "second")
    second_id = executor.submit(second)
    assert process_of(second_id).ppid() == os.getpid(), "started cold once the starter is gone"
    executor.close()
    for job, job_id in ((first, native_id), (second, second_id)):
        wait_until(lambda: "sleeping" in job.output.read_text(), "the job to start")  # a cold one's handlers too
        executor.cancel(job_id)
        assert ended(executor, job_id, job) == JobStatus(JobState.FAILED, 128 + signal.SIGTERM)


def test_closing_the_executor_ends_the_starter_not_its_jobs(tmp_path):
    executor = LocalExecutor()
    executor.warm_up()
    starter = executor.starter
    job = JobRequest("buffer", SLEEPER, tmp_path / "job")
    native_id = executor.submit(job)
    executor.close()
    assert starter.process.returncode == 0 and executor.starter is None
    assert executor.status(native_id, job).state is JobState.RUNNING
    executor.cancel(native_id)
    assert ended(executor, native_id, job) == JobStatus(JobState.FAILED, 128 + signal.SIGTERM)


def test_a_request_left_queued_by_a_service_that_ended_starts_no_job(tmp_path):
    """The service is killed while its starter still imports, a request sent: nothing starts after the service
    ended (its successor would not know of the job)."""
    starter = WarmStarter()
    exit_file = tmp_path / "orphan.exit"
    request = {"command": [sys.executable, str(JOBRUN), str(exit_file), "0", "--", *SLEEPER],
               "directory": str(tmp_path), "environment": dict(os.environ)}
    with open(tmp_path / "orphan.log", "ab") as output:
        socket.send_fds(starter._channel, [json.dumps(request).encode()], [output.fileno()])
    starter.close()  # as the service's death would: its end of the socket closes
    assert starter.process.returncode == 0
    started = [process for process in psutil.process_iter(["cmdline"])
               if str(exit_file) in (process.info["cmdline"] or [])]
    for process in started:
        process.kill()
    assert not started and (tmp_path / "orphan.log").read_text() == ""
