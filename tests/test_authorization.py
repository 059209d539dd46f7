"""Who may do what on the request service (issue 11, authorization): the policy file and its decisions on every route.

The service has no authentication layer yet (mutual TLS comes next): these tests stand one in with
:class:`AsUser`, a test-only ASGI middleware that puts the identity named in the test's own
``X-Test-User`` header into the scope key the service reads (``beamstream.identity``), as the mTLS
middleware will put the identity of a verified certificate. The service itself reads no header.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from beamstream.service.app import create_app
from beamstream.service.principal import IDENTITY_KEY
from beamstream.service.policy import PolicyError
from beamstream.service.settings import ServiceSettings
from servicekit import AsUser, run_service, stop_service

SIMULATED = {"source": {"type": "simulated", "n_events": 10}}
POLICY = "admins: [carol]\nreaders:\n  alice: [xpptut15, 'mfx*']\n  bob: ['cxi*']\n"


def write_policy(path: Path, text: str) -> None:
    """Replace the policy file as an operator should: a new file renamed over the old one."""
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


@pytest.fixture
def policy(tmp_path) -> Path:
    path = tmp_path / "policy.yaml"
    write_policy(path, POLICY)
    return path


def make_app(tmp_path: Path, policy: Path | None):
    data = tmp_path / "data" / "xpptut15" / "r0007"
    data.mkdir(parents=True, exist_ok=True)
    h5py.File(data / "a.h5", "w").close()
    return create_app(ServiceSettings(database_url=f"sqlite:///{tmp_path / 'service.db'}", policy_file=policy,
                                      hdf5_pattern=str(tmp_path / "data" / "{experiment}" / "r{run:04d}" / "*.h5"),
                                      state_dir=tmp_path / "state"))


@pytest.fixture
def api(tmp_path, policy):
    app = make_app(tmp_path, policy)
    with TestClient(AsUser(app)) as client:
        yield client
    app.state.context.store.close()


def post(api: TestClient, user: str, **request) -> httpx.Response:
    return api.post("/v1/streams", json={"spec": SIMULATED, **request}, headers={"X-Test-User": user})


def make_stream(api: TestClient, user: str, **request) -> str:
    response = post(api, user, **request)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def relay_close(api: TestClient, user: str, stream_id: str) -> tuple[int, str]:
    """The code and reason the relay closes the WebSocket with at once."""
    with api.websocket_connect(f"/v1/streams/{stream_id}/relay", headers={"X-Test-User": user}) as websocket:
        with pytest.raises(WebSocketDisconnect) as closed:
            websocket.receive_bytes()
    return closed.value.code, closed.value.reason


def test_a_user_may_request_the_experiments_they_read_and_is_told_which_one_they_may_not(api):
    assert post(api, "alice", experiment="xpptut15").status_code == 201
    assert post(api, "alice", experiment="mfx00042").status_code == 201
    refused = post(api, "alice", experiment="cxi12345")
    assert refused.status_code == 403
    assert refused.json()["detail"] == "you may not read experiment 'cxi12345'"  # names it, not the policy
    assert post(api, "mallory", experiment="xpptut15").status_code == 403  # in no policy entry
    catalogued = api.post("/v1/streams", json={"spec": {}, "experiment": "xpptut15", "run": 7},
                          headers={"X-Test-User": "alice"})
    assert catalogued.status_code == 201, catalogued.text
    assert catalogued.json()["experiment"] == "xpptut15"
    assert post(api, "carol", experiment="cxi12345").status_code == 201  # an admin reads every experiment


def test_data_other_than_a_catalogue_run_or_a_simulation_is_for_admins_only(api, tmp_path):
    """A request that names its own files (or reads data without experiment and run) could read any experiment's
    data under a readable label: only admins may make one; a simulated source needs no experiment."""
    own_files = {"spec": {"source": {"type": "hdf5", "files": [str(tmp_path / "data/xpptut15/r0007/a.h5")]}}}
    for request in (own_files, {**own_files, "experiment": "xpptut15", "run": 7}):
        refused = api.post("/v1/streams", json=request, headers={"X-Test-User": "alice"})
        assert refused.status_code == 403 and "only admins may request data other than" in refused.text
        assert api.post("/v1/streams", json=request, headers={"X-Test-User": "carol"}).status_code == 201
    assert post(api, "mallory").status_code == 201  # simulated, no experiment: no facility data read


def test_someone_elses_stream_is_404_on_every_route_exactly_like_an_unknown_one(api):
    theirs = make_stream(api, "bob", experiment="cxi12345")
    alice = {"X-Test-User": "alice"}
    for method, route in (("GET", ""), ("GET", "/events"), ("GET", "/logs"), ("DELETE", "")):
        for stream_id in (theirs, "f" * 32):
            answer = api.request(method, f"/v1/streams/{stream_id}{route}", headers=alice)
            assert answer.status_code == 404, (method, route, answer.text)
            assert answer.json()["detail"] == f"no stream {stream_id!r}" and answer.json().keys() == {"detail", "request_id"}
    assert relay_close(api, "alice", theirs) == (4404, f"no stream {theirs!r} on this service")
    assert relay_close(api, "alice", "f" * 32)[0] == 4404
    mine = api.get(f"/v1/streams/{theirs}", headers={"X-Test-User": "bob"})
    assert mine.status_code == 200 and mine.json()["state"] == "queued"  # alice's DELETE cancelled nothing
    assert api.get(f"/v1/streams/{theirs}/logs", headers={"X-Test-User": "bob"}).status_code == 200
    assert api.delete(f"/v1/streams/{theirs}", headers={"X-Test-User": "bob"}).status_code == 200
    assert relay_close(api, "bob", theirs)[0] == 4410  # the owner passes the check: the stream has ended


def test_users_list_their_own_streams_and_admins_everyones(api):
    ids = {user: make_stream(api, user) for user in ("alice", "bob", "carol")}

    def listed(user: str, **params) -> set[str]:
        page = api.get("/v1/streams", params=params, headers={"X-Test-User": user}).json()
        assert page["total"] == len(page["items"])
        return {item["id"] for item in page["items"]}

    assert listed("alice") == {ids["alice"]} and listed("alice", owner="alice") == {ids["alice"]}
    assert listed("alice", owner="bob") == set()  # the owner filter is for admins
    assert listed("carol") == set(ids.values()) and listed("carol", owner="bob") == {ids["bob"]}
    assert api.get(f"/v1/streams/{ids['bob']}", headers={"X-Test-User": "carol"}).status_code == 200
    assert api.delete(f"/v1/streams/{ids['bob']}", headers={"X-Test-User": "carol"}).json()["state"] == "cancelled"


def test_the_runs_of_an_experiment_are_listed_only_for_its_readers(api):
    runs = api.get("/v1/experiments/xpptut15/runs", headers={"X-Test-User": "alice"})
    assert runs.status_code == 200 and [run["run"] for run in runs.json()["runs"]] == [7]
    assert api.get("/v1/experiments/xpptut15/runs", headers={"X-Test-User": "bob"}).status_code == 404
    assert api.get("/v1/experiments/xpptut15/runs", headers={"X-Test-User": "carol"}).status_code == 200


def test_a_changed_policy_is_used_at_once_and_an_invalid_one_keeps_the_last_good(api, policy, caplog):
    assert post(api, "alice", experiment="cxi12345").status_code == 403
    write_policy(policy, POLICY.replace("'mfx*'", "'mfx*', 'cxi*'"))
    assert post(api, "alice", experiment="cxi12345").status_code == 201  # no restart

    caplog.set_level(logging.INFO, logger="beamstream.service.policy")
    write_policy(policy, POLICY.replace("[xpptut15, 'mfx*']", "xpptut15"))  # not a list
    assert post(api, "alice", experiment="cxi12345").status_code == 201  # the last good policy
    assert post(api, "alice", experiment="amo1").status_code == 403
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1, "logged once per change, not at every decision"
    assert str(policy) in errors[0].getMessage() and "readers.alice" in errors[0].getMessage()

    policy.unlink()
    assert post(api, "alice", experiment="cxi12345").status_code == 201
    assert f"the policy file {policy} cannot be read" in caplog.text
    write_policy(policy, POLICY)
    assert post(api, "alice", experiment="cxi12345").status_code == 403  # the fixed file is read again


def test_a_policy_file_invalid_at_start_stops_the_service_naming_the_entry(tmp_path):
    path = tmp_path / "policy.yaml"
    for text, named in (("readers:\n  alice: ['xpp/*']\n", "readers.alice.0"), ("admin: [carol]\n", "admin"),
                        ("", "is empty"), ("readers: [alice\n", "not valid YAML")):
        path.write_text(text)
        with pytest.raises(PolicyError, match=named) as raised:
            make_app(tmp_path, path)
        assert str(path) in str(raised.value)
    with pytest.raises(PolicyError, match="no such"):
        make_app(tmp_path, tmp_path / "missing.yaml")


def test_every_decision_is_logged_with_who_what_and_why(api, caplog):
    caplog.set_level(logging.INFO, logger="beamstream.service.policy")
    theirs = make_stream(api, "bob")
    api.get(f"/v1/streams/{theirs}", headers={"X-Test-User": "alice"})
    post(api, "alice", experiment="cxi12345")
    lines = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert ("INFO", "allowed bob to request a stream: a simulated source reads no facility data") in lines
    assert ("WARNING", f"refused alice to see stream {theirs}: it is bob's and alice is not an admin") in lines
    assert ("WARNING", "refused alice to request a stream of experiment 'cxi12345': alice may read no experiment "
                       "matching 'cxi12345'") in lines


def test_without_a_policy_everyone_requests_anything_and_sees_only_their_own_streams(tmp_path):
    app = make_app(tmp_path, None)
    with TestClient(AsUser(app)) as api:
        alices = make_stream(api, "alice", experiment="cxi12345")
        own_files = {"type": "hdf5", "files": [str(tmp_path / "data/xpptut15/r0007/a.h5")]}
        assert api.post("/v1/streams", json={"spec": {"source": own_files}},
                        headers={"X-Test-User": "bob"}).status_code == 201
        assert api.get(f"/v1/streams/{alices}", headers={"X-Test-User": "bob"}).status_code == 404
        assert api.get(f"/v1/streams/{alices}", headers={"X-Test-User": "alice"}).status_code == 200
        assert api.get("/v1/experiments/xpptut15/runs", headers={"X-Test-User": "bob"}).status_code == 200
    app.state.context.store.close()


def test_a_client_cannot_claim_an_identity(tmp_path, policy):
    """Without an authentication layer every request is the default owner's, whatever the client sends."""
    app = make_app(tmp_path, policy)
    with TestClient(app) as api:
        forged = {"X-Test-User": "carol", IDENTITY_KEY: "carol", "X-Remote-User": "carol"}
        created = api.post("/v1/streams", json={"spec": SIMULATED}, headers=forged, params={IDENTITY_KEY: "carol"})
        assert created.status_code == 201 and created.json()["owner"] == "local"
        assert api.post("/v1/streams", json={"spec": SIMULATED, "experiment": "xpptut15"},
                        headers=forged).status_code == 403  # "local" reads no experiment
    app.state.context.store.close()


def test_the_service_process_reads_its_policy_file(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("readers:\n  local: ['xpp*']\n")  # the default owner: no authentication layer yet
    process, url = run_service(tmp_path, policy_file=str(policy))
    try:
        refused = httpx.post(f"{url}/v1/streams", json={"spec": SIMULATED, "experiment": "cxi12345"}, timeout=30)
        assert refused.status_code == 403 and refused.json()["detail"] == "you may not read experiment 'cxi12345'"
        allowed = httpx.post(f"{url}/v1/streams", json={"spec": SIMULATED, "experiment": "xpptut15"}, timeout=30)
        assert allowed.status_code == 201, allowed.text
    finally:
        stop_service(process, url)
