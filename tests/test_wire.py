"""The wire format: round trips, checksums, versions, shares."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from beamstream.batch import Batch, Share
from beamstream.errors import ChecksumMismatch, WireFormatError
from beamstream.codecs import decode_payload
from beamstream.serializers.arrays import ArraysSerializer
from beamstream.serializers.hdf5 import HDF5Serializer
from beamstream.wire import EndMessage, message_from_batch, parse_message
from beamstream.wire.metadata import RunMetadata

SHARE = Share(rank=1, producers=2, start=0, stop=100, block=10)


def batch() -> Batch:
    seq = np.array([10, 11, 12], dtype=np.int64)
    data = {"image": np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5), "energy": np.array([1.5, 2.5, 3.5])}
    return Batch(seq, np.array([1.0, 2.0, 3.0]), data)


def frames_of(serializer) -> list:
    message = message_from_batch(batch(), serializer.build(), stream="s1", rank=1, producers=2, index=0, share=SHARE)
    return [bytes(memoryview(frame)) for frame in message.to_frames()]


@pytest.mark.parametrize("serializer", [ArraysSerializer(), HDF5Serializer(compression="zstd")])
def test_round_trip(serializer):
    message = parse_message(frames_of(serializer))
    assert (message.stream, message.rank, message.producers, message.share) == ("s1", 1, 2, SHARE)
    assert message.seq.tolist() == [10, 11, 12] and message.time.tolist() == [1.0, 2.0, 3.0]
    arrays = decode_payload(message)
    for name, array in batch().data.items():
        np.testing.assert_array_equal(arrays[name], array)
        assert arrays[name].dtype == array.dtype


def test_corrupted_payload_is_refused_with_its_location():
    frames = frames_of(ArraysSerializer())
    frames[1] = b"\xff" + frames[1][1:]
    with pytest.raises(ChecksumMismatch, match="message 0 from producer 1 \\(events 10-12\\)"):
        parse_message(frames)


def test_other_wire_version_is_refused_clearly():
    frames = frames_of(ArraysSerializer())
    header = msgpack.unpackb(frames[0])
    frames[0] = msgpack.packb({**header, "v": 99})
    with pytest.raises(WireFormatError, match="version 99; this beamstream reads version 1"):
        parse_message(frames)


@pytest.mark.parametrize("junk", [[b"not msgpack \xc1"], [msgpack.packb([1, 2])], []])
def test_junk_is_a_wire_format_error(junk):
    with pytest.raises(WireFormatError):
        parse_message(junk)


def test_end_message_round_trip():
    end = EndMessage(stream="s1", rank=0, producers=2, share=SHARE, messages=5, events=50, last_seq=89,
                     status="error", reason="disk full")
    parsed = parse_message(end.to_frames())
    assert parsed == end


@pytest.mark.parametrize("ranks", [1, 2, 3, 7])
@pytest.mark.parametrize("block", [1, 4, 10])
def test_shares_cover_the_range_exactly_once(ranks, block):
    shares = [Share(rank=rank, producers=ranks, start=5, stop=103, block=block) for rank in range(ranks)]
    everything = np.concatenate([share.seqs() for share in shares])
    assert sorted(everything.tolist()) == list(range(5, 103))
    for share in shares:
        assert share.owns(share.seqs()).all()
        assert share.owns(np.arange(5, 103)).sum() == len(share.seqs())


def test_report_names_a_producer_never_heard_from():
    from beamstream.accounting import StreamReport
    from beamstream.wire import DataMessage

    report = StreamReport(endpoints=["tcp://127.0.0.1:1"])
    share = Share(rank=0, producers=2, start=0, stop=8, block=2)
    report.add_data(DataMessage(stream="s", rank=0, producers=2, index=0, share=share, seq=np.array([0, 1]),
                                time=np.zeros(2), serializer="arrays", fields=[], payload=[]))
    assert not report.complete
    assert report.missing == [(2, 3), (4, 5), (6, 7)]
    problems = "\n".join(report.problems())
    assert "producer 0: no end-of-stream after 1 messages" in problems
    assert "producer 1: nothing arrived and no end-of-stream" in problems
    assert "producer 1: 4 events never arrived: 2-3, 6-7" in problems


def test_headers_are_the_version_1_bytes_documented():
    """The typed definitions encode exactly the msgpack maps docs/wire-format.md describes, key order included
    (a data header's map length is written as map16, which every msgpack reader takes as it takes a fixmap)."""
    message = message_from_batch(batch(), ArraysSerializer().build(), stream="s1", rank=1, producers=2, index=7,
                                 share=SHARE)
    header = message.to_frames()[0]
    assert list(msgpack.unpackb(header).items()) == list(msgpack.unpackb(msgpack.packb({
        "v": 1, "kind": "data", "stream": "s1", "rank": 1, "producers": 2, "index": 7, "share": [1, 2, 0, 100, 10],
        "first_seq": 10, "last_seq": 12, "seq": np.array([10, 11, 12], "<i8").tobytes(),
        "time": np.array([1.0, 2.0, 3.0], "<f8").tobytes(), "serializer": "arrays",
        "fields": [["image", "<u2", [3, 4, 5]], ["energy", "<f8", [3]]], "checksum": message.checksum,
        "sent": message.sent,
    })).items())
    described = message_from_batch(batch(), ArraysSerializer().build(), stream="s1", rank=1, producers=2, index=0,
                                   share=SHARE, metadata=RunMetadata(experiment="xpptut15", run=7))
    assert msgpack.unpackb(described.to_frames()[0])["metadata"] == {"experiment": "xpptut15", "run": 7}
    end = EndMessage(stream="s1", rank=0, producers=2, share=SHARE, messages=5, events=50, last_seq=89)
    assert end.to_frames() == [msgpack.packb({
        "v": 1, "kind": "end", "stream": "s1", "rank": 0, "producers": 2, "share": [1, 2, 0, 100, 10], "messages": 5,
        "events": 50, "last_seq": 89, "status": "ok", "reason": "", "extra": {}, "omitted": b"", "seal": b""})]


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("rank", [1], r"Expected `int`, got `array` - at `\$.rank`"),
    ("rank", {"a": 1}, r"Expected `int`, got `object` - at `\$.rank`"),
    ("rank", -1, r"Expected `int` >= 0 - at `\$.rank`"),
    ("rank", 2, "rank 2 is not below producers 2"),
    ("index", "7", r"Expected `int`, got `str` - at `\$.index`"),
    ("share", [0, 2, 0, None, 0], r"Expected `int` >= 1 - at `\$.share\[4\]`"),
    ("fields", [["image", "<u2"]], r"at `\$.fields\[0\]`"),
    ("seq", b"\x00" * 7, "seq \\(7 bytes\\) and time"),
    ("omitted", b"\x00" * 7, "omitted \\(7 bytes\\) must hold 8-byte values"),
    ("omitted", np.array([1], "<i8").tobytes(), "omitted events outside its share"),
    ("omitted", np.array([14, 13], "<i8").tobytes(), "omitted sequence numbers do not increase"),
])
def test_a_header_field_of_the_wrong_type_or_range_is_refused_naming_it(key, value, expected):
    frames = frames_of(ArraysSerializer())
    frames[0] = msgpack.packb({**msgpack.unpackb(frames[0]), key: value})
    with pytest.raises(WireFormatError, match=expected):
        parse_message(frames)


