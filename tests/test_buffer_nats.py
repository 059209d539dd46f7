"""The NATS JetStream backend against the real server on 127.0.0.1:4222 (skipped if none listens)."""

from __future__ import annotations

import uuid
from collections import Counter
from contextlib import ExitStack

import msgpack
import numpy as np
import pytest
import zmq

pytest.importorskip("nats", reason="the NATS backend needs nats-py: pip install 'beamstream[nats]'")

from beamstream.batch import Batch, Share  # noqa: E402
from beamstream.jetstream.readers import NatsGroupReader  # noqa: E402
from beamstream.jetstream.store import NatsStore  # noqa: E402
from beamstream.jetstream.urls import listening  # noqa: E402
from beamstream.errors import TransportError, WireFormatError  # noqa: E402
from beamstream.security.streamkey import StreamKey  # noqa: E402
from beamstream.serializers.arrays import ArraysSerializer  # noqa: E402
from beamstream.wire import DataMessage, EndMessage, message_from_batch, parse_message  # noqa: E402
from beamstream.wire.control import Verdict  # noqa: E402
from conftest import wait_until  # noqa: E402

URL = "nats://127.0.0.1:4222"
N = 1000


pytestmark = pytest.mark.skipif(not listening(URL), reason=f"no NATS server listens at {URL}")


@pytest.fixture
def store():
    """A store on a fresh stream; the stream is deleted afterwards."""
    with NatsStore(URL, f"test-{uuid.uuid4().hex[:12]}") as store:
        yield store
        store.delete()


def stream_name(store: NatsStore) -> str:
    return store.stream.removeprefix("BEAMSTREAM_")


