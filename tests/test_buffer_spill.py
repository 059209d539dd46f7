"""The buffer's spill directory: replay, restart, torn writes, unusable directories."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import xxhash

from beamstream.buffer import segments as segments_module
from beamstream.buffer.segments import Location, Record, Segments, SpillError, index_path, write_index
from beamstream.buffer.local import LocalBuffer
from beamstream.client import Client
from beamstream.errors import StreamIncomplete
from beamstream.producer import run_local
from beamstream.spec import parse_spec
from beamstream.wire.spill import HEAD, MAGIC, TAIL
from conftest import banner, wait_until


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
    service = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=1 << 20,
                            spill=tmp_path / "spill").start()
    try:
        assert run_local(spec_to(f"ipc://{tmp_path / 'in'}"), workers=2).ok
        first, first_client = read_group(f"ipc://{tmp_path / 'out'}", "epoch-1")
        second, second_client = read_group(f"ipc://{tmp_path / 'out'}", "epoch-2")
    finally:
        service.close()
    assert len(first) == 30 and sorted(first) == sorted(second)
    assert first_client.report.complete and second_client.report.complete
    assert service.message_log.resident_bytes <= 1 << 20 and service.message_log.spilled_bytes > 30 * 2 * 128 * 1024


def test_retained_stream_survives_a_restart(tmp_path):
    endpoints = (f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}")
    service = LocalBuffer(*endpoints, max_bytes=1 << 20, spill=tmp_path / "spill").start()
    try:
        assert run_local(spec_to(endpoints[0]), workers=2).ok
        half = []
        with Client(endpoints[1], group="slow", timeout=60) as client:
            for message in client.messages():
                half.append(message.header.seq.tolist())
                if len(half) == 10:
                    break
            # the acknowledgements of the first 9 travel on; close only once the buffer has them
            wait_until(lambda: service.message_log.groups["slow"].low_water >= 9, "the buffer to record 9 acknowledgements")
    finally:
        service.close()
    restarted = LocalBuffer(*endpoints, max_bytes=1 << 20, spill=tmp_path / "spill").start()
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
    reopened = Segments.recover(tmp_path)
    assert sorted(reopened.index) == [0, 1, 2, 3] and reopened.read(3)[0] == b"header"
    first = segments.segment_paths()[0]
    data = bytearray(first.read_bytes())
    data[30] ^= 0xFF
    first.write_bytes(bytes(data))
    index_path(first).unlink()  # with its index the sealed segment would be trusted unread; without, it is scanned
    with pytest.raises(SpillError, match=f"{first}: damaged record at byte 0"):
        Segments(tmp_path)


def write_small(directory, count: int, close: bool = True) -> Segments:
    """``count`` records of 69 bytes, two to a segment (sealed as the writer moves on, and on close)."""
    segments = Segments(directory, segment_bytes=100)
    for offset in range(count):
        segments.append(offset, [f"header {offset}".encode(), np.arange(20, dtype=np.uint8).tobytes()], "data")
    if close:
        segments.close()
    return segments


def test_opening_changes_nothing_and_refuses_to_write_after_a_torn_record(tmp_path):
    write_small(tmp_path, 4, close=False)  # killed: the last segment is not sealed
    last = Segments(tmp_path).segment_paths()[-1]
    whole = last.stat().st_size
    with open(last, "ab") as file:
        file.write(b"BSR1\x05\x00\x00")  # the buffer died while writing offset 4
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    opened = Segments(tmp_path)
    assert sorted(opened.index) == [0, 1, 2, 3]
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before, "nothing cut, nothing written"
    with pytest.raises(SpillError, match=f"{last}: torn record at byte {whole}; open the spill with Segments.recover"):
        opened.append(4, [b"header 4"], "data")
    recovered = Segments.recover(tmp_path)
    assert last.stat().st_size == whole and index_path(last).exists(), "the torn record cut, the segment sealed"
    recovered.append(4, [b"header 4"], "data")
    recovered.close()
    assert [frames for _, _, frames in Segments(tmp_path).records(first_frame_only=True)] == [
        [f"header {offset}".encode()] for offset in range(5)]


def test_a_missing_or_damaged_index_is_rebuilt_by_scanning(tmp_path):
    write_small(tmp_path, 6)
    first, second, third = Segments(tmp_path).segment_paths()
    written = {path: index_path(path).read_bytes() for path in (first, second, third)}
    expected = list(Segments(tmp_path).records())
    index_path(first).unlink()
    damaged = bytearray(written[second])
    damaged[20] ^= 0xFF
    index_path(second).write_bytes(bytes(damaged))
    index_path(third).write_bytes(written[third] + b"\x00")  # too long: its checksum no longer verifies
    assert list(Segments(tmp_path).records()) == expected, "scanned, not trusted"
    assert not index_path(first).exists(), "a plain opening writes no index"
    assert list(Segments.recover(tmp_path).records()) == expected
    assert {path: index_path(path).read_bytes() for path in (first, second, third)} == written, (
        "the scan writes the index the writer wrote")


def test_delete_before_removes_the_index_with_its_segment(tmp_path):
    segments = write_small(tmp_path, 6, close=False)
    assert sorted(path.name for path in tmp_path.glob("*.idx")) == ["seg-000000000000.idx", "seg-000000000002.idx"]
    assert segments.delete_before(4) == 4 * 69
    assert sorted(path.name for path in tmp_path.iterdir()) == ["seg-000000000004.bss"]
    assert sorted(segments.index) == [4, 5] and segments.total_bytes == 2 * 69


GIB = 1 << 30
HEADER = b"\x85\xa4kind\xa4data" + bytes(200)  # the first frame: a message header of some 200 bytes


def sparse_segment(path: Path, first: int, count: int, digest: int) -> None:
    """``count`` records of [HEADER, 1 GiB of zeros] in the record layout, the 1 GiB a hole (no disk used),
    sealed with the index that the writer writes."""
    records = []
    with open(path, "wb") as file:
        for offset in range(first, first + count):
            position = file.tell()
            file.write(HEAD.pack(MAGIC, offset, 0, 2) + struct.pack("<2Q", len(HEADER), GIB) + HEADER)
            file.seek(GIB, os.SEEK_CUR)
            file.write(TAIL.pack(digest))
            records.append(Record(offset, Location(path, position, (len(HEADER), GIB), "data"), [HEADER]))
    write_index(path, records)


def test_restart_on_a_100_gib_spill_reads_only_the_indexes_and_the_last_segment(tmp_path, monkeypatch):
    """25 sealed segments of 4 records of 1 GiB (sparse files) and a last segment the writer was killed in:
    recovering opens no sealed segment, and a damaged byte in one goes unnoticed until its index is damaged too."""
    probe = tmp_path / "probe"
    probe.touch()
    os.truncate(probe, GIB)
    if probe.stat().st_blocks:
        pytest.skip("the file system under tmp_path keeps no sparse files")
    digest = xxhash.xxh3_64(HEADER)
    zeros = bytes(16 << 20)
    for _ in range(GIB // len(zeros)):
        digest.update(zeros)
    spill = tmp_path / "spill"
    spill.mkdir()
    for number in range(25):
        sparse_segment(spill / f"seg-{4 * number:012d}.bss", 4 * number, 4, digest.intdigest())
    writer = Segments(spill)
    for offset in range(100, 103):
        writer.append(offset, [f"header {offset}".encode(), b"payload"], "data")  # then killed: no close
    *sealed, last = writer.segment_paths()
    read: list[Path] = []

    def watched_open(path, mode="r", *args):
        if "r" in mode:
            read.append(Path(path))
        return open(path, mode, *args)

    monkeypatch.setattr(segments_module, "open", watched_open, raising=False)

    recovered = Segments.recover(spill)
    headers = [frames for _, _, frames in recovered.records(first_frame_only=True)]

    assert recovered.total_bytes == sum(path.stat().st_size for path in [*sealed, last]) > 100 * GIB
    assert sum(path.stat().st_blocks * 512 for path in spill.iterdir()) < 4 << 20
    assert headers == [[HEADER]] * 100 + [[f"header {offset}".encode()] for offset in range(100, 103)]
    assert {path for path in read if path.suffix == ".bss"} == {last}, "of the segments, only the last one is read"
    assert sum(path.stat().st_size for path in set(read)) < 1 << 20, "under 1 MiB read for a 100 GiB spill"

    victim = sealed[0]
    with open(victim, "r+b") as file:
        file.seek(HEAD.size + 16 + len(HEADER) + 12345)  # inside the first record's 1 GiB frame
        file.write(b"\xff")
    assert sorted(Segments.recover(spill).index) == list(range(103)), "a sealed segment's payload is not read"
    index = bytearray(index_path(victim).read_bytes())
    index[-1] ^= 0xFF
    index_path(victim).write_bytes(bytes(index))
    with pytest.raises(SpillError, match=f"{victim}: damaged record at byte 0"):
        Segments.recover(spill)


def test_unusable_spill_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpillError, match="give a writable directory"):
        LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", spill=blocker / "spill")


def test_full_spill_blocks_producers_until_a_group_catches_up(tmp_path):
    """max_spill small: producers wait; nothing is dropped for the lossless group."""
    service = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=1 << 20,
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
    assert service.message_log.spilled_bytes <= (3 << 20) + (1 << 20)


def test_buffer_killed_and_restarted_loses_nothing(tmp_path, write_spec):
    """kill -9 the buffer mid-stream, restart it on the same spill directory: the group gets every
    message the buffer had accepted, and the producer sends again what was in flight to the dead one,
    so the stream ends complete."""
    import os
    import signal

    from conftest import start_cli

    endpoints = (f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}")
    command = ("buffer", "--producer-endpoint", endpoints[0], "--consumer-endpoint", endpoints[1], "--max-memory", "4MiB",
               "--spill-dir", str(tmp_path / "spill"), "--producer-timeout", "5")
    buffer = start_cli(*command)
    assert "buffer: producers" in banner(buffer)
    path = write_spec({"source": {"type": "simulated", "n_events": 300, "rate_hz": 150, "events_per_read": 10,
                                  "detectors": [{"kind": "waveform", "samples": 256}]},
                       "sinks": [{"type": "stream", "endpoint": endpoints[0]}]})
    producer = start_cli("produce", str(path), "--rank", "0", "--producers", "1", "--stream-id", "restart")
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
                    assert "buffer: producers" in banner(buffer)
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
        buffer = start_cli("buffer", "--producer-endpoint", endpoints[0], "--consumer-endpoint", endpoints[1],
                           "--max-memory", "1MiB", "--spill-dir", str(tmp_path / "spill"), "--max-spill", max_spill)
        assert "buffer: producers" in banner(buffer)
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
