"""The Karabo bridge (beamstream bridge karabo): read by the real karabo_bridge.Client, every train, bitwise."""

from __future__ import annotations

import re
import signal
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import zmq

from beamstream.batch import Batch, Share
from beamstream.bridges.karabo import DEFAULT_SOURCE, KaraboBridge, TrainEncoder, train_metadata
from beamstream.buffer.local import LocalBuffer
from beamstream.client import Client
from beamstream.client.transports.memory import MemoryTransport
from beamstream.errors import StreamIncomplete
from beamstream.producer import run_local
from beamstream.serializers.arrays import ArraysSerializer
from beamstream.spec import parse_spec
from beamstream.wire import EndMessage, message_from_batch
from conftest import free_tcp_ports, run_cli, start_cli, waveform_spec
from test_client import data, end

karabo_bridge = pytest.importorskip(
    "karabo_bridge", reason="karabo-bridge is not installed (pip install karabo-bridge): the bridge is tested "
                            "with its own client")

READ_S = 60  # karabo_bridge.Client's timeout on next(): a train that never comes fails the test, not hangs it


def multi_field_spec(endpoint: str, n_events: int):
    """Images (2 panels of 8×16 float32, with their peaks) and waveforms (with their hits), 4 events per message."""
    return parse_spec({
        "source": {"type": "simulated", "n_events": n_events, "bank_size": 5, "events_per_read": 4,
                   "detectors": [{"kind": "image", "shape": [2, 8, 16], "dtype": "float32", "peaks": 3},
                                 {"kind": "waveform", "samples": 64, "hits": 2}]},
        "steps": [{"type": "batch", "size": 4}],
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    })


