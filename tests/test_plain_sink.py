"""The plain sink: one serialized blob per ZeroMQ message, no beamstream header, read by a bare pyzmq PULL socket."""

from __future__ import annotations

import io
import logging
import re
import threading

import h5py
import hdf5plugin  # noqa: F401  (the bitshuffle filter of compressed fields)
import numpy as np
import pytest
import zmq

from beamstream.batch import Batch, Share
from beamstream.errors import SpecError, StreamTimeout
from beamstream.plugins import plugin
from beamstream.producer import run_local
from beamstream.security.streamkey import StreamKey
from beamstream.serializers.hdf5 import HDF5Serializer
from beamstream.sinks.plain import PlainSender, PlainSink
from beamstream.sources.simulated import SimulatedSource
from beamstream.spec import parse_spec
from beamstream.stages import SinkContext
from beamstream.wire import EndMessage, message_from_batch

SOURCE = {"type": "simulated", "n_events": 12, "bank_size": 5, "events_per_read": 4,
          "detectors": [{"kind": "image", "shape": [24, 40], "peaks": 2}]}


def spec(sink: dict, serializer: dict | None = None):
    return parse_spec({"source": SOURCE, "serializer": serializer or {"type": "hdf5", "compression": "bitshuffle_lz4"},
                       "sinks": [sink]})


def produce(spec_, workers: int = 1) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_local(spec_, workers)))
    thread.start()
    return thread, outcome


def receive(pull: zmq.Socket, count: int) -> list[bytes]:
    blobs = []
    for _ in range(count):
        assert pull.poll(60_000), f"no blob within 60 s after {len(blobs)}"
        parts = pull.recv_multipart()
        assert len(parts) == 1, "one blob per ZeroMQ message"
        blobs.append(parts[0])
    return blobs


def check_hdf5_frames(blobs: list[bytes]) -> None:
    """Each blob one HDF5 file holding one event, equal to the simulated source's frame; every event once."""
    bank = SimulatedSource.model_validate(SOURCE).open().bank()
    seqs = []
    for blob in blobs:
        with h5py.File(io.BytesIO(blob), "r") as h5:
            seq = int(h5["_beamstream/seq"][0])
            assert h5["image"].shape == (1, 24, 40)
            np.testing.assert_array_equal(h5["image"][0], bank["image"][seq % 5])
            assert h5["image"].dtype == bank["image"].dtype
        seqs.append(seq)
    assert sorted(seqs) == list(range(12))


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_registered_as_a_sink():
    assert plugin("sinks", "plain") is PlainSink


def test_two_producers_connect_and_every_frame_is_an_hdf5_file(ipc_endpoint, context):
    pull = context.socket(zmq.PULL)
    pull.bind(ipc_endpoint)
    thread, outcome = produce(spec({"type": "plain", "endpoint": ipc_endpoint}), workers=2)
    blobs = receive(pull, 12)
    thread.join()
    assert outcome["result"].ok, outcome["result"].errors
    check_hdf5_frames(blobs)


def test_producers_that_bind_take_a_port_each(ipc_endpoint, context):
    pull = context.socket(zmq.PULL)
    pull.connect(ipc_endpoint)
    pull.connect(f"{ipc_endpoint}-1")  # producer 1 binds PATH-1
    thread, outcome = produce(spec({"type": "plain", "endpoint": ipc_endpoint, "bind": True}), workers=2)
    blobs = receive(pull, 12)
    thread.join()
    assert outcome["result"].ok, outcome["result"].errors
    check_hdf5_frames(blobs)


def test_the_arrays_serializer_is_refused_naming_what_to_use(ipc_endpoint):
    result = run_local(spec({"type": "plain", "endpoint": ipc_endpoint, "send_timeout_s": 5}, {"type": "arrays"}))
    assert "arrays blobs are raw buffers without dtype or shape: use serializer hdf5 or simplon" in result.errors[0]


def test_a_sealed_stream_is_refused(ipc_endpoint):
    result = run_local(spec({"type": "plain", "endpoint": ipc_endpoint}), key=StreamKey.generate())
    assert "cannot seal them, and this stream is sealed" in result.errors[0]


def test_a_send_nobody_takes_fails_after_send_timeout_s(ipc_endpoint, caplog):
    context = SinkContext(stream_id="s", rank=0, producers=1)
    share = Share(rank=0, producers=1)
    sender = PlainSink(endpoint=ipc_endpoint, hwm=1, send_timeout_s=0.2).open(context)  # nobody binds there
    assert isinstance(sender, PlainSender)
    codec = HDF5Serializer().build()
    caplog.set_level(logging.WARNING, "beamstream.sinks.plain")
    with pytest.raises(StreamTimeout, match=re.escape(f"no client took a blob from {ipc_endpoint} within 0.2 s")):
        for index in range(10):
            batch = Batch(np.array([index]), np.zeros(1), {"x": np.zeros((1, 3))})
            sender.send(message_from_batch(batch, codec, stream="s", rank=0, producers=1, index=index, share=share))
    assert "waiting for a client" in caplog.text
    sender.close(EndMessage(stream="s", rank=0, producers=1, share=share, messages=0, events=0, last_seq=None,
                            status="error", reason="test"))


@pytest.mark.parametrize("sink, message", [
    ({"type": "plain", "endpoint": "http://host:1"}, "sinks[0].endpoint: 'http://host:1': expected tcp://HOST:PORT"),
    ({"type": "plain", "endpoint": "tcp://host"}, "a tcp endpoint needs a host and a port"),
    ({"type": "plain"}, "sinks[0].endpoint: required, not given"),
    ({"type": "plain", "endpoint": "ipc:///tmp/p", "hwm": 0}, "sinks[0].hwm: Input should be greater than or equal to 1"),
    ({"type": "plain", "endpoint": "ipc:///tmp/p", "send_timeout_s": 0}, "sinks[0].send_timeout_s"),
    ({"type": "plain", "endpoint": "ipc:///tmp/p", "pattern": "pub"},
     "sinks[0].pattern: unknown option; allowed: endpoint, bind, hwm, send_timeout_s"),
])
def test_bad_sink_options_are_spec_errors(sink, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        spec(sink)
