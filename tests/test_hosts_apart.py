"""Hosts apart, on one machine (tests/hosts.py): the service and its job store on host svc, the buffer job on buf, the
producer ranks on prod, the consumers on cons, each a network namespace with its own address and name; a requested
stream arrives bit-exact, read directly from the buffer and through the service's relay, over mutual TLS whose
certificate names the service's host. Beside it, without namespaces: the settings, endpoints and certificate
names that would keep hosts from reaching each other are refused, each naming what to set.

Run as a script on host cons (``python tests/test_hosts_apart.py consume ...``), this file is the consumer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from beamstream.service.callbacks import advertised
from conftest import digest, wait_for_line
from hosts import hosts_apart_fixture

PORT = 8443
EVENTS = 60
SPEC = {"source": {"type": "simulated", "n_events": EVENTS, "events_per_read": 1, "rate_hz": 30.0, "seed": 7,
                   "detectors": [{"kind": "waveform", "samples": 512, "dtype": "int16"},
                                 {"kind": "image", "shape": [16, 24]}]}}
WORKERS = 2

hosts_apart = pytest.fixture(hosts_apart_fixture, scope="module", name="hosts_apart")


def expected_digests() -> dict[int, str]:
    """Each event of SPEC's source as its producers make it, read here from the source itself."""
    from beamstream.sources.simulated import SimulatedSource

    spec = SimulatedSource.model_validate({**SPEC["source"], "rate_hz": None})  # the same events, unpaced
    reader = spec.open()
    found = {}
    for batch in reader.read(reader.partition(0, 1)):
        for index, seq in enumerate(batch.seq):
            found[int(seq)] = digest({name: array[index] for name, array in batch.data.items()})
    return found


@contextmanager
def service_on_svc(hosts, folder: Path, **changed: str) -> Iterator[SimpleNamespace]:
    """``beamstream service`` on host svc with mutual TLS (a CA in ``folder``, the service's certificate naming
    svc.beamstream.test only), its job store a SQLite file, its buffer jobs launched on buf and its producers jobs
    on prod, told apart by name (``changed``: other settings); stopped afterwards. Yields what a consumer needs:
    ``url``, ``ca``, ``alice`` (a user's certificate), ``process``, ``log``."""
    from beamstream.security import ca

    svc, buf, prod = hosts["svc"], hosts["buf"], hosts["prod"]
    ca.init_ca(folder / "ca", name="hosts apart CA")
    served = ca.issue(folder / "ca", service=[svc.fqdn])  # its name only: not its address
    jobs, alice = ca.issue(folder / "ca", user="beamstream-jobs"), ca.issue(folder / "ca", user="alice")
    url = f"https://{svc.fqdn}:{PORT}"
    settings = {"public_url": url, "data_host": "0.0.0.0", "data_advertise": buf.fqdn,
                "buffer_launcher": json.dumps(buf.launcher), "producers_launcher": json.dumps(prod.launcher),
                "tls_cert": str(served.certificate), "tls_key": str(served.key),
                "tls_ca": str(folder / "ca" / "ca.crt"), "tls_crl": str(folder / "ca" / "crl.pem"), "tls_jobs_cert": str(jobs.certificate),
                "tls_jobs_key": str(jobs.key), "drain_grace_s": "20", **changed}
    environment = {f"BEAMSTREAM_SERVICE_{name.upper()}": value for name, value in settings.items()}
    log = folder / "service.log"
    with open(log, "w") as output:
        process = svc.popen([sys.executable, "-m", "beamstream.cli", "service", "--host", svc.address, "--port",
                             str(PORT), "--database-url", f"sqlite:///{folder / 'service.db'}", "--state-dir",
                             str(folder / "state")], stdout=output, stderr=subprocess.STDOUT,
                            env={**os.environ, **environment, "COLUMNS": "200"})
    try:
        started = wait_for_line(log, "service: https://", process, timeout=30)
        assert f"service: https://{svc.address}:{PORT}" in started and f"jobs call back to {url}" in started
        assert any(" service --host " in command for command in svc.commands())
        yield SimpleNamespace(url=url, ca=folder / "ca" / "ca.crt", alice=alice, process=process, log=log)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def on_cons(hosts, service: SimpleNamespace, mode: str, folder: Path) -> tuple[dict, dict[str, set[str]]]:
    """Run this file as a script on host cons (:func:`consume`, ``mode``) against ``service``: what it wrote, and
    the command lines seen on each host while it ran."""
    out = folder / f"{mode}.json"
    with open(folder / f"{mode}.log", "w") as output:
        consumer = hosts["cons"].popen(
            [sys.executable, __file__, mode, service.url, f"https://{hosts['svc'].address}:{PORT}", str(service.ca),
             str(service.alice.certificate), str(service.alice.key), str(out)], stdout=output, stderr=subprocess.STDOUT)
    seen: dict[str, set[str]] = {host.name: set() for host in hosts}
    deadline = time.monotonic() + 90
    while consumer.poll() is None:
        if time.monotonic() > deadline:
            consumer.kill()
        for host in hosts:
            seen[host.name].update(host.commands())
        time.sleep(0.1)
    assert consumer.returncode == 0, (folder / f"{mode}.log").read_text()
    return json.loads(out.read_text()), seen


