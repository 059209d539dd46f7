"""Prometheus metrics of a buffer: what each backend exposes, collected at scrape time, and the server.

:class:`BufferCollector` reads a :class:`~beamstream.buffer.base.Buffer`'s state at
scrape time (its :meth:`~beamstream.buffer.base.Buffer.metrics`): nothing is updated in the background and the serving loop does no extra work.
The scrape runs on the HTTP server's thread while the serving thread goes on; it copies each
dict it walks (one step under the GIL), so a scrape never fails on a group or consumer joining
at that moment. Values are read one by one: each is one the buffer really had, but two of them
may be from instants microseconds apart.

Every metric is named ``beamstream_buffer_`` + one of these:

- counters: ``messages_in_total``, ``bytes_in_total``, ``events_in_total`` (data messages, payload bytes
  and events accepted),
  ``messages_out_total``, ``bytes_out_total`` (delivered to consumers, redeliveries included),
  ``rejected_messages_total`` (producer messages refused as unreadable), ``duplicate_messages_total``
  (producer messages that arrived again after a reconnect, dropped), ``groups_dropped_total``
  (lossless groups dropped for keeping a full buffer's producers waiting without acknowledging),
  ``rejected_control_messages_total`` (consumer control messages refused as unusable),
  ``refused_consumers_total`` (consumer hellos refused for not proving that their sender holds the stream's
  credentials: no proof, a wrong one, a stale one or a replay; local buffer);
  with an admission key, ``rejected_messages_total`` also counts producer messages not sealed with it;
- per listening socket, label ``side`` (``producer`` or ``consumer``): ``connections_open``
  (gauge), ``connections_refused_total`` (shut down for being over ``max_connections``) and
  ``accepts_failed_total`` (accepts that failed because descriptors ran out);
- gauges: ``resident_bytes`` and ``max_bytes`` (payload held in memory, its bound),
  ``spilled_bytes`` (payload in segment files on disk), ``log_first_offset`` (oldest offset held),
  ``log_next_offset`` (the offset the next message gets), ``producers_connected`` (ranks heard
  from without an end message), ``producers_ended`` (ranks whose end arrived);
- per group, label ``group``: ``group_depth`` (log next offset − group next offset + queued
  redeliveries: not yet handed out), ``group_lag`` (log next offset − group low water: not yet
  acknowledged), ``group_delivered_total``, ``group_skipped_total`` (counters),
  ``group_members``, ``group_unacknowledged`` (gauges);
- per consumer, labels ``group`` and ``consumer``: ``consumer_credit``, ``consumer_unacknowledged``.

``consumer`` is the member's ZeroMQ identity in hex.

With the NATS backend (:class:`~beamstream.buffer.nats_bridge.NatsBridge`) the stream and its
groups live in JetStream, so the metrics are what the bridge and the server know:
``messages_in_total``, ``bytes_in_total``, ``rejected_messages_total``, ``producers_connected``,
``producers_ended``, ``stored_bytes`` (the JetStream stream's size) and, per JetStream consumer
(label ``group``: a group's name, or the server's name for a lossy or lone reader),
``group_depth`` (messages not yet delivered), ``group_lag`` (not yet acknowledged),
``group_delivered_total`` and ``group_unacknowledged``, read from the server at each scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from beamstream.errors import TransportError
from beamstream.metrics_reading import PREFIX  # the names' prefix, which readers of these metrics rely on

if TYPE_CHECKING:
    from beamstream.accounting import StreamReport
    from beamstream.buffer.base import Buffer
    from beamstream.buffer.connections import ConnectionLimit
    from beamstream.buffer.message_log import Group, MessageLog
    from beamstream.jetstream.store import NatsStore


# buffer.counters key → (metric name without prefix and _total, help)
SERVICE_COUNTERS = {
    "messages_in": ("messages_in", "Data messages accepted from producers."),
    "bytes_in": ("bytes_in", "Payload bytes accepted from producers."),
    "messages_out": ("messages_out", "Messages delivered to consumers (redeliveries included)."),
    "bytes_out": ("bytes_out", "Payload bytes delivered to consumers (redeliveries included)."),
    "rejected": ("rejected_messages", "Producer messages refused because they could not be read."),
    "duplicates": ("duplicate_messages", "Producer messages that arrived again (resent after a reconnect), dropped."),
    "groups_dropped": ("groups_dropped", "Lossless groups dropped for keeping producers waiting without acknowledging."),
    "control_rejected": ("rejected_control_messages", "Consumer control messages refused because they could not be used."),
    "consumers_refused": ("refused_consumers", "Consumer hellos refused for not proving the stream's credentials "
                          "(buffers given an admission key)."),
}


class BufferCollector(Collector):
    """Collects a buffer's metrics from its state at the moment of each scrape."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer

    def collect(self) -> Iterator[Metric]:
        yield from self.buffer.metrics()


