"""The buffer's spill directory: replay, restart, torn writes, unusable directories."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from beamstream.buffer.segments import Segments, SpillError
from beamstream.buffer.service import BufferService
from beamstream.client import Client
from beamstream.errors import StreamIncomplete
from beamstream.producer import run_local
from beamstream.spec import parse_spec
from conftest import wait_until


def spec_to(endpoint: str, n_events: int = 60):
    return parse_spec({
        "source": {"type": "simulated", "n_events": n_events, "events_per_read": 5,
                   "detectors": [{"kind": "image", "shape": [256, 256]}]},  # 128 kB events
        "steps": [{"type": "batch", "size": 2}],
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    })


def read_group(endpoint: str, group: str) -> tuple[list, Client]:
    with Client(endpoint, group=group, timeout=60) as client:
        messages = [(m.header.rank, m.header.index, [bytes(f) for f in m.header.payload]) for m in client.messages()]
    return messages, client




def test_a_new_group_replays_identical_bytes_from_disk(tmp_path):
    service = BufferService(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=1 << 20,
                            spill=tmp_path / "spill").start()
    try:
        assert run_local(spec_to(f"ipc://{tmp_path / 'in'}"), workers=2).ok
        first, first_client = read_group(f"ipc://{tmp_path / 'out'}", "epoch-1")
        second, second_client = read_group(f"ipc://{tmp_path / 'out'}", "epoch-2")
    finally:
        service.close()
    assert len(first) == 30 and sorted(first) == sorted(second)
    assert first_client.report.complete and second_client.report.complete
    assert service.log.resident_bytes <= 1 << 20 and service.log.spilled_bytes > 30 * 2 * 128 * 1024


def test_retained_stream_survives_a_restart(tmp_path):
    endpoints = (f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}")
    service = BufferService(*endpoints, max_bytes=1 << 20, spill=tmp_path / "spill").start()
    try:
        assert run_local(spec_to(endpoints[0]), workers=2).ok
        half = []
        with Client(endpoints[1], group="slow", timeout=60) as client:
            for message in client.messages():
                half.append(message.header.seq.tolist())
                if len(half) == 10:
                    break
            # the acknowledgements of the first 9 travel on; close only once the buffer has them
            wait_until(lambda: service.log.groups["slow"].low_water >= 9, "the buffer to record 9 acknowledgements")
    finally:
        service.close()
    restarted = BufferService(*endpoints, max_bytes=1 << 20, spill=tmp_path / "spill").start()
    try:
        rest, slow = read_group(endpoints[1], "slow")
        everything, late = read_group(endpoints[1], "late")
    finally:
        restarted.close()
    assert late.report.complete and slow.report.complete
    assert len(everything) == 30
    assert 20 <= len(rest) <= 21, "the slow group resumes after what it acknowledged (the 10th may come again)"


def test_torn_record_at_the_end_is_cut_and_damage_elsewhere_is_named(tmp_path):
    segments = Segments(tmp_path, segment_bytes=100)
    for offset in range(4):
        segments.append(offset, [b"header", np.arange(20, dtype=np.uint8).tobytes()], "data")
    segments.close()
    last = segments.segment_paths()[-1]
    with open(last, "ab") as file:
        file.write(b"BSR1\x05\x00\x00")  # the buffer died while writing offset 5
    reopened = Segments(tmp_path)
    assert sorted(reopened.index) == [0, 1, 2, 3] and reopened.read(3)[0] == b"header"
    first = segments.segment_paths()[0]
    data = bytearray(first.read_bytes())
    data[30] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(SpillError, match=f"{first}: damaged record at byte 0"):
        Segments(tmp_path)


def test_unusable_spill_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpillError, match="give a writable directory"):
        BufferService(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", spill=blocker / "spill")


def test_full_spill_blocks_producers_until_a_group_catches_up(tmp_path):
    """max_spill small: producers wait; nothing is dropped for the lossless group."""
    service = BufferService(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=1 << 20,
                            spill=tmp_path / "spill", max_spill=3 << 20).start()
    results: dict = {}
    try:
        reader = threading.Thread(target=lambda: results.setdefault(
            "g", read_group(f"ipc://{tmp_path / 'out'}", "g")))
        reader.start()
        assert run_local(spec_to(f"ipc://{tmp_path / 'in'}", n_events=200), workers=1).ok
        reader.join(timeout=120)
    finally:
        service.close()
    messages, client = results["g"]
    assert len(messages) == 100 and client.report.complete
    assert service.log.spilled_bytes <= (3 << 20) + (1 << 20)


def test_buffer_killed_and_restarted_loses_nothing(tmp_path, write_spec):
    """kill -9 the buffer mid-stream, restart it on the same spill directory: the group gets every
    message the buffer had accepted, and the producer sends again what was in flight to the dead one,
    so the stream ends complete."""
    import os
    import signal

    from conftest import start_cli

    endpoints = (f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}")
    command = ("buffer", "--producers", endpoints[0], "--consumers", endpoints[1], "--max-memory", "4MiB",
               "--spill-dir", str(tmp_path / "spill"), "--producer-timeout", "5")
    buffer = start_cli(*command)
    assert "buffer: producers" in buffer.stderr.readline()
    path = write_spec({"source": {"type": "simulated", "n_events": 300, "rate_hz": 150, "events_per_read": 10,
                                  "detectors": [{"kind": "waveform", "samples": 256}]},
                       "sinks": [{"type": "stream", "endpoint": endpoints[0]}]})
    producer = start_cli("produce", str(path), "--rank", "0", "--ranks", "1", "--stream-id", "restart")
    seqs = []
    outcome = None
    with Client(endpoints[1], group="g", timeout=60) as client:
        try:
            for event in client.events():
                seqs.append(event.seq)
                if event.seq == 60:
                    os.kill(buffer.pid, signal.SIGKILL)
                    buffer.wait()
                    buffer = start_cli(*command)
                    assert "buffer: producers" in buffer.stderr.readline()
            outcome = "complete"
        except StreamIncomplete as exc:
            outcome = exc.report
    producer.wait(timeout=60)
    buffer.send_signal(signal.SIGINT)
    buffer.communicate(timeout=30)
    accepted = set()
    for _, kind, frames in Segments(tmp_path / "spill").records(first_frame_only=True):
        accepted.update(np.frombuffer(__import__("msgpack").unpackb(frames[0])["seq"], "<i8").tolist())
    assert producer.returncode == 0
    assert accepted == set(seqs) == set(range(300)), "every message reached the buffer and the group"
    assert outcome == "complete"


def test_messages_in_flight_to_a_killed_buffer_are_sent_again(tmp_path):
    """The buffer's spill is full (its group does not read), so messages wait in its queues; kill -9 it:
    after the restart the producer sends again what the dead buffer never kept, and the stream is complete."""
    import os
    import signal

    from beamstream.producer import run_worker
    from conftest import start_cli, wait_until, waveform_spec

    endpoints = (f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}")

    def start_buffer(max_spill: str):
        buffer = start_cli("buffer", "--producers", endpoints[0], "--consumers", endpoints[1],
                           "--max-memory", "1MiB", "--spill-dir", str(tmp_path / "spill"), "--max-spill", max_spill)
        assert "buffer: producers" in buffer.stderr.readline()
        return buffer

    buffer = start_buffer("2MiB")
    sent = []
    with Client(endpoints[1], group="g", timeout=60) as client:  # joins now, reads only after the restart
        wait_until(lambda: (tmp_path / "spill" / "groups.json").exists(), "the group to be saved")
        spec = waveform_spec(endpoints[0], n_events=40, samples=65536)  # 256 KiB messages: 8 fill the spill
        progress = []
        producer = threading.Thread(target=lambda: sent.append(
            run_worker(spec, 0, 1, "inflight", report=lambda stats: progress.append(stats.messages))))
        producer.start()
        wait_until(lambda: progress and progress[-1] >= 14, "the producer to send past the full spill")
        kept_before = len(Segments(tmp_path / "spill").index)
        os.kill(buffer.pid, signal.SIGKILL)
        buffer.wait()
        buffer = start_buffer("64MiB")
        try:
            seqs = [event.seq for event in client.events()]
        finally:
            producer.join(timeout=60)
            buffer.send_signal(signal.SIGINT)
            buffer.communicate(timeout=30)
    assert kept_before < 14, "some sent messages were only in the dead buffer's queues"
    assert sent and sent[0].status == "ok"
    assert sorted(set(seqs)) == list(range(40)) and client.report.complete