@contextmanager
def serving(client: Client, **options):
    """A KaraboBridge on a free port serving ``client`` on a thread; yields (bridge, outcome): ``outcome`` gets
    ``served`` (what serve returned) or ``error`` (what it raised) once the stream has ended."""
    bridge = KaraboBridge("tcp://127.0.0.1:0", **options)
    outcome: dict = {}

    def serve() -> None:
        try:
            outcome["served"] = bridge.serve(client)
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            outcome["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield bridge, outcome
    thread.join(timeout=READ_S)
    assert not thread.is_alive(), "the bridge still serves after the stream ended"
    bridge.close()


def read_trains(address: str, count: int) -> list[tuple[dict, dict]]:
    """``count`` trains (data, metadata) read with karabo_bridge.Client, as Karabo's tools read them."""
    with karabo_bridge.Client(address, sock="REQ", timeout=READ_S) as reader:
        return [reader.next() for _ in range(count)]


def train_id(metadata: dict) -> int:
    ids = {source_metadata["timestamp.tid"] for source_metadata in metadata.values()}
    assert len(ids) == 1, f"the sources of one train disagree on its id: {ids}"
    return ids.pop()


def assert_bitwise(received: np.ndarray, expected: np.ndarray) -> None:
    assert received.dtype == expected.dtype and received.shape == expected.shape
    assert received.tobytes() == expected.tobytes()


def test_every_train_of_a_multi_field_stream_arrives_bitwise_with_its_id_and_time(ipc_endpoint):
    spec = multi_field_spec(ipc_endpoint, n_events=24)
    bank = spec.source.open().bank()  # the simulated source is deterministic: event seq shows frame seq % 5
    with Client(ipc_endpoint, bind=True, timeout=READ_S) as client, serving(client) as (bridge, outcome):
        producers = threading.Thread(target=lambda: outcome.setdefault("run", run_local(spec, workers=2)))
        producers.start()
        trains = read_trains(bridge.address, 24)
        producers.join()
    assert outcome["run"].ok and "error" not in outcome, outcome
    assert sorted(train_id(metadata) for _, metadata in trains) == list(range(24)), "every train once"
    for train, metadata in trains:
        seq = train_id(metadata)
        assert set(train) == {"image", "waveform"}, "one source per detector the metadata names"
        assert set(train["image"]) == {"image", "image_peaks"} and set(train["waveform"]) == {"waveform", "waveform_hits"}
        for source, keys in train.items():
            for key, array in keys.items():
                assert_bitwise(array, bank[key][seq % 5])
            stamp = metadata[source]
            assert stamp["source"] == source and stamp["timestamp"] > 1.7e9
            assert abs(float(f"{stamp['timestamp.sec']}.{stamp['timestamp.frac']}") - stamp["timestamp"]) < 1e-6
            assert len(stamp["timestamp.frac"]) == 18
    assert outcome["served"].trains == 24 and outcome["served"].passed_over == 0
    assert outcome["served"].bytes == sum(array.nbytes for train, _ in trains for keys in train.values()
                                          for array in keys.values())
    assert client.report.complete


def event_frames(index: int, times: np.ndarray) -> list:
    """A message of 2 events (seq 2·index, 2·index+1) at ``times``: a 0-d ``count`` per event and a (3,) ``trace``."""
    seq = np.arange(2 * index, 2 * index + 2, dtype=np.int64)
    batch = Batch(seq, times, {"count": seq.astype(np.uint32) * 10, "trace": np.full((2, 3), index, np.float64)})
    share = Share(rank=0, producers=1, start=0, stop=4, block=1)
    message = message_from_batch(batch, ArraysSerializer().build(), stream="s1", rank=0, producers=1, index=index,
                                 share=share)
    return [bytes(memoryview(frame)) for frame in message.to_frames()]


def test_one_value_per_event_goes_in_the_msgpack_map_and_a_stream_without_times_sends_no_timestamp():
    nan = np.full(2, np.nan)
    ended = EndMessage(stream="s1", rank=0, producers=1, share=Share(rank=0, producers=1, start=0, stop=4, block=1),
                       messages=2, events=4, last_seq=3).to_frames()
    with Client.over(MemoryTransport([event_frames(0, nan), event_frames(1, nan), ended]), timeout=5) as client:
        with serving(client, source="SPB_XTD9/BEAMSTREAM/stream") as (bridge, outcome):
            trains = read_trains(bridge.address, 4)
    assert [metadata for _, metadata in trains] == [
        {"SPB_XTD9/BEAMSTREAM/stream": {"source": "SPB_XTD9/BEAMSTREAM/stream", "timestamp.tid": seq}}
        for seq in range(4)]
    assert [train["SPB_XTD9/BEAMSTREAM/stream"]["count"] for train, _ in trains] == [0, 10, 20, 30]
    assert [train["SPB_XTD9/BEAMSTREAM/stream"]["trace"].tolist() for train, _ in trains] == [[0.0] * 3] * 2 + [[1.0] * 3] * 2
    assert outcome["served"].trains == 4
    assert train_metadata(7, 1700000000.25) == {"timestamp.tid": 7, "timestamp": 1700000000.25,
                                                "timestamp.sec": "1700000000", "timestamp.frac": "250000000000000000"}


def test_array_frames_are_the_received_arrays_not_copies():
    with Client.over(MemoryTransport([data(0), end(1)]), timeout=5) as client:
        event = next(client.events())
        frames = TrainEncoder(lambda: client.metadata).frames(event)
        arrays = [frame for frame in frames if isinstance(frame, np.ndarray)]
        assert len(arrays) == 1 and arrays[0] is event.data["image"] and not arrays[0].flags.writeable


def test_a_client_gone_while_it_waited_is_passed_over_and_its_train_goes_to_the_next():
    from zmq.utils.monitor import recv_monitor_message

    with Client.over(MemoryTransport([data(0), data(1), data(2), end()]), timeout=5) as client:
        bridge = KaraboBridge("tcp://127.0.0.1:0")
        monitor = bridge.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        gone = karabo_bridge.Client(bridge.address, sock="REQ", timeout=0.2)
        with pytest.raises(TimeoutError):
            gone.next()  # it asked for a train, and stops waiting before one is ready (as Ctrl-C would)
        gone.__exit__(None, None, None)
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        bridge.socket.disable_monitor()
        monitor.close()
        served: dict = {}
        thread = threading.Thread(target=lambda: served.setdefault("served", bridge.serve(client)), daemon=True)
        thread.start()
        trains = read_trains(bridge.address, 6)
        thread.join(timeout=READ_S)
        bridge.close()
    assert [train_id(metadata) for _, metadata in trains] == [0, 1, 2, 3, 4, 5]
    assert [train[DEFAULT_SOURCE]["image"].tolist() for train, _ in trains[::2]] == [np.full((3, 4), n).tolist()
                                                                                    for n in range(3)]
    assert served["served"].passed_over == 1 and served["served"].trains == 6


def test_serve_raises_stream_incomplete_after_serving_every_event_it_read():
    with Client.over(MemoryTransport([data(0), data(2), end()]), timeout=5) as client:
        with serving(client) as (bridge, outcome):
            trains = read_trains(bridge.address, 4)
    assert [train_id(metadata) for _, metadata in trains] == [0, 1, 4, 5]
    assert isinstance(outcome["error"], StreamIncomplete) and "2 events never arrived: 2-3" in str(outcome["error"])


def served_address(process) -> str:
    """Where a ``beamstream bridge karabo`` process serves, from the line it prints once it does."""
    lines = []
    while line := process.stderr.readline():
        if match := re.search(r"karabo bridge: serving .* at (tcp://\S+)", line):
            return match.group(1)
        lines.append(line)
    raise AssertionError(f"the bridge exited (code {process.wait()}) without serving: {''.join(lines)}")


def read_group(endpoint: str, group: str, into: dict) -> threading.Thread:
    """Read ``group`` on a thread; ``into`` gets seq → {field: array copy}."""

    def read() -> None:
        with Client(endpoint, group=group, timeout=READ_S) as client:
            for event in client.events():
                into[event.seq] = {name: array.copy() for name, array in event.data.items()}

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_the_command_serves_a_buffer_group_whole_then_exits_0(tmp_path):
    producers, consumers = f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}"
    buffer = LocalBuffer(producers, consumers, max_bytes=64 << 20).start()
    try:
        process = start_cli("bridge", "karabo", consumers, "--group", "karabo", "--bind", "tcp://127.0.0.1:0")
        address = served_address(process)
        reference: dict = {}
        checker = read_group(consumers, "check", reference)
        assert run_local(waveform_spec(producers, n_events=60, samples=512), workers=1).ok
        trains = read_trains(address, 60)
        _, stderr = process.communicate(timeout=READ_S)
        checker.join(timeout=READ_S)
    finally:
        buffer.close()
    assert process.returncode == 0, stderr
    assert sorted(reference) == list(range(60))
    assert sorted(train_id(metadata) for _, metadata in trains) == list(range(60))
    for train, metadata in trains:
        expected = reference[train_id(metadata)]
        assert set(train) == {"waveform"} and set(train["waveform"]) == set(expected)
        for key, array in train["waveform"].items():
            assert_bitwise(array, expected[key])
    assert "stream" in stderr and "complete: 60 events" in stderr
    assert re.search(r"served 60 trains, [\d.]+ GB, to Karabo bridge clients at tcp://127\.0\.0\.1:\d+\n", stderr)


