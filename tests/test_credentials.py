"""Per-stream credentials in the request service (issue 11): a real ``beamstream service`` process over real mutual
TLS, with two users' certificates (alice, bob) and an admin's (carol). The stream's key is in the answer to its
request and from ``GET /v1/streams/{id}/credentials``, for its owner only; it is never in a view, a list, an event or
the service's log; its jobs get it in files of mode 0600 (the buffer's holding the admission key only)."""

from __future__ import annotations

import json
import signal
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from beamstream.errors import ServiceError
from beamstream.service_client import ServiceClient
from beamstream.security import ca
from beamstream.security.streamkey import StreamKey
from conftest import run_cli
from servicekit import end_jobs_under, https_client as client, make_pki, run_service, tls_settings

SPEC = {"source": {"type": "simulated", "n_events": 20, "events_per_read": 5,
                   "detectors": [{"kind": "waveform", "samples": 64}]}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    pki.bob = ca.issue(pki.dir, user="bob")
    pki.carol = ca.issue(pki.dir, user="carol")
    return pki


@pytest.fixture(scope="module")
def service(pki, tmp_path_factory):
    """The service (url, its state folder, the lines of its log so far), with mutual TLS, tokens allowed, and a
    policy that makes carol an admin."""
    folder = tmp_path_factory.mktemp("service")
    policy = folder / "policy.yaml"
    policy.write_text("admins: [carol]\nreaders: {}\n")
    process, url = run_service(folder, **tls_settings(pki), tls_client_cert="optional", policy_file=str(policy),
                               drain_grace_s="30")
    try:
        yield url, folder / "state", process.log
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        end_jobs_under(folder)


def request(url: str, pki, who) -> dict:
    with client(url, pki, who) as user:
        answer = user.post("/v1/streams", json={"spec": SPEC})
    assert answer.status_code == 201, answer.text
    assert answer.headers["cache-control"] == "no-store"
    return answer.json()


def as_service(url: str, pki, who) -> ServiceClient:
    return ServiceClient(url, cert=who.certificate, key=who.key, ca=pki.ca)


def test_the_request_answer_carries_the_credentials_and_only_the_owner_gets_them_again(service, pki):
    url, _, _ = service
    created = request(url, pki, pki.alice)
    stream_id, credentials = created["id"], created["credentials"]
    assert credentials["stream"] == stream_id
    StreamKey.from_text(credentials["key"])  # a whole key
    with client(url, pki, pki.alice) as alice:
        again = alice.get(f"/v1/streams/{stream_id}/credentials")
        assert again.status_code == 200 and again.json() == credentials
        assert again.headers["cache-control"] == "no-store"
        alice.delete(f"/v1/streams/{stream_id}")
    unknown = "f" * 32
    for who in (pki.bob, pki.carol):  # another user, and an admin: exactly as for an unknown stream
        with client(url, pki, who) as other:
            for stream in (stream_id, unknown):
                refused = other.get(f"/v1/streams/{stream}/credentials")
                assert refused.status_code == 404 and refused.json()["detail"] == f"no stream {stream!r}"
    with client(url, pki, pki.carol) as carol:
        assert carol.get(f"/v1/streams/{stream_id}").status_code == 200  # the admin sees it, without its key


def test_a_token_fetches_the_credentials_of_its_holders_streams_within_its_limits(service, pki):
    url, _, _ = service
    first, second = (request(url, pki, pki.alice) for _ in range(2))
    with client(url, pki, pki.alice) as alice:
        minted = alice.post("/v1/tokens", json={"ttl_s": 600, "stream": first["id"]})
        assert minted.status_code == 201, minted.text
        for created in (first, second):
            alice.delete(f"/v1/streams/{created['id']}")
    with client(url, pki, token=minted.json()["token"]) as notebook:
        fetched = notebook.get(f"/v1/streams/{first['id']}/credentials")
        assert fetched.status_code == 200 and fetched.json() == first["credentials"]
        assert notebook.get(f"/v1/streams/{second['id']}/credentials").status_code == 404  # outside its limits


def test_the_key_is_never_shown_nor_logged_and_the_jobs_get_it_in_private_files(service, pki):
    url, state, log = service
    with as_service(url, pki, pki.alice) as alice:
        stream = alice.request(SPEC)
        key = stream.credentials().key  # kept from the answer to the request
        assert "credentials" not in stream.view and key not in repr(stream)
        shown = [json.dumps(change.view) for change in stream.changes()]  # the events, to the final change
        assert stream.state.value == "completed", stream.view["history"]
        shown += [json.dumps(alice.stream(stream.id).view), json.dumps([s.view for s in alice.streams()])]
        assert alice.stream(stream.id).credentials().key == key  # GET .../credentials
        with pytest.warns(DeprecationWarning, match=r"write \.key, not \['key'\]"):
            assert stream.credentials()["key"] == key  # as when it was a dict, for one release
    with client(url, pki, pki.alice) as raw:
        shown += [raw.get(f"/v1/streams/{stream.id}").text, raw.get("/v1/streams").text,
                  raw.get(f"/v1/streams/{stream.id}/events").text, raw.get(f"/v1/streams/{stream.id}/logs").text]
    assert all(key not in text for text in shown)
    assert log and key not in "".join(log)

    folder = state / "streams" / stream.id
    for name in ("stream.key", "admission.key"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert (folder / "stream.key").read_text().strip() == key
    admission = (folder / "admission.key").read_text().strip()
    assert admission == StreamKey.from_text(key).admission.to_text() and key not in admission


def test_another_user_is_refused_the_credentials_from_python_and_the_owner_gets_them_on_the_command_line(
        service, pki, tmp_path):
    url, _, _ = service
    created = request(url, pki, pki.alice)
    with as_service(url, pki, pki.bob) as bob:
        with pytest.raises(ServiceError) as refused:
            bob.stream(created["id"])
        assert refused.value.status == 404
    options = ["--service", url, "--cert", str(pki.alice.certificate), "--key", str(pki.alice.key),
               "--ca", str(pki.ca)]
    printed = run_cli("streams", "credentials", created["id"], *options)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == created["credentials"]["key"]
    as_json = run_cli("streams", "credentials", created["id"], "--json", *options)
    assert json.loads(as_json.stdout) == created["credentials"]
    with as_service(url, pki, pki.alice) as alice:
        alice.stream(created["id"]).cancel()


def test_a_store_from_before_credentials_is_migrated_and_its_streams_have_none(tmp_path: Path):
    from sqlalchemy import create_engine

    from beamstream.service.migrations import upgrade
    from beamstream.service.store import JobStore

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    upgrade(engine, "0003")
    engine.dispose()
    (tmp_path / "old.db").chmod(0o600)  # made by create_engine under the umask; the store refuses it otherwise
    store = JobStore.open(url, upgrade=True)  # to the newest, as `beamstream service upgrade-db` does
    try:
        record = store.create(owner="alice", spec=SPEC, resources={})
        assert record.key is not None and record.key not in repr(record)
        with store.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE streams SET stream_key = NULL")
        assert store.get(record.id).key is None
    finally:
        store.close()


@pytest.mark.parametrize("through_relay", [False, True], ids=["direct", "relay"])
def test_the_owner_reads_a_sealed_stream_with_no_extra_option(service, pki, through_relay):
    url, _, _ = service
    with as_service(url, pki, pki.alice) as alice:
        stream = alice.request(SPEC).wait_until_running(timeout=120)
        with stream.client(group="g", relay=through_relay) as reader:
            seqs = [event.seq for event in reader.events()]
        assert sorted(seqs) == list(range(20)) and reader.report.complete


def test_a_reader_with_another_streams_key_is_refused_at_once_directly_and_through_the_relay(service, pki):
    """The wrong key fails within the reader's timeout with the buffer's words, whichever way it reads."""
    from beamstream.errors import TransportError

    url, _, _ = service
    with as_service(url, pki, pki.alice) as alice:
        stream = alice.request(SPEC).wait_until_running(timeout=120)
        errors = []
        for through_relay in (False, True):
            began = time.monotonic()
            with stream.client(group="g", relay=through_relay, key=StreamKey.generate(), timeout=60) as reader:
                with pytest.raises(TransportError, match="refused this client") as refused:
                    next(iter(reader.events()))
            assert time.monotonic() - began < 30, "refused at once, not after the timeout (60 s)"
            errors.append(refused.value.args[0].split("refused this client: ")[1])
        assert errors[0] == errors[1] and "does not match this stream's admission key" in errors[0]
        with stream.client(group="g") as owner:  # the refusals cost the owner nothing
            assert sorted(event.seq for event in owner.events()) == list(range(20))


def test_an_admin_is_relayed_a_stream_but_cannot_open_its_payloads(service, pki):
    from beamstream.errors import SealRefused

    url, _, _ = service
    with as_service(url, pki, pki.alice) as alice:
        stream_id = alice.request(SPEC).wait_until_running(timeout=120).id
    with as_service(url, pki, pki.carol) as carol:
        stream = carol.stream(stream_id)
        with stream.client(group="admin", relay=True) as reader:  # no key: carol is not the owner
            with pytest.raises(SealRefused):
                next(iter(reader.events()))
        stream.cancel()


def test_forged_messages_and_strangers_at_a_live_streams_buffer_are_refused_and_the_owner_gets_exactly_the_stream(
        service, pki):
    """A stranger who reaches the buffer's ports of alice's running stream: its forged event (sealed with another
    key), forged ends (unsealed, and sealed with another key) and its joining her group without the key are all
    refused; alice's reader gets exactly the stream's events, complete."""
    import zmq

    from beamstream.batch import Share
    from beamstream.client import Client
    from beamstream.errors import TransportError
    from beamstream.wire import DataMessage, EndMessage
    from beamstream.wire.replies import REFUSED

    url, _, _ = service
    slow = {"source": {**SPEC["source"], "n_events": 60, "events_per_read": 1, "rate_hz": 30}}
    with as_service(url, pki, pki.alice) as alice:
        stream = alice.request(slow).wait_until_running(timeout=120)
        got: dict = {}

        def read() -> None:
            with stream.client(group="g") as reader:
                got["seqs"] = sorted(event.seq for event in reader.events())
            got["report"] = reader.report

        owner = threading.Thread(target=read)
        owner.start()
        stranger_key, share = StreamKey.generate(), Share(rank=0, producers=1)
        forged_event = DataMessage(stream=stream.id, rank=0, producers=1, index=2, share=share,
                                   seq=np.array([2]), time=np.array([0.0]), serializer="arrays", fields=[],
                                   payload=[b"forged"])
        forged_end = EndMessage(stream=stream.id, rank=0, producers=1, share=share, messages=1, events=1, last_seq=0)
        context = zmq.Context()
        try:
            dealer = context.socket(zmq.DEALER)
            dealer.connect(stream.view["endpoints"]["producers"])
            replies = []
            for frames in (forged_event.to_frames(key=stranger_key), forged_end.to_frames(),
                           forged_end.to_frames(key=stranger_key)):
                dealer.send_multipart(frames)
                assert dealer.poll(30_000), "the buffer answers a producer's message"
                replies.append(dealer.recv())
            dealer.close(linger=0)
        finally:
            context.term()
        assert all(reply.startswith(REFUSED) and b"seal" in reply for reply in replies), replies
        with pytest.raises(TransportError, match="refused this client"):  # no key: not admitted to alice's group
            with Client(stream.view["endpoints"]["consumers"], group="g", timeout=30) as stranger:
                next(iter(stranger.events()))
        owner.join(timeout=120)
        assert got["seqs"] == list(range(60)), "exactly the stream's events, none forged, none lost"
        assert got["report"].complete and not got["report"].forged
        final = [change for change in stream.changes() if change.state.final][-1]
        assert final.state.value == "completed", final.reason
