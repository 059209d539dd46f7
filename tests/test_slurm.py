"""Jobs on a real Slurm cluster through PSI/J (psij-python), and the request service running streams on it (its
producers as srun ranks). Skipped unless ``sinfo`` answers; ``bash scripts/slurm.sh up`` starts a single-node
cluster (as root; CI runs it before the tests). See docs/slurm.md."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import httpx
import psutil
import pytest

from beamstream.service.store import JobStore
from servicekit import run_service, stop_service


def slurm_missing() -> str | None:
    """Why no Slurm cluster can take jobs here, or None if ``sinfo`` answers."""
    if shutil.which("sinfo") is None:
        return "no Slurm here: sinfo is not on PATH (bash scripts/slurm.sh up installs and starts one, as root)"
    try:
        answer = subprocess.run(["sinfo", "-h"], check=False, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s (is slurmctld running? bash scripts/slurm.sh status)"
    if answer.returncode != 0:
        return f"sinfo fails: {answer.stderr.strip()} (bash scripts/slurm.sh up starts a cluster, as root)"
    return None


if missing := slurm_missing():
    pytest.skip(missing, allow_module_level=True)
psij = pytest.importorskip("psij", reason="the Slurm tests drive jobs through PSI/J: pip install 'psij-python>=0.9'")

TIMEOUT = timedelta(seconds=60)


@pytest.fixture
def submit(tmp_path: Path):
    """Submit a JobSpec through PSI/J's Slurm executor and return its Job. The executor keeps its submit scripts
    and exit-code files in tmp_path and polls squeue every second (its default, 30 s, suits shared clusters).
    Jobs a test leaves unfinished are cancelled."""
    from psij.executors.batch.slurm import SlurmExecutorConfig

    config = SlurmExecutorConfig(work_directory=tmp_path / "psij", queue_polling_interval=1,
                                 initial_queue_polling_delay=0)
    executor = psij.JobExecutor.get_instance("slurm", config=config)
    jobs = []

    def submit(spec):
        job = psij.Job(spec)
        executor.submit(job)
        jobs.append(job)
        return job

    yield submit
    for job in jobs:
        if job.native_id and not job.status.state.final:
            subprocess.run(["scancel", job.native_id], check=False)


def listed_by_squeue(native_id: str) -> bool:
    """Whether plain ``squeue`` (pending, running and completing jobs) lists the job."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return native_id in out.split()


def job_processes(native_id: str, command: list[str]) -> list[psutil.Process]:
    """The processes running ``command`` in the Slurm job ``native_id`` (told apart by SLURM_JOB_ID)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.info["cmdline"] == command and process.environ().get("SLURM_JOB_ID") == native_id:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def poll(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.1)


def test_job_runs_to_completion_and_its_output_is_there(submit, tmp_path):
    out = tmp_path / "hello.out"
    spec = psij.JobSpec(executable="/bin/sh", arguments=["-c", "echo hello from $SLURM_JOB_ID"],
                        stdout_path=out, stderr_path=tmp_path / "hello.err")
    job = submit(spec)
    assert job.native_id and job.native_id.isdigit(), f"a Slurm job id, not {job.native_id!r}"

    status = job.wait(timeout=TIMEOUT)

    assert status is not None, f"job {job.native_id} not done within {TIMEOUT}: {job.status}"
    assert status.state == psij.JobState.COMPLETED, status
    assert status.exit_code == 0
    assert out.read_text() == f"hello from {job.native_id}\n"
    assert (tmp_path / "hello.err").read_text() == ""


def test_long_job_is_cancelled_and_leaves_the_queue(submit):
    job = submit(psij.JobSpec(executable="/bin/sleep", arguments=["600"]))
    status = job.wait(timeout=TIMEOUT, target_states=[psij.JobState.ACTIVE])
    assert status is not None and status.state == psij.JobState.ACTIVE, status or job.status
    assert listed_by_squeue(job.native_id)
    poll(lambda: job_processes(job.native_id, ["/bin/sleep", "600"]), 30, "the job's sleep 600 runs")

    job.cancel()
    status = job.wait(timeout=TIMEOUT)

    assert status is not None, f"job {job.native_id} not done within {TIMEOUT} of cancel: {job.status}"
    assert status.state == psij.JobState.CANCELED, status
    assert not listed_by_squeue(job.native_id)
    poll(lambda: not job_processes(job.native_id, ["/bin/sleep", "600"]), 10, "the job's sleep 600 is gone")


def test_a_job_left_by_an_earlier_service_is_found_by_its_name(tmp_path):
    """SlurmExecutor.leftovers: what a service restarted after dying mid-submission finds by the job's name."""
    from beamstream.service.executors import JobRequest, SlurmExecutor

    executor = SlurmExecutor(tmp_path / "psij", polling_s=1)
    job = JobRequest("buffer", ["/bin/sleep", "600"], tmp_path / "stream", label=f"beamstream-{tmp_path.name[-12:]}-b")
    native_id = executor.submit(job)
    try:
        assert executor.leftovers(job) == [native_id]
        assert executor.leftovers(JobRequest("buffer", [], tmp_path, label="beamstream-no-such-job")) == []
    finally:
        executor.cancel(native_id)
    poll(lambda: not listed_by_squeue(native_id), 30, "the job to leave the queue")


