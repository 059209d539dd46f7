"""The Client's front end over an in-memory transport, and options refused where they do not apply."""

from __future__ import annotations

import numpy as np
import pytest

from beamstream.batch import Batch, Share
from beamstream.client import Client
from beamstream.client.transports.memory import MemoryTransport
from beamstream.errors import OptionError, StreamIncomplete, StreamTimeout
from beamstream.serializers.arrays import ArraysSerializer
from beamstream.wire import EndMessage, message_from_batch
from beamstream.wire.control import Verdict
from conftest import run_cli

SHARE = Share(rank=0, producers=1, start=0, stop=6, block=1)


class UnknownSerializer:
    """Encodes as ``arrays`` does, under a name no reader has a codec for."""

    name = "x"

    def encode(self, batch: Batch) -> list:
        return ArraysSerializer().build().encode(batch)


def data(index: int, stream: str = "s1", serializer=None) -> list:
    seq = np.arange(2 * index, 2 * index + 2, dtype=np.int64)
    batch = Batch(seq, seq * 1.0, {"image": np.full((2, 3, 4), index, dtype=np.uint16)})
    message = message_from_batch(batch, serializer or ArraysSerializer().build(), stream=stream, rank=0, producers=1,
                                 index=index, share=SHARE)
    return [bytes(memoryview(frame)) for frame in message.to_frames()]


def end(messages: int = 3, stream: str = "s1") -> list:
    return EndMessage(stream=stream, rank=0, producers=1, share=SHARE, messages=messages, events=2 * messages,
                      last_seq=2 * messages - 1).to_frames()


def test_every_message_once_then_the_end():
    transport = MemoryTransport([data(0), data(1), data(1), data(2, stream="other"), data(2), end()])
    with Client.over(transport, timeout=1) as client:
        seqs = [event.seq for event in client.events()]
    assert seqs == [0, 1, 2, 3, 4, 5] and client.report.complete
    assert client.report.duplicates == 1 and client.report.foreign == 1
    assert transport.refusals == ["this consumer reads stream 's1', not 'other'"]
    assert [type(m).__name__ for m in transport.receipts] == ["DataMessage"] * 4 + ["EndMessage"]
    assert transport.done == [0, 1, 2, 3, 4, 5] and transport.closed
    assert client.report.summary().splitlines()[0].startswith("stream s1: complete: 6 events in 3 messages")


def test_arrays_are_read_only_views_of_the_frames():
    with Client.over(MemoryTransport([data(0), end(1)]), timeout=1) as client:
        message = next(client.messages())
        assert message.arrays["image"].tolist() == np.zeros((2, 3, 4)).tolist()
        assert not message.arrays["image"].flags.writeable


def test_a_corrupt_or_malformed_message_is_refused_and_never_passes_as_data():
    frames = data(0)
    frames[1] = b"\x01" + frames[1][1:]
    transport = MemoryTransport([frames, [b"\xc1 junk"], data(1), end(2)])
    with Client.over(transport, timeout=1) as client:
        with pytest.raises(StreamIncomplete, match="4 events never arrived: 0-1, 4-5") as raised:
            list(client.messages())
    assert transport.refusals[0].startswith("message 0 from producer 0 (events 0-1): payload checksum")
    assert "is not msgpack" in transport.refusals[1] and transport.done == [0, 1, 2, 3]
    assert raised.value.report.refused == 2 and "2 unreadable messages refused" in raised.value.report.summary()


def test_a_message_no_codec_decodes_is_refused_and_counted_and_the_stream_goes_on():
    transport = MemoryTransport([data(0), data(1, serializer=UnknownSerializer()), data(1), data(2), end()])
    with Client.over(transport, timeout=1) as client:
        seqs = [event.seq for event in client.events()]
    assert seqs == [0, 1, 2, 3, 4, 5] and client.report.complete and client.report.refused == 1
    assert transport.refusals == ["message encoded by serializer 'x', which this reader cannot decode; "
                                  "installed: arrays, hdf5, simplon"]
    alone = MemoryTransport([data(0), data(1, serializer=UnknownSerializer()), data(2), end()])
    with Client.over(alone, timeout=1) as client:  # never decoded, its events are missing, not silently skipped
        with pytest.raises(StreamIncomplete, match="2 events never arrived: 2-3"):
            list(client.events())


def test_a_missing_message_makes_the_stream_incomplete_naming_it():
    with Client.over(MemoryTransport([data(0), data(2), end()]), timeout=1) as client:
        with pytest.raises(StreamIncomplete, match="2 events never arrived: 2-3"):
            list(client.messages())


