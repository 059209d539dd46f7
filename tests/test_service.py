"""The request service's job store and REST API, on SQLite and on the real PostgreSQL server of this machine."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


import h5py
import httpx
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient

from beamstream.service.app import MAX_BODY_BYTES, create_app
from beamstream.service.settings import ServiceSettings
from beamstream.protocol.states import State, TransitionError
from beamstream.service.store import JobStore, StreamNotFound
from beamstream.client import Client
from beamstream.service.callbacks import SIGNATURE, TIMESTAMP, VERDICT_FILE, signature
from beamstream.service.dispatcher import Dispatcher
from beamstream.service.unrecorded_jobs import end_unrecorded
from beamstream.service.at_rest import ServiceKey
from beamstream.service.executors import JobRequest, JobState, JobStatus, LocalExecutor
from conftest import wait_until
from servicekit import end_jobs_under, run_service, shown, slurm_answers, start_service, stop_service

SPEC = {"source": {"type": "simulated", "n_events": 10}, "sinks": [{"type": "files", "dir": "out"}]}


@pytest.fixture
def store(database_url):
    store = JobStore.open(database_url)
    yield store
    store.close()


@pytest.fixture
def api(database_url):
    app = create_app(ServiceSettings(database_url=database_url, default_owner="alice"))
    with TestClient(app) as client:
        yield client
    app.state.context.store.close()


def test_a_stream_goes_through_its_lifecycle_with_every_change_kept(store):
    record = store.create(owner="alice", spec=SPEC, resources={"workers": 2}, experiment="xpptut15", run=7)
    assert record.state is State.QUEUED and [change.state for change in record.history] == [State.QUEUED]
    store.change_state(record.id, State.STARTING, "jobs submitted")
    store.change_state(record.id, State.RUNNING, "buffer listening", endpoints={"consumers": "tcp://node1:5556"})
    done = store.change_state(record.id, State.COMPLETED, "every group drained", verdict={"complete": True})
    assert [(change.state, change.reason) for change in done.history] == [
        (State.QUEUED, "requested"), (State.STARTING, "jobs submitted"), (State.RUNNING, "buffer listening"),
        (State.COMPLETED, "every group drained")]
    assert done.endpoints == {"consumers": "tcp://node1:5556"} and done.verdict == {"complete": True}
    assert [change.at for change in done.history] == sorted(change.at for change in done.history)
    with pytest.raises(TransitionError, match="a completed stream cannot become running; from completed: nothing"):
        store.change_state(record.id, State.RUNNING, "again")
    with pytest.raises(StreamNotFound):
        store.get("nope")


def test_streams_survive_a_restart_of_the_store(database_url):
    service_key = ServiceKey.generate()
    first = JobStore.open(database_url, service_key)
    record = first.create(owner="alice", spec=SPEC, resources={})
    first.change_state(record.id, State.STARTING, "jobs submitted")
    first.close()
    again = JobStore.open(database_url, service_key)  # the migrations find the schema current and change nothing
    try:
        kept = again.get(record.id)
        assert kept.state is State.STARTING and kept.spec == SPEC and kept.secret == record.secret
        assert [change.reason for change in kept.history] == ["requested", "jobs submitted"]
    finally:
        again.close()


def test_listing_filters_and_pages_newest_first(store):
    ids = [store.create(owner=owner, spec=SPEC, resources={}, experiment=experiment).id
           for owner, experiment in [("alice", "a1"), ("bob", "a1"), ("alice", "b2"), ("alice", "a1")]]
    store.change_state(ids[0], State.CANCELLED, "no longer needed")
    records, total = store.list(owner="alice", limit=2)
    assert total == 3 and [record.id for record in records] == [ids[3], ids[2]]
    assert [record.id for record in store.list(owner="alice", limit=2, offset=2)[0]] == [ids[0]]
    assert [record.id for record in store.list(experiment="a1", state=State.QUEUED)[0]] == [ids[3], ids[1]]
    assert store.count_active() == 0


def test_the_api_takes_a_request_and_shows_it(api):
    response = api.post("/v1/streams", json={"spec": SPEC, "experiment": "xpptut15", "run": 7,
                                             "resources": {"workers": 2}})
    assert response.status_code == 201, response.text
    stream = response.json()
    assert (stream["state"], stream["owner"], stream["experiment"], stream["run"]) == ("queued", "alice", "xpptut15", 7)
    assert stream["resources"]["workers"] == 2 and "secret" not in stream
    shown = api.get(f"/v1/streams/{stream['id']}").json()
    assert shown["history"] == stream["history"] and shown["history"][0]["reason"] == "requested"
    page = api.get("/v1/streams", params={"state": "queued", "experiment": "xpptut15"}).json()
    assert page["total"] == 1 and page["items"][0]["id"] == stream["id"]
    cancelled = api.delete(f"/v1/streams/{stream['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["history"][-1]["reason"] == "cancelled by alice"
    again = api.delete(f"/v1/streams/{stream['id']}")
    assert again.status_code == 409 and "has already ended (cancelled)" in again.json()["detail"]
    metrics = api.get("/metrics/").text
    assert 'beamstream_service_streams{state="cancelled"} 1.0' in metrics
    assert api.get("/healthz").json() == {"status": "ok"}
    assert "/v1/streams" in api.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("sinks", [None, []], ids=["null", "empty"])
def test_a_request_may_leave_its_sinks_to_the_service(api, sinks):
    """The service streams to the stream's buffer whatever the request's sinks: null and [] mean none of its own."""
    response = api.post("/v1/streams", json={"spec": {**SPEC, "sinks": sinks}})
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "queued"


def test_the_api_refuses_bad_requests_clearly(api):
    bad_spec = api.post("/v1/streams", json={"spec": {"source": {"type": "simulated", "n_events": 0},
                                                      "sinks": [{"type": "files"}]}})
    assert bad_spec.status_code == 422
    assert bad_spec.json()["detail"][1:] == ["source.n_events: Input should be greater than or equal to 1",
                                            "sinks[0].dir: required, not given"]
    unknown = api.post("/v1/streams", json={"spec": SPEC, "resources": {"workers": 0, "gpus": 1}})
    assert unknown.status_code == 422 and sorted(unknown.json()["detail"]) == [
        "resources.gpus: Extra inputs are not permitted", "resources.workers: Input should be greater than or equal to 1"]
    plain = api.post("/v1/streams", json={"spec": {**SPEC, "sinks": [{"type": "plain", "endpoint": "tcp://*:4546"}]}})
    assert plain.status_code == 422 and "sinks[0] (plain) cannot carry a sealed stream" in plain.text, plain.text
    keyed = api.post("/v1/streams", json={"spec": SPEC, "resources": {"buffer": {"admission_key_file": "/etc/k"}}})
    assert keyed.status_code == 422 and "admission_key_file is the service's to give" in keyed.text
    missing = api.get("/v1/streams/0123456789abcdef")
    assert missing.status_code == 404 and missing.json()["detail"] == "no stream '0123456789abcdef'"
    assert api.delete("/v1/streams/nope").status_code == 404
    assert api.get("/v1/streams", params={"state": "sleeping"}).status_code == 422
    huge = api.post("/v1/streams", content=b"{" + b" " * MAX_BODY_BYTES + b"}",
                    headers={"content-type": "application/json"})
    assert huge.status_code == 413
    assert api.get("/v1/streams").json()["total"] == 0, "nothing refused was stored"




@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_request_by_experiment_and_run_needs_no_spec(database_url, tmp_path):
    run = tmp_path / "hdf5" / "p002345" / "r0003"
    run.mkdir(parents=True)
    with h5py.File(run / "frames.h5", "w") as h5:
        h5["entry_1/data_1/data"] = np.zeros((4, 2, 2), dtype="<u2")
    settings = ServiceSettings(database_url=database_url, state_dir=tmp_path / "state", default_owner="alice",
                               hdf5_pattern=str(tmp_path / "hdf5" / "{experiment}" / "r{run:04d}" / "*.h5"))
    app = create_app(settings)
    try:
        with TestClient(app) as api:
            created = api.post("/v1/streams", json={"experiment": "p002345", "run": 3})
            assert created.status_code == 201, created.text
            source = app.state.context.store.get(created.json()["id"]).spec["source"]
            assert (source["type"], source["files"]) == ("hdf5", [str(run / "frames.h5")])
            nothing = api.post("/v1/streams", json={"experiment": "p002345"})
            assert nothing.status_code == 422 and "source: required, not given" in nothing.json()["detail"]
    finally:
        app.state.context.store.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_each_event_carries_the_stream_as_it_was_at_its_change(api):
    """Sent after the stream ended, each event still carries the stream in its change's state, with its history up
    to that change; its endpoints once it ran, its verdict only with its end."""
    stream_id = api.post("/v1/streams", json={"spec": SPEC}).json()["id"]
    store = api.app.state.context.store
    store.change_state(stream_id, State.STARTING, "jobs submitted")
    store.change_state(stream_id, State.RUNNING, "buffer listening", endpoints={"consumers": "tcp://node1:5556"})
    store.change_state(stream_id, State.COMPLETED, "every group drained", verdict={"complete": True})
    states = ["queued", "starting", "running", "completed"]
    events = sse_events(api.get(f"/v1/streams/{stream_id}/events"))
    assert [event["data"]["state"] for event in events] == states
    for number, event in enumerate(events):
        stream = event["data"]["stream"]
        assert stream["state"] == states[number] and stream["updated"] == event["data"]["at"]
        assert [change["state"] for change in stream["history"]] == states[:number + 1]
        assert stream["endpoints"] == (None if number < 2 else {"consumers": "tcp://node1:5556"})
        assert stream["verdict"] == (None if number < 3 else {"complete": True})
    again = sse_events(api.get(f"/v1/streams/{stream_id}/events", headers={"Last-Event-ID": "1"}))
    assert [len(event["data"]["stream"]["history"]) for event in again] == [3, 4]


def test_the_service_killed_with_sigkill_and_restarted_keeps_every_stream(database_url, tmp_path):
    """Every stream's history before the kill is still the start of its history after the restart."""
    process, url = start_service(database_url, tmp_path / "state", drain_grace_s="2")
    try:
        ids = [httpx.post(f"{url}/v1/streams", json={"spec": SPEC}, timeout=30).json()["id"] for _ in range(3)]
        httpx.delete(f"{url}/v1/streams/{ids[1]}", timeout=30)
        before = {stream_id: httpx.get(f"{url}/v1/streams/{stream_id}", timeout=30).json() for stream_id in ids}
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    process, url = start_service(database_url, tmp_path / "state", drain_grace_s="2")
    try:
        for stream_id in ids:
            after = httpx.get(f"{url}/v1/streams/{stream_id}", timeout=30).json()
            assert after["history"][:len(before[stream_id]["history"])] == before[stream_id]["history"]
            assert after["created"] == before[stream_id]["created"]
        assert httpx.get(f"{url}/v1/streams/{ids[1]}", timeout=30).json()["state"] == "cancelled"
    finally:
        stop_service(process, url)
        end_jobs_under(tmp_path)  # jobs of the killed service call back to its old port for a minute: not wanted here