class MetricsServer:
    """Serves one buffer's metrics at ``http://ADDR:PORT/metrics`` on a daemon thread, until :meth:`close`.

    The collector goes into a registry of its own (not prometheus_client's global one), so
    several buffers can serve metrics in one process. ``port`` 0 picks a free port (``url``
    says which). Raises :class:`TransportError` if the port cannot be bound.
    """

    def __init__(self, buffer: Buffer, port: int, addr: str = "127.0.0.1") -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BufferCollector(buffer))
        try:
            self.server, self.thread = start_http_server(port, addr, registry=registry)
        except OSError as exc:
            raise TransportError(f"cannot serve metrics on {addr}:{port}: {exc}") from exc
        self.url = f"http://{addr}:{self.server.server_port}/metrics"

    @property
    def port(self) -> int:
        return self.server.server_port

    def close(self) -> None:
        """Stop serving, close the listening socket and wait for the server's thread to end."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def intake_metrics(counters: dict[str, int], report: StreamReport) -> Iterator[Metric]:
    """The producer side's message counters and how many producer ranks are connected or ended."""
    counters = dict(counters)
    for key, (name, text) in SERVICE_COUNTERS.items():
        if key in counters:
            yield CounterMetricFamily(PREFIX + name, text, value=counters[key])
    yield CounterMetricFamily(PREFIX + "events_in", "Events in the data messages accepted from producers.",
                              value=report.events)
    records = list(report.records.values())
    ended = sum(record.end is not None for record in records)
    yield GaugeMetricFamily(PREFIX + "producers_connected", "Producer ranks heard from that have not ended.",
                            value=len(records) - ended)
    yield GaugeMetricFamily(PREFIX + "producers_ended", "Producer ranks whose end message arrived.", value=ended)


def connection_metrics(limits: list[ConnectionLimit]) -> Iterator[Metric]:
    """Per listening socket (label ``side``): connections open, refused over the limit, accepts failed."""
    open_now = GaugeMetricFamily(PREFIX + "connections_open", "Connections open on the socket.", labels=["side"])
    refused = CounterMetricFamily(PREFIX + "connections_refused", "Connections shut down for being over "
                                  "max_connections.", labels=["side"])
    failed = CounterMetricFamily(PREFIX + "accepts_failed", "Connections that could not be accepted "
                                 "(descriptors ran out).", labels=["side"])
    for limit in limits:
        open_now.add_metric([limit.side], limit.open)
        refused.add_metric([limit.side], limit.refused)
        failed.add_metric([limit.side], limit.failed)
    yield from (open_now, refused, failed)


def log_metrics(log: MessageLog) -> Iterator[Metric]:
    """Memory held, its bound, what was spilled, and the log's offsets."""
    for name, value, text in (
        ("resident_bytes", log.resident_bytes, "Payload bytes held in memory."),
        ("max_bytes", log.max_bytes, "Payload bytes the buffer holds in memory at most."),
        ("spilled_bytes", log.spilled_bytes, "Payload bytes in segment files on disk."),
        ("log_first_offset", log.first_offset, "Offset of the oldest message held."),
        ("log_next_offset", log.next_offset, "Offset the next accepted message gets."),
    ):
        yield GaugeMetricFamily(PREFIX + name, text, value=value)


