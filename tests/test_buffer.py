"""The local buffer with real producer processes and real consumer clients."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from beamstream.buffer.local import LocalBuffer
from beamstream.buffer.message_log import MessageLog
from beamstream.client import Client
from beamstream.errors import StreamIncomplete
from beamstream.producer import run_local
from beamstream.spec import parse_spec
from conftest import banner, read_in_thread, read_shared_and_broadcast, wait_until, waveform_spec




@pytest.fixture
def buffer(tmp_path):
    service = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=64 << 20).start()
    yield service
    service.close()




def test_shared_and_broadcast_groups_get_the_expected_events(buffer, tmp_path):
    results = read_shared_and_broadcast(f"ipc://{tmp_path / 'out'}", f"ipc://{tmp_path / 'in'}")
    assert sorted(results["training"]) == list(range(60))
    shared = Counter(seq for n in range(3) for seq in results[f"shared{n}"])
    assert sorted(shared) == list(range(60)) and set(shared.values()) == {1}
    assert all(results[f"shared{n}"] for n in range(3)), "every member of the shared group got work"
    assert all(results[f"{key}.report"].complete for key in ("shared0", "training"))


def test_lossy_group_is_told_what_it_skipped():
    log = MessageLog(max_bytes=1 << 20)
    lossy = log.group("viewer", lossy=True, start="earliest")
    log.join(lossy, b"viewer-1", credit=1)
    for _ in range(10):
        log.append([b"x"], 1, "data")
    delivered = list(log.dispatch())
    assert [entry.offset for _, _, entry in delivered] == [9]
    assert lossy.skipped == 9


def test_unacknowledged_messages_go_to_another_member():
    log = MessageLog(max_bytes=1 << 20)
    group = log.group("g", lossy=False, start="earliest")
    first = log.join(group, b"a", credit=3)
    for _ in range(3):
        log.append([b"x"], 1, "data")
    assert [entry.offset for _, _, entry in log.dispatch()] == [0, 1, 2]
    log.acknowledge(group, first, [0], credit=0)
    assert log.leave(group, b"a") == 2
    log.join(group, b"b", credit=5)
    assert [entry.offset for _, _, entry in log.dispatch()] == [1, 2]


def test_memory_bound_holds_back_until_lossless_group_acknowledges():
    log = MessageLog(max_bytes=10)
    group = log.group("g", lossy=False, start="earliest")
    member = log.join(group, b"a", credit=100)
    for _ in range(10):
        assert log.make_room(1)
        log.append([b"x"], 1, "data")
    assert not log.make_room(1)
    list(log.dispatch())
    log.acknowledge(group, member, [0, 1], credit=0)
    assert log.make_room(1) and log.resident_bytes == 9


def test_killed_consumer_loses_nothing_its_group_needs(buffer, tmp_path):
    """kill -9 a group member mid-stream: the other member gets every message the dead one had not finished."""
    import os
    import signal

    import h5py

    from conftest import start_cli

    consumers = f"ipc://{tmp_path / 'out'}"
    saved = tmp_path / "saved"
    victim = start_cli("consume", consumers, "--group", "g", "--out", str(saved), "--timeout", "60")
    results: dict = {}
    survivor = read_in_thread(consumers, results, "survivor", group="g")
    producer = threading.Thread(target=lambda: results.setdefault(
        "run", run_local(waveform_spec(f"ipc://{tmp_path / 'in'}", n_events=300, rate_hz=300), workers=1)))
    producer.start()
    wait_until(lambda: len(list(saved.glob("*.h5"))) >= 10, "the doomed member to save 10 messages", timeout=60)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    producer.join(timeout=120)
    survivor.join(timeout=120)
    assert results["run"].ok
    victim_seqs = set()
    for path in saved.glob("*.h5"):
        with h5py.File(path) as h5:
            victim_seqs.update(h5["_beamstream/seq"][()].tolist())
    survivor_seqs = results["survivor"]
    assert len(victim_seqs) >= 10
    assert victim_seqs | set(survivor_seqs) == set(range(300)), "nothing accepted was lost"
    assert len(victim_seqs & set(survivor_seqs)) <= 4, "at most the dead member's unacknowledged messages repeat"
    assert results["survivor.report"].complete


def test_buffer_command_serves_until_interrupted(tmp_path):
    import signal

    from conftest import run_cli, start_cli

    consumers = f"ipc://{tmp_path / 'out'}"
    service = start_cli("buffer", "--producer-endpoint", f"ipc://{tmp_path / 'in'}", "--consumer-endpoint", consumers,
                        "--max-memory", "64MiB")
    try:
        results: dict = {}
        reader = read_in_thread(consumers, results, "all", group="everything")
        result = run_local(waveform_spec(f"ipc://{tmp_path / 'in'}"), workers=2)
        reader.join(timeout=120)
        assert result.ok and sorted(results["all"]) == list(range(60))
    finally:
        service.send_signal(signal.SIGINT)
        _, err = service.communicate(timeout=30)
    assert "complete: 60 events" in err
    bad = run_cli("buffer", "--max-memory", "lots")
    assert bad.returncode == 2 and "not a size: 'lots'" in bad.stderr


def test_producer_speaking_another_wire_version_is_told_and_others_are_served(buffer, tmp_path):
    import msgpack
    import zmq

    from beamstream.errors import TransportError
    from beamstream.sinks.stream import StreamSink
    from beamstream.stages import SinkContext

    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.connect(f"ipc://{tmp_path / 'in'}")
    stranger.send_multipart([msgpack.packb({"v": 2, "kind": "data"}), b"payload"])
    assert stranger.poll(10_000)
    reply = stranger.recv()
    stranger.close(linger=0)
    assert reply.startswith(b"beamstream-refused: ") and b"wire format version 2" in reply

    sender = StreamSink(endpoint=f"ipc://{tmp_path / 'in'}", send_timeout_s=10).open(SinkContext("s", 0, 1))
    try:
        sender.socket.send_multipart([b"\xc1 not msgpack"])
        with pytest.raises(TransportError, match="refused a message: message header is not msgpack"):
            sender._wait_until(lambda: False, "the buffer's answer")
    finally:
        sender.close_now()

    poisoned = poisoned_message("s")
    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.connect(f"ipc://{tmp_path / 'in'}")
    stranger.send_multipart(poisoned)
    assert stranger.poll(10_000)
    reply = stranger.recv()
    stranger.close(linger=0)
    assert reply.startswith(b"beamstream-refused: ") and b"payload checksum" in reply, "refused before it is stored"

    results: dict = {}
    reader = read_in_thread(f"ipc://{tmp_path / 'out'}", results, "ok", group="g")
    assert run_local(waveform_spec(f"ipc://{tmp_path / 'in'}"), workers=1, stream_id="s").ok
    reader.join(timeout=60)
    assert sorted(results["ok"]) == list(range(60)), "the group never saw the poisoned message"
    assert results["ok.report"].complete
    assert buffer.counters["rejected"] == 3


def poisoned_message(stream: str) -> list[bytes]:
    """A data message of ``stream`` (rank 0 of 1, events 0-1) whose payload does not match its checksum."""
    import numpy as np

    from beamstream.batch import Batch, Share
    from beamstream.serializers.arrays import ArraysSerializer
    from beamstream.wire import message_from_batch

    batch = Batch(np.arange(2), np.zeros(2), {"waveform": np.ones((2, 4), np.float32)})
    message = message_from_batch(batch, ArraysSerializer().build(), stream=stream, rank=0, producers=1, index=0,
                                 share=Share(rank=0, producers=1, stop=60, block=5))
    frames = [bytes(memoryview(frame)) for frame in message.to_frames()]
    frames[1] = b"\xff" + frames[1][1:]
    return frames


def test_memory_bound_holds_with_a_slow_consumer(tmp_path):
    """A consumer 10× slower than the producer: the buffer's resident memory stays within its bound."""
    import time

    import psutil

    from conftest import start_cli

    consumers = f"ipc://{tmp_path / 'out'}"
    service = start_cli("buffer", "--producer-endpoint", f"ipc://{tmp_path / 'in'}", "--consumer-endpoint", consumers,
                        "--max-memory", "64MiB")
    process = psutil.Process(service.pid)
    assert "buffer: producers" in banner(service)  # serving: its own memory is all allocated now
    spec = parse_spec({
        "source": {"type": "simulated", "n_events": 80, "bank_size": 2, "events_per_read": 1,
                   "detectors": [{"kind": "image", "shape": [2048, 2048], "peaks": 0}]},  # 8 MiB events
        "sinks": [{"type": "stream", "endpoint": f"ipc://{tmp_path / 'in'}"}],
    })
    peak = 0
    try:
        with Client(consumers, group="slow", timeout=60, hwm=2) as client:
            baseline = process.memory_info().rss
            producer = threading.Thread(target=lambda: run_local(spec, workers=1))
            producer.start()
            seqs = []
            for event in client.events():
                seqs.append(event.seq)
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.05)  # the application's work: 10× slower than the producer
            producer.join()
    finally:
        service.terminate()
        service.wait(timeout=30)
    assert seqs == list(range(80))
    stated_overhead = (4 + 2) * 8 * 2**20  # (hwm + 2) × message size, see beamstream.buffer.local
    allowed = 64 * 2**20 + stated_overhead + 24 * 2**20  # + slack for the interpreter's own allocations
    assert peak - baseline < allowed, f"peak {(peak - baseline) / 2**20:.0f} MiB over baseline"