def test_a_stream_with_every_part_on_its_own_host_arrives_bit_exact(hosts_apart, tmp_path):
    svc, buf = hosts_apart["svc"], hosts_apart["buf"]
    with service_on_svc(hosts_apart, tmp_path) as service:
        consumed, seen = on_cons(hosts_apart, service, "consume", tmp_path)
    ran = {name: {role for role in ("beamstream.cli buffer", "beamstream.cli produce", "beamstream.cli service")
                  if any(role in command for command in commands)} for name, commands in seen.items()}
    assert ran == {"svc": {"beamstream.cli service"}, "buf": {"beamstream.cli buffer"},
                   "prod": {"beamstream.cli produce"}, "cons": set()}, seen

    assert consumed["final"][0] == "completed", consumed["final"]
    endpoints = consumed["endpoints"]  # as the service showed them to alice on cons: buf's name, not loopback
    assert endpoints["consumers"].startswith(f"tcp://{buf.fqdn}:"), endpoints
    assert endpoints["producers"].startswith(f"tcp://{buf.fqdn}:"), endpoints
    assert endpoints["metrics"].startswith(f"http://{buf.fqdn}:"), endpoints
    callback = json.loads(next((tmp_path / "state").rglob("callback.json")).read_text())
    assert callback["url"].startswith(f"{service.url}/v1/streams/")  # the buffer job called back by svc's name

    expected = expected_digests()
    assert len(expected) == EVENTS
    for reader in ("direct", "relayed"):  # relayed: the service on svc reads buf for a consumer on cons
        assert consumed[reader]["complete"], consumed[reader]
        assert {int(seq): sha for seq, sha in consumed[reader]["events"].items()} == expected, reader
    assert consumed["ranks"] == list(range(WORKERS))

    # the certificate names the service's host, not its address: a client that goes by the address refuses it
    assert f"certificate is not valid for '{svc.address}'" in consumed["by_address"], consumed["by_address"]


def test_a_buffer_advertised_at_a_name_the_service_cannot_reach_fails_the_stream_naming_it(hosts_apart, tmp_path):
    with service_on_svc(hosts_apart, tmp_path, data_advertise="nobuf.beamstream.test") as service:
        outcome, _ = on_cons(hosts_apart, service, "outcome", tmp_path)
    state, reason = outcome["final"]
    assert state == "failed"
    assert reason.startswith("the buffer's producers endpoint tcp://nobuf.beamstream.test:"), reason
    assert ("cannot be reached from the service's host: nobuf.beamstream.test does not resolve here") in reason
    assert reason.endswith("set data_advertise to the name or address of the buffer jobs' host as the service, "
                           "producers and consumers reach it (it is nobuf.beamstream.test)"), reason


