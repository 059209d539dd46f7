"""The buffer service with real producer processes and real consumer clients."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from beamstream.buffer.service import BufferService
from beamstream.buffer.store import Log
from beamstream.client import Client
from beamstream.errors import StreamIncomplete
from beamstream.producer import run_local
from beamstream.spec import parse_spec


def spec_to(endpoint: str, n_events: int = 60, rate_hz: float | None = None):
    return parse_spec({
        "source": {"type": "simulated", "n_events": n_events, "events_per_read": 5, "rate_hz": rate_hz,
                   "detectors": [{"kind": "waveform", "samples": 1024}]},
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    })


@pytest.fixture
def buffer(tmp_path):
    service = BufferService(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=64 << 20).start()
    yield service
    service.close()


def consume_in_thread(endpoint: str, results: dict, key: str, **options) -> threading.Thread:
    def consume() -> None:
        with Client(endpoint, timeout=60, **options) as client:
            try:
                results[key] = [event.seq for event in client.events()]
            except StreamIncomplete as exc:
                results[key] = exc
            results[key + ".report"] = client.report

    thread = threading.Thread(target=consume)
    thread.start()
    return thread


def test_shared_and_broadcast_groups_get_the_expected_events(buffer, tmp_path):
    consumers = f"ipc://{tmp_path / 'out'}"
    results: dict = {}
    threads = [consume_in_thread(consumers, results, f"shared{n}", group="crystallography") for n in range(3)]
    threads.append(consume_in_thread(consumers, results, "training", group="training"))
    result = run_local(spec_to(f"ipc://{tmp_path / 'in'}"), workers=2)
    for thread in threads:
        thread.join(timeout=120)
    assert result.ok, result.errors
    assert sorted(results["training"]) == list(range(60))
    shared = Counter(seq for n in range(3) for seq in results[f"shared{n}"])
    assert sorted(shared) == list(range(60)) and set(shared.values()) == {1}
    assert all(results[f"shared{n}"] for n in range(3)), "every member of the shared group got work"
    assert all(results[f"{key}.report"].complete for key in ("shared0", "training"))


def test_lossy_group_is_told_what_it_skipped():
    log = Log(max_bytes=1 << 20)
    lossy = log.group("viewer", lossy=True, start="earliest")
    log.join(lossy, b"viewer-1", credit=1)
    for _ in range(10):
        log.append([b"x"], 1, "data")
    delivered = list(log.dispatch())
    assert [entry.offset for _, _, entry in delivered] == [9]
    assert lossy.skipped == 9


def test_unacknowledged_messages_go_to_another_member():
    log = Log(max_bytes=1 << 20)
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
    log = Log(max_bytes=10)
    group = log.group("g", lossy=False, start="earliest")
    member = log.join(group, b"a", credit=100)
    for _ in range(10):
        assert log.has_room(1)
        log.append([b"x"], 1, "data")
    assert not log.has_room(1)
    list(log.dispatch())
    log.acknowledge(group, member, [0, 1], credit=0)
    assert log.has_room(1) and log.resident_bytes == 9