def test_over_shared_memory_each_train_is_its_event_though_the_slot_is_written_again_while_it_leaves(tmp_path):
    """Over shm:// a train (8 MiB) may still be leaving when the bridge reads the next event, which gives the slot
    back to its producer; with a two-slot arena the producer writes it again at once. Sent from the slot, trains
    carried other events' bytes (this test failed 2 runs of 2); the bridge reads copies over shm:// instead."""
    endpoint = f"shm://{tmp_path / 'stream'}"
    spec = parse_spec({
        "source": {"type": "simulated", "n_events": 40, "bank_size": 4, "events_per_read": 1,
                   "detectors": [{"kind": "image", "shape": [1024, 4096], "dtype": "uint16", "peaks": 0}]},
        "sinks": [{"type": "stream", "endpoint": endpoint, "shm_bytes": 17 << 20}],
    })
    bank = spec.source.open().bank()
    process = start_cli("bridge", "karabo", endpoint, "--listen", "--bind", "tcp://127.0.0.1:0")
    address = served_address(process)
    outcome: dict = {}
    producers = threading.Thread(target=lambda: outcome.setdefault("run", run_local(spec, workers=1)))
    producers.start()
    trains = read_trains(address, 40)
    producers.join(timeout=READ_S)
    _, stderr = process.communicate(timeout=READ_S)
    assert process.returncode == 0 and outcome["run"].ok, stderr
    assert sorted(train_id(metadata) for _, metadata in trains) == list(range(40))
    for train, metadata in trains:
        assert_bitwise(train["image"]["image"], bank["image"][train_id(metadata) % 4])


