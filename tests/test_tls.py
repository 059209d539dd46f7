"""Mutual TLS in the request service: real TLS 1.3 over real sockets, to a real ``beamstream service`` process,
with certificates made by ``beamstream.security.ca``."""

from __future__ import annotations

import json
import signal
import subprocess

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from beamstream.client import Client
from beamstream.errors import OptionError, ServiceError
from beamstream.remote import Service
from beamstream.security import ca
from beamstream.service.api import create_app
from beamstream.service.settings import ServiceSettings
from conftest import start_cli
from servicekit import make_pki, tls_service, tls_settings

SPEC = {"source": {"type": "simulated", "n_events": 40, "events_per_read": 5,
                   "detectors": [{"kind": "waveform", "samples": 256}]}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def service(pki, tmp_path_factory):
    """A service with mutual TLS: its URL (https://127.0.0.1:PORT); stopped and its jobs ended afterwards."""
    with tls_service(tmp_path_factory.mktemp("service"), pki, drain_grace_s="30") as url:
        yield url


def as_user(url: str, pki, who) -> Service:
    return Service(url, cert=who.certificate, key=who.key, ca=pki.ca)


def refusal(url: str, pki, who=None) -> ServiceError:
    """The ServiceError of listing streams at ``url`` as ``who`` (a Credentials; None: no client certificate)."""
    with (Service(url, ca=pki.ca) if who is None else as_user(url, pki, who)) as user:
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


def test_refused_without_a_client_certificate(service, pki):
    assert refusal(service, pki).status is None  # the handshake fails: no HTTP answer at all


def test_refused_with_a_certificate_from_another_ca(service, pki):
    assert refusal(service, pki, pki.stranger).status is None


def test_refused_with_an_expired_certificate(service, pki):
    assert refusal(service, pki, pki.expired).status is None


def test_refused_over_plain_http(service, pki):
    with pytest.raises(httpx.TransportError):
        httpx.get(service.replace("https://", "http://") + "/v1/streams", timeout=10)


def test_a_certificate_revoked_while_the_service_runs_is_refused_on_its_next_connection(service, pki):
    bob = ca.issue(pki.dir, user="bob")
    with as_user(service, pki, bob) as user:
        assert user.streams() == []
    ca.revoke(pki.dir, user="bob")
    assert refusal(service, pki, bob).status is None
    with as_user(service, pki, pki.alice) as user:  # the others are still let in
        user.streams()


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
        Service("http://127.0.0.1:1", cert=pki.alice.certificate, key=pki.alice.key)
    with pytest.raises(OptionError, match="together"):
        Service("https://127.0.0.1:1", cert=pki.alice.certificate)