def signed(secret: str, event: dict, timestamp: float | None = None) -> tuple[bytes, dict]:
    body = json.dumps(event).encode()
    stamp = f"{time.time() if timestamp is None else timestamp:.3f}"
    return body, {TIMESTAMP: stamp, SIGNATURE: signature(secret, stamp, body), "content-type": "application/json"}


def test_a_buffer_jobs_verdict_is_read_from_its_file_when_its_callback_never_came(tmp_path):
    """The buffer job writes its verdict beside its callback file first: a job that ended without calling back
    (it raced its end, or the service was down for longer than it retried) still ends its stream as it said."""
    store = JobStore.open(f"sqlite:///{tmp_path / 'service.db'}")
    dispatcher = Dispatcher(store, ServiceSettings(state_dir=tmp_path / "state"), "http://127.0.0.1:9")
    record = store.create(owner="alice", spec=SPEC, resources={})
    store.change_state(record.id, State.STARTING, "buffer job submitted")
    store.change_state(record.id, State.RUNNING, "the buffer is listening", endpoints={"producers": "tcp://x:1"})
    verdict = {"complete": False, "summary": f"stream {record.id}: incomplete", "missing": [[5, 9]]}
    write = f"import json, pathlib; pathlib.Path({VERDICT_FILE!r}).write_text(json.dumps({verdict!r}))"
    job = JobRequest("buffer", [sys.executable, "-c", write], dispatcher.folder(record))
    native_id = LocalExecutor().submit(job)
    store.add_job(record.id, "buffer", "local", native_id, str(job.directory))
    wait_until(lambda: LocalExecutor().status(native_id, job).state is not JobState.RUNNING, "the job to end",
               timeout=30)
    dispatcher.tick()
    final = store.get(record.id)
    assert final.state is State.FAILED and final.verdict == verdict
    assert final.history[-1].reason.startswith(f"stream {record.id}: incomplete; missing sequence ranges: 5"), \
        final.history[-1].reason
    assert "producers" not in store.jobs(record.id), "no producers job is started for a stream that ended"
    store.close()


