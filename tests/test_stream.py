"""End to end: real producer processes, real ZeroMQ sockets, the real client."""

from __future__ import annotations

import os
import signal
import threading

import h5py
import numpy as np
import pytest

from beamstream.client import Client
from beamstream.errors import StreamIncomplete, StreamTimeout
from beamstream.producer import new_stream_id, run_local
from beamstream.sources.simulated import SimulatedSource
from beamstream.spec import parse_spec
from conftest import free_tcp_ports, run_cli, start_cli

SOURCE = {
    "type": "simulated",
    "n_events": 40,
    "bank_size": 8,
    "events_per_read": 4,
    "detectors": [{"kind": "image", "shape": [32, 48], "peaks": 3}, {"kind": "waveform", "samples": 256, "hits": 4}],
}


def stream_spec(sink: dict, serializer: dict | None = None, batch: int = 3, source: dict | None = None):
    return parse_spec({
        "source": source or SOURCE,
        "steps": [{"type": "batch", "size": batch}],
        "serializer": serializer or {"type": "arrays"},
        "sinks": [sink],
    })


def expected_bank(source: dict = SOURCE) -> dict[str, np.ndarray]:
    return SimulatedSource.model_validate(source).open().bank()


def produce_in_background(spec, workers: int) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_local(spec, workers)))
    thread.start()
    return thread, outcome


def check_events(events, n_events: int, bank: dict[str, np.ndarray]) -> None:
    seqs = sorted(event.seq for event in events)
    assert seqs == list(range(n_events)), "every event exactly once"
    for event in events:
        for name, frames in bank.items():
            np.testing.assert_array_equal(event.data[name], frames[event.seq % len(frames)])


@pytest.mark.parametrize(
    "serializer",
    [{"type": "arrays"}, {"type": "hdf5"}, {"type": "hdf5", "compression": "gzip"},
     {"type": "hdf5", "compression": "bitshuffle_lz4"}, {"type": "hdf5", "compression": "zstd"}],
    ids=lambda s: s.get("compression", s["type"]),
)
def test_two_workers_deliver_every_event_once(ipc_endpoint, serializer):
    spec = stream_spec({"type": "stream", "endpoint": ipc_endpoint}, serializer)
    with Client(ipc_endpoint, bind=True, timeout=60) as client:
        thread, outcome = produce_in_background(spec, workers=2)
        events = list(client.events())
        thread.join()
    assert outcome["result"].ok, outcome["result"].errors
    check_events(events, 40, expected_bank())
    report = client.report
    assert report.complete and report.ended == [0, 1] and report.missing == []
    assert {event.rank for event in events} == {0, 1}
    assert report.messages == sum(end.messages for end in (r.end for r in report.records.values()))


def test_arrays_received_are_read_only_views(ipc_endpoint):
    spec = stream_spec({"type": "stream", "endpoint": ipc_endpoint}, batch=4)
    with Client(ipc_endpoint, bind=True, timeout=60) as client:
        thread, _ = produce_in_background(spec, workers=1)
        message = next(client.messages())
        assert message.arrays["image"].shape == (4, 32, 48)
        assert not message.arrays["image"].flags.writeable
        list(client.messages())
        thread.join()


def test_broadcast_reaches_every_subscriber():
    port = free_tcp_ports(1)
    spec = stream_spec({"type": "stream", "endpoint": f"tcp://127.0.0.1:{port}", "bind": True,
                        "pattern": "pub", "subscribers": 2})
    thread, outcome = produce_in_background(spec, workers=1)
    results: dict[int, list] = {}

    def subscribe(number: int) -> None:
        with Client(f"tcp://127.0.0.1:{port}", pattern="sub", timeout=60) as client:
            results[number] = [event.seq for event in client.events()]

    subscribers = [threading.Thread(target=subscribe, args=(number,)) for number in range(2)]
    for subscriber in subscribers:
        subscriber.start()
    for subscriber in subscribers:
        subscriber.join(timeout=90)
    thread.join()
    assert outcome["result"].ok
    assert results == {0: list(range(40)), 1: list(range(40))}


