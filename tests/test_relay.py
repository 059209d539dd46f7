"""Reading a stream through the request service's relay (a WebSocket), against a real service, buffer and producers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from beamstream.client import Client
from beamstream.client.transports.relay import relay_url
from beamstream.errors import OptionError, TransportError
from beamstream.security.streamkey import StreamKey, write_key_file
from beamstream.service.relay_worker import PING, QUEUED, BufferLink
from beamstream.wire.control import Error, Hello, ToConsumer, pack, unpack
from beamstream.wire.relay import join_frames, split_frames
from conftest import run_cli, start_cli, wait_until
from servicekit import end_jobs_under, run_service, shown, stop_service

EVENTS = 120


def waveforms(events: int = EVENTS, rate_hz: float | None = 100.0) -> dict:
    """A stream spec of ``events`` simulated waveforms, one event per message, paced so that readers join before
    it ends."""
    return {"source": {"type": "simulated", "n_events": events, "events_per_read": 1, "rate_hz": rate_hz,
                       "detectors": [{"kind": "waveform", "samples": 256}]}}


@pytest.fixture
def service(tmp_path):
    process, url = run_service(tmp_path, drain_grace_s="60")
    yield url
    stop_service(process, url)


def request(url: str, spec: dict, workers: int = 2) -> tuple[str, str]:
    """The id and the key (its credentials, from the service's answer) of a stream requested from ``url``."""
    response = httpx.post(f"{url}/v1/streams", json={"spec": spec, "resources": {"workers": workers}}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["credentials"]["key"]


def read_events(endpoint: str, results: dict, reader: str, **options) -> threading.Thread:
    """Read every event on a thread: ``results[reader]`` maps each seq to (time, {name: (dtype, shape, bytes)}),
    ``results[reader + '.report']`` is the client's report (or ``results[reader + '.error']`` what it raised)."""

    def read() -> None:
        try:
            with Client(endpoint, timeout=60, **options) as client:
                results[reader] = {event.seq: (event.time, {name: (array.dtype.str, array.shape, array.tobytes())
                                                         for name, array in event.data.items()})
                                for event in client.events()}
            results[reader + ".report"] = client.report
        except Exception as exc:  # the test reports it
            results[reader + ".error"] = exc

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def test_a_stream_read_through_the_relay_is_bitwise_the_stream_read_directly(service, tmp_path):
    stream_id, key = request(service, waveforms())
    stream_url = f"{service}/v1/streams/{stream_id}"
    key_file = write_key_file(tmp_path / "stream.key", StreamKey.from_text(key))
    consume = start_cli("consume", stream_url, "--group", "cli", "--timeout", "60", "--key-file", str(key_file))
    results: dict = {}
    relayed = read_events(stream_url, results, "relay", group="relay", key=key)
    wait_until(lambda: shown(service, stream_id)["state"] == "running", "the stream to run", timeout=60)
    direct = read_events(shown(service, stream_id)["endpoints"]["consumers"], results, "direct", group="direct",
                         key=key)
    for thread in (relayed, direct):
        thread.join(timeout=120)
    _, err = consume.communicate(timeout=120)
    assert not {key: value for key, value in results.items() if key.endswith(".error")}
    assert sorted(results["relay"]) == list(range(EVENTS))
    assert results["relay"] == results["direct"], "every event's seq, time and arrays are the same bytes"
    for key in ("relay", "direct"):
        report = results[f"{key}.report"]
        assert report.complete and report.events == EVENTS and not report.refused and not report.duplicates
    assert consume.returncode == 0, err
    assert f"stream {stream_id}: complete: {EVENTS} events" in err


def test_a_relay_member_that_dies_gives_its_unacknowledged_messages_to_the_other_member(service, tmp_path):
    """The first member takes messages until it holds one it never finishes, and is killed; the second member
    of its group gets that message, and between them they got every event."""
    member = tmp_path / "member.py"
    member.write_text(
        "import sys, time\n"
        "from beamstream.client import Client\n"
        "with Client(sys.argv[1], group='workers', timeout=60, key=sys.argv[2]) as client:\n"
        "    for number, message in enumerate(client.messages()):\n"
        "        if number == 3:\n"
        "            print('holding', *message.seq.tolist(), flush=True)\n"
        "            time.sleep(600)\n"
        "        print('done', *message.seq.tolist(), flush=True)\n")
    stream_id, key = request(service, waveforms(rate_hz=200.0))
    stream_url = f"{service}/v1/streams/{stream_id}"
    dying = subprocess.Popen([sys.executable, str(member), stream_url, key], stdout=subprocess.PIPE, text=True)
    finished, held = [], []
    try:
        while (line := dying.stdout.readline()):
            word, *seqs = line.split()
            (finished if word == "done" else held).extend(int(seq) for seq in seqs)
            if word == "holding":
                break
        assert held, f"the first member read nothing (exit code {dying.poll()})"
        results: dict = {}
        survivor = read_events(stream_url, results, "survivor", group="workers", key=key)
        dying.send_signal(signal.SIGKILL)
        survivor.join(timeout=120)
    finally:
        dying.kill()
        dying.wait(timeout=30)
    assert "survivor.error" not in results, results.get("survivor.error")
    assert set(held) <= set(results["survivor"]), "the message the dead member held went to the other member"
    assert set(finished) | set(results["survivor"]) == set(range(EVENTS)), "no event lost"
    assert results["survivor.report"].complete


def test_an_unknown_or_ended_stream_is_a_clear_error_at_once(service):
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"closed the connection: no stream '0123456789abcdef' on this service"):
        with Client(f"{service}/v1/streams/0123456789abcdef", group="g", timeout=30) as client:
            list(client.events())
    ended, _ = request(service, waveforms())
    assert httpx.delete(f"{service}/v1/streams/{ended}", timeout=30).json()["state"] == "cancelled"
    with pytest.raises(TransportError, match=rf"closed the connection: stream {ended} has ended \(cancelled\)"):
        with Client(f"{service}/v1/streams/{ended}/", group="g", timeout=30) as client:
            list(client.events())
    assert time.monotonic() - started < 15, "no waiting on a stream that will never run"
    with pytest.raises(TransportError, match=r"answered HTTP \d+ instead of a WebSocket"):
        Client(f"{service}/v1/nothing", group="g")
    with pytest.raises(OptionError, match="read through the service's relay as a member of a consumer group"):
        Client(f"{service}/v1/streams/{ended}")
    with pytest.raises(OptionError, match="bind applies only to streams read from producers directly"):
        Client(f"{service}/v1/streams/{ended}", group="g", bind=True)
    failed = run_cli("consume", f"{service}/v1/streams/{ended}", "--group", "g", "--timeout", "30")
    assert failed.returncode == 1 and f"stream {ended} has ended (cancelled)" in " ".join((failed.stdout + failed.stderr).split())


def closing_code(address: str, message: bytes | str) -> int:
    """The code the relay closes the WebSocket with after ``message``."""
    with connect(address, compression=None, max_size=None) as websocket:
        websocket.send(message)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                websocket.recv(timeout=30)
    return closed.value.rcvd.code


def test_oversized_or_garbage_messages_hurt_neither_the_service_nor_the_stream(service):
    stream_id, key = request(service, waveforms())
    address = relay_url(f"{service}/v1/streams/{stream_id}")
    assert closing_code(address, b"\0" * (1 << 20)) == 1009, "a message over 64 KiB is refused by the server"
    assert closing_code(address, b"\x05\0") == 1007, "a message that is not a relay message"
    assert closing_code(address, join_frames([b"x"])[:-1]) == 1007, "frame lengths that do not add up"
    assert closing_code(address, "hello") == 1003, "a text message"
    with connect(address, compression=None) as websocket:  # relay messages, but not the consumer protocol
        websocket.send(join_frames([b"\xc1 not msgpack"]))
        reply = unpack(split_frames(websocket.recv(timeout=60))[0], ToConsumer)
        assert isinstance(reply, Error) and "is not msgpack" in reply.reason
        websocket.send(join_frames([pack(Hello(group="g", credit=1)), b"extra"]))
        reply = unpack(split_frames(websocket.recv(timeout=60))[0], ToConsumer)
        assert isinstance(reply, Error) and "a control message is one frame, got 2" in reply.reason
    assert httpx.get(f"{service}/healthz", timeout=30).json() == {"status": "ok"}
    with Client(f"{service}/v1/streams/{stream_id}", group="after", timeout=60, key=key) as client:
        assert sorted(event.seq for event in client.events()) == list(range(EVENTS))
    assert client.report.complete


def test_relay_messages_split_into_views_of_their_frames():
    frames = [b"head", np.arange(5, dtype=np.uint16).tobytes(), b""]
    message = join_frames(frames)
    split = split_frames(message)
    assert [bytes(frame) for frame in split] == frames and all(frame.readonly for frame in split)
    assert all(frame.obj is message for frame in split), "views of the message, not copies"
    for bad in (b"", b"\0\0\0\0", b"\x02\0\0\0" + b"\0" * 8, join_frames(frames) + b"x"):
        with pytest.raises(ValueError, match="relay message"):
            split_frames(bad)


def test_the_buffer_link_forwards_both_ways_in_order_without_pings_and_leaves_the_buffer_at_once():
    """A stand-in buffer (a ROUTER) and one relay thread: a reader's message reaches it; its messages come back as
    relay messages, in order, pings left out, at most QUEUED joined ahead of the WebSocket; closing the link closes
    its DEALER at once (the buffer sees the member leave), and receive() then says the thread has ended."""

    async def scenario() -> None:
        context = zmq.asyncio.Context()
        try:
            buffer = context.socket(zmq.ROUTER)
            port = buffer.bind_to_random_port("tcp://127.0.0.1")
            left = buffer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            heard = [0.0]
            link = BufferLink(context, f"tcp://127.0.0.1:{port}", heard)
            await link.send([memoryview(b"hello"), b"second frame"])
            member, *said = await asyncio.wait_for(buffer.recv_multipart(), 30)
            assert said == [b"hello", b"second frame"]
            for number in range(QUEUED + 1):
                await buffer.send_multipart([member, PING])
                await buffer.send_multipart([member, b"deliver", str(number).encode()])
            got = [split_frames(await asyncio.wait_for(link.receive(), 30)) for _ in range(QUEUED)]
            assert [[bytes(frame) for frame in frames] for frames in got] == [
                [b"deliver", str(number).encode()] for number in range(QUEUED)]
            assert heard[0] > 0, "the buffer's messages, pings included, count as heard"
            with pytest.raises(TimeoutError):  # none sent to the WebSocket yet: no more joined
                await asyncio.wait_for(asyncio.shield(next_one := asyncio.ensure_future(link.receive())), 0.5)
            link.sent()
            assert split_frames(await asyncio.wait_for(next_one, 30))[1] == str(QUEUED).encode()
            await asyncio.wait_for(link.close(), 30)
            event = parse_monitor_message(await asyncio.wait_for(left.recv_multipart(), 30))
            assert event["event"] == zmq.EVENT_DISCONNECTED
            assert await asyncio.wait_for(link.receive(), 30) is None
        finally:
            context.destroy(linger=0)

    asyncio.run(scenario())


def test_the_service_stops_at_once_while_it_relays_a_reader(tmp_path):
    """SIGTERM while a reader is relayed (its relay thread holding the buffer's DEALER): the service closes the
    relay with the reason and exits, instead of waiting for the stream to end."""
    process, url = run_service(tmp_path, drain_grace_s="60")
    try:
        stream_id, key = request(url, waveforms(events=100_000))
        with Client(f"{url}/v1/streams/{stream_id}", group="held", timeout=60, key=key) as client:
            messages = client.messages()
            next(messages)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)  # uvicorn ends by raising the SIGTERM it caught again: the code is -15
            with pytest.raises(TransportError, match="closed the connection"):
                for _ in messages:
                    pass
    finally:
        process.kill()
        end_jobs_under(tmp_path)
