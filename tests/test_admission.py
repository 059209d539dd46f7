"""Admission: a buffer given its stream's admission key serves only holders of the stream's credentials.

Real sockets and a real buffer. Producer messages are sent by hand from a DEALER, sealed with
``to_frames(key=...)`` (with another stream's key: forged); the proper consumer is a GroupTransport given the
key's ``.admission`` (what ``Client(..., key=...)`` passes it), or a Client with the key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid

import msgspec
import numpy as np
import pytest
import zmq

from beamstream.batch import Batch, Share
from beamstream.buffer.admission import HelloCheck, read_admitted
from beamstream.buffer.config import BufferConfig
from beamstream.buffer.local import NEW_GROUP_STALL_S, LocalBuffer
from beamstream.buffer.segments import SpillError
from beamstream.client import Client
from beamstream.client.transports.base import StreamEnd
from beamstream.client.transports.group import GroupTransport
from beamstream.errors import TransportError
from beamstream.producer import run_local
from beamstream.security.streamkey import StreamKey, StreamKeyError, write_key_file
from beamstream.serializers.arrays import ArraysSerializer
from beamstream.wire import EndMessage, message_from_batch, parse_header
from beamstream.wire.control import (HELLO_WINDOW_S, Ack, Deliver, Describe, End, Error, Hello, Ping, ToConsumer, pack,
                                     proven_hello, unpack)
from beamstream.wire.replies import ACK, KEPT, REFUSED
from conftest import banner, run_cli, start_cli, wait_until, waveform_spec

KEY = StreamKey.generate()
OTHER = StreamKey.generate()  # another stream's
N = 12
SHARE = Share(rank=0, producers=1, stop=N)
ADMITS_ONLY = "this stream's buffer admits only holders of its credentials"


def data_frames(index: int, key: StreamKey | None = None, stream: str = "s") -> list[bytes]:
    """Data message ``index`` (event ``index``) of rank 0 of 1; sealed with ``key`` if given."""
    batch = Batch(np.array([index]), np.zeros(1), {"x": np.full((1, 4), index, np.float32)})
    message = message_from_batch(batch, ArraysSerializer().build(), stream=stream, rank=0, producers=1, index=index,
                                 share=SHARE)
    return [bytes(memoryview(frame)) for frame in message.to_frames(key=key)]


def end_frames(messages: int = N, key: StreamKey | None = None, stream: str = "s") -> list[bytes]:
    end = EndMessage(stream=stream, rank=0, producers=1, share=SHARE, messages=messages, events=messages,
                     last_seq=messages - 1 if messages else None)
    return [bytes(frame) for frame in end.to_frames(key=key)]


class Producer:
    """A raw DEALER on the buffer's producer endpoint: each message sent, then its reply awaited."""

    def __init__(self, endpoint: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.connect(endpoint)

    def send(self, frames: list[bytes]) -> bytes:
        self.socket.send_multipart(frames)
        assert self.socket.poll(10_000), "the buffer answers every producer message"
        return self.socket.recv()

    def close(self) -> None:
        self.socket.close(linger=0)


class Peer:
    """A raw DEALER on the buffer's consumer endpoint, speaking control messages by hand."""

    def __init__(self, endpoint: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.connect(endpoint)

    def send(self, control) -> None:
        self.socket.send(pack(control) if not isinstance(control, bytes) else control)

    def answer(self, wait_ms: int = 10_000):
        """The next control message from the buffer (of a delivery, its first frame); fails after ``wait_ms``."""
        assert self.socket.poll(wait_ms), f"the buffer said nothing for {wait_ms} ms"
        return unpack(self.socket.recv_multipart()[0], ToConsumer)

    def received(self, wait_ms: int = 1000) -> list:
        """The control messages received until ``wait_ms`` passes with nothing new."""
        got = []
        while self.socket.poll(wait_ms):
            got.append(unpack(self.socket.recv_multipart()[0], ToConsumer))
        return got

    def close(self) -> None:
        self.socket.close(linger=0)


@pytest.fixture
def keyed(tmp_path):
    """A local buffer given KEY's admission key; yields (buffer, producer endpoint, consumer endpoint)."""
    producers, consumers = f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}"
    buffer = LocalBuffer(producers, consumers, max_bytes=16 << 20, admission=KEY.admission,
                         producer_timeout_s=60).start()
    yield buffer, producers, consumers
    buffer.close()


def read_all(member: GroupTransport, timeout: float = 30) -> tuple[list[bytes], StreamEnd | None]:
    """The header frames of everything ``member`` is delivered (each acknowledged), and the end if it came."""
    headers = []
    for delivery in member.deliveries(timeout):
        if delivery is None:
            return headers, None
        if isinstance(delivery, StreamEnd):
            return headers, delivery
        headers.append(bytes(memoryview(delivery.frames[0])))
        delivery.done()
    return headers, None


def test_unsealed_and_wrongly_sealed_producer_messages_are_refused_counted_and_not_kept(keyed):
    buffer, producers, consumers = keyed
    producer = Producer(producers)
    member = GroupTransport(consumers, group="g", lossy=False, start="earliest", credit=4, max_message=1 << 20,
                            admission=KEY.admission)
    try:
        plain = producer.send(data_frames(0))
        forged = producer.send(data_frames(0, OTHER))
        unsealed_end = producer.send(end_frames(0))
        for reply in (plain, unsealed_end):
            assert reply.startswith(REFUSED) and b"is not sealed, but this stream is" in reply, reply
        assert forged.startswith(REFUSED) and b"does not match this stream's admission key" in forged
        assert buffer.counters["rejected"] == 3 and buffer.status().totals["rejected_messages_total"] == 3
        assert buffer.message_log.next_offset == 0, "nothing refused is kept"
        assert buffer.report.producers is None and buffer.report.messages == 0, "nor counted in the stream's account"

        sent = [data_frames(index, KEY) for index in range(N)]
        for index, frames in enumerate(sent):
            assert producer.send(frames) == KEPT + str(index).encode()
        assert producer.send(end_frames(key=KEY)) == ACK
        headers, end = read_all(member)
    finally:
        producer.close()
        member.close()
    assert headers == [frames[0] for frames in sent], "every sealed message, as sent, and nothing else"
    assert end is not None and end.verdict.complete
    assert buffer.counters["rejected"] == 3 and buffer.counters["messages_in"] == N


def test_a_forged_end_does_not_end_the_stream(keyed):
    buffer, producers, consumers = keyed
    producer = Producer(producers)
    member = GroupTransport(consumers, group="g", lossy=False, start="earliest", credit=4, max_message=1 << 20,
                            admission=KEY.admission)
    try:
        for index in range(N):
            assert producer.send(data_frames(index, KEY)).startswith(KEPT)
        for forged in (end_frames(), end_frames(key=OTHER), end_frames(key=KEY)[:1]):
            reply = producer.send(forged)
            assert reply.startswith(REFUSED), reply
        assert not buffer.report.all_ended and buffer.verdict() is None, "the stream goes on"
        headers, end = read_all(member, timeout=3)
        assert len(headers) == N and end is None, "no End for a forged end"
        assert producer.send(end_frames(key=KEY)) == ACK
        more, end = read_all(member)
    finally:
        producer.close()
        member.close()
    assert more == [] and end is not None and end.verdict.complete
    assert buffer.counters["rejected"] == 3


def test_consumers_without_the_key_are_refused_and_get_nothing_while_members_get_everything(keyed):
    buffer, producers, consumers = keyed
    producer = Producer(producers)
    member = GroupTransport(consumers, group="g", lossy=False, start="earliest", credit=4, max_message=1 << 20,
                            admission=KEY.admission)
    plain, wrong = Peer(consumers), Peer(consumers)
    try:
        wait_until(lambda: len(buffer.members) == 1, "the member to join")
        proper = set(buffer.members)
        for index in range(N // 2):
            assert producer.send(data_frames(index, KEY)).startswith(KEPT)
        plain.send(Hello(group="g", credit=100))
        wrong.send(proven_hello(OTHER.admission, group="g", credit=100))
        for index in range(N // 2, N):
            assert producer.send(data_frames(index, KEY)).startswith(KEPT)
        plain.send(Ack(offsets=[0, 1, 2], credit=100))  # not a member: takes nothing from the group
        assert producer.send(end_frames(key=KEY)) == ACK
        headers, end = read_all(member)
        told_plain, told_wrong = plain.received(), wrong.received()
        with Client(consumers, group="g", timeout=30) as keyless:  # the Client without a key is told what to do
            with pytest.raises(TransportError, match=f"{ADMITS_ONLY}: give the stream's key"):
                list(keyless.messages())
        other = GroupTransport(consumers, group="g", lossy=False, start="earliest", credit=1, max_message=1 << 20,
                               admission=OTHER.admission)
        try:
            with pytest.raises(TransportError, match="does not match this stream's admission key"):
                read_all(other)
        finally:
            other.close()
    finally:
        producer.close()
        member.close()
        plain.close()
        wrong.close()
    assert len(headers) == N and end is not None and end.verdict.complete, "the group's member lost nothing"
    for told in (told_plain, told_wrong):
        assert isinstance(told[0], Error) and told[0].reason.startswith(ADMITS_ONLY)
        assert not any(isinstance(control, (Deliver, Describe, End)) for control in told), told
    assert "give the stream's key" in told_plain[0].reason
    assert "does not match this stream's admission key" in told_wrong[0].reason
    assert buffer.counters["consumers_refused"] == 4
    assert buffer.status().totals["refused_consumers_total"] == 4
    assert set(buffer.members) <= proper, "no refused peer ever joined"


def test_a_replayed_or_stale_hello_is_refused(keyed):
    buffer, _, consumers = keyed
    hello = pack(proven_hello(KEY.admission, group="g"))
    first, replay, stale, early = Peer(consumers), Peer(consumers), Peer(consumers), Peer(consumers)
    try:
        first.send(hello)
        wait_until(lambda: len(buffer.members) == 1, "the first hello to be admitted")
        replay.send(hello)
        stale.send(proven_hello(KEY.admission, group="g", at=time.time() - 90))
        early.send(proven_hello(KEY.admission, group="g", at=time.time() + 90))
        told = {name: peer.received() for name, peer in
                (("replay", replay), ("stale", stale), ("early", early))}
    finally:
        for peer in (first, replay, stale, early):
            peer.close()
    assert "already used (a replay)" in told["replay"][0].reason
    assert "made 90 s before the buffer's time (at most 60 s either way)" in told["stale"][0].reason
    assert "made 90 s after the buffer's time" in told["early"][0].reason
    assert all(len(messages) == 1 and isinstance(messages[0], Error) for messages in told.values())
    assert len(buffer.members) == 1 and buffer.counters["consumers_refused"] == 3


def test_a_member_says_a_fresh_hello_each_time(tmp_path):
    """Re-hellos (buffer silent, or Rejoin after a restart) each carry a new nonce: never refused as replays."""
    consumers = f"ipc://{tmp_path / 'out'}"
    member = GroupTransport(consumers, group="g", lossy=False, start="earliest", credit=1, max_message=1 << 20,
                            admission=KEY.admission)
    try:
        hellos = [unpack(member.hello, Hello) for _ in range(3)]
    finally:
        member.close()
    assert len({hello.nonce for hello in hellos}) == 3 and all(hello.proof for hello in hellos)
    buffer = LocalBuffer(f"ipc://{tmp_path / 'in'}", consumers, admission=KEY.admission).start()
    try:  # the member started before its buffer: its queued hellos were replaced, the latest one admitted
        member = GroupTransport(consumers, group="g", lossy=False, start="earliest", credit=1, max_message=1 << 20,
                                admission=KEY.admission)
        wait_until(lambda: len(buffer.members) == 1, "the member to join")
        member.close()
    finally:
        buffer.close()
    assert buffer.counters["consumers_refused"] == 0


def test_without_an_admission_key_plain_and_proven_hellos_are_served(tmp_path):
    buffer = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}").start()
    plain, proven = Peer(f"ipc://{tmp_path / 'out'}"), Peer(f"ipc://{tmp_path / 'out'}")
    try:
        plain.send(Hello(group="g"))
        proven.send(proven_hello(KEY.admission, group="g"))
        wait_until(lambda: len(buffer.members) == 2, "both to join")
    finally:
        plain.close()
        proven.close()
        buffer.close()


def test_a_sealed_stream_spilled_is_recovered_after_a_restart(tmp_path):
    producers, consumers, spill = f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", tmp_path / "spill"
    buffer = LocalBuffer(producers, consumers, spill=spill, admission=KEY.admission).start()
    producer = Producer(producers)
    try:
        for index in range(N):
            assert producer.send(data_frames(index, KEY)).startswith(KEPT)
        assert producer.send(end_frames(key=KEY)) == ACK
    finally:
        producer.close()
        buffer.close()
    again = LocalBuffer(producers, consumers, spill=spill, admission=KEY.admission).start()
    member = GroupTransport(consumers, group="g", lossy=False, start="earliest", credit=4, max_message=1 << 20,
                            admission=KEY.admission)
    try:
        assert again.report.all_ended and again.report.messages == N
        headers, end = read_all(member)
    finally:
        member.close()
        again.close()
    assert len(headers) == N and end is not None and end.verdict.complete
    assert all(msgspec.msgpack.decode(header)["seal"] for header in headers)


def test_the_admission_key_comes_from_a_private_file(tmp_path):
    path = write_key_file(tmp_path / "admission", KEY.admission)
    config = BufferConfig(producer_endpoint=f"ipc://{tmp_path / 'in'}", consumer_endpoint=f"ipc://{tmp_path / 'out'}",
                          admission_key_file=path)
    assert KEY.admission.to_text() not in config.model_dump_json(), "the spec names the file, not the key"
    buffer = config.open()
    try:
        assert buffer.admission is not None and buffer.admission.raw == KEY.admission.raw
        assert KEY.admission.to_text() not in repr(buffer.admission)
    finally:
        buffer.close()
    path.chmod(0o644)
    with pytest.raises(StreamKeyError, match=f"may be read or changed by others .*chmod 600 {path}"):
        config.open()
    shown = run_cli("buffer", "--producer-endpoint", f"ipc://{tmp_path / 'in'}", "--consumer-endpoint", f"ipc://{tmp_path / 'out'}",
                    "--admission-key-file", str(path), timeout=60)
    assert shown.returncode == 1 and f"chmod 600 {path}" in shown.stdout + shown.stderr
    assert KEY.admission.to_text() not in shown.stdout + shown.stderr
    (tmp_path / "garbage").write_text("not a key\n")
    (tmp_path / "garbage").chmod(0o600)
    with pytest.raises(StreamKeyError, match="holds no admission key"):
        BufferConfig(admission_key_file=tmp_path / "garbage").open()


NATS_URL = "nats://127.0.0.1:4222"


def test_the_nats_bridge_stores_only_sealed_messages(tmp_path):
    pytest.importorskip("nats", reason="the NATS backend needs nats-py")
    from beamstream.buffer.nats_bridge import NatsBridge
    from beamstream.jetstream.store import NatsStore
    from beamstream.jetstream.urls import listening

    if not listening(NATS_URL):
        pytest.skip(f"no NATS server listens at {NATS_URL}")
    name = f"test-{uuid.uuid4().hex[:12]}"
    bridge = NatsBridge(f"ipc://{tmp_path / 'in'}", f"{NATS_URL}/{name}", admission=KEY.admission).start()
    producer = Producer(f"ipc://{tmp_path / 'in'}")
    try:
        assert producer.send(data_frames(0)).startswith(REFUSED)
        assert producer.send(end_frames(0)).startswith(REFUSED)
        for index in range(N):
            assert producer.send(data_frames(index, KEY)).startswith(KEPT)
        assert producer.send(end_frames(key=KEY)) == ACK
    finally:
        producer.close()
        bridge.close()
    try:
        with NatsStore(NATS_URL, name) as store:
            stored = list(store.stored())
    finally:
        with NatsStore(NATS_URL, name) as store:
            store.delete()
    assert bridge.counters["rejected"] == 2 and bridge.report.all_ended
    assert len(stored) == N + 1 and isinstance(stored[-1], EndMessage)


def test_hello_proof_signs_what_the_buffer_checks():
    """A proof made for one group does not admit another (the group, lossy and start are signed)."""
    from beamstream.buffer.admission import HelloCheck

    check = HelloCheck(KEY.admission)
    hello = proven_hello(KEY.admission, group="g", lossy=True)
    moved = Hello(group="other", lossy=True, start=hello.start, nonce=hello.nonce, at=hello.at, proof=hello.proof)
    assert check.refusal(moved)[0] == "wrong key"
    assert check.refusal(hello) is None
    assert check.refusal(hello)[0] == "replay"
    assert check.refusal(proven_hello(KEY.admission, group="g"), now=time.time() + 61)[0] == "clock"
    assert parse_header(data_frames(0, KEY)[0]).stream == "s", "a sealed header reads as any other"


def test_sealed_stream_end_to_end_through_a_keyed_buffer(keyed):
    """Producers sealing with the stream key, a Client(key=...) in a group: every event, opened; the keyless
    Client in the same group is refused by the buffer and takes nothing from the group."""
    import threading

    from beamstream.producer import run_local
    from conftest import waveform_spec

    buffer, producers, consumers = keyed
    results: dict = {}

    def read() -> None:
        with Client(consumers, group="g", key=KEY, timeout=60) as client:
            results["ok"] = [event.seq for event in client.events()]
            results["ok.report"] = client.report

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: len(buffer.members) == 1, "the keyed reader to join")
    with Client(consumers, group="g", timeout=30) as keyless:
        with pytest.raises(TransportError, match=ADMITS_ONLY):
            list(keyless.messages())
    assert run_local(waveform_spec(producers), workers=1, stream_id="s", key=KEY).ok
    reader.join(timeout=60)
    assert sorted(results["ok"]) == list(range(60)) and results["ok.report"].complete
    assert buffer.counters["rejected"] == 0 and buffer.counters["consumers_refused"] == 1


def start_buffer(*options: str) -> subprocess.Popen:
    """``beamstream buffer OPTIONS`` in a process of its own, once it serves."""
    buffer = start_cli("buffer", *options)
    assert "buffer: producers" in banner(buffer)
    return buffer


def stop_buffer(buffer: subprocess.Popen) -> str:
    """Stop a buffer process as Ctrl-C does; what it wrote to stderr."""
    buffer.send_signal(signal.SIGINT)
    return buffer.communicate(timeout=30)[1]


def test_a_hello_captured_before_a_restart_is_refused_after_it(tmp_path):
    """The attack: capture an owner's hello, kill -9 the sealed buffer, restart it on its spill, replay the hello
    within its window. The restarted buffer refuses it as a replay; a fresh hello of the owner is admitted."""
    key_file = write_key_file(tmp_path / "admission", KEY.admission)
    consumers = f"ipc://{tmp_path / 'out'}"
    options = ("--producer-endpoint", f"ipc://{tmp_path / 'in'}", "--consumer-endpoint", consumers,
               "--spill-dir", str(tmp_path / "spill"), "--admission-key-file", str(key_file))
    captured = pack(proven_hello(KEY.admission, group="g"))
    buffer = start_buffer(*options)
    peers = [Peer(consumers) for _ in range(3)]
    owner, replay, fresh = peers
    try:
        owner.send(captured)
        assert isinstance(owner.answer(), Ping), "admitted: the buffer pings its members"
        os.kill(buffer.pid, signal.SIGKILL)
        buffer.wait()
        buffer = start_buffer(*options)
        replay.send(captured)
        refused = replay.answer()
        fresh.send(proven_hello(KEY.admission, group="g"))
        admitted = fresh.answer()
        replayed_after = time.time() - unpack(captured, Hello).at
    finally:
        for peer in peers:
            peer.close()
        logged = stop_buffer(buffer)
    assert replayed_after < HELLO_WINDOW_S, "the replay came within the hello's window: only the record refuses it"
    assert isinstance(refused, Error), refused
    assert refused.reason == f"{ADMITS_ONLY}: this hello was already used (a replay); send a fresh one"
    assert isinstance(admitted, Ping), admitted
    assert "this hello was already used (a replay)" in logged


def test_admitted_hellos_are_recorded_until_their_time_is_up(tmp_path):
    record = tmp_path / "admitted"
    hello = proven_hello(KEY.admission, group="g")
    assert HelloCheck(KEY.admission, record=record).refusal(hello) is None
    assert HelloCheck(KEY.admission, record=record).refusal(hello)[0] == "replay", "read back by the next check"
    assert list(read_admitted(record, time.time())) == [hello.nonce]
    assert read_admitted(record, time.time() + 2 * HELLO_WINDOW_S + 1) == {}, "forgotten once its time is up"
    unrecordable = HelloCheck(KEY.admission, record=tmp_path / "gone" / "admitted")
    kind, reason = unrecordable.refusal(proven_hello(KEY.admission, group="g"))
    assert kind == "unrecorded" and "admits nobody until it can" in reason and not unrecordable.seen
    record.write_bytes(b"\xc1")
    with pytest.raises(SpillError, match=f"{record}: cannot read the hellos this buffer admitted"):
        HelloCheck(KEY.admission, record=record)


def test_a_group_that_reads_nothing_holds_an_unsealed_buffer_back_for_seconds_not_a_minute(tmp_path):
    """Without an admission key anyone may make a group. A stranger's group that never reads is dropped once it has held
    the full buffer's producers back for NEW_GROUP_STALL_S, not --group-stall (60 s); a real group that has read,
    then works on one message for longer than that, holds them back and gets everything."""
    producers, consumers = f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}"
    buffer = start_buffer("--producer-endpoint", producers, "--consumer-endpoint", consumers, "--max-memory", "1MiB",
                          "--group-stall", "60")
    stranger = Peer(consumers)
    dropped = threading.Event()
    results: dict = {}

    def read_slowly() -> None:
        seqs: list[int] = []
        with Client(consumers, group="slow", timeout=60) as client:
            try:
                for number, message in enumerate(client.messages()):
                    seqs += message.header.seq.tolist()
                    if number == 1:  # the first message is acknowledged now; the application works on the second
                        dropped.wait(30)
                        time.sleep(NEW_GROUP_STALL_S + 2)  # its work: longer than a group that read nothing is given
            except TransportError as exc:
                results["slow.error"] = exc
        results["slow"], results["slow.report"] = seqs, client.report

    try:
        stranger.send(Hello(group="stranger", credit=1))
        assert isinstance(stranger.answer(), Ping), "the stranger's group was made"
        reader = threading.Thread(target=read_slowly)
        reader.start()
        producer = threading.Thread(target=lambda: results.setdefault(
            "run", run_local(waveform_spec(producers, n_events=80, samples=32768), workers=1)))  # 10 MB
        producer.start()
        started = time.monotonic()
        told = None
        while not isinstance(told, Error) and time.monotonic() - started < 30:
            told = stranger.answer()
        held_for = time.monotonic() - started
        still_sending = "run" not in results
        dropped.set()
        producer.join(timeout=120)
        reader.join(timeout=120)
    finally:
        dropped.set()
        stranger.close()
        logged = stop_buffer(buffer)
    assert isinstance(told, Error), told
    assert told.reason == (f"group stranger was dropped: it acknowledged nothing for {NEW_GROUP_STALL_S:g} s since it "
                           "joined while the buffer was full and producers waited for it")
    assert NEW_GROUP_STALL_S < held_for < 30 and still_sending, "the producers were held back, for seconds"
    assert results["run"].ok and "slow.error" not in results, results.get("slow.error")
    assert sorted(results["slow"]) == list(range(80)) and results["slow.report"].complete, "the slow group got all"
    assert "group slow was dropped" not in logged