def test_producer_gone_without_end_is_reported_to_every_group(tmp_path, write_spec):
    """kill -9 the only producer: after producer_timeout_s the group is told what never arrived."""
    import os
    import signal

    from conftest import start_cli

    service = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=64 << 20,
                            producer_timeout_s=2.0).start()
    path = write_spec({"source": {"type": "simulated", "n_events": 400, "rate_hz": 100, "events_per_read": 10,
                                  "detectors": [{"kind": "waveform", "samples": 64}]},
                       "sinks": [{"type": "stream", "endpoint": f"ipc://{tmp_path / 'in'}"}]})
    producer = start_cli("produce", str(path), "--rank", "0", "--producers", "1", "--stream-id", "s1")
    try:
        with Client(f"ipc://{tmp_path / 'out'}", group="g", timeout=60) as client:
            with pytest.raises(StreamIncomplete) as raised:
                for event in client.events():
                    if event.seq == 30:
                        os.kill(producer.pid, signal.SIGKILL)
    finally:
        producer.wait()
        service.close()
    report = raised.value.report
    assert not report.complete and report.events >= 31
    assert "INCOMPLETE" in report.summary() and "producer 0: no end-of-stream" in report.summary()
    assert "events never arrived" in report.summary()


def _minor_faults(pid: int) -> int:
    """Page faults served without I/O so far (each first touch of a fresh page is one), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


def test_the_buffer_reuses_message_memory_once_its_log_is_full(tmp_path):
    """Past the first --max-memory of messages, receiving one does not touch fresh pages (2048 per 8 MiB)."""
    from conftest import start_cli

    consumers = f"ipc://{tmp_path / 'out'}"
    service = start_cli("buffer", "--producer-endpoint", f"ipc://{tmp_path / 'in'}", "--consumer-endpoint", consumers,
                        "--max-memory", "64MiB")
    assert "buffer: producers" in banner(service)
    spec = parse_spec({
        "source": {"type": "simulated", "n_events": 48, "bank_size": 2, "events_per_read": 1,
                   "detectors": [{"kind": "image", "shape": [2048, 2048], "peaks": 0}]},  # 8 MiB events
        "sinks": [{"type": "stream", "endpoint": f"ipc://{tmp_path / 'in'}"}],
    })
    faults = {}
    try:
        with Client(consumers, group="g", timeout=60) as client:
            producer = threading.Thread(target=lambda: run_local(spec, workers=1))
            producer.start()
            seqs = []
            for event in client.events():
                seqs.append(event.seq)
                if len(seqs) in (24, 48):  # the log (8 messages) has been full since about the 12th
                    faults[len(seqs)] = _minor_faults(service.pid)
            producer.join()
    finally:
        service.terminate()
        service.wait(timeout=30)
    assert seqs == list(range(48))
    per_message = (faults[48] - faults[24]) / 24
    assert per_message < 2048 / 4, f"{per_message:.0f} fresh pages per 8 MiB message (2048 is one message's worth)"


def test_freed_buffers_are_reused_while_busy_and_given_back_when_trimmed():
    """In a fresh interpreter: after release_freed_buffers, freed 8 MiB buffers are reused; trimming returns them."""
    import subprocess
    import sys

    program = """
