"""The client side of the request service: beamstream.ServiceClient, `beamstream request`, `beamstream streams`,
`beamstream demo --service`, against a real service process (and the SSE reader against a mock one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import httpx
import psutil
import pytest

from beamstream import ServiceClient
from beamstream.errors import ServiceError, SpecError, StreamEnded, StreamIncomplete, StreamTimeout
from beamstream.protocol.models import Resources, StreamView
from beamstream.protocol.states import State
from beamstream.service.store import JobStore
from beamstream.service_client import AmbiguousStreamId, Change, Stream
from conftest import BEAMSTREAM, run_cli, start_cli, wait_until
from servicekit import end_jobs_under, run_service, shown, stop_service

WAVEFORMS = {"source": {"type": "simulated", "n_events": 60, "events_per_read": 5,
                        "detectors": [{"kind": "waveform", "samples": 1024}]}}
ENDLESS = {"source": {"type": "simulated", "n_events": 100000, "events_per_read": 1, "rate_hz": 20,
                      "detectors": [{"kind": "waveform", "samples": 64}]}}


@pytest.fixture(scope="module")
def service_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="module")
def service_url(service_folder):
    """One service for the module (local jobs; a drained buffer is stopped at once, an undrained one after 5 s)."""
    process, url = run_service(service_folder, drain_grace_s="5")
    yield url
    stop_service(process, url)
    end_jobs_under(service_folder)


@pytest.fixture(scope="module")
def store(service_url, service_folder):
    """The module's service's job store, read directly (to find its jobs' processes)."""
    store = JobStore.open(f"sqlite:///{service_folder / 'service.db'}")
    yield store
    store.close()


@pytest.fixture
def service(service_url):
    with ServiceClient(service_url) as service:
        yield service


def test_a_requested_stream_iterates_to_every_event_and_a_complete_report(service):
    stream = service.request(WAVEFORMS, resources={"workers": 2}, name="sixty")
    assert stream.state is State.QUEUED and stream.view["name"] == "sixty" and stream.report is None
    assert sorted(event.seq for event in stream) == list(range(60))
    assert stream.report.complete and stream.report.events == 60
    *_, final = stream.changes()
    assert final.state is State.COMPLETED and stream.state is State.COMPLETED
    assert stream.view["verdict"]["complete"] and f"stream {stream.id}: complete: 60 events" in final.reason
    assert service.stream(stream.id).view["history"] == stream.view["history"]


def test_changes_come_as_they_happen_in_order_with_their_reasons(service, write_spec):
    stream = service.request(write_spec({"name": "from-a-file", **WAVEFORMS}), experiment="xpp1", run=7)
    seen = []
    for change in stream.changes():
        seen.append((change.index, change.state, change.reason))
        assert stream.view == change.view  # the stream as the service showed it with the change (maybe later)
        if change.state is State.RUNNING:
            with stream.client(group="g") as client:
                assert sorted(event.seq for event in client.events()) == list(range(60))
    assert [state for _, state, _ in seen] == [State.QUEUED, State.STARTING, State.RUNNING, State.COMPLETED]
    assert [index for index, _, _ in seen] == [0, 1, 2, 3]
    assert seen[0][2] == "requested" and seen[1][2].startswith("buffer job submitted (local ")
    assert seen[2][2] == "the buffer is listening" and "complete: 60 events" in seen[3][2]
    assert [change.state for change in stream.changes(after=1)] == [State.RUNNING, State.COMPLETED]
    assert (stream.view["name"], stream.view["experiment"], stream.view["run"]) == ("from-a-file", "xpp1", 7)
    assert stream.wait_until_running(timeout=5) is stream, "a stream that ran, then ended, has run"


def test_each_change_carries_the_stream_as_it_was_then(service):
    """Followed after the stream ended, each change still carries the stream in that change's state, with its history
    up to that change; its endpoints only once it ran, its verdict only with its end."""
    stream = service.request(WAVEFORMS)
    assert sorted(event.seq for event in stream) == list(range(60))
    changes = list(stream.changes())
    states = [change.state for change in changes]
    assert states == [State.QUEUED, State.STARTING, State.RUNNING, State.COMPLETED]
    for change in changes:
        view = change.view
        assert view["state"] is change.state and view["updated"] == change.at
        assert [past["state"] for past in view["history"]] == states[:change.index + 1]
        assert view["history"][-1]["reason"] == change.reason
        assert (view["endpoints"] is None) == (change.state in (State.QUEUED, State.STARTING))
        assert (view["verdict"] is None) == (change.state is not State.COMPLETED)
    assert stream.view == changes[-1].view and stream.view["state"] is stream.state is State.COMPLETED


def test_a_stream_interrupted_inside_with_is_cancelled_unless_kept(service):
    with pytest.raises(KeyboardInterrupt), service.request(ENDLESS) as stream:
        for _ in stream:
            raise KeyboardInterrupt  # Ctrl-C while the loop's body handles an event
    assert service.stream(stream.id).state is State.CANCELLED
    assert stream.state is State.CANCELLED and stream.view["history"][-1]["reason"] == "cancelled by local"
    failing = service.request(ENDLESS)
    with pytest.raises(ValueError, match="in the block"), failing:
        raise ValueError("an error in the block")
    assert service.stream(failing.id).state is State.CANCELLED
    kept, also_kept = service.request(ENDLESS, keep=True), service.request(ENDLESS).keep()
    left = service.request(ENDLESS)
    with pytest.raises(KeyboardInterrupt), kept, also_kept:
        raise KeyboardInterrupt
    with left:
        pass  # a block left without an exception leaves the stream as it is
    assert not any(service.stream(one.id).state.final for one in (kept, also_kept, left))
    for one in (kept, also_kept, left):
        one.cancel()


def test_ctrl_c_while_iterating_a_stream_outside_with_cancels_it(service_url, tmp_path):
    script = tmp_path / "iterate.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        from beamstream import ServiceClient

        stream = ServiceClient(sys.argv[1]).request(json.loads(sys.argv[2]))
        print(stream.id, flush=True)
        for event in stream:
            pass
    """))
    process = subprocess.Popen(  # SIGINT as a terminal sends it, whatever this test's own disposition of it
        [sys.executable, str(script), service_url, json.dumps(ENDLESS)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stream_id = process.stdout.readline().strip()
    assert stream_id, process.communicate(timeout=60)[1]
    wait_until(lambda: ((shown(service_url, stream_id)["figures"] or {}).get("groups", {}).get("default", {})
                        .get("members")), "the script to read the stream", timeout=60, every=0.1)
    process.send_signal(signal.SIGINT)  # the script is iterating: waiting for the next event, or in the empty body
    _, said = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGINT and "KeyboardInterrupt" in said, said
    final = shown(service_url, stream_id)
    assert final["state"] == "cancelled" and final["history"][-1]["reason"] == "cancelled by local", said


def test_a_stream_is_found_by_the_start_of_its_id_unless_several_start_so():
    views = [{"id": stream_id, "state": "running", "name": name, "history": []}
             for stream_id, name in (("abc1234500", "one"), ("abc1299900", "two"), ("ffff000000", None))]

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/streams":
            return httpx.Response(200, json={"items": views, "total": len(views)})
        asked = request.url.path.removeprefix("/v1/streams/")
        found = [view for view in views if view["id"] == asked]
        if not found:
            return httpx.Response(404, json={"detail": f"no stream {asked!r}"})
        return httpx.Response(200, json=found[0])

    with ServiceClient("http://service.test", transport=httpx.MockTransport(answer)) as service:
        assert service.find("ffff").id == "ffff000000" and service.find("abc12345").id == "abc1234500"
        assert service.find("abc1299900").id == "abc1299900"
        with pytest.raises(AmbiguousStreamId) as several:
            service.find("abc12")
        assert [stream.id for stream in several.value.candidates] == ["abc1234500", "abc1299900"]
        assert str(several.value) == ("'abc12' is the start of the ids of 2 of your streams; give more of the id:\n"
                                      "  abc1234500  running    one\n  abc1299900  running    two")
        with pytest.raises(ServiceError, match="no stream 'zz', nor any whose id starts with 'zz' among yours") as none:
            service.find("zz")
        assert none.value.status == 404


def test_a_reader_of_a_cancelled_stream_hears_its_end_from_the_buffer(service, store):
    """The buffer outlives the cancelled stream's producers long enough to pass on their aborted ends: its
    reader ends with the stream's account at once, not after its 60 s of silence."""
    stream = service.request(ENDLESS).wait_until_running(timeout=60)
    wait_until(lambda: "producers" in store.jobs(stream.id), "the producers to start", timeout=60)
    outcome: dict = {}

    def read() -> None:
        with stream.client(group="g", timeout=60) as client:
            try:
                for event in client.events():
                    outcome["first"] = event.seq
            except StreamIncomplete as exc:
                outcome["incomplete"] = exc

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: "first" in outcome, "the first event", timeout=60)
    stream.cancel()
    reader.join(timeout=40)
    assert not reader.is_alive(), "the reader still waits for a stream that was cancelled"
    assert "ended with status aborted" in str(outcome["incomplete"]), outcome