def data_frames(index: int, nbytes: int = 4000, total: int = N, key: StreamKey | None = None,
                seed: int | None = None) -> list:
    """Frames of data message ``index`` (4 events) whose ``image`` field holds about ``nbytes`` bytes (random,
    from ``seed``, default ``index``), from a producer whose share is events 0 to ``total`` - 1; sealed with
    ``key`` if given."""
    rng = np.random.default_rng(index if seed is None else seed)
    events = 4
    image = rng.integers(0, 60000, size=(events, max(1, nbytes // (2 * events))), dtype=np.uint16)
    batch = Batch(np.arange(index * events, (index + 1) * events, dtype=np.int64), np.full(events, 1.7e9),
                  {"image": image, "energy": rng.random(events)})
    message = message_from_batch(batch, ArraysSerializer().build(), stream="run1", rank=0, producers=1,
                                 index=index, share=Share(0, 1, 0, total, 1))
    return message.to_frames(key=key)


def drain(readers: list[NatsGroupReader], timeout: float = 0.5) -> dict[int, list[int]]:
    """Fetch and ack from ``readers`` in turn until none gets anything; the indexes each one got."""
    got: dict[int, list[int]] = {n: [] for n in range(len(readers))}
    idle = 0
    while idle < len(readers):
        for n, reader in enumerate(readers):
            item = reader.fetch(timeout)
            if item is None:
                idle += 1
                continue
            idle = 0
            frames, ack = item
            got[n].append(parse_message(frames).index)
            ack()
    return got


def test_round_trip_of_small_and_split_messages(store):
    sizes = [100, 5 << 20, 4000, store.conn.max_payload]  # the last one is just too big to go inline
    sent = [data_frames(i, size) for i, size in enumerate(sizes)]
    for frames in sent:
        store.append(frames)
    with NatsGroupReader(URL, stream_name(store), "check") as reader:
        for frames in sent:
            got, ack = reader.fetch(timeout=5)
            message = parse_message(got)  # verifies the checksum
            assert isinstance(message, DataMessage)
            assert [bytes(frame) for frame in got[1:]] == [bytes(memoryview(frame)) for frame in frames[1:]]
            ack()
        assert reader.fetch(timeout=0.2) is None


def test_split_message_is_stored_as_parts_no_bigger_than_max_payload(store):
    store.append(data_frames(0, 5 << 20))
    info = store.conn.call(store.conn.js.stream_info(store.stream))
    assert info.state.messages == 7  # 6 parts of < 1 MiB for 5 MiB and a bit, plus the manifest
    part = store.conn.call(store.conn.js.get_msg(store.stream, 1, direct=True))
    assert len(part.data) <= store.conn.max_payload and part.headers["Bs-Parts"] == "6"


def test_members_of_a_group_share_messages_and_another_group_sees_all(store):
    for index in range(20):
        store.append(data_frames(index))
    name = stream_name(store)
    with NatsGroupReader(URL, name, "shared") as one, NatsGroupReader(URL, name, "shared") as two:
        got = drain([one, two])
    assert all(got.values()), "both members got work"
    assert Counter(got[0] + got[1]) == Counter(range(20))
    with NatsGroupReader(URL, name, "training") as other:
        assert sorted(drain([other])[0]) == list(range(20))


def test_group_starting_now_sees_only_later_messages(store):
    store.append(data_frames(0))
    with NatsGroupReader(URL, stream_name(store), "live", start="now") as reader:
        store.append(data_frames(1))
        assert drain([reader])[0] == [1]


def test_unacknowledged_message_goes_to_another_member_after_ack_wait(store):
    store.append(data_frames(7))
    name = stream_name(store)
    with NatsGroupReader(URL, name, "slow", ack_wait=1.0) as first, NatsGroupReader(URL, name, "slow") as second:
        frames, _ = first.fetch(timeout=2)
        assert second.fetch(timeout=0.3) is None, "not before ack_wait"
        frames_again, ack = second.fetch(timeout=3)
        assert parse_message(frames_again).index == parse_message(frames).index == 7
        ack()
        assert first.fetch(timeout=1.5) is None, "acknowledged: never again"


def test_stored_lists_data_then_end_messages_from_their_headers(store):
    end = EndMessage(stream="run1", rank=0, producers=1, share=Share(0, 1, 0, N, 1), messages=2, events=8,
                     last_seq=7)
    store.append(data_frames(0))
    store.append(end.to_frames())
    store.append(data_frames(1, 5 << 20))  # split: its header comes from its first part
    assert [(type(m).__name__, getattr(m, "index", None)) for m in store.stored()] == [
        ("DataMessage", 0), ("DataMessage", 1), ("EndMessage", None)]
    assert list(store.stored())[-1] == end
    with NatsGroupReader(URL, stream_name(store), "data-only") as reader:
        assert [parse_message(reader.fetch(timeout=2)[0]).index for _ in range(2)] == [0, 1], "ends are not data"
        assert reader.fetch(timeout=0.2) is None


def test_reader_may_come_before_its_stream(store):
    late_name = f"test-{uuid.uuid4().hex[:12]}"
    with NatsGroupReader(URL, late_name, "early") as reader:
        assert reader.fetch(timeout=0.1) is None and reader.verdict() is None and not reader.settled()
        with NatsStore(URL, late_name) as late:
            late.append(data_frames(3))
            try:
                assert parse_message(reader.fetch(timeout=5)[0]).index == 3
            finally:
                late.delete()


def test_bad_server_url_is_a_transport_error_naming_it():
    with pytest.raises(TransportError, match=r"^no NATS server at nats://127\.0\.0\.1:4223: \S"):
        NatsStore("nats://127.0.0.1:4223", "never")


def test_append_refuses_what_is_not_a_beamstream_message(store):
    with pytest.raises(WireFormatError):
        store.append([b"not msgpack \xc1"])


# --- the buffer with --backend nats:// and Client("nats://…") ------------------------------------

from beamstream.buffer.nats_bridge import NatsBridge  # noqa: E402
from beamstream.client import Client  # noqa: E402
from beamstream.errors import StreamIncomplete  # noqa: E402
from beamstream.producer import run_local  # noqa: E402
from beamstream.transport import open_socket  # noqa: E402
from beamstream.wire.replies import ACK, KEPT, REFUSED  # noqa: E402
from conftest import read_shared_and_broadcast, waveform_spec  # noqa: E402


@pytest.fixture
def bridge(tmp_path):
    """A buffer keeping a fresh stream in NATS; yields (bridge, stream URL); deletes the stream afterwards."""
    url = f"{URL}/test-{uuid.uuid4().hex[:12]}"
    service = NatsBridge(f"ipc://{tmp_path / 'in'}", url, producer_timeout_s=3.0).start()
    yield service, url
    service.close()
    with NatsStore(URL, url.rsplit("/", 1)[1]) as store:
        store.delete()


def test_groups_over_nats_get_the_expected_events_and_a_late_group_replays(bridge, tmp_path):
    service, url = bridge
    results = read_shared_and_broadcast(url, f"ipc://{tmp_path / 'in'}")
    assert sorted(results["training"]) == list(range(60))
    shared = Counter(seq for n in range(3) for seq in results[f"shared{n}"])
    assert sorted(shared) == list(range(60)) and set(shared.values()) == {1}
    assert all(results[f"{key}.report"].complete for key in ("shared0", "training"))
    assert "complete" in results["training.report"].summary()
    with Client(url, group="epoch-2", timeout=30) as late:
        assert sorted(event.seq for event in late.events()) == list(range(60)), "a finished stream replays"
        assert late.metadata.fields["waveform"].source == "simulated waveform"
    with Client(url, timeout=30) as whole:  # no group: the whole stream, for this client alone
        assert len(list(whole.events())) == 60


def test_lossy_reader_over_nats_takes_the_newest_and_counts_the_rest(bridge, tmp_path):
    service, url = bridge
    assert run_local(waveform_spec(f"ipc://{tmp_path / 'in'}", n_events=50), workers=1).ok
    with Client(url, group="viewer", lossy=True, timeout=30) as viewer:
        messages = list(viewer.messages())
    assert [message.header.index for message in messages] == [49], "only the newest of 50 stored"
    assert viewer.report.skipped == 49 and viewer.report.complete
    assert viewer.metadata.facility == "simulated", "the description comes from NATS, not the first message"
    assert "49 messages skipped" in viewer.report.summary()


class FakeProducer:
    """A producer's DEALER speaking to the bridge directly, so a test decides what it sends (and what not)."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = open_socket(self.context, zmq.DEALER, endpoint, bind=False, hwm=4)
        self.kept: list[int] = []

    def send(self, frames: list) -> None:
        self.socket.send_multipart(frames, copy=False)

    def reply(self, timeout: float = 10.0) -> bytes:
        """The next answer other than a ``beamstream-kept`` acknowledgement (those are counted in ``kept``)."""
        while True:
            assert self.socket.poll(int(timeout * 1000)), "the bridge did not answer"
            frame = self.socket.recv()
            if not frame.startswith(KEPT):
                return frame
            self.kept.append(int(frame[len(KEPT):]))

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def test_producer_without_an_end_is_reported_with_missing_ranges(bridge, tmp_path):
    """Three messages, then silence: after producer_timeout_s every reader is told what never came."""
    service, url = bridge
    producer = FakeProducer(f"ipc://{tmp_path / 'in'}")
    try:
        for index in range(3):
            producer.send(data_frames(index, total=24))
        with pytest.raises(StreamIncomplete) as raised, Client(url, group="g", timeout=30) as client:
            list(client.events())
    finally:
        producer.close()
    report = raised.value.report
    assert report.events == 12 and report.verdict is not None and not report.complete
    assert "no end-of-stream" in report.summary() and "12-23" in report.summary()


def test_bridge_refuses_another_wire_version_acknowledges_and_drops_resent_messages(bridge, tmp_path):
    service, url = bridge
    producer = FakeProducer(f"ipc://{tmp_path / 'in'}")
    try:
        frames = data_frames(0, total=4)
        header = msgpack.unpackb(frames[0])
        producer.send([msgpack.packb({**header, "v": 99}), *frames[1:]])
        assert producer.reply().startswith(REFUSED) and service.counters["rejected"] == 1
        producer.send(frames)
        producer.send(frames)  # resent, as after a reconnect
        producer.send(end_frames(messages=1, events=4))
        assert producer.reply() == ACK
        assert producer.kept == [0, 0], "the copy is acknowledged too, so the producer forgets it"
        assert service.counters["messages_in"] == 1 and service.counters["duplicates"] == 1
    finally:
        producer.close()
    with Client(url, group="g", timeout=30) as client:
        assert [event.seq for event in client.events()] == [0, 1, 2, 3]
    assert client.report.complete


def test_restarted_bridge_accounts_for_what_was_stored_before(bridge, tmp_path):
    """A new bridge on the same stream: its verdict covers the messages the first one stored."""
    service, url = bridge
    producer = FakeProducer(f"ipc://{tmp_path / 'in'}")
    try:
        for index in range(3):
            producer.send(data_frames(index, total=24))
        wait_until(lambda: service.counters["messages_in"] == 3)
        service.close()
        second = NatsBridge(f"ipc://{tmp_path / 'in'}", url, producer_timeout_s=3.0).start()
        try:
            for index in range(3, 6):
                producer.send(data_frames(index, total=24))
            producer.send(end_frames(messages=6, events=24))
            assert producer.reply() == ACK
            with Client(url, group="g", timeout=30) as client:
                assert sorted(event.seq for event in client.events()) == list(range(24))
            assert client.report.complete, client.report.summary()
        finally:
            second.close()
    finally:
        producer.close()


def end_frames(messages: int, events: int, key: StreamKey | None = None) -> list:
    return EndMessage(stream="run1", rank=0, producers=1, share=Share(0, 1, 0, events, 1), messages=messages,
                      events=events, last_seq=events - 1).to_frames(key=key)


def test_buffer_command_with_nats_backend_and_consume_processes(tmp_path, write_spec):
    """`beamstream buffer --backend`, `beamstream produce` and `beamstream consume nats://…`, each its own process;
    kill -9 of one member mid-stream: the other member gets every message the dead one had not acknowledged."""
    import os
    import signal

    import h5py

    from conftest import start_cli

    name = f"test-{uuid.uuid4().hex[:12]}"
    url = f"{URL}/{name}"
    producers = f"ipc://{tmp_path / 'in'}"
    service = start_cli("buffer", "--producer-endpoint", producers, "--backend", url, "--retention", "600")
    saved = tmp_path / "saved"
    try:
        victim = start_cli("consume", url, "--group", "g", "--out", str(saved), "--redeliver-after", "2")
        spec = write_spec({"source": {"type": "simulated", "n_events": 300, "events_per_read": 5, "rate_hz": 300,
                                      "detectors": [{"kind": "waveform", "samples": 1024}]},
                           "sinks": [{"type": "stream", "endpoint": producers}]})
        producer = start_cli("produce", str(spec), "--workers", "1")
        survivor = start_cli("consume", url, "--group", "g", "--out", str(tmp_path / "kept"))
        wait_until(lambda: len(list(saved.glob("*.h5"))) >= 10, timeout=60)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        assert producer.wait(120) == 0, producer.communicate()
        out, err = survivor.communicate(timeout=120)
        assert survivor.returncode == 0, out + err
        assert "complete: 300 events" in out + err
    finally:
        service.send_signal(signal.SIGINT)
        service.communicate(timeout=30)

    def seqs(folder):
        found = set()
        for path in folder.glob("*.h5"):
            with h5py.File(path) as h5:
                found.update(h5["_beamstream/seq"][()].tolist())
        return found

    victim_seqs, survivor_seqs = seqs(saved), seqs(tmp_path / "kept")
    assert victim_seqs | survivor_seqs == set(range(300)), "nothing stored was lost"
    assert len(victim_seqs & survivor_seqs) <= 1, "only the message the dead member was holding repeats"
    with NatsStore(URL, name) as store:
        assert store.conn.call(store.conn.js.stream_info(store.stream)).config.max_age == 600
        store.delete()


def test_buffer_command_with_bad_backend_says_what_to_write():
    from conftest import run_cli

    nameless = run_cli("buffer", "--backend", URL)
    assert nameless.returncode == 2 and "e.g. nats://127.0.0.1:4222/run42" in nameless.stdout + nameless.stderr
    nobody = run_cli("buffer", "--backend", "nats://127.0.0.1:4223/x")
    assert nobody.returncode == 1 and "no NATS server at nats://127.0.0.1:4223" in nobody.stdout + nobody.stderr
    spill = run_cli("buffer", "--backend", f"{URL}/x", "--spill-dir", "/tmp")
    assert spill.returncode == 2 and "spill_dir is for the local buffer" in spill.stdout + spill.stderr


def test_metrics_of_the_nats_backend_come_from_the_bridge_and_the_server(bridge, tmp_path):
    from beamstream.buffer.status import fetch_status, status_tables
    from beamstream.display import console

    service, url = bridge
    metrics = service.serve_metrics(0)
    assert run_local(waveform_spec(f"ipc://{tmp_path / 'in'}"), workers=2).ok
    with Client(url, group="analysis", timeout=30) as client:
        assert len(list(client.events())) == 60
    status = fetch_status(metrics)
    assert status == service.status(), "the same figures in this process and scraped"
    assert status.totals["messages_in_total"] == 60 and status.totals["producers_ended"] == 2
    assert status.totals["stored_bytes"] > status.totals["bytes_in_total"] > 0
    analysis = status.groups["analysis"]
    assert analysis["group_depth"] == analysis["group_lag"] == 0 and analysis["group_delivered_total"] == 60
    with console.capture() as captured:
        for table in status_tables(status):
            console.print(table)
    assert "stored in NATS" in captured.get() and "analysis" in captured.get()


def test_full_stream_makes_the_bridge_hold_the_message_and_retry(tmp_path):
    """--max-spill reached: the server refuses, the bridge keeps the message and stores it once there is room."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    service = NatsBridge(f"ipc://{tmp_path / 'in'}", f"{URL}/{name}", max_bytes=12_000, retry_s=0.1).start()
    producer = FakeProducer(f"ipc://{tmp_path / 'in'}")
    try:
        for index in range(4):  # about 4.3 kB each: the third does not fit
            producer.send(data_frames(index, total=16))
        wait_until(lambda: service.outage is not None)
        assert "maximum bytes" in service.outage and service.counters["messages_in"] == 2
        with NatsStore(URL, name) as admin:  # make room
            config = admin.conn.call(admin.conn.js.stream_info(admin.stream)).config
            config.max_bytes = 1 << 20
            admin.conn.call(admin.conn.js.update_stream(config))
        producer.send(end_frames(messages=4, events=16))
        assert producer.reply() == ACK
        assert service.counters["messages_in"] == 4 and service.outage is None
    finally:
        producer.close()
        service.close()
    with Client(f"{URL}/{name}", group="g", timeout=30) as client:
        assert sorted(event.seq for event in client.events()) == list(range(16))
    with NatsStore(URL, name) as store:
        store.delete()


# --- message ids nobody else can claim, and a message NATS refused never passes as stored ---------

from beamstream.jetstream.store import MessageIdTaken  # noqa: E402
from beamstream.wire import nats as layout  # noqa: E402

KEY = StreamKey.generate()
OTHER = StreamKey.generate()  # another stream's: what a stranger may hold


def publish_as_stranger(name: str, records: list[tuple[str, str, list | bytes]]) -> None:
    """Publish ``(subject kind, Nats-Msg-Id, frames)`` records to stream ``name`` with a plain nats-py client
    of its own, as anyone allowed to publish to the server could (``bytes`` instead of frames: that body, with no
    beamstream headers); each must be stored (none a duplicate)."""
    import asyncio

    import nats

    async def publish() -> None:
        connection = await nats.connect(URL)
        try:
            js = connection.jetstream()
            for kind, msg_id, frames in records:
                body, headers = frames, {"Nats-Msg-Id": msg_id}
                if not isinstance(frames, bytes):
                    body, lengths = layout.join_frames(frames)
                    headers |= {"Bs-Msg": layout.message_id(parse_message(frames, verify=False)), "Bs-Frames": lengths}
                ack = await js.publish(f"beamstream.{name}.{kind}", body, headers=headers)
                assert not ack.duplicate, f"the stranger's record {msg_id} was stored"
        finally:
            await connection.close()

    asyncio.run(publish())


@pytest.fixture
def sealed_bridge(tmp_path):
    """A bridge given KEY's admission key on a fresh stream; yields (bridge, stream name); deletes the stream."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    service = NatsBridge(f"ipc://{tmp_path / 'in'}", f"{URL}/{name}", producer_timeout_s=3.0,
                         admission=KEY.admission).start()
    yield service, name
    service.close()
    with NatsStore(URL, name) as store:
        store.delete()


def send_all(producer: FakeProducer, frames: list[list], end: list) -> None:
    """Send every message, then the end; return once the end is acknowledged, every data message kept."""
    for message in frames:
        producer.send(message)
    producer.send(end)
    assert producer.reply() == ACK
    assert {parse_message(message, verify=False).index for message in frames} <= set(producer.kept)


def test_message_ids_of_a_sealed_stream_depend_on_its_key():
    headers = {layout.MSG: "run1-0-5"}
    ids = layout.MessageIds(KEY.admission)
    assert layout.MessageIds().of(headers) == "run1-0-5", "unsealed: the record's identity, as before"
    assert ids.of(headers) == layout.MessageIds(KEY.admission).of(headers), "the same message, the same id"
    assert len(ids.of(headers)) == 22 and ids.of(headers) != "run1-0-5"
    assert ids.of(headers) != layout.MessageIds(OTHER.admission).of(headers)
    assert len({ids.of(headers), ids.of({layout.MSG: "run1-0-6"}), ids.of({**headers, layout.PART: "0"})}) == 3


def test_a_stranger_publishing_first_under_predictable_ids_takes_no_real_message(sealed_bridge, tmp_path):
    """Issue 17, item 8: a stranger stores forged records under the ids the old scheme gave every future message
    (and its end), under random ids, and one that is no beamstream record at all, before the producer sends: the
    owner still gets every real event, and a complete report."""
    service, name = sealed_bridge
    n = 12
    forged = [("data", f"run1-0-{index}", data_frames(index, total=4 * n, key=OTHER, seed=1000 + index))
              for index in range(n)]
    forged += [("data", uuid.uuid4().hex, data_frames(index, total=4 * n, key=OTHER)) for index in (0, 5, 11)]
    forged += [("end", "run1-0-end", end_frames(messages=n - 1, events=4 * n, key=OTHER)),
               ("data", uuid.uuid4().hex, b"junk")]
    publish_as_stranger(name, forged)
    producer = FakeProducer(f"ipc://{tmp_path / 'in'}")
    try:
        send_all(producer, [data_frames(index, total=4 * n, key=KEY) for index in range(n)],
                 end_frames(messages=n, events=4 * n, key=KEY))
    finally:
        producer.close()
    with Client(f"{URL}/{name}", group="owner", key=KEY, timeout=30) as client:
        assert sorted(event.seq for event in client.events()) == list(range(4 * n))
    report = client.report
    assert report.complete and report.forged == n + 3 and report.refused == 1, report.summary()
    assert not service.displaced and service.counters["messages_in"] == n


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "unsealed"])
def test_a_real_message_nats_dropped_as_a_duplicate_makes_the_stream_incomplete(key, tmp_path):
    """Another record under the id a real message gets (published by a holder of the admission key, or by anyone
    on an unsealed stream): NATS drops the real one; the bridge counts it, names it in the verdict, and no reader
    is told the stream is complete."""
    name, n = f"test-{uuid.uuid4().hex[:12]}", 6
    admission = key.admission if key else None
    service = NatsBridge(f"ipc://{tmp_path / 'in'}", f"{URL}/{name}", producer_timeout_s=3.0,
                         admission=admission).start()
    producer = FakeProducer(f"ipc://{tmp_path / 'in'}")
    try:
        taken = layout.MessageIds(admission).of({layout.MSG: "run1-0-2"})
        publish_as_stranger(name, [("data", taken, data_frames(2, total=4 * n, key=OTHER if key else None, seed=99))])
        send_all(producer, [data_frames(index, total=4 * n, key=key) for index in range(n)],
                 end_frames(messages=n, events=4 * n, key=key))
        assert list(service.displaced) == [(0, 2)]
        assert "message 2 of producer 0 (events 8-11)" in service.displaced[0, 2]
        assert service.status().totals["displaced_messages_total"] == 1
        with pytest.raises(StreamIncomplete) as raised, Client(f"{URL}/{name}", group="g", key=key, timeout=30) as c:
            list(c.events())
    finally:
        producer.close()
        service.close()
        with NatsStore(URL, name) as store:
            store.delete()
    report = raised.value.report
    assert not report.complete and report.verdict.missing == [(8, 11)]
    assert "NATS did not store message 2 of producer 0" in report.summary()
    assert report.events == (4 * (n - 1) if key else 4 * n), "sealed: the forgery refused; unsealed: taken for real"


def test_the_store_takes_its_own_copy_as_stored_and_another_record_under_its_id_as_taken(store):
    small, split = data_frames(0), data_frames(1, 5 << 20)
    assert store.append(small) == store.append(small), "a resend within the duplicate window: the same record"
    assert store.append(split) == store.append(split), "parts and manifest alike"
    store.conn.call(store.conn.js.publish(layout.subject(stream_name(store), "data"), b"not it",
                                          headers={layout.MSG_ID: "run1-0-2"}))
    with pytest.raises(MessageIdTaken, match="already holds another record .* under the message id of run1-0-2"):
        store.append(data_frames(2))


def test_a_restarted_bridge_counts_only_records_sealed_with_the_admission_key(sealed_bridge, tmp_path):
    """Forged records stored while no bridge ran (a data message the producer has yet to send, an end) are not
    taken into the new bridge's account: the real message is stored when it comes, the stream completes."""
    service, name = sealed_bridge
    producer = FakeProducer(f"ipc://{tmp_path / 'in'}")
    try:
        for index in range(3):  # the second one is split into parts: its seal is read from the last ones
            producer.send(data_frames(index, nbytes=(5 << 20) if index == 1 else 4000, total=24, key=KEY))
        wait_until(lambda: service.counters["messages_in"] == 3)
        service.close()
        publish_as_stranger(name, [("data", uuid.uuid4().hex, data_frames(3, total=24, key=OTHER)),
                                   ("end", uuid.uuid4().hex, end_frames(messages=6, events=24))])
        second = NatsBridge(f"ipc://{tmp_path / 'in'}", f"{URL}/{name}", producer_timeout_s=3.0,
                            admission=KEY.admission).start()
        try:
            assert second.report.messages == 3 and not second.report.ended
            send_all(producer, [data_frames(index, total=24, key=KEY) for index in range(3, 6)],
                     end_frames(messages=6, events=24, key=KEY))
            assert second.counters["messages_in"] == 3 and second.counters["duplicates"] == 0
        finally:
            second.close()
    finally:
        producer.close()
    with Client(f"{URL}/{name}", group="g", key=KEY, timeout=30) as client:
        assert sorted(event.seq for event in client.events()) == list(range(24))
    assert client.report.complete and client.report.forged == 1, client.report.summary()


def test_a_verdict_a_stranger_publishes_is_not_taken_for_the_buffers(sealed_bridge, tmp_path):
    """A stranger publishes 'complete' verdicts on a sealed stream's verdict subject, before the buffer writes its own
    and after: the owner's reader ends with the buffer's verdict (incomplete: message 2 never came), never with the
    forgeries."""
    from beamstream.wire.control import Verdict, pack

    service, name = sealed_bridge
    forged = Verdict(complete=True, summary="stream run1: complete (forged)", missing=[])
    publish_as_stranger(name, [("verdict", uuid.uuid4().hex, pack(forged))])
    producer = FakeProducer(f"ipc://{tmp_path / 'in'}")
    try:
        send_all(producer, [data_frames(index, total=16, key=KEY) for index in (0, 1, 3)],
                 end_frames(messages=4, events=16, key=KEY))
        wait_until(lambda: service.verdict_for is not None, "the buffer to store its verdict", timeout=30)
        publish_as_stranger(name, [("verdict", uuid.uuid4().hex, pack(forged))])
        with pytest.raises(StreamIncomplete) as raised, Client(f"{URL}/{name}", group="g", key=KEY, timeout=30) as c:
            list(c.events())
    finally:
        producer.close()
    verdict = raised.value.report.verdict
    assert not verdict.complete and verdict.missing == [(8, 11)] and "forged" not in verdict.summary


def test_a_stream_made_with_a_retention_warns_that_it_removes_records_no_group_read(caplog):
    name = f"test-{uuid.uuid4().hex[:12]}"
    with caplog.at_level("WARNING", logger="beamstream.jetstream.store"), NatsStore(URL, name, max_age_s=60) as store:
        try:
            assert store.conn.call(store.conn.js.stream_info(store.stream)).config.max_age == 60
            with NatsStore(URL, name, max_age_s=60):  # the stream exists: its settings were told when it was made
                pass
        finally:
            store.delete()
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "read or not" in warnings[0] and "loses records untold" in warnings[0], warnings


def test_a_group_made_after_the_streams_first_records_aged_out_is_told_it_never_got_them():
    """JetStream removes records older than the stream's max_age (the buffer's --retention), read or not: a group
    made after that ends incomplete, saying why, and so does each later member of it and a reader alone; a group
    made before reads everything and ends as the stream did."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    with NatsStore(URL, name, max_age_s=1) as store, ExitStack() as readers:
        try:
            early = readers.enter_context(NatsGroupReader(URL, name, "early"))
            for index in range(3):
                store.append(data_frames(index))
            assert sorted(drain([early])[0]) == [0, 1, 2] and not early.aged_out
            wait_until(lambda: store.conn.call(store.conn.js.stream_info(store.stream)).state.first_seq > 1,
                       "the first records to age out", timeout=30, every=0.1)
            store.append(data_frames(3))
            store.write_verdict(Verdict(complete=True, summary="stream run1: complete", missing=[]))
            late = [readers.enter_context(NatsGroupReader(URL, name, group)) for group in ("late", "late", None)]
            for reader in late:
                verdict = reader.verdict()
                assert reader.aged_out and not verdict.complete, verdict
                assert verdict.summary.startswith("stream run1: complete\n"), verdict.summary
                assert "began after the stream's first records had aged out of NATS JetStream" in verdict.summary
            assert early.verdict().complete
            assert not readers.enter_context(NatsGroupReader(URL, name, "new", start="now")).aged_out
        finally:
            store.delete()