def test_an_end_message_with_a_payload_is_refused():
    end = EndMessage(stream="s1", rank=0, producers=2, share=SHARE, messages=5, events=50, last_seq=89)
    with pytest.raises(WireFormatError, match="an end message has no payload"):
        parse_message([*end.to_frames(), b"stray"])


def test_control_messages_are_typed_and_checked():
    from beamstream.wire.control import PROTOCOL, Ack, Hello, ToBuffer, pack, unpack

    hello = Hello(group="g", lossy=True, start="now", credit=4)
    assert pack(hello) == msgpack.packb({"op": "hello", "protocol": PROTOCOL, "group": "g", "lossy": True,
                                         "start": "now", "credit": 4, "nonce": b"", "at": 0.0, "proof": b""})
    assert unpack(pack(hello), ToBuffer) == hello
    for junk, expected in [({"op": "ack", "protocol": PROTOCOL, "offsets": [[1]]}, r"at `\$.offsets\[0\]`"),
                           ({"op": "ack", "protocol": PROTOCOL, "credit": -5}, r">= 0 - at `\$.credit`"),
                           ({"op": "hello", "protocol": PROTOCOL, "group": "g", "start": "later"}, r"\$.start"),
                           ({"op": "deliver", "protocol": PROTOCOL, "offset": 1, "skipped": 0}, "Invalid value 'deliver'"),
                           ({"op": "ack", "protocol": "other/9"}, "speaks 'other/9'"),
                           ({"protocol": PROTOCOL}, "has no 'op'")]:
        with pytest.raises(WireFormatError, match=expected):
            unpack(msgpack.packb(junk), ToBuffer)
    assert unpack(pack(Ack(offsets=[3], credit=1)), ToBuffer).offsets == [3]