def test_a_job_the_service_died_before_recording_is_stopped_when_a_service_starts_again(tmp_path):
    """A service killed while it submitted a stream's jobs left their markers: the next one stops a job it had not
    recorded, and one it had recorded for a stream that is still queued (both would run again in the same folder),
    but not a recorded job of a stream that went on (the dispatcher's to end)."""
    store = JobStore.open(f"sqlite:///{tmp_path / 'service.db'}")
    dispatcher = Dispatcher(store, ServiceSettings(state_dir=tmp_path / "state"), "http://127.0.0.1:9")
    executor = LocalExecutor()
    started, queued = (store.create(owner="alice", spec=SPEC, resources={}) for _ in range(2))
    jobs = {(stream.id, role): JobRequest(role, ["sleep", "600"], dispatcher.folder(stream))
            for stream in (started, queued) for role in ("buffer", "producers")}
    native = {key: executor.submit(job) for key, job in jobs.items()}
    wait_until(lambda: all(psutil.Process(int(native_id.split(":")[0])).children() for native_id in native.values()),
               "each job's command to start (its jobrun then passes SIGTERM on and records the end)", timeout=30)
    for (stream_id, role), job in jobs.items():
        if (stream_id, role) != (started.id, "buffer"):  # killed before recording that one only
            store.add_job(stream_id, role, "local", native[stream_id, role], str(job.directory))
        (job.directory / f"{role}.submitting").touch()
    store.change_state(started.id, State.STARTING, "buffer job submitted")
    try:
        end_unrecorded(store, tmp_path / "state", dispatcher.executor)
        running = {key for key, job in jobs.items() if executor.status(native[key], job).state is JobState.RUNNING}
        assert running == {(started.id, "producers")}
        assert executor.status(native[started.id, "buffer"], jobs[started.id, "buffer"]) == \
            JobStatus(JobState.FAILED, 128 + signal.SIGTERM)
        assert list((tmp_path / "state").glob("streams/*/*.submitting")) == []
    finally:
        kept = (started.id, "producers")
        executor.cancel(native[kept])
        wait_until(lambda: executor.status(native[kept], jobs[kept]).state is not JobState.RUNNING, "the job to end")
        store.close()