def test_request_the_cluster_cannot_meet_is_refused_at_submit(submit):
    """scripts/slurm.sh sets EnforcePartLimits=ALL: without it sbatch accepts the job, which then waits forever
    (PENDING, reason PartitionConfig)."""
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()[0])
    too_many = psij.ResourceSpecV1(process_count=1, cpu_cores_per_process=cpus + 1)
    with pytest.raises(psij.SubmitException, match="More processors requested than permitted"):
        submit(psij.JobSpec(executable="/bin/true", resources=too_many))


ON_SLURM = {"executor": "slurm", "executors": '["slurm"]', "drain_grace_s": "30"}


def test_a_request_slurm_would_refuse_is_refused_in_slurms_words_before_any_job(tmp_path):
    """More nodes than the cluster has: sbatch --test-only refuses it, so the request is refused (422) with Slurm's
    words and nothing is made: no stream, no job."""
    nodes = len(subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True,
                               check=True).stdout.split())
    queued_before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    service, url = run_service(tmp_path, **ON_SLURM)
    try:
        spec = {"source": {"type": "simulated", "n_events": 10}}
        refused = httpx.post(f"{url}/v1/streams", json={"spec": spec, "resources": {
            "workers": nodes + 1, "nodes": nodes + 1}}, timeout=30)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"].startswith("resources: Slurm would not take the job: ")
        assert "Node count specification invalid" in refused.json()["detail"]
        laid_out = httpx.post(f"{url}/v1/streams", json={"spec": spec, "resources": {"workers": 3, "nodes": 2}},
                              timeout=30)
        assert laid_out.status_code == 422 and "cannot be laid out" in laid_out.json()["detail"]
        assert httpx.get(f"{url}/v1/streams", timeout=30).json()["total"] == 0
        assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split() == \
            queued_before
    finally:
        stop_service(service, url)


def test_a_request_for_slurm_while_slurm_does_not_answer_is_503(tmp_path):
    service, url = run_service(tmp_path, env={"PATH": "/nonexistent"}, **ON_SLURM)  # no sbatch
    try:
        refused = httpx.post(f"{url}/v1/streams", json={"spec": {"source": {"type": "simulated"}}}, timeout=30)
        assert refused.status_code == 503, refused.text
        assert refused.json()["detail"].startswith("resources: Slurm does not answer (sbatch --test-only: ")
        assert httpx.get(f"{url}/v1/streams", timeout=30).json()["total"] == 0
    finally:
        stop_service(service, url)


