"""Sealed streams (docs/wire-format.md, "Sealed messages"): messages encrypted and authenticated with the stream's
key, opened by consumers that hold it; anything else refused as forged, never delivered, never ending a stream."""

from __future__ import annotations

import inspect
import os
import threading

import msgpack
import numpy as np
import pytest
import zmq

from beamstream.batch import Batch, Share
from beamstream.client import Client
from beamstream.client.transports.memory import MemoryTransport
from beamstream.codecs import decode_payload
from beamstream.errors import SealRefused, WireFormatError
from beamstream.producer import new_stream_id, run_local
from beamstream.security.streamkey import StreamKey, write_key_file
from beamstream.serializers.arrays import ArraysSerializer
from beamstream.wire import DataMessage, EndMessage, message_from_batch, parse_message
from beamstream.wire.sealing import SEAL_BYTES
from conftest import run_cli, start_cli, waveform_spec

KEY = StreamKey.generate()
OTHER = StreamKey.generate()
SHARE = Share(rank=0, producers=1, start=0, stop=6, block=1)


def message(index: int, stream: str = "s1") -> DataMessage:
    seq = np.arange(2 * index, 2 * index + 2, dtype=np.int64)
    batch = Batch(seq, seq * 1.0, {"image": np.full((2, 3, 4), index, dtype=np.uint16),
                                   "energy": np.array([1.5, 2.5]) + index})
    return message_from_batch(batch, ArraysSerializer().build(), stream=stream, rank=0, producers=1, index=index,
                              share=SHARE)


def data(index: int, key: StreamKey | None = KEY, stream: str = "s1") -> list[bytes]:
    return [bytes(memoryview(frame)) for frame in message(index, stream).to_frames(key)]


def end(messages: int = 3, key: StreamKey | None = KEY, stream: str = "s1") -> list[bytes]:
    return [bytes(memoryview(frame)) for frame in EndMessage(
        stream=stream, rank=0, producers=1, share=SHARE, messages=messages, events=2 * messages,
        last_seq=2 * messages - 1).to_frames(key)]


# --- the wire ------------------------------------------------------------------------------------


def test_a_sealed_message_round_trips_and_hides_its_payload():
    frames = data(1)
    plain = message(1)
    assert len(frames) == 1 + len(plain.payload) + 1 and len(frames[-1]) == SEAL_BYTES
    header = msgpack.unpackb(frames[0])
    assert len(header["seal"]) == 12 and header["checksum"] is None
    for sent, clear in zip(frames[1:-1], plain.payload, strict=True):
        assert bytes(memoryview(clear)) not in sent  # encrypted
    opened = parse_message(frames, key=KEY)
    assert opened.seal == header["seal"] and opened.seq.tolist() == [2, 3]
    arrays = decode_payload(opened)
    np.testing.assert_array_equal(arrays["image"], np.full((2, 3, 4), 1, dtype=np.uint16))
    np.testing.assert_array_equal(arrays["energy"], [2.5, 3.5])
    assert data(1)[0] != frames[0], "a fresh nonce for every message"

    ended = parse_message(end(), key=KEY)
    assert isinstance(ended, EndMessage) and ended.messages == 3 and len(ended.seal) == 12
    assert len(end()) == 2


def test_a_buffer_checks_the_admission_seal_without_reading_and_one_without_keys_forwards_it():
    frames = data(0)
    checked = parse_message(frames, admission=KEY.admission)
    assert checked.seal and checked.nbytes == sum(len(frame) for frame in frames[1:-1])  # still ciphertext
    assert isinstance(parse_message(end(), admission=KEY.admission), EndMessage)
    with pytest.raises(SealRefused, match="admission key"):
        parse_message(frames, admission=OTHER.admission)
    as_is = parse_message(frames)
    assert as_is.seal and len(as_is.payload) == len(frames) - 2
    assert parse_message(frames[:1]).seal, "a spilled header alone still parses"
    assert parse_message(end()).seal