def test_a_local_job_past_its_time_limit_is_stopped_and_its_end_recorded(tmp_path):
    job = JobRequest("sleeper", ["sleep", "600"], tmp_path, time_limit_s=1)
    executor = LocalExecutor()
    native_id = executor.submit(job)
    wait_until(lambda: executor.status(native_id, job).state is not JobState.RUNNING, "the job to be stopped",
               timeout=30)
    assert job.exit_file.exists() and executor.status(native_id, job) == JobStatus(JobState.FAILED, 128 + signal.SIGTERM)


def test_job_callbacks_are_taken_only_signed_fresh_and_once(api):
    store = api.app.state.context.store
    stream = api.post("/v1/streams", json={"spec": SPEC}).json()
    secret = store.get(stream["id"]).secret
    store.change_state(stream["id"], State.STARTING, "jobs submitted")
    url = f"/v1/streams/{stream['id']}/callback"
    listening = {"event": "listening", "producers": "tcp://node1:5555", "consumers": "tcp://node1:5556"}
    body, headers = signed(secret, listening)
    refusals = {
        "unsigned": api.post(url, content=body, headers={"content-type": "application/json"}),
        "another secret": api.post(url, content=body, headers=signed("0" * 64, listening)[1]),
        "altered": api.post(url, content=body.replace(b"node1", b"evil1"), headers=headers),
        "stale": api.post(url, content=signed(secret, listening, time.time() - 3600)[0],
                          headers=signed(secret, listening, time.time() - 3600)[1]),
    }
    assert {name: response.status_code for name, response in refusals.items()} == dict.fromkeys(refusals, 403)
    assert api.get(f"/v1/streams/{stream['id']}").json()["state"] == "starting", "nothing refused changed it"
    assert api.post(url, content=body, headers=headers).status_code == 204
    replay = api.post(url, content=body, headers=headers)
    assert replay.status_code == 403 and "replayed" in replay.json()["detail"]
    shown = api.get(f"/v1/streams/{stream['id']}").json()
    assert shown["state"] == "running" and shown["endpoints"]["consumers"] == "tcp://node1:5556"
    ended = {"event": "ended", "verdict": {"complete": True, "summary": "stream x: complete: 60 events", "missing": []}}
    assert api.post(url, content=signed(secret, ended)[0], headers=signed(secret, ended)[1]).status_code in (204,)
    shown = api.get(f"/v1/streams/{stream['id']}").json()
    assert shown["state"] == "completed" and shown["verdict"]["complete"] is True
    assert shown["history"][-1]["reason"] == "stream x: complete: 60 events"