import os, psutil
from beamstream.allocator import release_freed_buffers, trim_freed_buffers

def minor_faults():
    with open(f"/proc/{os.getpid()}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])

def fill():
    return [bytearray(b"x" * (8 << 20)) for _ in range(16)]  # 128 MiB, every page written

assert release_freed_buffers()
held = fill()
del held
before = minor_faults()
held = fill()
refaulted = minor_faults() - before
del held
busy = psutil.Process().memory_info().rss
assert trim_freed_buffers()
print(refaulted, (busy - psutil.Process().memory_info().rss) >> 20)
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    refaulted, returned_mib = map(int, out.stdout.split())
    assert refaulted < 16 * 2048 // 4, f"{refaulted} fresh pages for 16 reused 8 MiB buffers"
    assert returned_mib >= 100, f"trimming gave back only {returned_mib} MiB of 128 MiB freed"


def test_producers_have_an_io_thread_and_consumers_the_others(tmp_path):
    import zmq

    from beamstream.buffer.local import consumer_io_threads

    service = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}")
    try:
        threads = service.context.get(zmq.IO_THREADS)
        assert threads == 1 + consumer_io_threads() >= 3
        assert service.producer_socket.getsockopt(zmq.AFFINITY) == 1, "I/O thread 0 only"
        assert service.consumer_socket.getsockopt(zmq.AFFINITY) == (1 << threads) - 2, "every I/O thread but 0"
    finally:
        service.close()