def test_replies_are_parsed_and_malformed_ones_named():
    from beamstream.wire.replies import ACK, kept, parse_reply

    assert parse_reply(kept(12)).index == 12 and parse_reply(ACK).kind == "ack"
    for junk in (b"beamstream-kept -1", b"beamstream-kept 1e9", b"beamstream-kept " + b"9" * 40, b"hello"):
        with pytest.raises(WireFormatError):
            parse_reply(junk)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("producers", 10**9, r"<= 16384 - at `\$.producers`"),
    ("share", [1, 2, 50, 10, 1], "share stops at 10, before it starts at 50"),
    ("share", [1, 2, 0, 2**63, 1], r"at `\$.share\[3\]`"),
    ("share", [0, 2, 0, 100, 10], "carries the share of rank 0 of 2"),
    ("first_seq", 11, "but the header says first_seq 11"),
    ("stream", "x" * 1000, r"length <= 256 - at `\$.stream`"),
    ("fields", [["f", "<u2", []]], r"\$.fields\[0\]\[2\]"),
])
def test_absurd_header_values_are_refused(key, value, expected):
    frames = frames_of(ArraysSerializer())
    frames[0] = msgpack.packb({**msgpack.unpackb(frames[0]), key: value})
    with pytest.raises(WireFormatError, match=expected):
        parse_message(frames)


def test_events_outside_the_share_or_out_of_order_are_refused():
    header = msgpack.unpackb(frames_of(ArraysSerializer())[0])
    for seq, expected in (([10, 12, 11], "do not increase"), ([0, 1, 2], "outside its share")):
        frames = frames_of(ArraysSerializer())
        frames[0] = msgpack.packb({**header, "seq": np.array(seq, "<i8").tobytes(), "first_seq": seq[0],
                                   "last_seq": seq[-1]})
        with pytest.raises(WireFormatError, match=expected):
            parse_message(frames, verify=False)


def test_a_huge_share_is_accounted_by_arithmetic():
    """A producer announcing 2**62 events and sending two: the account names what is missing without
    listing 2**62 numbers (at most MAX_MISSING_RANGES ranges; the count stays exact)."""
    from beamstream.accounting import MAX_MISSING_RANGES, StreamReport
    from beamstream.wire import DataMessage

    for producers in (1, 3):
        share = Share(rank=0, producers=producers, start=0, stop=2**62, block=4)
        report = StreamReport(endpoints=["memory"])
        report.add_data(DataMessage(stream="s", rank=0, producers=producers, index=0, share=share,
                                    seq=np.array([0, 1, 2, 3, 4]) if producers == 1 else np.array([0, 1, 2, 3]),
                                    time=np.zeros(5 if producers == 1 else 4), serializer="arrays", fields=[],
                                    payload=[]))
        received = 5 if producers == 1 else 4
        assert report.missing_events == 2**62 - received
        assert 0 < len(report.missing) <= MAX_MISSING_RANGES and not report.complete
        assert "events never arrived" in report.summary()