@pytest.mark.parametrize("executor", ["local", pytest.param("slurm", marks=pytest.mark.skipif(
    not slurm_answers(), reason="no Slurm answers here (bash scripts/slurm.sh up, as root)"))])
def test_a_requested_stream_runs_on_jobs_and_completes_with_its_verdict(tmp_path, executor):
    service, url = run_service(tmp_path, drain_grace_s="30", executors='["local", "slurm"]' if executor == "slurm"
                               else '["local"]')
    try:
        spec = {"source": {"type": "simulated", "n_events": 60, "events_per_read": 5,
                           "detectors": [{"kind": "waveform", "samples": 1024}]}}
        stream = httpx.post(f"{url}/v1/streams", json={"spec": spec, "resources": {"workers": 2, "executor": executor}},
                            timeout=30).json()
        wait_until(lambda: shown(url, stream["id"])["state"] == "running", "the stream to run", timeout=60)
        with Client(shown(url, stream["id"])["endpoints"]["consumers"], group="g", timeout=60,
                    key=stream["credentials"]["key"]) as client:
            seqs = sorted(event.seq for event in client.events())
        assert seqs == list(range(60)) and client.report.complete
        wait_until(lambda: shown(url, stream["id"])["state"] in ("completed", "failed"), "the stream to end",
                   timeout=60)
        final = shown(url, stream["id"])
        assert final["state"] == "completed", final["history"]
        assert final["verdict"]["complete"] and f"stream {stream['id']}: complete: 60 events" in final["verdict"]["summary"]
        assert [change["state"] for change in final["history"]] == ["queued", "starting", "running", "completed"]
        assert f"buffer job submitted ({executor} " in final["history"][1]["reason"]
        logs = httpx.get(f"{url}/v1/streams/{stream['id']}/logs", timeout=30).text
        assert "==> buffer (buffer." in logs and "buffer: producers → tcp://127.0.0.1:" in logs
        assert "==> producers (producers." in logs and "60 events" in logs
        if executor == "slurm":  # the producers are 2 srun ranks of one job; the buffer is a job of one task
            assert "from 2/2 producers" in final["verdict"]["summary"]
            assert f"stream {stream['id']}, rank 0 of 2" in logs and f"stream {stream['id']}, rank 1 of 2" in logs
            submitted = (tmp_path / "state" / "slurm" / "slurm").glob("*.job")
            assert {path.read_text().count("#SBATCH --ntasks=2") for path in submitted} == {0, 1}
            store = JobStore.open(f"sqlite:///{tmp_path / 'service.db'}")  # the producers job went in with the
            jobs = store.jobs(stream["id"])  # buffer's, and was told where it listens once it had called back
            store.close()
            assert jobs["producers"].submitted < final["history"][2]["at"], (jobs, final["history"])
            folder = tmp_path / "state" / "streams" / stream["id"]
            assert (folder / "buffer.endpoint").read_text() == f"{shown(url, stream['id'])['endpoints']['producers']}\n"
            assert json.loads((folder / "producers-spec.json").read_text())["sinks"] == [
                {"type": "stream", "endpoint": "tcp://buffer:1"}]
    finally:
        stop_service(service, url)


def slurm_processes(stream_id: str) -> list[psutil.Process]:
    """The processes whose command line names the stream (its buffer job's and its producer ranks')."""
    return [process for process in psutil.process_iter(["cmdline"])
            if any(stream_id in part for part in process.info["cmdline"] or [])]


def sse_events(response: httpx.Response) -> list[dict]:
    """The events of a text/event-stream answer, read to its end: each as {"id", "event", "data"}."""
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            current[field] = json.loads(value) if field == "data" else value
    return events