def test_a_stream_is_read_through_the_services_relay(service):
    stream = service.request(WAVEFORMS).wait_until_running(timeout=60)
    with stream.client(group="far", relay=True) as client:
        assert client.endpoints == [f"{service.url}/v1/streams/{stream.id}"]
        assert sorted(event.seq for event in client.events()) == list(range(60))
    assert client.report.complete


def test_cancelling_a_running_stream_stops_every_job(service, store):
    stream = service.request(ENDLESS).wait_until_running(timeout=60)
    wait_until(lambda: "producers" in store.jobs(stream.id), "the producers to start", timeout=60)
    processes = [psutil.Process(int(job.native_id.split(":")[0])) for job in store.jobs(stream.id).values()]
    processes += [child for process in processes for child in process.children(recursive=True)]
    assert stream.cancel() is stream and stream.state is State.CANCELLED
    assert stream.view["history"][-1]["reason"] == "cancelled by local"
    _, alive = psutil.wait_procs(processes, timeout=60)  # the buffer outlives its producers a few s
    assert not alive, f"still running: {alive}"
    assert [change.state for change in stream.changes()][-1] is State.CANCELLED


def test_a_stream_cancelled_before_it_ran_says_so_when_waited_for(service):
    stream = service.request(ENDLESS)
    stream.cancel()
    with pytest.raises(StreamEnded, match=f"stream {stream.id} cancelled before it ran: cancelled by local"):
        stream.wait_until_running(timeout=30)