def _io_thread_cpu() -> dict[str, int]:
    """CPU nanoseconds so far of each ZeroMQ I/O thread of this process, by thread name (``ZMQbg/IO/N``; a name
    that several contexts' threads share has their sum)."""
    import os

    used: Counter = Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm, open(f"/proc/self/task/{tid}/schedstat") as schedstat:
                name, nanoseconds = comm.read().strip(), int(schedstat.read().split()[0])
        except OSError:
            continue  # a thread that ended meanwhile
        if name.startswith("ZMQbg/IO/"):
            used[name] += nanoseconds
    return used


def test_two_groups_are_sent_to_by_io_threads_of_their_own(buffer, tmp_path):
    """The copy into the kernel that each group's messages cost runs on a consumer-side I/O thread per group, not
    one after the other on one thread: both threads do a good share of the sending (4 MiB images, two groups that
    joined one after the other). Only the buffer's context has I/O threads numbered above 0 in this process (the
    clients' have one each)."""
    spec = parse_spec({
        "source": {"type": "simulated", "n_events": 40, "bank_size": 2, "events_per_read": 1,
                   "detectors": [{"kind": "image", "shape": [1024, 2048], "peaks": 0}]},
        "sinks": [{"type": "stream", "endpoint": f"ipc://{tmp_path / 'in'}"}],
    })
    before = _io_thread_cpu()
    results: dict = {}
    readers = []
    for group in ("a", "b"):  # one after the other: ZeroMQ counts a connection's load once it is set up
        readers.append(read_in_thread(f"ipc://{tmp_path / 'out'}", results, group, group=group))
        wait_until(lambda: len(buffer.members) == len(readers), f"group {group} to join")
    assert run_local(spec, workers=1).ok
    for reader in readers:
        reader.join(timeout=60)
    assert results["a"] == results["b"] == list(range(40))
    used = _io_thread_cpu()
    sending = sorted((used[name] - before.get(name, 0) for name in used if name != "ZMQbg/IO/0"), reverse=True)
    assert len(sending) >= 2 and sending[1] >= sending[0] / 3, (
        f"the consumer-side I/O threads' CPU (ns): {sending}; one thread sends to both groups")


def test_freed_memory_is_given_back_once_the_buffer_is_idle(tmp_path, monkeypatch):
    """Trimming happens after a probe interval with no message in or out, once per idle spell."""
    import beamstream.buffer.local as service_module

    trims = []
    monkeypatch.setattr(service_module, "trim_freed_buffers", lambda: trims.append(True) or True)
    service = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}")
    try:
        service._trim_when_idle()
        assert trims == [], "nothing has moved since start: nothing to give back"
        service.counters["messages_in"] += 3
        service._trim_when_idle()
        assert trims == [], "busy during the last interval"
        service._trim_when_idle()
        service._trim_when_idle()
        assert trims == [True], "idle for an interval: trimmed once, not again while still idle"
        service.counters["messages_out"] += 1
        service._trim_when_idle()
        service._trim_when_idle()
        assert trims == [True, True]
    finally:
        service.close()


def test_a_message_over_the_size_limit_drops_its_sender_and_others_are_served(tmp_path):
    import zmq

    buffer = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_message=1 << 20).start()
    try:
        stranger = zmq.Context.instance().socket(zmq.DEALER)
        stranger.connect(f"ipc://{tmp_path / 'in'}")
        stranger.send_multipart([b"header", b"x" * (2 << 20)])
        assert not stranger.poll(1000), "disconnected before the frame was taken: no reply, nothing kept"
        stranger.close(linger=0)
        results: dict = {}
        reader = read_in_thread(f"ipc://{tmp_path / 'out'}", results, "ok", group="g")
        assert run_local(waveform_spec(f"ipc://{tmp_path / 'in'}"), workers=1).ok
        reader.join(timeout=60)
    finally:
        buffer.close()
    assert sorted(results["ok"]) == list(range(60)) and buffer.counters["messages_in"] == 60