def test_the_command_exits_1_with_the_report_when_the_stream_ends_incomplete(tmp_path):
    endpoint = f"ipc://{tmp_path / 'stream'}"
    process = start_cli("bridge", "karabo", endpoint, "--listen", "--bind", "tcp://127.0.0.1:0")
    address = served_address(process)
    with zmq.Context() as context, context.socket(zmq.DEALER) as producer:  # a producer whose message 1 is lost
        producer.connect(endpoint)
        for frames in (data(0), data(2), end()):
            producer.send_multipart(frames)
        trains = read_trains(address, 4)
        _, stderr = process.communicate(timeout=READ_S)
    assert [train_id(metadata) for _, metadata in trains] == [0, 1, 4, 5]
    assert process.returncode == 1, stderr
    assert "2 events never arrived: 2-3" in stderr and "served 4 trains" in stderr


def test_ctrl_c_ends_the_command_with_what_it_served(tmp_path):
    endpoint = f"ipc://{tmp_path / 'stream'}"
    process = start_cli("bridge", "karabo", endpoint, "--listen", "--bind", "tcp://127.0.0.1:0")
    address = served_address(process)
    with zmq.Context() as context, context.socket(zmq.DEALER) as producer:
        producer.connect(endpoint)
        for frames in (data(0), data(1)):
            producer.send_multipart(frames)
        trains = read_trains(address, 1)  # then the bridge holds the next event, or waits for the stream
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=READ_S)
    assert train_id(trains[0][1]) == 0
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "served 1 train, " in stderr and "Traceback" not in stderr


def test_an_option_where_it_does_not_apply_is_refused_with_exit_2():
    result = run_cli("bridge", "karabo", "tcp://127.0.0.1:1", "--lossy", "--bind", "tcp://127.0.0.1:0")
    assert result.returncode == 2
    assert "--lossy applies only with --group" in result.stderr  # in the command line's words


def test_the_command_serves_a_service_stream_read_through_its_https_relay_with_a_certificate(tmp_path):
    """Mutual TLS: the bridge reads the relay with alice's certificate and the stream's key, and serves it all."""
    from beamstream.security.streamkey import StreamKey, write_key_file
    from servicekit import https_client, make_pki, tls_service

    pki = make_pki(tmp_path / "pki")
    spec = {"source": {"type": "simulated", "n_events": 40, "events_per_read": 4, "bank_size": 7, "rate_hz": 20.0,
                       "detectors": [{"kind": "waveform", "samples": 128}]}}  # paced: the bridge joins before it ends
    bank = parse_spec({**spec, "sinks": [{"type": "stream", "endpoint": "tcp://127.0.0.1:1"}]}).source.open().bank()
    with tls_service(tmp_path / "service", pki) as url, https_client(url, pki, pki.alice) as alice:
        answer = alice.post("/v1/streams", json={"spec": spec, "resources": {"workers": 1}})
        assert answer.status_code == 201, answer.text
        key_file = write_key_file(tmp_path / "stream.key", StreamKey.from_text(answer.json()["credentials"]["key"]))
        process = start_cli("bridge", "karabo", f"{url}/v1/streams/{answer.json()['id']}", "--group", "karabo",
                            "--cert", str(pki.alice.certificate), "--key", str(pki.alice.key), "--ca", str(pki.ca),
                            "--key-file", str(key_file), "--timeout", "60", "--bind", "tcp://127.0.0.1:0")
        trains = read_trains(served_address(process), 40)
        _, stderr = process.communicate(timeout=READ_S)
    assert process.returncode == 0, stderr
    assert sorted(train_id(metadata) for _, metadata in trains) == list(range(40))
    for train, metadata in trains:
        for key, array in train["waveform"].items():
            assert_bitwise(array, bank[key][train_id(metadata) % 7])
    assert "served 40 trains" in stderr