def test_refusals_become_errors_in_the_services_words(service, tmp_path):
    with pytest.raises(ServiceError) as bad_spec:
        service.request({"source": {"type": "simulated", "n_events": 0}, "sinks": [{"type": "files"}]})
    assert bad_spec.value.status == 422
    assert bad_spec.value.detail.splitlines()[1:] == ["source.n_events: Input should be greater than or equal to 1",
                                                      "sinks[0].dir: required, not given"]
    assert str(bad_spec.value).startswith("the service refused POST /v1/streams (422 Unprocessable Entity):\n")
    with pytest.raises(ServiceError, match=r"\(422 Unprocessable Entity\):\nresources.workers: Input should be "
                                           r"greater than or equal to 1\nresources.gpus: Extra inputs"):
        service.request(WAVEFORMS, resources={"workers": 0, "gpus": 1})
    with pytest.raises(ServiceError, match=r"GET /v1/streams/nope \(404 Not Found\): no stream 'nope'") as missing:
        service.stream("nope")
    assert missing.value.status == 404 and missing.value.detail == "no stream 'nope'"
    ended = service.request(WAVEFORMS).cancel()
    with pytest.raises(ServiceError, match="has already ended \\(cancelled\\)") as again:
        ended.cancel()
    assert again.value.status == 409
    with pytest.raises(SpecError, match="no such spec file"):
        service.request(tmp_path / "absent.yaml")
    assert service.streams(state=State.QUEUED, experiment="never-requested") == []
    with ServiceClient("http://127.0.0.1:1", timeout=2) as nowhere, pytest.raises(ServiceError) as unreachable:
        nowhere.streams()
    assert unreachable.value.status is None and "no answer from the service at http://127.0.0.1:1" in str(
        unreachable.value)


SSE = {"content-type": "text/event-stream; charset=utf-8"}


def sse(*events: tuple[int, str], comment: bool = False) -> bytes:
    """SSE text of ``(index, state)`` changes, each carrying a stream view in that state."""
    text = ": keep-alive\n\n" if comment else ""
    for index, state in events:
        data = {"state": state, "reason": f"because {index}", "at": 1.0 + index, "stream": {"id": "s", "state": state}}
        text += f"id: {index}\nevent: change\ndata: {json.dumps(data)}\n\n"
    return text.encode()