def altered(frames: list[bytes], how: str) -> list[bytes]:
    frames = list(frames)
    if how == "header":
        header = msgpack.unpackb(frames[0])
        frames[0] = msgpack.packb({**header, "sent": header["sent"] + 1})
    elif how == "payload bit":
        frames[1] = bytes([frames[1][0] ^ 1]) + frames[1][1:]
    elif how == "swapped frames":
        frames[1], frames[2] = frames[2], frames[1]
    elif how == "dropped frame":
        del frames[2]
    elif how == "added frame":
        frames.insert(2, frames[1])
    elif how == "no seal frame":
        del frames[-1]
    elif how == "short seal":
        frames[-1] = frames[-1][:-1]
    return frames


@pytest.mark.parametrize("how", ["header", "payload bit", "swapped frames", "dropped frame", "added frame",
                                 "no seal frame", "short seal"])
def test_an_altered_message_is_refused(how):
    with pytest.raises(SealRefused):
        parse_message(altered(data(0), how), key=KEY)


def test_a_message_of_another_key_or_unsealed_is_refused():
    with pytest.raises(SealRefused, match="not sealed with this stream's key"):
        parse_message(data(0, key=OTHER), key=KEY)
    with pytest.raises(SealRefused, match="not sealed with this stream's key"):
        parse_message(end(key=OTHER), key=KEY)
    for unsealed in (data(0, key=None), end(key=None)):
        with pytest.raises(SealRefused, match="is not sealed"):
            parse_message(unsealed, key=KEY)
        with pytest.raises(SealRefused, match="is not sealed"):
            parse_message(unsealed, admission=KEY.admission)
    with pytest.raises(WireFormatError, match="no payload"):
        parse_message([*end(), b"x"], key=KEY)
    # a seal moved from a sealed header onto another (the nonce copied) does not open either
    header = msgpack.unpackb(data(0)[0])
    forged = data(1, key=None)
    forged[0] = msgpack.packb({**msgpack.unpackb(forged[0]), "seal": header["seal"], "checksum": None})
    with pytest.raises(SealRefused):
        parse_message([*forged, data(0)[-1]], key=KEY)


# --- the Client ------------------------------------------------------------------------------------


def test_a_client_with_the_key_refuses_forged_messages_and_completes_with_exactly_the_real_events(caplog):
    forged_data = data(1, key=OTHER)
    forged_end = end(messages=1, key=None)  # would end the stream early, 4 events short
    transport = MemoryTransport([data(0), forged_data, forged_end, end(messages=1, key=OTHER), data(1),
                                 altered(data(2), "swapped frames"), data(2), end()])
    with Client.over(transport, timeout=1, key=KEY.to_text()) as client:
        seqs = [event.seq for event in client.events()]
    assert seqs == [0, 1, 2, 3, 4, 5]
    report = client.report
    assert report.forged == 4 and report.refused == 0 and report.complete
    assert "4 forged messages refused" in report.summary()
    assert "not sealed" in caplog.text and "not sealed with this stream's key" in caplog.text
    assert caplog.text.count("not sealed with this stream's key") == 1, "logged once per reason"


def test_a_client_without_the_key_says_the_stream_is_sealed():
    with Client.over(MemoryTransport([data(0), data(1), data(2), end()]), timeout=1) as client:
        with pytest.raises(SealRefused, match="is sealed.*key"):
            list(client.events())


# --- real producers, real sockets ---------------------------------------------------------------


def forge_into(endpoint: str, stream: str, replies: list) -> None:
    """Send a forged data message (another key) and a forged end message (unsealed) for rank 0 of ``stream``
    to the client at ``endpoint``, as a stranger that reached its port would; collect the client's replies."""
    spec_share = Share(rank=0, producers=2, start=0, stop=None, block=1)
    seq = np.array([0, 2], dtype=np.int64)
    batch = Batch(seq, seq * 1.0, {"waveform": np.zeros((2, 64), dtype=np.float32)})
    forged = message_from_batch(batch, ArraysSerializer().build(), stream=stream, rank=0, producers=2, index=0,
                                share=spec_share)
    forged_end = EndMessage(stream=stream, rank=0, producers=2, share=spec_share, messages=1, events=2, last_seq=2)
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(endpoint)
    try:
        socket.send_multipart(forged.to_frames(OTHER))
        socket.send_multipart(forged_end.to_frames())
        while len(replies) < 2 and socket.poll(30_000):
            replies.append(socket.recv())
    finally:
        socket.close(linger=0)
        context.term()


