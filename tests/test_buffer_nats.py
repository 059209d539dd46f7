"""The NATS JetStream backend against the real server on 127.0.0.1:4222 (skipped if none listens)."""

from __future__ import annotations

import socket
import uuid
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("nats", reason="the NATS backend needs nats-py: pip install 'beamstream[nats]'")

from beamstream.batch import Batch, Share  # noqa: E402
from beamstream.buffer.nats_backend import NatsGroupReader, NatsStore  # noqa: E402
from beamstream.errors import TransportError, WireFormatError  # noqa: E402
from beamstream.serializers.arrays import ArraysSerializer  # noqa: E402
from beamstream.wire import DataMessage, EndMessage, message_from_batch, parse_message  # noqa: E402

URL = "nats://127.0.0.1:4222"
N = 1000


def nats_listening() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not nats_listening(), reason=f"no NATS server listens at {URL}")


@pytest.fixture
def store():
    """A store on a fresh stream; the stream is deleted afterwards."""
    with NatsStore(URL, f"test-{uuid.uuid4().hex[:12]}") as store:
        yield store
        store.delete()


def stream_name(store: NatsStore) -> str:
    return store.stream.removeprefix("BEAMSTREAM_")


def data_frames(index: int, nbytes: int = 4000) -> list:
    """Frames of data message ``index`` whose ``image`` field holds about ``nbytes`` bytes."""
    rng = np.random.default_rng(index)
    events = 4
    image = rng.integers(0, 60000, size=(events, max(1, nbytes // (2 * events))), dtype=np.uint16)
    batch = Batch(np.arange(index * events, (index + 1) * events, dtype=np.int64), np.full(events, 1.7e9),
                  {"image": image, "energy": rng.random(events)})
    message = message_from_batch(batch, ArraysSerializer().build(), stream="run1", rank=0, producers=1,
                                 index=index, share=Share(0, 1, 0, N, 1))
    return message.to_frames()


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


def test_end_messages_are_read_from_the_end_subject(store):
    end = EndMessage(stream="run1", rank=0, producers=1, share=Share(0, 1, 0, N, 1), messages=1, events=4,
                     last_seq=3)
    store.append(data_frames(0))
    with NatsGroupReader(URL, stream_name(store), "ends") as reader:
        assert reader.ends() == []
        store.append(end.to_frames())
        assert reader.ends() == [end]
        assert reader.ends() == [end], "seen ends stay, none is read twice"
        assert parse_message(reader.fetch(timeout=2)[0]).index == 0, "ends are not data"


def test_bad_server_url_is_a_transport_error_naming_it():
    with pytest.raises(TransportError, match=r"^no NATS server at nats://127\.0\.0\.1:4223: \S"):
        NatsStore("nats://127.0.0.1:4223", "never")


def test_append_refuses_what_is_not_a_beamstream_message(store):
    with pytest.raises(WireFormatError):
        store.append([b"not msgpack \xc1"])