def test_changes_go_on_after_a_dropped_connection_from_the_last_one_seen():
    """The first connection ends after two changes; the reader reconnects with Last-Event-ID: 1 and goes on."""
    asked = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/streams/s":
            return httpx.Response(200, json={"id": "s", "state": "queued", "history": []})
        asked.append(request.headers.get("Last-Event-ID"))
        if len(asked) == 1:
            return httpx.Response(200, headers=SSE, content=sse((0, "queued"), (1, "starting"), comment=True))
        return httpx.Response(200, headers=SSE, content=sse((2, "running"), (3, "failed")))

    with ServiceClient("http://service.test", transport=httpx.MockTransport(answer)) as service:
        stream = service.stream("s")
        changes = [(change.index, change.state.value, change.reason) for change in stream.changes()]
    assert changes == [(0, "queued", "because 0"), (1, "starting", "because 1"), (2, "running", "because 2"),
                       (3, "failed", "because 3")]
    assert asked == [None, "1"] and stream.state is State.FAILED


def test_waiting_for_a_stream_that_does_not_run_times_out():
    """Each connection ends with the stream still queued; the reader reconnects (after change 0) until the timeout."""
    asked = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("Last-Event-ID"))
        return httpx.Response(200, headers=SSE, content=sse((0, "queued")) if len(asked) == 1 else b": keep-alive\n\n")

    with ServiceClient("http://service.test", transport=httpx.MockTransport(answer)) as service:
        stream = Stream(service, {"id": "s", "state": "queued"})
        with pytest.raises(StreamTimeout, match="stream s is still queued: it did not run within the timeout"):
            stream.wait_until_running(timeout=0.5)
    assert asked[:2] == [None, "0"] and set(asked[1:]) == {"0"}


def test_a_refused_connection_is_tried_again_until_the_service_has_been_silent_too_long():
    tries = []

    def answer(request: httpx.Request) -> httpx.Response:
        tries.append(request.headers.get("Last-Event-ID"))
        if len(tries) <= 2:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, headers=SSE, content=sse((0, "queued"), (1, "completed")))

    with ServiceClient("http://service.test", transport=httpx.MockTransport(answer)) as service:
        stream = Stream(service, {"id": "s", "state": "queued"})
        assert [change.state for change in stream.changes()] == [State.QUEUED, State.COMPLETED]
    assert tries == [None, None, None]

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with ServiceClient("http://service.test", timeout=0.5, transport=httpx.MockTransport(refused)) as service, \
            pytest.raises(ServiceError, match="no answer from the service at http://service.test: refused"):
        list(Stream(service, {"id": "s", "state": "queued"}).changes())