def test_silence_before_anything_is_a_timeout_and_after_something_incomplete():
    with Client.over(MemoryTransport([]), timeout=0.1) as client:
        with pytest.raises(StreamTimeout, match="nothing arrived from memory within 0.1 s"):
            list(client.messages())
    with Client.over(MemoryTransport([data(0)]), timeout=0.1) as client:
        with pytest.raises(StreamIncomplete, match="went silent for 0.1 s"):
            list(client.messages())


def test_the_stream_given_is_followed_and_others_refused():
    transport = MemoryTransport([data(0, stream="other"), data(0), data(1), data(2), end()])
    with Client.over(transport, timeout=1, stream="s1") as client:
        assert len(list(client.events())) == 6
    assert client.report.foreign == 1 and transport.refusals == ["this consumer reads stream 's1', not 'other'"]
    assert "1 messages of other streams refused" in client.report.summary()


def test_a_buffer_verdict_ends_the_stream_and_decides():
    verdict = Verdict(complete=False, summary="stream s1: INCOMPLETE (the buffer says)", missing=[(4, 5)])
    with Client.over(MemoryTransport([data(0), data(1)], verdict=verdict), timeout=1) as client:
        with pytest.raises(StreamIncomplete, match="the buffer says") as raised:
            list(client.messages())
    assert raised.value.report.verdict == verdict and raised.value.report.events == 4


@pytest.mark.parametrize(("endpoints", "options", "expected"), [
    ("tcp://127.0.0.1:1", {"lossy": True}, "lossy applies only with group="),
    ("tcp://127.0.0.1:1", {"start": "now"}, "start applies only with group="),
    ("tcp://127.0.0.1:1", {"redeliver_after": 5.0}, "redeliver_after applies only to a group of a nats:// stream"),
    ("tcp://127.0.0.1:1", {"group": "g", "redeliver_after": 5.0}, "redeliver_after applies only to a group of a nats://"),
    ("tcp://127.0.0.1:1", {"group": "g", "bind": True}, "bind applies only to streams read from producers directly"),
    ("tcp://127.0.0.1:1", {"group": "g", "pattern": "sub"}, "pattern='sub' applies only"),
    (["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"], {"group": "g"}, "a second endpoint applies only"),
    ("nats://127.0.0.1:1/s", {"bind": True}, "bind applies only to streams read from producers directly; it was given for nats://"),
    ("nats://127.0.0.1:1/s", {"hwm": 8}, "hwm applies only"),
    ("nats://127.0.0.1:1/s", {"redeliver_after": 5.0}, "redeliver_after applies only to a lossless group"),
    ("nats://127.0.0.1:1/s", {"group": "g", "lossy": True, "redeliver_after": 5.0}, "redeliver_after applies only"),
])
def test_options_that_do_not_apply_are_refused(endpoints, options, expected):
    with pytest.raises(OptionError, match=expected.replace("(", r"\(").replace("?", r"\?")):
        Client(endpoints, **options)


def test_the_scheme_picks_the_transport_and_a_ready_transport_takes_no_options():
    from beamstream.errors import TransportError

    with pytest.raises(TransportError, match="a Client reads tcp://, ipc://, inproc://, shm://, http://, https://, nats://"):
        Client("udp://127.0.0.1:1")
    with pytest.raises(TypeError, match="unexpected keyword argument 'lossyy'"):
        Client("tcp://127.0.0.1:1", lossyy=True)
    with pytest.raises(OptionError, match=r"takes no endpoints and no transport options \(lossy\)"):
        Client(transport=MemoryTransport([]), lossy=True)
    with Client(transport=MemoryTransport([data(0), data(1), data(2), end()]), timeout=1) as client:
        assert len(list(client.events())) == 6 and client.endpoints == ["memory"]


def test_consume_refuses_an_option_that_does_not_apply_in_its_own_words():
    result = run_cli("consume", "tcp://127.0.0.1:1", "--lossy", timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--lossy applies only with --group" in result.stderr


def test_a_group_member_whose_buffer_vanished_gives_up_after_its_timeout_never_blocking():
    """The member keeps saying hello to a buffer that is gone; its queue fills, and still it reports the silence."""
    import threading

    import zmq

    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    outcome: dict = {}

    def read() -> None:
        try:
            with Client(f"tcp://127.0.0.1:{port}", group="g", hwm=1, timeout=4) as client:
                outcome["events"] = list(client.events())
        except Exception as exc:  # what the reader raises is the outcome under test
            outcome["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert router.poll(10_000), "the member said hello"
    router.close(linger=0)
    context.term()
    reader.join(timeout=30)
    assert not reader.is_alive(), "the member blocked sending to a buffer that is gone"
    assert isinstance(outcome.get("error"), StreamTimeout), outcome