def test_real_producers_to_a_client_with_the_key_and_forgeries_refused(tmp_path):
    endpoint = f"ipc://{tmp_path / 's'}"
    stream = new_stream_id()
    spec = waveform_spec(endpoint, n_events=60, samples=64)
    outcome: dict = {}
    replies: list = []
    with Client(endpoint, bind=True, timeout=60, key=KEY) as client:
        forger = threading.Thread(target=forge_into, args=(endpoint, stream, replies))
        forger.start()
        producers = threading.Thread(
            target=lambda: outcome.setdefault("result", run_local(spec, workers=2, stream_id=stream, key=KEY)))
        producers.start()
        events = list(client.events())
        producers.join(timeout=120)
        forger.join(timeout=60)
    assert outcome["result"].ok, outcome["result"].errors
    assert len(replies) == 2 and all(reply.startswith(b"beamstream-refused") for reply in replies), replies
    assert sorted(event.seq for event in events) == list(range(60))
    assert all(event.data["waveform"].shape == (64,) for event in events)
    assert not any(event.data["waveform"].flags.writeable for event in events), "decrypted in place, read-only"
    assert client.report.forged == 2 and client.report.complete and client.report.duplicates == 0


def test_real_producers_through_a_local_buffer_to_a_group_member_with_the_key(tmp_path):
    from beamstream.buffer.local import LocalBuffer
    from beamstream.client.transports.group import GroupTransport

    if "admission" not in inspect.signature(GroupTransport).parameters:
        pytest.skip("this checkout's group transport cannot prove the admission key yet")
    buffer = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=64 << 20).start()
    try:
        result: dict = {}
        with Client(f"ipc://{tmp_path / 'out'}", group="g", timeout=60, key=KEY) as client:
            producers = threading.Thread(target=lambda: result.setdefault("result", run_local(
                waveform_spec(f"ipc://{tmp_path / 'in'}", n_events=40, samples=64), workers=2, key=KEY)))
            producers.start()
            seqs = sorted(event.seq for event in client.events())
            producers.join(timeout=120)
    finally:
        buffer.close()
    assert result["result"].ok, result["result"].errors
    assert seqs == list(range(40)) and client.report.forged == 0


def test_produce_and_consume_with_a_key_file_and_a_key_file_others_can_read_is_refused(tmp_path, write_spec):
    key_file = write_key_file(tmp_path / "stream.key", KEY)
    endpoint = f"ipc://{tmp_path / 's'}"
    spec_path = write_spec({"source": {"type": "simulated", "n_events": 20, "events_per_read": 5,
                                       "detectors": [{"kind": "waveform", "samples": 64}]},
                            "sinks": [{"type": "stream", "endpoint": endpoint}]})
    consumer = start_cli("consume", endpoint, "--bind", "--timeout", "60", "--key-file", str(key_file))
    produced = run_cli("produce", str(spec_path), "--key-file", str(key_file))
    _, err = consumer.communicate(timeout=60)
    assert produced.returncode == 0, produced.stderr
    assert consumer.returncode == 0 and "complete: 20 events in 20 messages" in err, err

    keyless = start_cli("consume", endpoint, "--bind", "--timeout", "60")
    sealed_spec = write_spec({"source": {"type": "simulated", "n_events": 20, "events_per_read": 5,
                                         "detectors": [{"kind": "waveform", "samples": 64}]},
                              "sinks": [{"type": "stream", "endpoint": endpoint, "send_timeout_s": 5}]}, "sealed.yaml")
    produced = run_cli("produce", str(sealed_spec), "--key-file", str(key_file))
    _, err = keyless.communicate(timeout=60)
    assert keyless.returncode == 1 and "is sealed" in err and "--key-file" in err and "Traceback" not in err, err
    assert produced.returncode == 1, produced.stderr

    os.chmod(key_file, 0o644)
    for command in (["produce", str(spec_path)], ["consume", endpoint]):
        refused = run_cli(*command, "--key-file", str(key_file))
        assert refused.returncode == 2, refused.stderr
        assert "may be read or changed by others" in refused.stderr and "chmod 600" in refused.stderr