def test_changes_are_read_as_the_sse_format_says():
    """Comments, an event of another type, a change's data over several lines, a retry field, CRLF line endings:
    only the change comes out, whole; an answer that is no event stream is refused in words."""
    text = (": keep-alive\r\n\r\n"
            "data: plain\n\n"
            "id: 4\nevent: change\n"
            'data: {"state": "completed", "reason": "done",\n'  # joined with a newline: still JSON
            'data:"at": 2.0, "stream": {"id": "s", "state": "completed"}}\r\n'
            "retry: 10\n\n")

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, content=text.encode())

    with ServiceClient("http://service.test", transport=httpx.MockTransport(answer)) as service:
        stream = Stream(service, {"id": "s", "state": "queued"})
        changes = list(stream.changes())
    assert changes == [Change(4, State.COMPLETED, "done", 2.0, {"id": "s", "state": State.COMPLETED})]

    def html(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>a login page</html>")

    with ServiceClient("http://service.test", transport=httpx.MockTransport(html)) as service, \
            pytest.raises(ServiceError, match="with text/html, not text/event-stream"):
        list(Stream(service, {"id": "s", "state": "queued"}).changes())


def test_a_stream_is_typed_and_its_view_kept_as_a_dict():
    view = {"id": "s", "owner": "alice", "name": None, "experiment": None, "run": None, "state": "running",
            "created": 1.0, "updated": 2.0, "endpoints": {"consumers": "tcp://127.0.0.1:1"}, "verdict": None,
            "history": [{"state": "queued", "reason": "requested", "at": 1.0}, {"state": "running", "reason": "go",
                                                                                  "at": 2.0}],
            "resources": {"workers": 2, "nodes": 1, "time_limit_s": None, "executor": None, "buffer": None}}
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(201, json={**view, "credentials": None})

    with ServiceClient("http://service.test", transport=httpx.MockTransport(answer)) as service:
        stream = service.request({"source": {"type": "simulated"}}, resources=Resources(workers=2))
    assert sent[0]["resources"] == {"workers": 2}  # what was set, no more
    assert isinstance(stream.info, StreamView) and stream.info.state is State.RUNNING
    assert [(change.state, change.reason) for change in stream.info.history] == [(State.QUEUED, "requested"),
                                                                                  (State.RUNNING, "go")]
    assert stream.resources == Resources(workers=2) and stream.info.endpoints == {"consumers": "tcp://127.0.0.1:1"}
    assert stream.view["history"][1]["state"] is State.RUNNING and stream.view["owner"] == "alice"  # the dict, kept


def test_the_former_names_still_work():
    """``beamstream.Service`` is ServiceClient, silently; ``beamstream.remote`` is importable, and says where it
    went."""
    code = textwrap.dedent("""
        import warnings
        warnings.simplefilter("error")
        import beamstream
        assert beamstream.Service is beamstream.ServiceClient
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import beamstream.remote
        assert beamstream.remote.Service is beamstream.ServiceClient
        print([str(warning.message) for warning in caught if warning.category is DeprecationWarning])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "beamstream.remote is now beamstream.service_client" in result.stdout


def test_beamstream_request_shows_the_states_then_reads_the_stream(service_url, write_spec):
    result = run_cli("request", str(write_spec(WAVEFORMS)), "--service", service_url, "--workers", "2",
                     "--group", "cli", timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    stream_id = lines[0].split()[1]
    assert lines[0] == f"stream {stream_id} requested from {service_url}"
    states = [line.split()[2] for line in lines if line[:4].isdigit()]
    assert states == ["queued", "starting", "running", "completed"], result.stderr
    assert "queued    requested" in result.stderr and "running   the buffer is listening" in result.stderr
    assert f"stream {stream_id}: complete: 60 events" in result.stderr
    assert "this consumer: 60 events in 60 messages" in result.stderr
    assert shown(service_url, stream_id)["resources"]["workers"] == 2


def test_beamstream_request_refuses_a_request_without_a_spec_or_a_run():
    result = run_cli("request", "--experiment", "xpp1")
    assert result.returncode == 2 and "give a SPEC, or --experiment E --run R (or both)" in result.stderr


def test_ctrl_c_on_beamstream_request_cancels_the_stream(service_url, write_spec):
    process = subprocess.Popen(  # SIGINT as a terminal sends it, whatever this test's own disposition of it
        [*BEAMSTREAM, "request", str(write_spec(ENDLESS)), "--service", service_url], stderr=subprocess.PIPE,
        text=True, env={**os.environ, "COLUMNS": "200", "PYTHONFAULTHANDLER": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    said = [process.stderr.readline()]
    stream_id = said[0].split()[1]
    while " running " not in said[-1]:
        said.append(process.stderr.readline())
        assert said[-1], f"the request ended before the stream ran: {''.join(said)}"
    process.send_signal(signal.SIGINT)
    try:
        _, rest = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # the fault handler prints every thread's stack
        raise AssertionError("no exit within 60 s of Ctrl-C:\n" + "".join(said) + process.communicate()[1]) from None
    assert process.returncode == 130, "".join(said) + rest
    assert f"interrupted: stream {stream_id} cancelled" in rest
    final = shown(service_url, stream_id)
    assert final["state"] == "cancelled" and final["history"][-1]["reason"] == "cancelled by local"


def test_ctrl_c_ends_beamstream_request_even_when_its_reader_does_not_stop(tmp_path):
    script = tmp_path / "stuck.py"  # a reader that never ends, inside a live display that keeps refreshing
    script.write_text(textwrap.dedent("""
        import os, signal, threading, time
        from types import SimpleNamespace
        import beamstream.remote_cli as remote_cli

        remote_cli.CANCEL_GRACE_S = 0.5
        stream = SimpleNamespace(id="s1", cancel=lambda: None)

        def stuck():
            with remote_cli.console.status("reading…", refresh_per_second=50) as status:
                while True:
                    status.update(f"reading… {time.time()}")

        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        remote_cli.run_cancellable(stream, stuck)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    assert result.returncode == 130, result.stderr
    assert "interrupted: stream s1 cancelled" in result.stderr


def test_beamstream_streams_lists_shows_cancels_and_reads_logs(service, write_spec):
    name = "endless [bold]"  # shown as it is: never read as markup
    stream = service.request(ENDLESS, experiment="xlist1", run=3, name=name).wait_until_running(timeout=60)
    url = service.url
    listed = run_cli("streams", "list", "--service", url, "--experiment", "xlist1")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].strip() == f"streams of local at {url}"
    row = next(line for line in listed.stdout.splitlines() if line.startswith(stream.id[:8]))
    assert all(word in row for word in (name, "xlist1/3", "running", "the buffer is listening"))
    as_json = json.loads(run_cli("streams", "list", "--service", url, "--state", "running", "--json").stdout)
    assert stream.id in [view["id"] for view in as_json] and {view["state"] for view in as_json} == {"running"}
    shown_text = run_cli("streams", "show", stream.id, "--service", url).stdout
    assert f"stream {stream.id} ({name}) of local, experiment xlist1 run 3: running" in shown_text
    assert "requested" in shown_text and "the buffer is listening" in shown_text and "consumers: tcp://" in shown_text
    assert json.loads(run_cli("streams", "show", stream.id, "--service", url, "--json").stdout)["id"] == stream.id
    logs = start_cli("streams", "logs", stream.id, env_extra={"BEAMSTREAM_SERVICE": url})
    out, err = logs.communicate(timeout=60)
    assert logs.returncode == 0, err
    assert "==> buffer (buffer.log) <==" in out and "buffer: producers → ipc://" in out
    cancelled = run_cli("streams", "cancel", stream.id, "--service", url)
    assert cancelled.returncode == 0 and f"stream {stream.id} cancelled: cancelled by local" in cancelled.stderr
    again = run_cli("streams", "cancel", stream.id, "--service", url)
    assert again.returncode == 1 and "(409 Conflict): stream" in again.stderr and "has already ended" in again.stderr
    unknown = run_cli("streams", "show", "nope", "--service", url)
    assert unknown.returncode == 1 and "(404 Not Found): no stream 'nope'" in unknown.stderr


def test_streams_list_fits_80_columns_with_short_ids_that_every_command_takes(service):
    name = "a stream whose name is longer than any column of a table eighty characters wide leaves room for"
    streams = [service.request(ENDLESS, experiment="xnarrow1", run=12, name=name) for _ in range(2)]
    streams.append(service.request(ENDLESS))
    listing = start_cli("streams", "list", "--service", service.url, env_extra={"COLUMNS": "80"})
    out, err = listing.communicate(timeout=60)
    assert listing.returncode == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80, out
    title, header, *rows = out.rstrip("\n").splitlines()
    assert title.strip() == f"streams of local at {service.url}"
    assert header.split() == ["id", "name", "run", "state", "since", "reason"]
    ids = [view["id"] for view in json.loads(run_cli("streams", "list", "--service", service.url, "--json").stdout)]
    assert len(rows) == len(ids), f"not one line for each of {len(ids)} streams:\n{out}"
    rows_by_id = {whole: [row for row in rows if whole.startswith(row.split()[0])] for whole in ids}
    assert all(len(found) == 1 for found in rows_by_id.values()), f"an id is not shown, or shared:\n{out}"
    for stream in streams:
        row = rows_by_id[stream.id][0]
        prefix = row.split()[0]
        assert len(prefix) >= 8 and {state.value for state in State} & set(row.split()), row
        assert ("a stream whose" in row and "xnarrow1/12" in row) == (stream.view["experiment"] is not None), row
        shown_text = run_cli("streams", "show", prefix, "--service", service.url)
        assert shown_text.returncode == 0 and f"stream {stream.id} (" in shown_text.stdout, shown_text.stderr
        credentials = run_cli("streams", "credentials", prefix, "--json", "--service", service.url).stdout
        assert json.loads(credentials) == stream.credentials().model_dump()
        cancelled = run_cli("streams", "cancel", prefix, "--service", service.url)
        assert cancelled.returncode == 0 and f"stream {stream.id} cancelled: cancelled by local" in cancelled.stderr
    unknown = run_cli("streams", "logs", "zz", "--service", service.url)
    assert unknown.returncode == 1
    assert "no stream 'zz', nor any whose id starts with 'zz' among yours" in unknown.stderr, unknown.stderr


def test_beamstream_demo_with_a_service_without_tls_completes():
    result = run_cli("demo", "--service", "--no-tls", timeout=240)
    assert result.returncode == 0, result.stderr
    assert "complete: 300 events" in result.stderr and "300 events of 64×64 uint16" in result.stderr
    assert "request service at http://127.0.0.1:" in result.stderr and "completed, verdict complete" in result.stderr
    assert "ran without TLS (plain HTTP)" in result.stderr  # with TLS (the default): tests/test_profile.py