@pytest.mark.parametrize("timeout", [1.0, 2.5])
def test_a_group_member_whose_buffer_is_gone_gives_up_within_its_timeout(tmp_path, timeout):
    import time

    from beamstream.errors import StreamTimeout

    started = time.monotonic()
    with Client(f"ipc://{tmp_path / 'nobody'}", group="g", timeout=timeout) as client:
        with pytest.raises(StreamTimeout, match="nothing arrived from the buffer at"):
            list(client.messages())
    assert time.monotonic() - started < timeout + 10, "not the default timeout (30 s)"  # loose: a loaded machine


def test_a_group_that_never_reads_is_dropped_instead_of_blocking_every_producer(tmp_path):
    """A member joins group 'lazy' and never acknowledges: once memory is full and it has held producers
    back for group_stall_s, the group is dropped (its member told why) and the real group gets everything."""
    import zmq

    from beamstream.wire.control import Error, Hello, ToConsumer, pack, unpack

    buffer = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=1 << 20,
                         group_stall_s=1.0).start()
    lazy = zmq.Context.instance().socket(zmq.DEALER)
    try:
        lazy.connect(f"ipc://{tmp_path / 'out'}")
        lazy.send(pack(Hello(group="lazy", credit=1)))
        wait_until(lambda: "lazy" in buffer.message_log.groups, "the lazy group to join")
        results: dict = {}
        reader = read_in_thread(f"ipc://{tmp_path / 'out'}", results, "ok", group="g")
        spec = waveform_spec(f"ipc://{tmp_path / 'in'}", n_events=80, samples=32768)  # 128 kB events, 10 MB
        assert run_local(spec, workers=1).ok
        reader.join(timeout=60)
        told = []
        while lazy.poll(1000):
            frames = lazy.recv_multipart()
            if isinstance(control := unpack(frames[0], ToConsumer), Error):
                told.append(control.reason)
    finally:
        lazy.close(linger=0)
        buffer.close()
    assert sorted(results["ok"]) == list(range(80)) and results["ok.report"].complete
    assert told and "group lazy was dropped: it acknowledged nothing for 1 s" in told[0]
    assert "lazy" not in buffer.message_log.groups and buffer.counters["groups_dropped"] == 1
    assert buffer.message_log.resident_bytes <= (1 << 20) + 128 * 1024 * 2


def test_consumers_beyond_the_limit_are_refused_and_the_others_served(tmp_path):
    from beamstream.errors import TransportError

    buffer = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_consumers=1).start()
    try:
        results: dict = {}
        reader = read_in_thread(f"ipc://{tmp_path / 'out'}", results, "ok", group="g")
        wait_until(lambda: len(buffer.members) == 1, "the first consumer to join")
        with Client(f"ipc://{tmp_path / 'out'}", group="g", timeout=30) as extra:
            with pytest.raises(TransportError, match="this buffer serves 1 consumers already"):
                list(extra.messages())
        assert run_local(waveform_spec(f"ipc://{tmp_path / 'in'}"), workers=1).ok
        reader.join(timeout=60)
    finally:
        buffer.close()
    assert sorted(results["ok"]) == list(range(60))


def test_a_buffer_without_a_spill_that_stops_mid_stream_tells_its_members_at_once(tmp_path):
    """Stopped (cancelled, shut down) before the stream ended, a buffer that keeps no spill tells each member
    that nothing more will come: it raises at once instead of waiting out its 60 s timeout."""
    from beamstream.errors import TransportError

    buffer = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}").start()
    outcome: dict = {}

    def read() -> None:
        try:
            with Client(f"ipc://{tmp_path / 'out'}", group="g", timeout=60) as client:
                list(client.messages())
        except TransportError as exc:
            outcome["error"] = exc

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: buffer.message_log.groups.get("g") and buffer.message_log.groups["g"].members,
               "the member to join")
    buffer.close()
    reader.join(timeout=30)
    assert not reader.is_alive(), "the member still waits for a buffer that has stopped"
    assert "the buffer stopped before the stream ended" in str(outcome.get("error")), outcome