def test_each_producer_binds_its_own_port():
    port = free_tcp_ports(2)
    spec = stream_spec({"type": "stream", "endpoint": f"tcp://127.0.0.1:{port}", "bind": True})
    thread, outcome = produce_in_background(spec, workers=2)
    with Client([f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"], timeout=60) as client:
        events = list(client.events())
    thread.join()
    assert outcome["result"].ok
    check_events(events, 40, expected_bank())


def test_killed_worker_is_reported_with_missing_ranges(ipc_endpoint, write_spec):
    source = {**SOURCE, "n_events": 400, "rate_hz": 200, "events_per_read": 10}
    spec_path = write_spec({"source": source, "sinks": [{"type": "stream", "endpoint": ipc_endpoint}]})
    stream_id = new_stream_id()
    with Client(ipc_endpoint, bind=True, timeout=3) as client:
        workers = [start_cli("produce", str(spec_path), "--rank", str(rank), "--producers", "2", "--stream-id", stream_id)
                   for rank in range(2)]
        with pytest.raises(StreamIncomplete) as raised:
            for message in client.messages():
                if message.header.rank == 1 and client.report.records[1].messages == 20:
                    os.kill(workers[1].pid, signal.SIGKILL)
        for worker in workers:
            worker.wait(timeout=30)
    report = raised.value.report
    assert workers[0].returncode == 0 and workers[1].returncode == -signal.SIGKILL
    assert not report.complete and report.ended == [0]
    received = set(np.concatenate(report.records[1].seqs).tolist())
    missing = {seq for first, last in report.missing for seq in range(first, last + 1)}
    owned = {seq for seq in range(400) if (seq // 10) % 2 == 1}
    assert missing == owned - received and len(received) >= 20
    assert received | set(np.concatenate(report.records[0].seqs).tolist()) | missing == set(range(400))
    assert "producer 1: no end-of-stream" in str(raised.value)


def test_consume_exits_nonzero_when_a_worker_dies(tmp_path, write_spec):
    endpoint = f"ipc://{tmp_path / 's'}"
    source = {**SOURCE, "n_events": 400, "rate_hz": 100}
    spec_path = write_spec({"source": source, "sinks": [{"type": "stream", "endpoint": endpoint}]})
    consumer = start_cli("consume", endpoint, "--bind", "--timeout", "3")
    stream_id = new_stream_id()
    workers = [start_cli("produce", str(spec_path), "--rank", str(rank), "--producers", "2", "--stream-id", stream_id)
               for rank in range(2)]
    try:
        workers[1].wait(timeout=1.5)
    except Exception:
        os.kill(workers[1].pid, signal.SIGKILL)
    workers[0].wait(timeout=60)
    _, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 1
    assert "INCOMPLETE" in err and "never arrived" in err and "no end-of-stream" in err
    assert "Traceback" not in err


def test_consume_saves_messages_as_h5_files_and_tar(tmp_path, write_spec):
    for out in (tmp_path / "out", tmp_path / "out.tar"):
        endpoint = f"ipc://{tmp_path / (out.name + '.sock')}"
        spec_path = write_spec({"source": SOURCE, "steps": [{"type": "batch", "size": 5}],
                                "sinks": [{"type": "stream", "endpoint": endpoint}]})
        consumer = start_cli("consume", endpoint, "--bind", "--out", str(out), "--timeout", "60")
        produced = run_cli("produce", str(spec_path), "--workers", "2")
        _, err = consumer.communicate(timeout=60)
        assert produced.returncode == 0, produced.stderr
        assert consumer.returncode == 0, err
        assert "complete: 40 events in 8 messages" in err
    files = sorted((tmp_path / "out").glob("*.h5"))
    assert len(files) == 8
    bank = expected_bank()
    seqs = []
    for path in files:
        with h5py.File(path) as h5:
            for seq, image in zip(h5["_beamstream/seq"][()], h5["image"][()], strict=True):
                np.testing.assert_array_equal(image, bank["image"][seq % 8])
                seqs.append(int(seq))
    assert sorted(seqs) == list(range(40))
    import tarfile

    with tarfile.open(tmp_path / "out.tar") as archive:
        assert len([m for m in archive.getmembers() if m.name.endswith(".h5")]) == 8


def test_consume_max_events_stops_early(tmp_path, write_spec):
    endpoint = f"ipc://{tmp_path / 's'}"
    spec_path = write_spec({"source": {**SOURCE, "n_events": 100}, "sinks": [{"type": "stream", "endpoint": endpoint,
                                                                                "send_timeout_s": 5}]})
    consumer = start_cli("consume", endpoint, "--bind", "--max-events", "10")
    produced = run_cli("produce", str(spec_path))
    _, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 0 and "stopped after 10 events" in err
    assert produced.returncode == 1 and "no consumer took a message" in produced.stderr


def test_nothing_served_times_out_with_the_endpoint_named():
    port = free_tcp_ports(1)
    with Client(f"tcp://127.0.0.1:{port}", timeout=0.5) as client:
        with pytest.raises(StreamTimeout, match=f"nothing arrived from tcp://127.0.0.1:{port} within 0.5 s"):
            list(client.messages())
    result = run_cli("consume", f"tcp://127.0.0.1:{port}", "--timeout", "0.5")
    assert result.returncode == 1
    assert f"nothing arrived from tcp://127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_to_produce_stops_every_worker_and_the_consumer_hears_aborted(write_spec, tmp_path):
    """What Slurm's scancel does: SIGTERM to `produce`. Every worker sends an aborted end message and
    exits, `produce` exits, no process is left, and the consumer's report says aborted."""
    import psutil

    endpoint = f"ipc://{tmp_path / 'stream'}"
    path = write_spec({"source": {"type": "simulated", "n_events": 100_000, "rate_hz": 200, "events_per_read": 1,
                                  "detectors": [{"kind": "waveform", "samples": 64}]},
                       "sinks": [{"type": "stream", "endpoint": endpoint}]})
    with Client(endpoint, bind=True, timeout=60) as client:
        produce = start_cli("produce", str(path), "--workers", "2")
        events = client.events()
        for _ in range(20):
            next(events)
        workers = psutil.Process(produce.pid).children(recursive=True)
        produce.send_signal(signal.SIGTERM)
        with pytest.raises(StreamIncomplete) as raised:
            for _ in events:
                pass
        out, err = produce.communicate(timeout=60)
    assert produce.returncode == 1 and "Traceback" not in err
    assert "stopped by SIGTERM" in err
    _, left = psutil.wait_procs(workers, timeout=30)  # multiprocessing's resource tracker ends just after produce
    assert len(workers) >= 2 and not [worker for worker in left if worker.status() != psutil.STATUS_ZOMBIE], left
    report = raised.value.report
    assert {record.end.status for record in report.records.values()} == {"aborted"}
    assert "ended with status aborted: stopped by SIGTERM" in report.summary()


def test_a_producer_with_no_consumer_says_so_within_seconds(write_spec, tmp_path):
    endpoint = f"ipc://{tmp_path / 'nobody'}"
    path = write_spec({"source": {"type": "simulated", "n_events": 10, "detectors": [{"kind": "waveform", "samples": 64}]},
                       "sinks": [{"type": "stream", "endpoint": endpoint, "send_timeout_s": 4}]})
    result = run_cli("produce", str(path), timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"waiting for a consumer at {endpoint}" in result.stderr
    assert "no consumer took a message" in result.stderr


def test_producers_that_bind_say_where_and_consume_reads_them_from_the_first_endpoint(write_spec):
    port = free_tcp_ports(2)
    path = write_spec({"source": {"type": "simulated", "n_events": 40, "events_per_read": 5,
                                  "detectors": [{"kind": "waveform", "samples": 64}]},
                       "sinks": [{"type": "stream", "endpoint": f"tcp://127.0.0.1:{port}", "bind": True}]})
    consumer = start_cli("consume", f"tcp://127.0.0.1:{port}", "--producers", "2", "--timeout", "60")
    produced = run_cli("produce", str(path), "--workers", "2")
    out, err = consumer.communicate(timeout=120)
    assert produced.returncode == 0, produced.stderr
    assert f"producers bind tcp://127.0.0.1:{port}, tcp://127.0.0.1:{port + 1}" in produced.stderr
    assert consumer.returncode == 0 and "complete: 40 events" in err


def test_no_worker_outlives_a_killed_produce_whose_consumer_is_gone_too(tmp_path, write_spec):
    """kill -9 of the consumer; a worker stopped (SIGTERM, as the kernel tells it of its parent's death) gives its end
    message ABORTED_END_S to be taken and exits, quietly; then kill -9 of `produce`: no worker is left 10 s later
    (send_timeout_s is 300)."""
    import psutil

    from beamstream.worker_signals import ABORTED_END_S
    from conftest import wait_until

    endpoint = f"ipc://{tmp_path / 's'}"
    source = {**SOURCE, "n_events": 100000, "rate_hz": 50}
    spec_path = write_spec({"source": source, "sinks": [{"type": "stream", "endpoint": endpoint}]})
    consumer = start_cli("consume", endpoint, "--bind", "--timeout", "60")
    produce = start_cli("produce", str(spec_path), "--workers", "2")
    try:
        wait_until(lambda: len([child for child in psutil.Process(produce.pid).children()
                                if "beamstream-worker" in child.name() or "python" in child.name()]) >= 2,
                   "two workers", timeout=60)
        consumer.stderr.readline()  # it has heard from the producers
        children = psutil.Process(produce.pid).children(recursive=True)
        workers = [child for child in children if "spawn_main" in " ".join(child.cmdline())]
        consumer.kill()
        consumer.wait(timeout=30)

        def gone(processes) -> bool:
            return all(not process.is_running() or process.status() == psutil.STATUS_ZOMBIE for process in processes)

        workers[0].terminate()
        wait_until(lambda: gone(workers[:1]), "the stopped worker to exit", timeout=ABORTED_END_S + 5)
        produce.kill()
        _, err = produce.communicate(timeout=30)
        wait_until(lambda: gone(children), "every worker to exit", timeout=10)
        assert "Traceback" not in err, err
    finally:
        for process in (consumer, produce):
            if process.poll() is None:
                process.kill()


def test_a_consumer_that_received_nothing_leaves_no_archive_to_block_the_next_try(tmp_path):
    out = tmp_path / "run14.tar"
    for _ in range(2):
        result = run_cli("consume", f"ipc://{tmp_path / 'nobody'}", "--bind", "--out", str(out), "--timeout", "1")
        assert result.returncode == 1 and "nothing arrived" in result.stderr and "exists" not in result.stderr
        assert not out.exists()
