"""Profiles (the service and TLS files a user types once) and `beamstream demo --service` with TLS:
real TLS over real sockets, to a real ``beamstream service`` process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beamstream.errors import OptionError
from beamstream.profile import DEFAULT_URL, Profile, ServiceTarget, load_profile, service_target
from beamstream.service_client import ServiceClient
from conftest import run_cli
from servicekit import make_pki, tls_service


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def service(pki, tmp_path_factory):
    with tls_service(tmp_path_factory.mktemp("service"), pki) as url:
        yield url


@pytest.fixture(autouse=True)
def no_profile_from_the_environment(monkeypatch, tmp_path):
    """Neither the developer's profile nor BEAMSTREAM_* settings leak into these tests."""
    for name in ("BEAMSTREAM_PROFILE", "BEAMSTREAM_SERVICE", "BEAMSTREAM_CERT", "BEAMSTREAM_KEY", "BEAMSTREAM_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write_profile(path, text: str):
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_profile_supplies_the_service_and_tls_files_to_streams_list(service, pki, tmp_path, monkeypatch):
    profile = write_profile(tmp_path / "profile.yaml", f"service: {service}\ncert: {pki.alice.certificate}\n"
                                                       f"key: {pki.alice.key}\nca: {pki.ca}\n")
    monkeypatch.setenv("BEAMSTREAM_PROFILE", str(profile))
    listed = run_cli("streams", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    with ServiceClient.from_profile() as alice:
        assert alice.url == service and alice.streams() == []
    with ServiceClient.from_profile(profile) as alice:
        assert alice.request({"source": {"type": "simulated", "n_events": 5,
                                         "detectors": [{"kind": "waveform", "samples": 8}]}}).view["owner"] == "alice"


def test_the_option_and_the_environment_come_before_the_profile(service, pki, tmp_path, monkeypatch):
    # a profile with the wrong certificate (another CA's alice): the option's certificate wins
    profile = write_profile(tmp_path / "profile.yaml", f"service: {service}\ncert: {pki.stranger.certificate}\n"
                                                       f"key: {pki.stranger.key}\nca: {pki.ca}\n")
    monkeypatch.setenv("BEAMSTREAM_PROFILE", str(profile))
    refused = run_cli("streams", "list")
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 1 and "the service refused our certificate" in said and "unknown ca" in said, said
    assert run_cli("streams", "list", "--cert", str(pki.alice.certificate), "--key", str(pki.alice.key)).returncode == 0
    monkeypatch.setenv("BEAMSTREAM_CERT", str(pki.alice.certificate))
    monkeypatch.setenv("BEAMSTREAM_KEY", str(pki.alice.key))
    assert run_cli("streams", "list").returncode == 0


def test_relative_paths_are_from_the_profiles_folder_and_tls_files_are_left_out_for_http(tmp_path, monkeypatch):
    profile = write_profile(tmp_path / "profile.yaml", "service: https://beam.example:8443\ncert: me.crt\n"
                                                       "key: me.key\n")
    loaded = load_profile(profile)
    assert loaded == Profile(service="https://beam.example:8443", cert=tmp_path / "me.crt", key=tmp_path / "me.key")
    assert load_profile() is None  # the default file does not exist: no profile
    monkeypatch.setenv("BEAMSTREAM_PROFILE", str(profile))
    # an http:// service given as an option: the profile's TLS files do not apply (no refusal for them)
    answer = run_cli("streams", "list", "--service", "http://127.0.0.1:1")
    assert answer.returncode == 1 and "no answer from the service at http://127.0.0.1:1" in answer.stderr


@pytest.mark.parametrize("text, words", [
    ("service: https://x\ncert: a.crt\nkey: a.key\ntoken: abc\n", "token: Extra inputs are not permitted"),
    ("service: [1, 2]\n", "service: Input should be a valid string"),
    ("service: ftp://x\n", "service: expected an http:// or https:// URL, got 'ftp://x'"),
    ("cert: a.crt\n", "cert and key go together"),
    ("- service\n", "expected a mapping with keys service, cert, key, ca; got list"),
    ("service: [\n", "profile.yaml"),
])
def test_a_bad_profile_is_a_clear_error_naming_the_file_and_the_entry(tmp_path, monkeypatch, text, words):
    profile = write_profile(tmp_path / "profile.yaml", text)
    with pytest.raises(OptionError, match="profile ") as error:
        load_profile(profile)
    assert str(profile) in str(error.value) and words in str(error.value)
    monkeypatch.setenv("BEAMSTREAM_PROFILE", str(profile))
    answer = run_cli("streams", "list")
    assert answer.returncode == 1 and words in " ".join(answer.stderr.split())


def test_a_named_profile_must_exist_and_must_not_be_writable_by_others(tmp_path, pki):
    with pytest.raises(OptionError, match="no such file"):
        load_profile(tmp_path / "absent.yaml")
    with pytest.raises(OptionError, match="no such file"):
        ServiceClient.from_profile(tmp_path / "absent.yaml")
    profile = write_profile(tmp_path / "profile.yaml", "service: https://x\n")
    profile.chmod(0o620)
    with pytest.raises(OptionError, match="can be written by others.*chmod go-w"):
        load_profile(profile)
    profile.chmod(0o644)  # readable by others is fine: it holds paths, not secrets
    assert load_profile(profile).service == "https://x"


def test_a_profile_naming_a_key_others_can_read_is_warned_about(tmp_path, pki):
    key = tmp_path / "open.key"
    key.write_text("not really a key")
    key.chmod(0o644)
    profile = write_profile(tmp_path / "profile.yaml", f"cert: {pki.alice.certificate}\nkey: {key}\n")
    with pytest.warns(UserWarning, match="can be read by others"):
        load_profile(profile)


def test_from_profile_without_a_profile_is_the_default_service():
    with ServiceClient.from_profile() as service:
        assert service.url == DEFAULT_URL and service.tls is None


def test_from_profile_finds_the_service_as_the_command_line_does(tmp_path, monkeypatch):
    """The option (here the argument), else the environment, else the profile; the profile's TLS files only for an
    https:// service, so that a profile made for one does not make a plain-HTTP service refuse the client."""
    profile = write_profile(tmp_path / "profile.yaml", "service: https://beam.example:8443\ncert: me.crt\n"
                                                       "key: me.key\n")
    monkeypatch.setenv("BEAMSTREAM_PROFILE", str(profile))
    assert service_target() == ServiceTarget("https://beam.example:8443", tmp_path / "me.crt", tmp_path / "me.key")
    assert service_target(ca="ca.crt").ca == Path("ca.crt")
    with ServiceClient.from_profile(url="http://127.0.0.1:1") as plain:
        assert plain.url == "http://127.0.0.1:1" and plain.tls is None
    monkeypatch.setenv("BEAMSTREAM_SERVICE", "http://127.0.0.1:2")
    with ServiceClient.from_profile() as plain:
        assert plain.url == "http://127.0.0.1:2" and plain.tls is None
    monkeypatch.setenv("BEAMSTREAM_CERT", str(tmp_path / "mine.crt"))  # given, not the profile's: refused for http
    with pytest.raises(OptionError, match="apply only to an https:// service"):
        ServiceClient.from_profile()


def test_beamstream_demo_with_a_service_runs_with_tls_by_default():
    result = run_cli("demo", "--service", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    output = " ".join((result.stdout + result.stderr).split())
    assert "request service at https://127.0.0.1:" in output and "completed, verdict complete" in output
    assert "ran with mutual TLS, as " in output and "read through the relay" in output

