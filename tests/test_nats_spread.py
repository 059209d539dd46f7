"""One beamstream stream spread over several JetStream streams (``nats://…/NAME?streams=N``), against the real
server on 127.0.0.1:4222 (skipped if none listens)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest

pytest.importorskip("nats", reason="the NATS backend needs nats-py: pip install 'beamstream[nats]'")

import nats.js.errors  # noqa: E402

from beamstream.buffer.nats_bridge import NatsBridge  # noqa: E402
from beamstream.client import Client  # noqa: E402
from beamstream.jetstream.connection import NatsConnection  # noqa: E402
from beamstream.jetstream.store import NatsStore  # noqa: E402
from beamstream.jetstream.urls import listening, split_url, spread  # noqa: E402
from beamstream.producer import run_local  # noqa: E402
from beamstream.spec import parse_spec  # noqa: E402
from beamstream.wire import nats as layout  # noqa: E402
from conftest import digest  # noqa: E402

SERVER = "nats://127.0.0.1:4222"
STREAMS = 3
SOURCE = {"type": "simulated", "n_events": 30, "events_per_read": 1,
          "detectors": [{"kind": "waveform", "samples": 300_000}]}  # a message per event, 1.2 MB: split in 2 parts
MESSAGES = 30

pytestmark = pytest.mark.skipif(not listening(SERVER), reason=f"no NATS server listens at {SERVER}")


def spec(endpoint: str):
    return parse_spec({"source": SOURCE, "sinks": [{"type": "stream", "endpoint": endpoint}]})


def expected_digests() -> dict[int, str]:
    """Each event of SOURCE as its producers make it, read here from the source itself."""
    from beamstream.sources.simulated import SimulatedSource

    reader = SimulatedSource.model_validate(SOURCE).open()
    return {int(seq): digest({name: array[index] for name, array in batch.data.items()})
            for batch in reader.read(reader.partition(0, 1)) for index, seq in enumerate(batch.seq)}


@pytest.fixture
def spread_bridge(tmp_path):
    """A buffer keeping a fresh stream spread over STREAMS JetStream streams; yields (bridge, URL); afterwards
    deletes the stream and checks that none of its JetStream streams is left."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    url = f"{SERVER}/{name}?streams={STREAMS}"
    service = NatsBridge(f"ipc://{tmp_path / 'in'}", url, producer_timeout_s=3.0).start()
    yield service, url
    service.close()
    with NatsStore(SERVER, name) as store:
        assert store.streams == STREAMS, "the spread comes from the stored stream, not the URL"
        store.delete()
    assert not [shard for shard in range(STREAMS) if stream_info(layout.stream_name(name, shard))]


def stream_info(stream: str):
    """The server's info of JetStream stream ``stream``, None if there is none."""
    conn = NatsConnection(SERVER)
    try:
        return conn.call(conn.js.stream_info(stream))
    except Exception as exc:
        if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
            return None
        raise
    finally:
        conn.close()


def read(url: str, group: str | None, got: dict) -> threading.Thread:
    """A Client of ``url`` (``group``, or alone) on a thread: ``got["messages"]`` lists (rank, index) as they come,
    ``got["events"]`` (seq, digest), ``got["report"]`` its report (``got["error"]`` what it raised)."""
    got.update(messages=[], events=[])

    def run() -> None:
        try:
            with Client(url, group=group, timeout=60) as client:
                for message in client.messages():
                    got["messages"].append((message.header.rank, message.header.index))
                    got["events"] += [(event.seq, digest(event.data)) for event in message.events()]
            got["report"] = client.report
        except Exception as exc:  # the test names it
            got["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_run_over_three_streams_reaches_a_group_and_a_lone_reader_whole_and_in_order(spread_bridge, tmp_path):
    service, url = spread_bridge
    readers = {"group": {}, "alone": {}}
    threads = [read(url, "g", readers["group"]), read(url, None, readers["alone"])]
    assert run_local(spec(f"ipc://{tmp_path / 'in'}"), workers=2).ok
    for thread in threads:
        thread.join(90)
    expected = expected_digests()
    for who, got in readers.items():
        assert "error" not in got, f"{who}: {got.get('error')!r}"
        assert Counter(seq for seq, _ in got["events"]) == Counter(list(expected)), f"{who}: every event once"
        assert dict(got["events"]) == expected, f"{who}: bit for bit as the source made them"
        for rank in (0, 1):
            indexes = [index for producer, index in got["messages"] if producer == rank]
            assert indexes == list(range(MESSAGES // 2)), f"{who}: producer {rank}'s messages, each once, in order"
        assert got["report"].complete and got["report"].verdict is not None, who
    name = split_url(url).name
    conn = NatsConnection(SERVER)
    try:
        for shard in range(STREAMS):
            stream = layout.stream_name(name, shard)
            manifests = conn.call(_all(conn, stream, layout.subject(name, "data", shard)))
            parts = conn.call(_all(conn, stream, layout.subject(name, "part", shard)))
            assert len(manifests) == MESSAGES // STREAMS and len(parts) == 2 * len(manifests), f"shard {shard}"
            assert all(msg.headers[layout.PARTS] == "2" for msg in manifests), "split messages"
    finally:
        conn.close()
    assert service.positions == MESSAGES


def test_records_sit_in_their_shard_by_log_position_and_a_restarted_bridge_goes_on_from_there(spread_bridge,
                                                                                              tmp_path):
    service, url = spread_bridge
    assert run_local(spec(f"ipc://{tmp_path / 'in'}"), workers=1).ok
    name = split_url(url).name
    conn = NatsConnection(SERVER)
    try:
        for shard in range(STREAMS):
            positions = [int(msg.headers[layout.POS]) for msg in conn.call(
                _all(conn, layout.stream_name(name, shard), layout.subject(name, "data", shard)))]
            assert positions == list(range(shard, MESSAGES, STREAMS)), f"shard {shard}: positions in order"
    finally:
        conn.close()
    service.close()
    again = NatsBridge(f"ipc://{tmp_path / 'again'}", f"{SERVER}/{name}", producer_timeout_s=3.0)
    try:
        assert again.store.streams == STREAMS and again.positions == MESSAGES and again.report.messages == MESSAGES
    finally:
        again.close()


async def _all(conn: NatsConnection, stream: str, subject: str) -> list:
    """Every record on ``subject`` of ``stream``, in stream order."""
    found, seq = [], 1
    while True:
        try:
            msg = await conn.js.get_msg(stream, seq, subject=subject, direct=True, next=True)
        except nats.js.errors.NotFoundError:
            return found
        found.append(msg)
        seq = msg.seq + 1


def test_the_url_says_over_how_many_streams():
    assert spread("nats://h1:4222,h2:4222/run42?replicas=3&streams=4") == 4
    assert spread("nats://h1:4222/run42") is None
    assert split_url("nats://h1:4222/run42?streams=2") == ("nats://h1:4222", "run42", None)
    for bad in ("0", "65", "two"):
        with pytest.raises(ValueError, match=f"streams must be a whole number from 1 to 64, not '{bad}'"):
            spread(f"nats://h1:4222/run42?streams={bad}")
    assert layout.spread_of(layout.spread_description(4)) == 4 and layout.spread_of(None) == 1