def test_producers_with_the_karabo_sink_serve_every_train_bitwise_each_rank_at_its_own_port(tmp_path):
    """The sink: two producers, each binding PORT+rank, every event a train once, arrays as the source made them,
    sources named from the stream's description; a sealed stream and an endpoint no Karabo client can reach
    are refused, saying what to give."""
    port = free_tcp_ports(2)
    spec = multi_field_spec("tcp://127.0.0.1:1", n_events=24)
    spec = parse_spec({**spec.model_dump(mode="json"), "sinks": [{"type": "karabo", "endpoint": f"tcp://127.0.0.1:{port}"}]})
    bank = spec.source.open().bank()
    outcome: dict = {}
    producers = threading.Thread(target=lambda: outcome.setdefault("run", run_local(spec, workers=2)))
    producers.start()
    trains = {rank: [] for rank in range(2)}
    readers = [threading.Thread(target=lambda rank=rank: trains[rank].extend(
        read_trains(f"tcp://127.0.0.1:{port + rank}", 12))) for rank in range(2)]
    [reader.start() for reader in readers]
    [reader.join(READ_S) for reader in readers]
    producers.join(READ_S)
    assert outcome["run"].ok, outcome["run"]
    everything = [train for rank in range(2) for train in trains[rank]]
    assert sorted(train_id(metadata) for _, metadata in everything) == list(range(24)), "every train once"
    for train, metadata in everything:
        assert set(train) == {"image", "waveform"}, "one source per detector the metadata names"
        for keys in train.values():
            for key, array in keys.items():
                assert_bitwise(array, bank[key][train_id(metadata) % 5])
    assert trains[0] and trains[1], "each rank served its share at its own port"

    from beamstream.errors import SpecError, TransportError
    from beamstream.security.streamkey import StreamKey
    from beamstream.stages import SinkContext

    with pytest.raises(TransportError, match="the Karabo bridge protocol, which has no sealing"):
        spec.sinks[0].open(SinkContext("s", 0, 1, key=StreamKey.generate()))
    for endpoint, expected in (("shm:///dev/shm/x", "give a tcp:// \\(or ipc://\\) endpoint"),
                               ("tcp://127.0.0.1:0", "give the port Karabo clients are told")):
        with pytest.raises(SpecError, match=expected):
            parse_spec({"source": {"type": "simulated"}, "sinks": [{"type": "karabo", "endpoint": endpoint}]})


def test_a_karabo_sink_whose_train_nobody_asks_for_fails_its_producer_saying_so():
    port = free_tcp_ports(1)
    spec = parse_spec({"source": {"type": "simulated", "n_events": 2, "detectors": [{"kind": "waveform", "samples": 8}]},
                       "sinks": [{"type": "karabo", "endpoint": f"tcp://127.0.0.1:{port}", "request_timeout_s": 0.5,
                                  "linger_s": 0}]})
    result = run_local(spec, workers=1)
    assert not result.ok
    assert "no Karabo bridge client asked for a train at tcp://127.0.0.1:" in " ".join(result.errors.values())
