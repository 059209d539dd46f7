"""Mutual TLS in the request service: real TLS 1.3 over real sockets, to a real ``beamstream service`` process,
with certificates made by ``beamstream.security.ca``."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from beamstream.client import Client
from beamstream.errors import OptionError, ServiceError, TransportError
from beamstream.security import ca
from beamstream.security.tls_context import tls_refusal
from beamstream.service.app import create_app
from beamstream.service.settings import ServiceSettings
from beamstream.service.tls_handshake import Refusals
from beamstream.service_client import ServiceClient
from conftest import start_cli, wait_until
from servicekit import end_jobs_under, make_pki, run_service, tls_settings

SPEC = {"source": {"type": "simulated", "n_events": 40, "events_per_read": 5,
                   "detectors": [{"kind": "waveform", "samples": 256}]}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def served(pki, tmp_path_factory):
    """A service with mutual TLS: its process (its log lines in ``log``) and its URL (https://127.0.0.1:PORT);
    stopped and its jobs ended afterwards."""
    folder = tmp_path_factory.mktemp("service")
    process, url = run_service(folder, **tls_settings(pki), drain_grace_s="30")
    try:
        yield process, url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        end_jobs_under(folder)


@pytest.fixture(scope="module")
def service(served):
    return served[1]


def logs(process, text: str) -> None:
    """Wait until the service ``process`` has logged ``text`` (in its log, with its lines joined by spaces)."""
    wait_until(lambda: text in " ".join("".join(process.log).split()), f"the service to log {text!r}", timeout=30)


def as_user(url: str, pki, who) -> ServiceClient:
    return ServiceClient(url, cert=who.certificate, key=who.key, ca=pki.ca)


def refusal(url: str, pki, who=None) -> ServiceError:
    """The ServiceError of listing streams at ``url`` as ``who`` (a Credentials; None: no client certificate)."""
    with (ServiceClient(url, ca=pki.ca) if who is None else as_user(url, pki, who)) as user:
        with pytest.raises(ServiceError) as refused:
            user.streams()
    return refused.value


def test_tls_settings_are_all_or_nothing(tmp_path):
    with pytest.raises(ValidationError, match="TLS is half configured: tls_cert given, tls_key, tls_ca missing"):
        ServiceSettings(tls_cert=tmp_path / "s.crt")
    with pytest.raises(ValidationError, match="tls_crl given, tls_cert, tls_key, tls_ca missing"):
        ServiceSettings(tls_crl=tmp_path / "crl.pem")
    files = {"tls_cert": tmp_path / "s.crt", "tls_key": tmp_path / "s.key", "tls_ca": tmp_path / "ca.crt"}
    with pytest.raises(ValidationError, match="public_url http://node7:8080 is not https://"):
        ServiceSettings(**files, public_url="http://node7:8080")
    with pytest.raises(ValidationError, match="tls_jobs_cert and tls_jobs_key go together"):
        ServiceSettings(**files, tls_jobs_cert=tmp_path / "j.crt")
    settings = ServiceSettings(**files)
    assert settings.tls and settings.jobs_certificate == (tmp_path / "s.crt", tmp_path / "s.key")
    assert not ServiceSettings().tls and ServiceSettings().jobs_certificate is None


def test_with_tls_on_a_request_without_an_identity_is_401_not_the_default_owner(tmp_path):
    settings = ServiceSettings(database_url=f"sqlite:///{tmp_path / 'db'}", tls_cert=tmp_path / "s.crt",
                               tls_key=tmp_path / "s.key", tls_ca=tmp_path / "ca.crt")
    api = TestClient(create_app(settings))
    answer = api.get("/v1/streams")
    assert answer.status_code == 401 and "no identity" in answer.json()["detail"]
    assert api.get("/healthz").status_code == 200
    plain = TestClient(create_app(ServiceSettings(database_url=f"sqlite:///{tmp_path / 'db2'}")))
    assert plain.get("/v1/streams").status_code == 200  # first run: everyone is default_owner


def finished(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=60)
    return process.returncode, err


def test_the_service_refuses_to_start_half_configured_or_with_jobs_that_could_not_call_back(tmp_path, pki):
    half = start_cli("service", "--port", "0", "--state-dir", str(tmp_path / "state"), "--database-url",
                     f"sqlite:///{tmp_path / 'db'}", env_extra={"BEAMSTREAM_SERVICE_TLS_CERT": str(pki.ca)})
    code, err = finished(half)
    assert code == 2 and "TLS is half configured" in err
    assert "Value error" not in err and "error: :" not in err  # a check across settings has no location to show
    settings = {f"BEAMSTREAM_SERVICE_{name.upper()}": value for name, value in tls_settings(pki).items()
                if not name.startswith("tls_jobs")}
    no_jobs_cert = start_cli("service", "--port", "0", "--state-dir", str(tmp_path / "state"), "--database-url",
                             f"sqlite:///{tmp_path / 'db'}", env_extra=settings)
    code, err = finished(no_jobs_cert)
    assert code == 2 and "jobs cannot call it back" in err and "no clientAuth" in " ".join(err.split())


def test_without_tls_a_service_bound_beyond_this_machine_warns_loudly(tmp_path):
    process = start_cli("service", "--host", "0.0.0.0", "--port", "0", "--state-dir", str(tmp_path / "state"),
                        "--database-url", f"sqlite:///{tmp_path / 'db'}")
    lines = []
    try:
        while (line := process.stderr.readline()) and "service: http://" not in line:
            lines.append(line)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert "WITHOUT TLS" in " ".join("".join(lines).split())


def test_refused_without_a_client_certificate_both_sides_say_so(served, pki):
    process, url = served
    refused = refusal(url, pki)
    assert refused.status is None  # the handshake fails: no HTTP answer at all
    assert str(refused) == (f"TLS with the service at {url} failed: the service wants a client certificate and we "
                            "presented none (TLS alert 'certificate required'): give your certificate and key "
                            "(cert= and key=, or cert: and key: in the profile)")
    logs(process, "refused a TLS connection from 127.0.0.1: it presented no client certificate")


def test_refused_with_a_certificate_from_another_ca_both_sides_say_so(served, pki):
    process, url = served
    refused = refusal(url, pki, pki.stranger)
    assert refused.status is None
    assert f"the service refused our certificate {pki.stranger.certificate}: it is not signed by the CA the " \
           "service trusts" in str(refused) and "'unknown ca'" in str(refused)
    logs(process, "refused a TLS connection from 127.0.0.1: its certificate is not signed by the CA in tls_ca")


def test_refused_with_an_expired_certificate_both_sides_say_so(served, pki):
    process, url = served
    refused = refusal(url, pki, pki.expired)
    assert refused.status is None
    assert f"the service refused our certificate {pki.expired.certificate}: it has expired" in str(refused)
    logs(process, "refused a TLS connection from 127.0.0.1: its certificate has expired")


def test_a_service_whose_certificate_is_not_signed_by_our_ca_is_refused_by_us_naming_the_ca_file(served, pki):
    process, url = served
    other_ca = pki.dir.parent / "other" / "ca.crt"
    with ServiceClient(url, cert=pki.alice.certificate, key=pki.alice.key, ca=other_ca) as user:
        with pytest.raises(ServiceError) as refused:
            user.streams()
    assert refused.value.status is None
    assert f"the service's certificate is not signed by the CA in {other_ca}" in str(refused.value)
    logs(process, "refused a TLS connection from 127.0.0.1: it refused the service's certificate or the "
                  "connection: it sent the TLS alert 'unknown ca'")


def test_plain_http_to_the_https_port_is_answered_use_https(served, pki):
    process, url = served
    with ServiceClient(url.replace("https://", "http://")) as user:
        with pytest.raises(ServiceError) as refused:
            user.streams()
    assert refused.value.status == 400
    assert "http:// to an https:// service: use https:// with the same host and port" in str(refused.value)
    logs(process, "refused a TLS connection from 127.0.0.1: it spoke plain HTTP to the HTTPS port")
    with pytest.raises(TransportError, match="answered HTTP 400 instead of a WebSocket: http:// to an https:// "
                                             "service: use https://"):
        Client(f"{url.replace('https://', 'http://')}/v1/streams/0123abcd", group="g")  # the relay


def test_a_client_without_tls_1_3_is_told_by_an_alert(served, pki):
    process, url = served
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pki.alice.certificate, pki.alice.key)
    with pytest.raises(httpx.TransportError) as failed:
        httpx.get(f"{url}/healthz", verify=context, timeout=30)
    assert tls_refusal(failed.value, None) == "the service refused the TLS connection (TLS alert 'protocol version')"
    logs(process, "refused a TLS connection from 127.0.0.1: it does not speak TLS 1.3")


def test_https_to_a_plain_http_service_says_it_does_not_speak_tls(pki):
    with socket.create_server(("127.0.0.1", 0)) as server:
        def answer_in_plain_http() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        answering = threading.Thread(target=answer_in_plain_http)
        answering.start()
        with ServiceClient(f"https://127.0.0.1:{server.getsockname()[1]}", ca=pki.ca) as user:
            with pytest.raises(ServiceError, match="https:// to a service that does not speak TLS"):
                user.streams()
        answering.join(timeout=30)


def test_a_certificate_revoked_while_the_service_runs_is_refused_on_its_next_connection(served, pki):
    process, url = served
    bob = ca.issue(pki.dir, user="bob")
    with as_user(url, pki, bob) as user:
        assert user.streams() == []
    ca.revoke(pki.dir, user="bob")
    refused = refusal(url, pki, bob)
    assert refused.status is None
    assert f"the service refused our certificate {bob.certificate}: it is revoked" in str(refused)
    logs(process, "refused a TLS connection from 127.0.0.1: its certificate is revoked (tls_crl)")
    with pytest.raises(TransportError, match=f"refused our certificate {bob.certificate}: it is revoked"):
        Client(f"{url}/v1/streams/0123abcd", group="g", tls=(bob.certificate, bob.key, pki.ca))  # the relay
    with as_user(url, pki, pki.alice) as user:  # the others are still let in
        user.streams()


def test_a_refused_handshake_is_logged_once_per_reason_and_address_a_minute(caplog):
    now = [0.0]
    refusals = Refusals(every_s=60.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="beamstream.service.tls_handshake"):
        assert refusals.report("10.0.0.7", "its certificate has expired")
        now[0] = 30.0
        assert not refusals.report("10.0.0.7", "its certificate has expired")
        assert not refusals.report("10.0.0.7", "its certificate has expired")
        assert refusals.report("10.0.0.8", "its certificate has expired")  # another address
        assert refusals.report("10.0.0.7", "it presented no client certificate")  # another reason
        now[0] = 60.0
        assert refusals.report("10.0.0.7", "its certificate has expired")
    assert [record.getMessage() for record in caplog.records] == [
        "refused a TLS connection from 10.0.0.7: its certificate has expired",
        "refused a TLS connection from 10.0.0.8: its certificate has expired",
        "refused a TLS connection from 10.0.0.7: it presented no client certificate",
        "refused a TLS connection from 10.0.0.7: its certificate has expired (2 more since, not logged)"]


def test_refusals_remember_a_bounded_number_of_peers():
    now = [0.0]
    refusals = Refusals(clock=lambda: now[0], most=2)
    assert refusals.report("10.0.0.1", "r") and refusals.report("10.0.0.2", "r") and refusals.report("10.0.0.3", "r")
    assert refusals.report("10.0.0.1", "r")  # forgotten, the oldest: logged again within the minute
    assert not refusals.report("10.0.0.3", "r")


def start_failure(tmp_path, pki, **changed: str) -> tuple[int, str]:
    """The exit code and standard error of ``beamstream service`` with ``pki``'s TLS settings, ``changed``."""
    settings = {**tls_settings(pki), **changed}
    process = start_cli("service", "--port", "0", "--state-dir", str(tmp_path / "state"), "--database-url",
                        f"sqlite:///{tmp_path / 'db'}",
                        env_extra={f"BEAMSTREAM_SERVICE_{name.upper()}": value for name, value in settings.items()})
    code, err = finished(process)
    return code, " ".join(err.split())


def test_the_service_refuses_to_start_with_a_key_that_is_not_its_certificates(tmp_path, pki):
    code, err = start_failure(tmp_path, pki, tls_key=str(pki.alice.key))
    assert code == 2 and "Traceback" not in err
    assert f"cannot serve HTTPS: tls_key {pki.alice.key} is not the key of tls_cert {pki.service.certificate}" in err
    code, err = start_failure(tmp_path, pki, tls_jobs_key=str(pki.alice.key))
    assert code == 2 and "Traceback" not in err
    assert f"tls_jobs_key {pki.alice.key} is not the key of tls_jobs_cert {pki.jobs.certificate}" in err


def test_the_service_refuses_to_start_with_a_tls_file_it_cannot_read(tmp_path, pki):
    missing = tmp_path / "missing.crt"
    for setting in ("tls_cert", "tls_key", "tls_ca", "tls_crl"):
        code, err = start_failure(tmp_path, pki, **{setting: str(missing)})
        assert code == 2 and "Traceback" not in err
        assert f"cannot serve HTTPS: {setting} {missing}: No such file or directory" in err, err
    code, err = start_failure(tmp_path, pki, tls_cert=str(pki.service.key))
    assert code == 2 and f"tls_cert {pki.service.key} holds no PEM certificate" in err


def test_client_tls_files_that_cannot_be_used_are_refused_naming_them(pki, tmp_path):
    with pytest.raises(OptionError, match=f"the key {pki.jobs.key} is not the key of the certificate "
                                          f"{pki.alice.certificate}"):
        ServiceClient("https://127.0.0.1:1", cert=pki.alice.certificate, key=pki.jobs.key, ca=pki.ca)
    with pytest.raises(OptionError, match=f"the CA certificate {tmp_path / 'no.crt'} cannot be used: No such file"):
        ServiceClient("https://127.0.0.1:1", cert=pki.alice.certificate, key=pki.alice.key, ca=tmp_path / "no.crt")


def test_the_owner_end_to_end_over_https_and_wss_identity_from_the_certificate(service, pki):
    with as_user(service, pki, pki.alice) as alice:
        stream = alice.request(SPEC, name="tls")
        assert stream.view["owner"] == "alice"  # the certificate's CN, not default_owner
        stream.wait_until_running(timeout=60)  # the buffer job called back over HTTPS with the jobs' certificate
        with stream.client(group="g", relay=True, timeout=60) as client:  # wss://…/relay with alice's certificate
            seqs = sorted(event.seq for event in client.events())
        assert seqs == list(range(40)) and client.report.complete
        final = list(stream.changes())[-1]
        assert final.state.value == "completed", final.reason
        assert [change["state"] for change in final.view["history"]] == ["queued", "starting", "running",
                                                                          "completed"]
        logs = stream.logs()
        assert "could not call the service back" not in logs and "refused callback" not in logs
        assert [seen.id for seen in alice.streams()] == [stream.id]


def test_the_callback_file_says_how_jobs_reach_the_service_over_tls(tmp_path, pki):
    from beamstream.service.callbacks import write_callback_file

    path = tmp_path / "callback.json"
    write_callback_file(path, "https://127.0.0.1:1/v1/streams/x/callback", "s3cret",
                        {"ca": str(pki.ca), "cert": str(pki.jobs.certificate), "key": str(pki.jobs.key)})
    assert json.loads(path.read_text())["tls"]["cert"] == str(pki.jobs.certificate)


def test_tls_files_apply_only_to_https(pki):
    files = (pki.alice.certificate, pki.alice.key, pki.ca)
    with pytest.raises(OptionError, match="tls=\\(cert, key, ca\\) applies only to https://"):
        Client("tcp://127.0.0.1:5555", tls=files)
    with pytest.raises(OptionError, match="tls=\\(cert, key, ca\\) applies only to https://"):
        Client("http://127.0.0.1:1/v1/streams/x", group="g", tls=files)
    with pytest.raises(OptionError, match="apply only to an https:// service"):
        ServiceClient("http://127.0.0.1:1", cert=pki.alice.certificate, key=pki.alice.key)
    with pytest.raises(OptionError, match="together"):
        ServiceClient("https://127.0.0.1:1", cert=pki.alice.certificate)
