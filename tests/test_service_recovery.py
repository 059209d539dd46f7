"""The request service's robustness: killed mid-stream and restarted, its streams still complete; a producer that
dies fails its stream with the reason (how the producers job ended) and the missing ranges."""

from __future__ import annotations

import json
import re
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psutil

from beamstream.accounting import format_ranges
from beamstream.buffer.status import fetch_status
from beamstream.client import Client
from beamstream.errors import StreamIncomplete
from beamstream.service.callbacks import VERDICT_FILE, call_back, write_callback_file
from conftest import wait_until
from servicekit import end_jobs_under, run_service, shown, start_service, stop_service

EVENTS = 300
# 300 waveforms at 50 Hz (over both workers): about 6 s, time to act while events flow
SLOW_SPEC = {"source": {"type": "simulated", "n_events": EVENTS, "events_per_read": 5, "rate_hz": 50,
                        "detectors": [{"kind": "waveform", "samples": 64}]}}


class Reader:
    """A consumer group member reading the stream on a thread: the seqs seen so far, and how the stream ended."""

    def __init__(self, endpoint: str, group: str, key: str) -> None:
        self.seqs: list[int] = []
        self.incomplete: StreamIncomplete | None = None
        self.thread = threading.Thread(target=self._read, args=(endpoint, group, key))
        self.thread.start()

    def _read(self, endpoint: str, group: str, key: str) -> None:
        with Client(endpoint, group=group, timeout=60, key=key) as client:
            try:
                for event in client.events():
                    self.seqs.append(event.seq)
            except StreamIncomplete as exc:
                self.incomplete = exc
            self.report = client.report

    def join(self) -> None:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the reader did not finish"


def start_slow_stream(url: str) -> tuple[str, str]:
    """Request SLOW_SPEC with 2 workers; its id and key, once it runs."""
    stream = httpx.post(f"{url}/v1/streams", json={"spec": SLOW_SPEC, "resources": {"workers": 2}}, timeout=30)
    stream_id = stream.json()["id"]
    wait_until(lambda: shown(url, stream_id)["state"] == "running", "the stream to run", timeout=60)
    return stream_id, stream.json()["credentials"]["key"]


def test_a_callback_being_retried_follows_its_file_to_a_restarted_service(tmp_path):
    received: list[bytes] = []

    class Service(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    gone = ThreadingHTTPServer(("127.0.0.1", 0), Service)
    dead_url = f"http://127.0.0.1:{gone.server_address[1]}/v1/streams/s/callback"
    gone.server_close()  # nothing listens there any more: the service that wrote the file was killed
    path = tmp_path / "callback.json"
    write_callback_file(path, dead_url, "0" * 64)
    failures: list[int] = []
    outcome: dict = {}

    def count_and_go_on() -> bool:  # asked after each failed attempt
        failures.append(1)
        return False

    caller = threading.Thread(target=lambda: outcome.setdefault("taken", call_back(
        path, {"event": "ended"}, retry_for_s=60, give_up=count_and_go_on)))
    caller.start()
    with ThreadingHTTPServer(("127.0.0.1", 0), Service) as restarted:
        threading.Thread(target=restarted.serve_forever, daemon=True).start()
        try:
            wait_until(lambda: failures, "a first attempt to fail")
            write_callback_file(path, f"http://127.0.0.1:{restarted.server_address[1]}/v1/streams/s/callback",
                                "0" * 64)
            caller.join(timeout=30)
        finally:
            restarted.shutdown()
    assert outcome == {"taken": True} and [json.loads(body) for body in received] == [{"event": "ended"}]


def test_the_service_killed_mid_stream_and_restarted_completes_the_stream(tmp_path):
    service, url = run_service(tmp_path, drain_grace_s="30")
    try:
        stream_id, key = start_slow_stream(url)
        reader = Reader(shown(url, stream_id)["endpoints"]["consumers"], "g", key)
        wait_until(lambda: len(reader.seqs) >= 20, "events to flow", timeout=60)
        assert shown(url, stream_id)["state"] == "running" and len(reader.seqs) < EVENTS, "killed mid-stream"
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=30)
        callback = tmp_path / "state" / "streams" / stream_id / "callback.json"
        assert json.loads(callback.read_text())["url"].startswith(f"{url}/")
        service, url = run_service(tmp_path, drain_grace_s="30")
        assert json.loads(callback.read_text())["url"] == f"{url}/v1/streams/{stream_id}/callback"
        wait_until(lambda: shown(url, stream_id)["state"] in ("completed", "failed"), "the stream to end", timeout=120)
        reader.join()
        final = shown(url, stream_id)
        assert final["state"] == "completed", final["history"]
        assert final["verdict"]["complete"] and final["verdict"]["missing"] == []
        assert [change["state"] for change in final["history"]] == ["queued", "starting", "running", "completed"]
        assert reader.incomplete is None and sorted(reader.seqs) == list(range(EVENTS)) and reader.report.complete
    finally:
        stop_service(service, url)
        end_jobs_under(tmp_path)


def producer_workers(tmp_path, stream_id: str) -> list[psutil.Process]:
    """The worker processes of the stream's local producers job: children of the ``beamstream produce`` process
    under the job's jobrun, which names the stream's folder."""
    folder = str(tmp_path / "state" / "streams" / stream_id)
    jobs = [process for process in psutil.process_iter(["cmdline"])
            if any(part == f"{folder}/producers.exit" for part in process.info["cmdline"] or [])]
    produce = [child for job in jobs for child in job.children() if "produce" in child.cmdline()]
    return [worker for process in produce for worker in process.children()
            if any("spawn_main" in part for part in worker.cmdline())]