def consume(mode: str, url: str, by_address: str, ca: str, cert: str, key: str, out: str) -> None:
    """On host cons: request SPEC from the service at ``url`` as alice and write to ``out`` (JSON) how the stream
    ended (``final``: state, reason). In mode ``consume`` also read it as two groups at once, directly from the
    buffer and through the service's relay (``direct``, ``relayed``: each event's digest, and whether the
    stream was complete; ``ranks``), the endpoints the service showed, and what the service at ``by_address``
    (its address, not its name) answered."""
    from beamstream.errors import ServiceError
    from beamstream.service_client import ServiceClient

    results: dict = {}

    def read(stream, reader: str, relay: bool) -> None:
        with stream.client(group=reader, relay=relay, timeout=60) as client:
            events, ranks = {}, set()
            for event in client.events():
                events[event.seq] = digest(event.data)
                ranks.add(event.rank)
        results[reader] = {"events": events, "complete": client.report.complete}
        results.setdefault("ranks", set()).update(ranks)

    with ServiceClient(url, cert=cert, key=key, ca=ca) as alice:
        stream = alice.request(SPEC, name="hosts-apart", resources={"workers": WORKERS})
        if mode == "consume":
            stream.wait_until_running(timeout=60)
            readers = [threading.Thread(target=read, args=(stream, reader, reader == "relayed"))
                       for reader in ("direct", "relayed")]
            for thread in readers:
                thread.start()
            for thread in readers:
                thread.join()
            results["endpoints"] = stream.view["endpoints"]
        final = list(stream.changes())[-1]
        results["final"] = [final.state.value, final.reason]
    results["ranks"] = sorted(results.get("ranks", ()))
    if mode == "consume":
        with ServiceClient(by_address, cert=cert, key=key, ca=ca) as other:
            try:
                other.streams()
                results["by_address"] = "answered"
            except ServiceError as exc:
                results["by_address"] = str(exc)
    Path(out).write_text(json.dumps(results))


# --- what keeps hosts from reaching each other is refused, naming the setting (no namespaces needed) ------------

def test_jobs_on_other_hosts_need_a_public_url_and_buffer_endpoints_they_reach():
    from pydantic import ValidationError

    from beamstream.service.settings import ServiceSettings

    launcher = ["ssh", "buf7"]
    with pytest.raises(ValidationError, match="buffer_launcher runs buffer jobs on another host, which call the "
                                              "service back at public_url, but public_url is not set"):
        ServiceSettings(buffer_launcher=launcher, data_host="0.0.0.0")
    with pytest.raises(ValidationError, match="public_url http://127.0.0.1:8080 names this host only"):
        ServiceSettings(buffer_launcher=launcher, data_host="0.0.0.0", public_url="http://127.0.0.1:8080")
    with pytest.raises(ValidationError, match="producers_launcher runs jobs on another host, but the buffer's "
                                              "endpoints would be 127.0.0.1, which is this host only: set data_host"):
        ServiceSettings(producers_launcher=launcher)
    with pytest.raises(ValidationError, match="endpoints would be localhost"):
        ServiceSettings(buffer_launcher=launcher, public_url="http://svc7:8080", data_host="0.0.0.0",
                        data_advertise="localhost")
    settings = ServiceSettings(buffer_launcher=launcher, public_url="http://svc7:8080", data_host="0.0.0.0",
                               data_advertise="buf7.example.org")
    assert settings.buffer_launcher == launcher and settings.producers_launcher == []


def test_a_launcher_runs_its_role_s_jobs_and_they_no_longer_share_the_service_s_host(tmp_path):
    from beamstream.service.executors import JobRequest, JobState, JobStatus, LocalExecutor
    from conftest import wait_until

    executor = LocalExecutor({"buffer": ["env", "LAUNCHED_ON=buf7"], "producers": []})
    assert not executor.shares_host and LocalExecutor({"producers": []}).shares_host
    said = "import os, pathlib; pathlib.Path('on').write_text(os.environ.get('LAUNCHED_ON', 'here'))"
    for role, folder in (("buffer", tmp_path / "b"), ("producers", tmp_path / "p")):
        job = JobRequest(role, [sys.executable, "-c", said], folder)
        native_id = executor.submit(job)
        wait_until(lambda: executor.status(native_id, job).state is not JobState.RUNNING, "the job to end",
                   timeout=30)
        assert executor.status(native_id, job) == JobStatus(JobState.SUCCEEDED, 0)
    assert (tmp_path / "b" / "on").read_text() == "buf7" and (tmp_path / "p" / "on").read_text() == "here"


def test_the_buffer_s_endpoints_are_advertised_with_the_host_others_reach():
    reported = {"producers": "tcp://vm:40001", "consumers": "tcp://vm:40002", "metrics": "http://vm:40003"}
    assert advertised(reported, "buf7.example.org") == {
        "producers": "tcp://buf7.example.org:40001", "consumers": "tcp://buf7.example.org:40002",
        "metrics": "http://buf7.example.org:40003"}
    assert advertised(reported, None) == reported
    others = {"producers": "ipc:///state/s/producers.ipc", "consumers": "nats://nats7:4222", "metrics": None}
    assert advertised(others, "buf7") == others
    assert advertised({"consumers": "tcp://vm:40002"}, "fd00::7") == {"consumers": "tcp://[fd00::7]:40002"}


