"""The certificate authority (``beamstream ca``): its certificates checked by real TLS 1.3 handshakes on 127.0.0.1,
its revocation list, its file modes, and its commands."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509

from beamstream.errors import AuthorityError
from beamstream.security.ca import init_ca, issue, list_issued, refresh_crl, revoke

from conftest import run_cli


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca", "test CA", days=730)
    return tmp_path / "ca"


@pytest.fixture
def server_files(ca_dir: Path) -> tuple[Path, Path]:
    credentials = issue(ca_dir, service=["localhost", "127.0.0.1"], days=7)
    return credentials.certificate, credentials.key


def server_context(ca_dir: Path, server_files: tuple[Path, Path], crl: bool = True) -> ssl.SSLContext:
    """A server that requires a client certificate from the CA in ``ca_dir`` (and checks its CRL)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(*server_files)
    context.load_verify_locations(cafile=ca_dir / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if crl:
        context.load_verify_locations(cafile=ca_dir / "crl.pem")
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def client_context(ca_dir: Path, client_files: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_dir / "ca.crt")
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if client_files is not None:
        context.load_cert_chain(*client_files)
    return context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "localhost") -> tuple[object, object]:
    """Connect ``client`` to a one-connection ``server`` on 127.0.0.1. Returns what each side got: the server the
    client's common name (or its exception), the client the server's greeting (or its exception)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    outcome: dict[str, object] = {}

    def serve() -> None:
        try:
            connection, _ = listener.accept()
            connection.settimeout(10)
            with server.wrap_socket(connection, server_side=True) as tls:
                outcome["server"] = dict(pair[0] for pair in tls.getpeercert()["subject"])["commonName"]
                outcome["version"] = tls.version()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            outcome["server"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                client.wrap_socket(raw, server_hostname=hostname) as tls:
            greeting: object = tls.recv(2)
    except (ssl.SSLError, OSError) as exc:
        greeting = exc
    thread.join(10)
    listener.close()
    assert not thread.is_alive()
    return outcome["server"], greeting


def files(credentials) -> tuple[Path, Path]:
    return credentials.certificate, credentials.key


def test_a_user_certificate_from_the_ca_is_accepted_over_tls_1_3(ca_dir, server_files):
    alice = files(issue(ca_dir, user="alice"))
    server = server_context(ca_dir, server_files)
    seen, greeting = handshake(server, client_context(ca_dir, alice))
    assert (seen, greeting) == ("alice", b"ok")
    certificate = x509.load_pem_x509_certificate(alice[0].read_bytes())
    assert certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])


def test_a_client_without_a_certificate_is_refused(ca_dir, server_files):
    seen, greeting = handshake(server_context(ca_dir, server_files), client_context(ca_dir, None))
    assert isinstance(seen, ssl.SSLError) and "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(seen)
    assert not isinstance(greeting, bytes) or greeting == b""


def test_a_certificate_from_another_ca_is_refused(ca_dir, server_files, tmp_path):
    init_ca(tmp_path / "other", "other CA", days=730)
    mallory = files(issue(tmp_path / "other", user="alice"))
    seen, _ = handshake(server_context(ca_dir, server_files), client_context(ca_dir, mallory))
    assert isinstance(seen, ssl.SSLCertVerificationError)
    assert seen.verify_message == "unable to get local issuer certificate"


def test_an_expired_certificate_is_refused(ca_dir, server_files):
    now = datetime.now(timezone.utc)
    old = files(issue(ca_dir, user="alice", not_before=now - timedelta(days=3), not_after=now - timedelta(days=1)))
    seen, _ = handshake(server_context(ca_dir, server_files), client_context(ca_dir, old))
    assert isinstance(seen, ssl.SSLCertVerificationError) and seen.verify_message == "certificate has expired"


def test_a_revoked_certificate_is_refused_and_others_still_pass(ca_dir, server_files):
    alice = files(issue(ca_dir, user="alice"))
    bob = files(issue(ca_dir, user="bob"))
    assert handshake(server_context(ca_dir, server_files), client_context(ca_dir, alice))[0] == "alice"
    [record] = revoke(ca_dir, user="alice")
    assert record.subject == "alice" and record.revoked is not None
    server = server_context(ca_dir, server_files)  # a server loads the new CRL
    seen, _ = handshake(server, client_context(ca_dir, alice))
    assert isinstance(seen, ssl.SSLCertVerificationError) and seen.verify_message == "certificate revoked"
    assert handshake(server, client_context(ca_dir, bob))[0] == "bob"


def test_a_service_certificate_verifies_for_its_names_only(ca_dir, server_files):
    alice = files(issue(ca_dir, user="alice"))
    server = server_context(ca_dir, server_files)
    for name in ("localhost", "127.0.0.1"):
        assert handshake(server, client_context(ca_dir, alice), hostname=name) == ("alice", b"ok")
    _, greeting = handshake(server, client_context(ca_dir, alice), hostname="elsewhere.example.org")
    assert isinstance(greeting, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in greeting.verify_message


def test_a_service_certificate_is_no_client_certificate(ca_dir, server_files):
    """A service's certificate (serverAuth only) cannot stand in for a user's."""
    seen, _ = handshake(server_context(ca_dir, server_files), client_context(ca_dir, server_files))
    assert isinstance(seen, ssl.SSLCertVerificationError)
    assert seen.verify_message == "unsuitable certificate purpose"


def test_keys_are_0600_and_the_directories_0700_whatever_the_file_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("BEAMSTREAM_FILE_MODE", "644")
    directory = tmp_path / "nested" / "ca"
    init_ca(directory, days=730)
    credentials = issue(directory, user="alice")
    for key in (directory / "ca.key", credentials.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for folder in (directory, directory / "users", directory / "issued"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert not list(directory.rglob("*.part"))


def test_a_ca_directory_others_can_reach_is_refused(ca_dir):
    ca_dir.chmod(0o750)
    with pytest.raises(AuthorityError) as error:
        issue(ca_dir, user="alice")
    assert str(error.value) == (f"{ca_dir} is mode 0750: other users could reach the CA's keys; "
                                f"run `chmod 700 {ca_dir}`")
    loose = ca_dir.parent / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    with pytest.raises(AuthorityError, match=f"run `chmod 700 {loose}`"):
        init_ca(loose, days=30)


def test_a_ca_key_others_can_read_is_refused(ca_dir):
    (ca_dir / "ca.key").chmod(0o644)
    with pytest.raises(AuthorityError) as error:
        revoke(ca_dir, user="alice")
    assert str(error.value) == (f"{ca_dir / 'ca.key'} is mode 0644: others may read the key; "
                                f"run `chmod 600 {ca_dir / 'ca.key'}` (and if they did, make a new key)")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"user": "../alice"}, "user name '../alice': use letters, digits and . _ @ -"),
    ({"service": "*.example.org"}, "service host '*.example.org': expected a DNS name"),
    ({"service": []}, "a service certificate needs at least one host name or IP address"),
    ({"user": "alice", "service": "localhost"}, "issue a certificate for a user or for a service: give exactly one"),
    ({"user": "alice", "days": 0}, "days=0: a certificate is valid for 1 to 825 days"),
    ({"user": "alice", "days": 800}, "the certificate would outlive its CA"),
])
def test_issue_refuses_bad_names_and_validities(ca_dir, kwargs, message):
    with pytest.raises(AuthorityError, match=message.replace("*", r"\*").replace(".", r"\.")):
        issue(ca_dir, **kwargs)


def test_the_crl_is_signed_numbered_and_has_a_next_update(ca_dir):
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())

    def crl() -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())

    assert crl().is_signature_valid(ca.public_key()) and len(crl()) == 0
    first = issue(ca_dir, user="alice").issued
    issue(ca_dir, user="alice")  # a second certificate for alice: revoking alice revokes both
    assert len(revoke(ca_dir, user="alice")) == 2
    with pytest.raises(AuthorityError, match=f"serial {first.serial:x} was already revoked on "):
        revoke(ca_dir, serial=first.serial)
    with pytest.raises(AuthorityError, match="no certificate with serial 1 was issued by this CA"):
        revoke(ca_dir, serial=1)
    refresh_crl(ca_dir, crl_days=2)
    latest = crl()
    assert latest.is_signature_valid(ca.public_key()) and len(latest) == 2
    assert latest.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    assert timedelta(days=1) < latest.next_update_utc - datetime.now(timezone.utc) <= timedelta(days=2)
    assert [record.revoked is not None for record in list_issued(ca_dir)] == [True, True]


def test_init_refuses_a_directory_that_holds_a_ca(ca_dir):
    with pytest.raises(AuthorityError, match="already holds a CA"):
        init_ca(ca_dir, days=30)


def test_the_ca_commands_end_to_end(tmp_path):
    directory = str(tmp_path / "ca")
    result = run_cli("ca", "init", directory, "--name", "facility CA")
    assert result.returncode == 0, result.stderr
    assert "CA 'facility CA'" in result.stderr
    result = run_cli("ca", "issue", directory, "--user", "alice")
    assert result.returncode == 0, result.stderr
    assert f"certificate {directory}/users/alice.crt, key {directory}/users/alice.key" in result.stderr
    result = run_cli("ca", "issue", directory, "--service", "beam.example.org", "--service", "10.0.0.7")
    assert result.returncode == 0, result.stderr
    assert "service beam.example.org (beam.example.org, 10.0.0.7)" in result.stderr
    serial = next(record.serial for record in list_issued(Path(directory)) if record.kind == "service")
    result = run_cli("ca", "revoke", directory, "--serial", f"{serial:x}")
    assert result.returncode == 0, result.stderr
    assert f"revoked service beam.example.org, serial {serial:x}" in result.stderr
    result = run_cli("ca", "list", directory)
    assert result.returncode == 0, result.stderr
    [alice] = [line for line in result.stderr.splitlines() if " alice " in line]
    [service] = [line for line in result.stderr.splitlines() if " beam.example.org " in line]
    assert " user " in alice and alice.rstrip(" │").endswith(" no")
    assert " service " in service and f"{serial:x}" in service and not service.rstrip(" │").endswith(" no")
    assert run_cli("ca", "crl", directory, "--crl-days", "7").returncode == 0

    result = run_cli("ca", "issue", directory)
    assert result.returncode == 2 and "give --user NAME or --service HOST" in result.stderr
    result = run_cli("ca", "revoke", directory, "--user", "bob")
    assert result.returncode == 1
    assert f"error: no unrevoked certificate of user 'bob' (`beamstream ca list {directory}` shows them)" in (
        result.stderr)
    result = run_cli("ca", "list", str(tmp_path / "nothing"))
    assert result.returncode == 1 and "no such CA directory; make one with `beamstream ca init" in result.stderr