def test_a_producer_worker_killed_fails_the_stream_with_the_jobs_end_and_the_missing_ranges(tmp_path):
    """No consumer reads it: the buffer is stopped ``drain_grace_s`` after the producers job ended."""
    service, url = run_service(tmp_path, drain_grace_s="2")
    try:
        stream_id, _ = start_slow_stream(url)
        metrics = shown(url, stream_id)["endpoints"]["metrics"]
        wait_until(lambda: fetch_status(metrics).totals["messages_in_total"] >= 20, "events to flow", timeout=60)
        workers = producer_workers(tmp_path, stream_id)
        assert len(workers) == 2, workers
        workers[0].send_signal(signal.SIGKILL)
        wait_until(lambda: shown(url, stream_id)["state"] in ("completed", "failed"), "the stream to end", timeout=120)
        final = shown(url, stream_id)
        assert final["state"] == "failed", final["history"]
        verdict = final["verdict"]
        missing = [tuple(pair) for pair in verdict["missing"]]
        assert not verdict["complete"] and missing, verdict
        arrived = int(re.search(r": INCOMPLETE: (\d+) events", verdict["summary"]).group(1))
        assert arrived + sum(last - first + 1 for first, last in missing) == EVENTS, verdict
        reason = final["history"][-1]["reason"]
        assert reason.startswith(f"stream {stream_id}: INCOMPLETE: {arrived} events "), reason
        assert f"; missing sequence ranges: {format_ranges(missing)}; " in reason, reason
        assert "; the producers job failed (exit code 1); its log ends: " in reason, reason
        assert "failed: worker killed by SIGKILL" in reason, reason
    finally:
        stop_service(service, url)
        end_jobs_under(tmp_path)


def test_the_public_url_is_where_jobs_call_back(tmp_path):
    """A service reached through another address (a proxy, a node name) has its jobs call that address."""
    service, url = start_service(f"sqlite:///{tmp_path / 'service.db'}", tmp_path / "state",
                                 public_url="http://beamstream.example.org:8443/")
    try:
        stream = httpx.post(f"{url}/v1/streams", json={"spec": SLOW_SPEC}, timeout=30).json()
        callback = tmp_path / "state" / "streams" / stream["id"] / "callback.json"
        wait_until(callback.exists, "the stream's callback file", timeout=60)
        assert json.loads(callback.read_text())["url"] == (
            f"http://beamstream.example.org:8443/v1/streams/{stream['id']}/callback")
    finally:
        stop_service(service, url)
        end_jobs_under(tmp_path)


def test_a_buffer_whose_service_never_comes_back_ends_by_itself_leaving_its_verdict(tmp_path):
    """The service killed while its stream runs, for good: once its producers have ended, nobody reads and the
    service does not answer for orphan_after_s (here 3 s), the buffer job ends, its verdict in the stream's folder."""
    service, url = run_service(tmp_path, drain_grace_s="30")
    stream = httpx.post(f"{url}/v1/streams", timeout=30, json={
        "spec": {"source": {**SLOW_SPEC["source"], "n_events": 100}},
        "resources": {"workers": 2, "buffer": {"orphan_after_s": 3}}}).json()
    wait_until(lambda: shown(url, stream["id"])["state"] == "running", "the stream to run", timeout=60)
    folder = tmp_path / "state" / "streams" / stream["id"]
    wait_until((folder / "producers.log").exists, "the producers job", timeout=60)
    service.send_signal(signal.SIGKILL)
    service.wait(timeout=30)
    buffers = [process for process in psutil.process_iter(["cmdline"])
               if any(part == str(folder / "callback.json") for part in process.info["cmdline"] or [])]
    assert buffers, "the buffer job runs"
    try:
        _, alive = psutil.wait_procs(buffers, timeout=60)  # the producers take about 2 s, then 3 s of nothing
        assert not alive, "the orphaned buffer ended by itself"
        verdict = json.loads((folder / VERDICT_FILE).read_text())
        assert verdict["complete"] and "complete: 100 events" in verdict["summary"], verdict
        assert "nobody used this buffer and its service did not answer" in (folder / "buffer.log").read_text()
    finally:
        end_jobs_under(tmp_path)


def test_a_buffer_that_cannot_call_its_service_back_ends_and_the_stream_fails_saying_why(tmp_path):
    """A public_url the jobs cannot reach: the buffer tries for callback_retry_s (here 2 s), then ends at once, and
    the stream fails naming public_url, instead of staying 'starting' until the buffer ends as orphaned (600 s)."""
    service, url = run_service(tmp_path, public_url="http://127.0.0.1:9/")  # the discard port: nothing listens
    try:
        stream = httpx.post(f"{url}/v1/streams", timeout=30, json={
            "spec": SLOW_SPEC, "resources": {"buffer": {"callback_retry_s": 2}}}).json()
        wait_until(lambda: shown(url, stream["id"])["state"] == "failed", "the stream to fail", timeout=60)
        reason = shown(url, stream["id"])["history"][-1]["reason"]
        assert reason.startswith("the buffer job ended before it listened (exit code 1)"), reason
        assert "could not call the service back (http://127.0.0.1:9/v1/streams/" in reason, reason
        assert "public_url setting must be its URL" in reason, reason
        assert ("the request service never took this buffer's call-back saying where it listens (tried for 2 s"
                in reason), reason
    finally:
        stop_service(service, url)
        end_jobs_under(tmp_path)
