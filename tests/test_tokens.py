"""Bearer tokens in the request service: minted over real mutual TLS by a certificate holder, then used alone (no
client certificate) over real TLS to a real ``beamstream service`` process with ``tls_client_cert: optional``."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import WebSocket

from beamstream.service.principal import Principal
from beamstream.service.tokens import Grant, bearer, digest
from servicekit import https_client as client, make_pki, tls_service

SPEC = {"source": {"type": "simulated", "n_events": 40, "events_per_read": 5,
                   "detectors": [{"kind": "waveform", "samples": 256}]}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def service(pki, tmp_path_factory):
    with tls_service(tmp_path_factory.mktemp("service"), pki, drain_grace_s="30", tls_client_cert="optional") as url:
        yield url


@pytest.fixture(scope="module")
def streams(service, pki):
    """Two of alice's streams (ids), requested with her certificate."""
    with client(service, pki, pki.alice) as alice:
        made = [alice.post("/v1/streams", json={"spec": SPEC, "name": f"s{n}"}) for n in range(2)]
    assert [answer.status_code for answer in made] == [201, 201], [answer.text for answer in made]
    return [answer.json()["id"] for answer in made]


def mint(service, pki, **body) -> dict:
    with client(service, pki, pki.alice) as alice:
        answer = alice.post("/v1/tokens", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_a_token_alone_acts_as_its_owner(service, pki, streams):
    minted = mint(service, pki)
    assert set(minted) == {"token", "id", "expires", "experiments", "stream"}
    assert minted["expires"] == pytest.approx(time.time() + 3600, abs=60)
    with client(service, pki, token=minted["token"]) as notebook:
        listed = notebook.get("/v1/streams")
        assert listed.status_code == 200, listed.text
        assert {item["id"] for item in listed.json()["items"]} == set(streams)
        assert {item["owner"] for item in listed.json()["items"]} == {"alice"}
        assert notebook.get(f"/v1/streams/{streams[0]}").json()["owner"] == "alice"


def test_no_certificate_and_no_token_is_401(service, pki):
    with client(service, pki) as nobody:
        answer = nobody.get("/v1/streams")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def test_a_certificate_from_another_ca_still_fails_the_handshake(service, pki):
    with client(service, pki, pki.stranger) as stranger, pytest.raises(httpx.TransportError):
        stranger.get("/v1/streams")


@pytest.mark.parametrize("how", ["tampered", "unknown", "revoked"])
def test_a_bad_token_is_401(service, pki, how):
    minted = mint(service, pki)
    token = minted["token"]
    if how == "tampered":
        token = token[:-1] + ("A" if token[-1] != "A" else "B")
    elif how == "unknown":
        token = "x" * 43
    else:
        with client(service, pki, token=token) as notebook:  # valid until revoked
            assert notebook.get("/v1/streams").status_code == 200
        with client(service, pki, pki.alice) as alice:
            assert alice.delete(f"/v1/tokens/{minted['id']}").status_code == 204
    with client(service, pki, token=token) as notebook:
        answer = notebook.get("/v1/streams")
    assert answer.status_code == 401, answer.text
    assert "bearer token is not valid" in answer.json()["detail"]


def test_a_token_is_401_from_the_second_it_expires(tmp_path):
    """The service's clock is injected (its context's ``clock``): the token's last valid second and its first
    expired one, without waiting for either."""
    from fastapi.testclient import TestClient

    from beamstream.service.app import create_app
    from beamstream.service.settings import ServiceSettings
    from beamstream.service.store import JobStore

    store = JobStore.open(f"sqlite:///{tmp_path / 'service.db'}")
    secret = "t" * 43
    store.add_token(digest=digest(secret), identity="alice", expires=1000.0)
    app = create_app(ServiceSettings(state_dir=tmp_path / "state"), store=store)
    bearer_header = {"Authorization": f"Bearer {secret}"}
    with TestClient(app) as test:
        app.state.context.clock = lambda: 999.5
        assert test.get("/v1/streams", headers=bearer_header).status_code == 200
        app.state.context.clock = lambda: 1000.0
        answer = test.get("/v1/streams", headers=bearer_header)
    store.close()
    assert answer.status_code == 401 and "bearer token is not valid" in answer.json()["detail"]


def test_a_token_limited_to_one_stream_sees_only_it(service, pki, streams):
    minted = mint(service, pki, stream=streams[0])
    with client(service, pki, token=minted["token"]) as notebook:
        assert notebook.get(f"/v1/streams/{streams[0]}").status_code == 200
        assert notebook.get(f"/v1/streams/{streams[1]}").status_code == 404
        assert notebook.delete(f"/v1/streams/{streams[1]}").status_code == 404
        assert [item["id"] for item in notebook.get("/v1/streams").json()["items"]] == [streams[0]]
        assert notebook.post("/v1/streams", json={"spec": SPEC}).status_code == 403


def test_a_token_limited_to_experiments_sees_no_other(service, pki, streams):
    minted = mint(service, pki, experiments=["xpp12345"])
    with client(service, pki, token=minted["token"]) as notebook:
        assert notebook.get("/v1/streams").json()["items"] == []  # alice's streams name no experiment
        assert notebook.get(f"/v1/streams/{streams[0]}").status_code == 404
        assert notebook.post("/v1/streams", json={"spec": SPEC}).status_code == 403


def test_a_token_cannot_mint_tokens(service, pki):
    minted = mint(service, pki)
    with client(service, pki, token=minted["token"]) as notebook:
        answer = notebook.post("/v1/tokens", json={})
    assert answer.status_code == 403
    assert "a token cannot mint tokens" in answer.json()["detail"]


def test_a_token_is_only_for_its_owner_to_revoke_and_bounded(service, pki, streams):
    minted = mint(service, pki)
    with client(service, pki, pki.jobs) as other:  # beamstream-jobs: another identity, not an admin
        assert other.delete(f"/v1/tokens/{minted['id']}").status_code == 404
    with client(service, pki, token=minted["token"]) as notebook:
        assert notebook.get("/v1/streams").status_code == 200
    with client(service, pki, pki.alice) as alice:
        assert alice.post("/v1/tokens", json={"ttl_s": 86401}).status_code == 422
        assert alice.post("/v1/tokens", json={"stream": "0" * 32}).status_code == 404
        assert alice.delete("/v1/tokens/nosuchtoken").status_code == 404


def test_the_store_keeps_only_the_digest(service, pki, tmp_path_factory):
    minted = mint(service, pki)
    database = next(tmp_path_factory.getbasetemp().glob("service*/service.db"))
    raw = database.read_bytes() + b"".join(path.read_bytes() for path in database.parent.glob("service.db-*"))
    assert minted["token"].encode() not in raw
    assert digest(minted["token"]).encode() in raw


def test_bearer_header_parsing_and_caller():
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None
    grant = Grant(id="1", identity="alice", experiments=("a",), stream=None, created=0, expires=time.time() + 9,
                  revoked=None)
    caller = Principal("alice", grant)
    assert str(caller) == "alice" and caller.grant is grant and Principal("bob").grant is None
    assert grant.permits_stream("x", "a") and not grant.permits_stream("x", "b") and not grant.permits_stream("x", None)


def test_the_relay_takes_a_token_as_a_query_parameter(tmp_path):
    """Browsers' WebSockets cannot set headers: the relay (only it) reads ``?token=``, and drops it from the scope."""
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from beamstream.service.app import create_app
    from beamstream.service.settings import ServiceSettings
    from beamstream.service.store import JobStore

    store = JobStore.open(f"sqlite:///{tmp_path / 'service.db'}")
    record = store.create(owner="alice", spec=SPEC, resources={})
    other = store.create(owner="alice", spec=SPEC, resources={})
    secret = "s" * 43
    store.add_token(digest=digest(secret), identity="alice", expires=time.time() + 60, stream=record.id)
    seen = {}
    app = create_app(ServiceSettings(state_dir=tmp_path / "state"), store=store)

    @app.websocket("/probe")  # a WebSocket route besides the relay, to see what the scope keeps
    async def probe(websocket: WebSocket) -> None:
        from beamstream.service.principal import authenticate
        seen["caller"] = authenticate(websocket).identity
        seen["query"] = websocket.scope["query_string"]
        await websocket.accept()
        await websocket.close()

    with TestClient(app) as test:
        with test.websocket_connect(f"/probe?a=1&token={secret}"):
            pass
        assert seen == {"caller": "alice", "query": b"a=1"}
        with test.websocket_connect(f"/v1/streams/{other.id}/relay?token={secret}") as outside:
            with pytest.raises(WebSocketDisconnect) as closed:
                outside.receive_bytes()
        assert closed.value.code == 4404  # as for an unknown stream
        with pytest.raises(WebSocketDisconnect), test.websocket_connect(f"/v1/streams/{record.id}/relay?token=bad"):
            pass
        assert test.get(f"/v1/streams/{record.id}", params={"token": secret}).status_code == 404  # HTTP: ignored


def test_the_python_client_with_a_token_alone_requests_follows_and_reads_a_sealed_stream(service, pki):
    from beamstream import ServiceClient

    token = mint(service, pki)["token"]
    with ServiceClient(service, token=token, ca=pki.ca) as notebook:  # no certificate: the token names alice
        stream = notebook.request(SPEC, name="by-token")
        assert stream.view["owner"] == "alice" and stream.credentials().key
        with stream.wait_until_running(timeout=120).client(group="notebook", relay=True) as reader:
            seqs = sorted(event.seq for event in reader.events())
        assert seqs == list(range(40)) and reader.report.complete and not reader.report.forged
    with client(service, pki) as browser:  # an EventSource sends no header: the live page takes ?token=
        with browser.stream("GET", f"/v1/streams/{stream.id}/events", params={"token": token}) as changes:
            assert changes.status_code == 200 and changes.headers["content-type"].startswith("text/event-stream")
        assert browser.get(f"/v1/streams/{stream.id}/events").status_code == 401
        assert browser.get(f"/v1/streams/{stream.id}", params={"token": token}).status_code == 401, \
            "only the live pages take ?token="


def test_a_token_goes_to_no_http_service(monkeypatch):
    from beamstream import ServiceClient
    from beamstream.client import Client
    from beamstream.errors import OptionError

    with pytest.raises(OptionError, match="a bearer token goes only to an https:// service"):
        ServiceClient("http://127.0.0.1:8080", token="abc")
    monkeypatch.setenv("BEAMSTREAM_TOKEN", "abc")
    with pytest.raises(OptionError, match="unset BEAMSTREAM_TOKEN"):
        ServiceClient("http://127.0.0.1:8080")
    assert ServiceClient("http://127.0.0.1:8080", token="").token is None
    with pytest.raises(OptionError, match="token applies only to https:// streams"):
        Client("http://127.0.0.1:8080/v1/streams/ab", group="g", token="abc")


def test_a_token_dies_with_the_certificate_that_minted_it(service, pki):
    """Revoking erin's certificate (the CA's revocation list rewritten while the service runs) refuses her token at
    once, though it has not expired nor been revoked itself; alice's token, minted with another certificate, lives."""
    from beamstream.security import ca

    erin = ca.issue(pki.dir, user="erin")
    with client(service, pki, erin) as holder:
        minted = holder.post("/v1/tokens", json={}).json()
    alices = mint(service, pki)["token"]
    with client(service, pki, token=minted["token"]) as notebook:
        assert notebook.get("/v1/streams").status_code == 200
        ca.revoke(pki.dir, user="erin")
        refused = notebook.get("/v1/streams")
    assert refused.status_code == 401
    assert "the certificate it was minted with is revoked" in refused.json()["detail"]
    with client(service, pki, token=alices) as notebook:
        assert notebook.get("/v1/streams").status_code == 200