def group_metrics(groups: list[Group], head: int) -> Iterator[Metric]:
    """One sample per group (label ``group``) and per member (labels ``group``, ``consumer``)."""
    depth = GaugeMetricFamily(PREFIX + "group_depth", "Messages not yet handed to the group "
                              "(log next offset - group next offset + redeliveries queued).", labels=["group"])
    lag = GaugeMetricFamily(PREFIX + "group_lag", "Messages the group has not acknowledged "
                            "(log next offset - group low water).", labels=["group"])
    delivered = CounterMetricFamily(PREFIX + "group_delivered", "Deliveries to the group's members.",
                                    labels=["group"])
    skipped = CounterMetricFamily(PREFIX + "group_skipped", "Messages a lossy group skipped.", labels=["group"])
    members = GaugeMetricFamily(PREFIX + "group_members", "Connected members of the group.", labels=["group"])
    unacked = GaugeMetricFamily(PREFIX + "group_unacknowledged", "Messages handed to the group's members "
                                "and not yet acknowledged.", labels=["group"])
    credit = GaugeMetricFamily(PREFIX + "consumer_credit", "Messages the consumer may still be sent.",
                               labels=["group", "consumer"])
    consumer_unacked = GaugeMetricFamily(PREFIX + "consumer_unacknowledged", "Messages handed to the consumer "
                                         "and not yet acknowledged.", labels=["group", "consumer"])
    for group in groups:
        name = [group.name]
        group_members = list(group.members.values())
        depth.add_metric(name, head - group.next_offset + len(group.redeliver))
        lag.add_metric(name, head - group.low_water)
        delivered.add_metric(name, group.delivered)
        skipped.add_metric(name, group.skipped)
        members.add_metric(name, len(group_members))
        unacked.add_metric(name, sum(len(member.unacked) for member in group_members))
        for member in group_members:
            credit.add_metric([group.name, member.identity.hex()], member.credit)
            consumer_unacked.add_metric([group.name, member.identity.hex()], len(member.unacked))
    yield from (depth, lag, delivered, skipped, members, unacked, credit, consumer_unacked)


def nats_metrics(store: NatsStore | None) -> Iterator[Metric]:
    """The JetStream stream's size and, per JetStream consumer, depth, lag, deliveries and unacknowledged.

    Nothing (rather than a failed scrape) while the bridge has no connection to the server (``store`` None).
    """
    if store is None:
        return
    try:
        stream, consumers = store.conn.call(_stream_and_consumers(store))
    except TransportError:
        return
    yield GaugeMetricFamily(PREFIX + "stored_bytes", "Bytes in the JetStream stream.", value=stream.state.bytes)
    depth = GaugeMetricFamily(PREFIX + "group_depth", "Messages not yet delivered to the group.", labels=["group"])
    lag = GaugeMetricFamily(PREFIX + "group_lag", "Messages the group has not acknowledged.", labels=["group"])
    delivered = CounterMetricFamily(PREFIX + "group_delivered", "Deliveries to the group's members.",
                                    labels=["group"])
    unacked = GaugeMetricFamily(PREFIX + "group_unacknowledged", "Messages delivered to the group's members "
                                "and not yet acknowledged.", labels=["group"])
    for info in consumers:
        name = [info.name]
        depth.add_metric(name, info.num_pending)
        lag.add_metric(name, info.num_pending + (info.num_ack_pending or 0))
        delivered.add_metric(name, info.delivered.consumer_seq)
        unacked.add_metric(name, info.num_ack_pending or 0)
    yield from (depth, lag, delivered, unacked)


async def _stream_and_consumers(store: NatsStore) -> tuple[Any, list[Any]]:
    return await store.conn.js.stream_info(store.stream), await store.conn.js.consumers_info(store.stream)
