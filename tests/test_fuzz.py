"""Hostile traffic against a live buffer and a live consumer while real streams run beside them.

Hypothesis generates message headers (valid ones with one key replaced by anything msgpack can
carry, maps of random keys and values, raw bytes) and consumer control messages, and sends them
to a running buffer's producer and consumer endpoints and to a running consumer's endpoint. The
services must never die, and the real streams must complete with exactly their events.
"""

from __future__ import annotations

import os
import threading

import msgpack
import numpy as np
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beamstream.batch import Batch, Share
from beamstream.buffer.local import LocalBuffer
from beamstream.producer import run_local
from beamstream.serializers.arrays import ArraysSerializer
from beamstream.wire import message_from_batch
from beamstream.wire.control import PROTOCOL
from conftest import read_in_thread, wait_until, waveform_spec

REAL = "real"
EVENTS = 400
EXAMPLES = int(os.environ.get("BEAMSTREAM_FUZZ_EXAMPLES", "200"))  # raise it for a longer hunt

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.binary(max_size=64),
)
values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=6), st.dictionaries(st.text(max_size=12), children, max_size=6)), max_leaves=20)


def valid_header(stream: str, index: int) -> dict:
    batch = Batch(np.array([2 * index, 2 * index + 1]), np.zeros(2), {"waveform": np.ones((2, 8), np.float32)})
    message = message_from_batch(batch, ArraysSerializer().build(), stream=stream, rank=0, producers=1, index=index,
                                 share=Share(rank=0, producers=1, stop=1000, block=2))
    return msgpack.unpackb(message.to_frames()[0])


HEADER_KEYS = list(valid_header("x", 0))
foreign_streams = st.text(min_size=1, max_size=20).filter(lambda name: name != REAL)


@st.composite
def hostile_headers(draw) -> list[bytes]:
    """A message: a valid header of another stream with one key replaced, or random maps, or bytes."""
    kind = draw(st.sampled_from(["mutated", "map", "bytes", "end"]))
    if kind == "bytes":
        return [draw(st.binary(max_size=200))]
    if kind == "map":
        header = draw(st.dictionaries(st.sampled_from(HEADER_KEYS + ["op", "x"]), values, max_size=16))
    else:
        header = valid_header(draw(foreign_streams), draw(st.integers(0, 10)))
        if kind == "end":
            header = {**header, "kind": "end"}
        header[draw(st.sampled_from(HEADER_KEYS))] = draw(values)
    payload = draw(st.lists(st.binary(max_size=64), max_size=3))
    return [msgpack.packb(header, use_bin_type=True), *payload]


@st.composite
def hostile_controls(draw) -> list[bytes]:
    """A consumer control message with random fields (or none of the right ones)."""
    fields = draw(st.dictionaries(st.sampled_from(["group", "lossy", "start", "credit", "offsets", "x"]), values,
                                  max_size=5))
    op = draw(st.sampled_from(["hello", "ack", "deliver", "end", "nonsense"]) | values)
    protocol = draw(st.sampled_from([PROTOCOL, PROTOCOL, "other/2"]) | values)
    frames = [msgpack.packb({"op": op, "protocol": protocol, **fields}, use_bin_type=True)]
    return frames + draw(st.lists(st.binary(max_size=16), max_size=2))


def send_all(socket: zmq.Socket, frames: list[bytes]) -> None:
    try:
        socket.send_multipart(frames, zmq.NOBLOCK)
    except zmq.Again:
        pass  # the service is not reading this peer now: that is its right


def test_hostile_messages_never_stop_the_services_and_real_streams_complete(tmp_path):
    buffer_in, buffer_out = f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}"
    direct = f"ipc://{tmp_path / 'direct'}"
    buffer = LocalBuffer(buffer_in, buffer_out).start()
    context = zmq.Context()
    attackers = {name: context.socket(zmq.DEALER) for name in ("producer", "consumer", "direct")}
    for name, endpoint in (("producer", buffer_in), ("consumer", buffer_out), ("direct", direct)):
        attackers[name].connect(endpoint)
    results: dict = {}
    try:
        member = read_in_thread(buffer_out, results, "member", group="g")
        direct_reader = read_in_thread(direct, results, "direct", bind=True, stream=REAL)
        runs = [threading.Thread(target=lambda endpoint=endpoint, name=name: results.setdefault(name, run_local(
                    waveform_spec(endpoint, n_events=EVENTS, rate_hz=200), workers=2, stream_id=REAL)))
                for endpoint, name in ((buffer_in, "into buffer"), (direct, "into client"))]
        for run in runs:
            run.start()
        wait_until(lambda: buffer.report.stream == REAL, "the real stream to reach the buffer")
        wait_until(lambda: "g" in buffer.message_log.groups and buffer.message_log.groups["g"].members,
                   "the real member to join its group")

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.data())
        def attack(data):
            send_all(attackers["producer"], data.draw(hostile_headers()))
            send_all(attackers["direct"], data.draw(hostile_headers()))
            send_all(attackers["consumer"], data.draw(hostile_controls()))

        attack()
        for socket in attackers.values():
            socket.close(linger=0)  # a hostile member leaves: what it held goes to the real member
        for thread in (*runs, member, direct_reader):
            thread.join(timeout=120)
        assert buffer._thread.is_alive(), "the buffer's loop died"
    finally:
        context.term()
        buffer.close()
    assert "into buffer" in results and "into client" in results, f"a real run did not finish: {results}"
    assert results["into buffer"].ok and results["into client"].ok, (results["into buffer"].errors,
                                                                     results["into client"].errors)
    assert sorted(results["member"]) == list(range(EVENTS)) and results["member.report"].complete
    assert sorted(results["direct"]) == list(range(EVENTS)) and results["direct.report"].complete
    assert buffer.counters["rejected"] > 0 and buffer.counters["control_rejected"] > 0
    assert buffer.report.events == EVENTS