def test_a_running_stream_shows_live_figures_and_pushes_each_change_as_an_event(tmp_path):
    service, url = run_service(tmp_path, drain_grace_s="30")
    try:
        spec = {"source": {"type": "simulated", "n_events": 200, "events_per_read": 1, "rate_hz": 100,
                           "detectors": [{"kind": "waveform", "samples": 256}]}}
        created = httpx.post(f"{url}/v1/streams", json={"spec": spec}, timeout=30).json()
        stream_id = created["id"]
        changes: list[dict] = []
        with httpx.stream("GET", f"{url}/v1/streams/{stream_id}/events", timeout=60) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            listener = threading.Thread(target=lambda: changes.extend(sse_events(response)))
            listener.start()
            wait_until(lambda: shown(url, stream_id)["state"] == "running", "the stream to run", timeout=60)
            with Client(shown(url, stream_id)["endpoints"]["consumers"], group="viewers", timeout=60,
                        key=created["credentials"]["key"]) as client:
                events = client.events()
                next(events)
                wait_until(lambda: (shown(url, stream_id)["figures"] or {}).get("events", 0) > 0,
                           "the buffer's figures to count events", timeout=30)
                figures = shown(url, stream_id)["figures"]
                assert figures["groups"]["viewers"]["members"] == 1 and figures["bytes"] > 0
                assert figures["rate_bytes_per_s"] > 0 and figures["producers_connected"] == 1
                rest = sum(1 for _ in events)
            assert rest == 199 and client.report.complete
            listener.join(timeout=90)
        assert not listener.is_alive(), "the event stream did not end with the stream"
        assert [change["event"] for change in changes] == ["change"] * 4
        assert [(change["id"], change["data"]["state"]) for change in changes] == [
            ("0", "queued"), ("1", "starting"), ("2", "running"), ("3", "completed")]
        assert changes[-1]["data"]["stream"]["verdict"]["complete"] is True
        assert shown(url, stream_id)["figures"] is None, "figures are shown only while the stream runs"
        again = httpx.get(f"{url}/v1/streams/{stream_id}/events", headers={"Last-Event-ID": "1"}, timeout=30)
        assert [event["id"] for event in sse_events(again)] == ["2", "3"]
        assert httpx.get(f"{url}/v1/streams/nope/events", timeout=30).status_code == 404
    finally:
        stop_service(service, url)


@pytest.mark.parametrize("executor", ["local", pytest.param("slurm", marks=pytest.mark.skipif(
    not slurm_answers(), reason="no Slurm answers here (bash scripts/slurm.sh up, as root)"))])
def test_cancelling_a_running_stream_stops_every_job(tmp_path, executor):
    service, url = run_service(tmp_path, executors=f'["{executor}"]', executor=executor)
    try:
        spec = {"source": {"type": "simulated", "n_events": 100000, "events_per_read": 1, "rate_hz": 20,
                           "detectors": [{"kind": "waveform", "samples": 64}]}}
        stream = httpx.post(f"{url}/v1/streams", json={"spec": spec, "resources": {"workers": 2}}, timeout=30).json()
        store = JobStore.open(f"sqlite:///{tmp_path / 'service.db'}")
        wait_until(lambda: "producers" in store.jobs(stream["id"]), "the producers to start", timeout=60)
        jobs = store.jobs(stream["id"]).values()
        store.close()
        if executor == "local":
            processes = [psutil.Process(int(job.native_id.split(":")[0])) for job in jobs]
            processes += [child for process in processes for child in process.children(recursive=True)]
        else:  # the jobs' processes, once Slurm has started both (the producers job is submitted with the buffer's)
            wait_until(lambda: len(slurm_processes(stream["id"])) >= 3, "the buffer and two producer ranks to run",
                       timeout=60)
            processes = slurm_processes(stream["id"])
        assert len(processes) >= 3, "the buffer and two producers run"
        if executor == "slurm":  # named after their stream, limited to the service's default time limit (1 day)
            listed = subprocess.run(["squeue", "-h", "-j", ",".join(job.native_id for job in jobs), "-o", "%j %l"],
                                    capture_output=True, text=True, check=True).stdout.split("\n")
            assert sorted(line for line in listed if line) == [f"beamstream-{stream['id'][:12]}-{role} 1-00:00:00"
                                                              for role in ("buffer", "producers")], listed
        cancelled = httpx.delete(f"{url}/v1/streams/{stream['id']}", timeout=30).json()
        assert cancelled["state"] == "cancelled"
        gone, alive = psutil.wait_procs(processes, timeout=30)
        assert not alive, f"still running: {alive}"
        if executor == "slurm":
            ids = ",".join(job.native_id for job in jobs)
            wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", ids], capture_output=True, text=True)
                       .stdout.strip(), "Slurm to list none of the stream's jobs", timeout=60)
    finally:
        stop_service(service, url)