def test_share_counts_and_positions_agree_with_its_list():
    for share in (Share(rank=1, producers=3, start=5, stop=103, block=4), Share(rank=0, producers=1, start=2, stop=40)):
        seqs = share.seqs()
        assert share.count() == len(seqs) and share.positions(seqs).tolist() == list(range(len(seqs)))
        assert [s for a, b in share.seq_ranges(0, len(seqs) - 1, 10**6) for s in range(a, b + 1)] == seqs.tolist()
        assert share.count(until=50) == len(seqs[seqs < 50])


@pytest.mark.parametrize("kind", [{"a": 1}, [1], 3.5, None, b"data"])
def test_a_header_kind_of_any_type_is_refused(kind):
    frames = frames_of(ArraysSerializer())
    frames[0] = msgpack.packb({**msgpack.unpackb(frames[0]), "kind": kind})
    with pytest.raises(WireFormatError, match="unknown message kind"):
        parse_message(frames)


def hdf5_image(build) -> bytes:
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        build(h5)
    return buffer.getvalue()


@pytest.mark.parametrize(("case", "expected"), [
    ("external link", "is a ExternalLink"),
    ("soft link", "is a SoftLink"),
    ("external storage", "external storage and virtual datasets are refused"),
    ("virtual", "external storage and virtual datasets are refused"),
    ("other shape", "the header says <u2 \\(3, 4\\)"),
])
def test_an_hdf5_payload_that_would_read_beyond_the_message_is_refused(tmp_path, case, expected):
    """A file image from the network must not make the reader open local files or read more than it says."""
    import h5py

    from beamstream.codecs.hdf5 import HDF5Codec
    from beamstream.wire import FieldInfo

    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as h5:
        h5["data"] = np.arange(12, dtype="<u2").reshape(3, 4)
    (tmp_path / "raw.bin").write_bytes(np.arange(12, dtype="<u2").tobytes())

    def build(h5):
        if case == "external link":
            h5["image"] = h5py.ExternalLink(str(secret), "data")
        elif case == "soft link":
            h5["real"] = np.zeros((3, 4), "<u2")
            h5["image"] = h5py.SoftLink("/real")
        elif case == "external storage":
            h5.create_dataset("image", shape=(3, 4), dtype="<u2", external=[(str(tmp_path / "raw.bin"), 0, 24)])
        elif case == "virtual":
            layout = h5py.VirtualLayout(shape=(3, 4), dtype="<u2")
            layout[:] = h5py.VirtualSource(str(secret), "data", shape=(3, 4))
            h5.create_virtual_dataset("image", layout)
        else:
            h5["image"] = np.zeros((4, 4), "<u2")

    with pytest.raises(WireFormatError, match=expected):
        HDF5Codec().decode([FieldInfo("image", "<u2", (3, 4))], [hdf5_image(build)])


@pytest.mark.parametrize("chunks", [None, (1, 1024, 1024), (7, 100, 100)], ids=["contiguous", "chunked", "partial"])
def test_a_fill_value_bomb_is_refused_before_anything_is_allocated(chunks):
    """A 1.6 KB payload declaring 800 MB of fill values (storage never written; or all chunks but one written) is
    refused; a compressed payload that stores every chunk decodes whole, however well it compressed."""
    import tracemalloc

    from beamstream.codecs.hdf5 import HDF5Codec
    from beamstream.wire import FieldInfo

    shape = (400, 1024, 1024)

    def build(h5):
        dataset = h5.create_dataset("image", shape=shape, dtype="<u2", chunks=chunks, fillvalue=7)
        if chunks == (7, 100, 100):
            dataset[:7, :100, :100] = 1  # one chunk written of many
    payload = hdf5_image(build)
    assert len(payload) < 200_000  # for 800 MB declared
    tracemalloc.start()
    with pytest.raises(WireFormatError, match="a message must hold every element it declares"):
        HDF5Codec().decode([FieldInfo("image", "<u2", shape)], [payload])
    assert tracemalloc.get_traced_memory()[1] < 10 << 20
    tracemalloc.stop()
    zeros = hdf5_image(lambda h5: h5.create_dataset("image", data=np.zeros((8, 256, 256), "<u2"), chunks=(1, 256, 256),
                                                    compression="gzip"))
    assert HDF5Codec().decode([FieldInfo("image", "<u2", (8, 256, 256))], [zeros])["image"].sum() == 0