def test_slurm_options_slurm_refuses_are_refused_in_its_words_and_the_others_need_allowing(tmp_path):
    service, url = run_service(tmp_path, **ON_SLURM, slurm_extra_allowed='["constraint"]')
    spec = {"source": {"type": "simulated", "n_events": 10}}

    def refusal(slurm: dict) -> str:
        refused = httpx.post(f"{url}/v1/streams", json={"spec": spec, "resources": {"slurm": slurm}}, timeout=30)
        assert refused.status_code == 422, refused.text
        return str(refused.json()["detail"])

    try:
        assert "invalid partition specified: nope" in refusal({"partition": "nope"})
        assert "Requested reservation is invalid" in refusal({"reservation": "nope"})
        assert "Invalid generic resource (gres) specification" in refusal({"gpus_per_task": 1})
        assert "Invalid feature specification" in refusal({"extra": {"constraint": "nope"}})
        assert refusal({"extra": {"mem": "1G"}}).endswith(
            "resources.slurm.extra: mem not allowed here; this service allows constraint (its setting "
            "slurm_extra_allowed)")
        assert "cannot be set there" in refusal({"extra": {"partition": "debug"}})
        assert "should match pattern" in refusal({"account": 'x" --wrap="rm -rf /'})
        assert httpx.get(f"{url}/v1/streams", timeout=30).json()["total"] == 0
    finally:
        stop_service(service, url)


def test_a_streams_jobs_have_its_requests_slurm_options_over_the_services_defaults(tmp_path):
    """The account comes from the service's default for the experiment, the rest from the request; Slurm's own
    view of the jobs (scontrol) shows them, and so does the stream's. Only the producers' nodes are exclusive."""
    service, url = run_service(tmp_path, **ON_SLURM, slurm_defaults='{"account": "lcls:{experiment}", "qos": "low"}')
    try:
        spec = {"source": {"type": "simulated", "n_events": 20, "detectors": [{"kind": "waveform", "samples": 64}]}}
        stream = httpx.post(f"{url}/v1/streams", json={
            "spec": spec, "experiment": "xpptut15",
            "resources": {"slurm": {"qos": "normal", "exclusive": True, "partition": "debug"}}}, timeout=30).json()
        assert stream["resources"]["slurm"] == {"account": "lcls:xpptut15", "partition": "debug", "reservation": None,
                                                "qos": "normal", "gpus_per_task": None, "exclusive": True,
                                                "extra": {}}, stream
        store = JobStore.open(f"sqlite:///{tmp_path / 'service.db'}")
        poll(lambda: "producers" in store.jobs(stream["id"]), 60, "the producers job to be submitted")
        jobs = {role: job.native_id for role, job in store.jobs(stream["id"]).items()}
        store.close()
        for role, native_id in jobs.items():
            seen = subprocess.run(["scontrol", "show", "job", native_id], capture_output=True, text=True).stdout
            assert "Account=lcls:xpptut15" in seen and "Partition=debug" in seen, seen
            assert ("OverSubscribe=NO" in seen) == (role == "producers"), seen  # --exclusive: the producers' nodes
        scripts = [path.read_text() for path in (tmp_path / "state").rglob("*.job")]
        assert len(scripts) == 2 and all('#SBATCH --qos="normal"' in script for script in scripts), scripts
        # (this cluster keeps no accounting, so Slurm takes a QOS without showing it)
        cancelled = httpx.delete(f"{url}/v1/streams/{stream['id']}", timeout=30)  # its one node is the buffer's:
        assert cancelled.json()["state"] == "cancelled", cancelled.text  # exclusive producers wait for it forever
        poll(lambda: not subprocess.run(["squeue", "-h", "-j", ",".join(jobs.values())], capture_output=True,
                                        text=True).stdout.strip(), 60, "Slurm to list none of the stream's jobs")
    finally:
        stop_service(service, url)