def test_a_buffer_job_that_dies_fails_the_stream_and_stops_its_producers(tmp_path):
    service, url = run_service(tmp_path)
    try:
        spec = {"source": {"type": "simulated", "n_events": 100000, "events_per_read": 1, "rate_hz": 20,
                           "detectors": [{"kind": "waveform", "samples": 64}]}}
        stream_id = httpx.post(f"{url}/v1/streams", json={"spec": spec}, timeout=30).json()["id"]
        store = JobStore.open(f"sqlite:///{tmp_path / 'service.db'}")
        wait_until(lambda: "producers" in store.jobs(stream_id), "the producers to start", timeout=60)
        jobs = store.jobs(stream_id)
        store.close()
        producers = psutil.Process(int(jobs["producers"].native_id.split(":")[0]))
        producers = [producers, *producers.children(recursive=True)]
        buffer = psutil.Process(int(jobs["buffer"].native_id.split(":")[0])).children(recursive=True)
        [process.kill() for process in buffer if "buffer" in process.cmdline()]
        wait_until(lambda: shown(url, stream_id)["state"] == "failed", "the stream to fail", timeout=60)
        reason = shown(url, stream_id)["history"][-1]["reason"]
        assert reason.startswith("the buffer job ended without a verdict (") and "SIGKILL" in reason, reason
        wait_until(lambda: all(not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
                               for process in producers), "the producers to stop", timeout=60)
    finally:
        stop_service(service, url)


def test_a_request_for_more_local_workers_than_the_service_runs_is_refused_before_anything_is_made(tmp_path):
    service, url = run_service(tmp_path, max_local_workers="2")
    try:
        refused = httpx.post(f"{url}/v1/streams", json={"spec": SPEC, "resources": {"workers": 3}}, timeout=30)
        assert refused.status_code == 422
        assert refused.json()["detail"] == ("resources: workers: 3 is more than this service runs as local processes "
                                            "for one stream (2); ask for fewer")
        assert httpx.get(f"{url}/v1/streams", timeout=30).json()["total"] == 0
    finally:
        stop_service(service, url)


def test_eight_requests_at_once_all_complete_within_the_limits(tmp_path):
    """Eight streams requested together by one user, at most three at a time: the rest wait queued, all complete."""
    service, url = run_service(tmp_path, max_streams_per_user="3", drain_grace_s="1")
    try:
        spec = {"source": {"type": "simulated", "n_events": 20, "events_per_read": 5,
                           "detectors": [{"kind": "waveform", "samples": 256}]}}
        ids = [httpx.post(f"{url}/v1/streams", json={"spec": spec}, timeout=30).json()["id"] for _ in range(8)]
        wait_until(lambda: all(shown(url, stream_id)["state"] in ("completed", "failed", "cancelled") for stream_id in ids),
                   "every stream to end", timeout=240)
        finals = [shown(url, stream_id) for stream_id in ids]
        assert [final["state"] for final in finals] == ["completed"] * 8, [final["history"] for final in finals]
        # from the histories: at the start of each stream, how many others had started and not yet ended
        spans = [({c["state"]: c["at"] for c in final["history"]}["starting"], final["history"][-1]["at"])
                 for final in finals]
        assert max(sum(start <= begun < end for start, end in spans) for begun, _ in spans) <= 3
        assert max(sum(start <= begun < end for start, end in spans) for begun, _ in spans) >= 2, "ran side by side"
        assert all(final["verdict"]["complete"] for final in finals)
    finally:
        stop_service(service, url)


@pytest.mark.psana
@pytest.mark.parametrize("executor", ["local", pytest.param("slurm", marks=pytest.mark.skipif(
    not slurm_answers(), reason="no Slurm answers here (bash scripts/slurm.sh up, as root)"))])