def test_a_buffer_endpoint_the_service_cannot_reach_is_named():
    import socket

    from beamstream.service.dispatcher import unreachable

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]  # bound, not listening: refused
    try:
        assert unreachable({"consumers": f"tcp://127.0.0.1:{port}"}) == (
            f"the buffer's consumers endpoint tcp://127.0.0.1:{port} cannot be reached from the service's host: "
            "Connection refused")
    finally:
        closed.close()
    why = unreachable({"producers": "ipc:///x", "metrics": "http://nowhere.invalid:9100"})
    assert why.startswith("the buffer's metrics endpoint http://nowhere.invalid:9100 cannot be reached from the "
                          "service's host: nowhere.invalid does not resolve here")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert unreachable({"consumers": f"tcp://127.0.0.1:{listening.getsockname()[1]}", "metrics": None}) is None


def test_a_job_that_cannot_call_the_service_back_says_public_url_must_name_it_as_its_host_reaches_it(tmp_path,
                                                                                                      caplog):
    import socket

    from beamstream.service.callbacks import call_back, write_callback_file

    path = tmp_path / "callback.json"
    write_callback_file(path, "http://svc.invalid:8080/v1/streams/s1/callback", "secret")
    with caplog.at_level("WARNING", logger="beamstream.service.callbacks"):
        assert not call_back(path, {"event": "listening"}, retry_for_s=0)
    assert "could not call the service back (http://svc.invalid:8080/v1/streams/s1/callback): " in caplog.text
    assert (f"the service's public_url setting must be its URL as this job's host ({socket.gethostname()}) "
            "reaches it") in caplog.text


def test_a_certificate_names_a_host_as_tls_clients_match_it():
    from beamstream.service.tls import names_host

    names = ["svc7.example.org", "*.nodes.example.org", "10.0.0.7", "fd00::7"]
    for host in ("svc7.example.org", "SVC7.example.org.", "n1.nodes.example.org", "10.0.0.7", "[fd00::7]"):
        assert names_host(names, host), host
    for host in ("example.org", "a.n1.nodes.example.org", "nodes.example.org", "10.0.0.70", "svc7", ""):
        assert not names_host(names, host), host


def test_a_service_certificate_that_does_not_name_public_url_s_host_stops_the_service(tmp_path):
    from conftest import BEAMSTREAM
    from servicekit import make_pki, tls_settings

    pki = make_pki(tmp_path / "pki")  # the service's certificate names localhost and 127.0.0.1
    environment = {f"BEAMSTREAM_SERVICE_{name.upper()}": value for name, value in tls_settings(pki).items()}
    failed = subprocess.run([*BEAMSTREAM, "service", "--port", "0", "--database-url", f"sqlite:///{tmp_path / 'db'}",
                             "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **environment, "COLUMNS": "300",
                                 "BEAMSTREAM_SERVICE_PUBLIC_URL": "https://svc7.example.org:8443"})
    assert failed.returncode == 2, failed.stderr
    assert (f"cannot serve HTTPS: tls_cert {pki.service.certificate} names localhost, 127.0.0.1 (its subject "
            "alternative names), not svc7.example.org, the host jobs and users reach the service at "
            "(https://svc7.example.org:8443, public_url): they would refuse it; issue one that names it "
            "(`beamstream ca issue DIR --service svc7.example.org`)") in " ".join(failed.stderr.split())


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] in ("consume", "outcome"):
        consume(*sys.argv[1:])
    else:
        sys.exit("usage: test_hosts_apart.py consume|outcome URL URL_BY_ADDRESS CA CERT KEY OUT")


def test_a_reader_that_cannot_reach_the_advertised_endpoint_is_told_to_use_the_relay():
    """The endpoint a service hands out may be reachable from its host but not the reader's: the reader gets a
    ServiceError naming the endpoint, why, and the relay URL to read instead, not a timeout."""
    import socket

    from beamstream.errors import ServiceError
    from beamstream.service_client.stream import Stream

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: refused
        service = SimpleNamespace(url="https://svc.beamstream.test:8443", tls=None, token=None)
        stream = Stream(service, {"id": "abc123", "state": "running",
                                  "endpoints": {"consumers": f"tcp://127.0.0.1:{port}"}})
        with pytest.raises(ServiceError) as refused:
            stream.client(key=None)
    message = str(refused.value)
    assert f"tcp://127.0.0.1:{port}" in message and "relay=True" in message
    assert "https://svc.beamstream.test:8443/v1/streams/abc123" in message