def test_a_stream_asked_for_by_experiment_and_run_reads_the_catalogues_files(tmp_path, xtc, executor):
    root = tmp_path / "lcls"
    folder = root / "xpp" / "xpptut15" / "xtc"
    folder.mkdir(parents=True)
    shutil.copy(xtc, folder / "xpptut15-r0014-s000-c000.xtc2")
    hdf5 = tmp_path / "hdf5" / "p002345" / "r0003"
    hdf5.mkdir(parents=True)
    with h5py.File(hdf5 / "frames.h5", "w") as h5:
        h5["entry_1/data_1/data"] = np.zeros((4, 2, 2), dtype="<u2")
    pattern = str(tmp_path / "hdf5" / "{experiment}" / "r{run:04d}" / "*.h5")
    service, url = run_service(tmp_path, xtc_root=str(root), hdf5_pattern=pattern, drain_grace_s="1",
                               executor=executor, executors=f'["{executor}"]')
    try:
        runs = httpx.get(f"{url}/v1/experiments/xpptut15/runs", timeout=30).json()
        assert runs["runs"] == [{"run": 14, "source": "psana2", "files": [str(folder / "xpptut15-r0014-s000-c000.xtc2")]}]
        assert httpx.get(f"{url}/v1/experiments/p002345/runs", timeout=30).json()["runs"][0]["run"] == 3
        missing = httpx.post(f"{url}/v1/streams", json={"spec": {"source": {"fields": {"image": "xppcspad.raw.raw"}}},
                                                        "experiment": "xpptut15", "run": 15}, timeout=30)
        assert missing.status_code == 404
        assert f"no run 15 of experiment 'xpptut15': looked for {folder}/xpptut15-r0015-s*-c*.xtc2" in missing.json()["detail"]
        assert httpx.get(f"{url}/v1/experiments/..%2Fetc/runs", timeout=30).status_code == 404
        stream = httpx.post(f"{url}/v1/streams", json={"spec": {"source": {"fields": {"image": "xppcspad.raw.raw"}}},
                                                       "experiment": "xpptut15", "run": 14}, timeout=30).json()
        wait_until(lambda: shown(url, stream["id"])["state"] == "running", "the stream to run", timeout=60)
        with Client(shown(url, stream["id"])["endpoints"]["consumers"], group="g", timeout=60,
                    key=stream["credentials"]["key"]) as client:
            assert sorted(event.seq for event in client.events()) == list(range(10))
        assert client.metadata.experiment == "xpptut15" and client.metadata.run == 14
        wait_until(lambda: shown(url, stream["id"])["state"] == "completed", "the stream to complete", timeout=60)
    finally:
        stop_service(service, url)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_service_never_shows_its_database_password(database_url, tmp_path):
    service, url = start_service(database_url.replace("postgres@", "postgres:s3cret-pw@", 1), tmp_path / "state")
    try:
        assert httpx.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    finally:
        stop_service(service, url)
    said = "".join(service.log)
    assert "postgres:***@127.0.0.1" in said and "s3cret-pw" not in said


def test_an_hdf5_catalogue_runs_stream_says_which_experiment_and_run_it_is(tmp_path):
    """Asked for by experiment and run alone, an HDF5 run streams its CXI detector data as ``image`` and describes
    itself with its experiment and run."""
    hdf5 = tmp_path / "hdf5" / "p002345" / "r0003"
    hdf5.mkdir(parents=True)
    with h5py.File(hdf5 / "frames.h5", "w") as h5:
        h5["entry_1/data_1/data"] = np.arange(4 * 2 * 2, dtype="<u2").reshape(4, 2, 2)
    service, url = run_service(tmp_path, hdf5_pattern=str(tmp_path / "hdf5" / "{experiment}" / "r{run:04d}" / "*.h5"),
                               drain_grace_s="1")
    try:
        stream = httpx.post(f"{url}/v1/streams", json={"spec": {}, "experiment": "p002345", "run": 3}, timeout=30).json()
        wait_until(lambda: shown(url, stream["id"])["state"] == "running", "the stream to run", timeout=60)
        with Client(shown(url, stream["id"])["endpoints"]["consumers"], group="g", timeout=60,
                    key=stream["credentials"]["key"]) as client:
            images = {event.seq: event.data["image"].tolist() for event in client.events()}
        assert images == {seq: [[4 * seq, 4 * seq + 1], [4 * seq + 2, 4 * seq + 3]] for seq in range(4)}
        assert (client.metadata.experiment, client.metadata.run) == ("p002345", 3)
    finally:
        stop_service(service, url)


def test_every_setting_is_in_the_generated_reference_and_the_example_configuration_loads():
    from beamstream.service.settings import ServiceSettings, reference

    root = Path(__file__).parent.parent
    committed = (root / "docs" / "service-settings.md").read_text()
    assert committed == reference(), ("docs/service-settings.md is stale: run "
                                      "`python -m beamstream.service.settings > docs/service-settings.md`")
    assert all(f"| `{name}` |" in committed for name in ServiceSettings.model_fields)
    example = ServiceSettings.load(root / "examples" / "service" / "settings.yaml")
    assert example.tls and example.executor == "slurm" and example.calib_pattern == "/data/{experiment}/calib"
