"""Prometheus metrics for the buffer, and reading them back for ``beamstream buffer status``.

:class:`BufferCollector` reads a :class:`~beamstream.buffer.service.BufferService`'s state at
scrape time: nothing is updated in the background and the serving loop does no extra work.
The scrape runs on the HTTP server's thread while the serving thread goes on; it copies each
dict it walks (one step under the GIL), so a scrape never fails on a group or consumer joining
at that moment. Values are read one by one: each is one the buffer really had, but two of them
may be from instants microseconds apart.

Every metric is named ``beamstream_buffer_`` + one of these:

- counters: ``messages_in_total``, ``bytes_in_total`` (data messages and payload bytes accepted),
  ``messages_out_total``, ``bytes_out_total`` (delivered to consumers, redeliveries included),
  ``rejected_messages_total`` (producer messages refused as unreadable), ``duplicate_messages_total``
  (producer messages that arrived again after a reconnect, dropped);
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

import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from rich.table import Table

from beamstream.errors import TransportError

if TYPE_CHECKING:
    from beamstream.buffer.nats_bridge import NatsBridge
    from beamstream.buffer.service import BufferService
    from beamstream.buffer.store import Group, Log

PREFIX = "beamstream_buffer_"

# service.counters key → (metric name without prefix and _total, help)
SERVICE_COUNTERS = {
    "messages_in": ("messages_in", "Data messages accepted from producers."),
    "bytes_in": ("bytes_in", "Payload bytes accepted from producers."),
    "messages_out": ("messages_out", "Messages delivered to consumers (redeliveries included)."),
    "bytes_out": ("bytes_out", "Payload bytes delivered to consumers (redeliveries included)."),
    "rejected": ("rejected_messages", "Producer messages refused because they could not be read."),
    "duplicates": ("duplicate_messages", "Producer messages that arrived again (resent after a reconnect), dropped."),
}


# the unlabelled samples every buffer exposes, whatever its backend (names without PREFIX)
TOTALS = {"messages_in_total", "bytes_in_total", "rejected_messages_total", "producers_connected", "producers_ended"}


class BufferCollector(Collector):
    """Collects a buffer's metrics from its state at the moment of each scrape."""

    def __init__(self, service: BufferService | NatsBridge) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        yield from service_metrics(self.service)
        if hasattr(self.service, "log"):
            yield from log_metrics(self.service.log)
            yield from group_metrics(list(self.service.log.groups.values()), self.service.log.next_offset)
        else:
            yield from nats_metrics(self.service)


def service_metrics(service: BufferService | NatsBridge) -> Iterator[Metric]:
    """The service's message counters and how many producer ranks are connected or ended."""
    counters = dict(service.counters)
    for key, (name, text) in SERVICE_COUNTERS.items():
        if key in counters:
            yield CounterMetricFamily(PREFIX + name, text, value=counters[key])
    records = list(service.report.ranks.values())
    ended = sum(record.end is not None for record in records)
    yield GaugeMetricFamily(PREFIX + "producers_connected", "Producer ranks heard from that have not ended.",
                            value=len(records) - ended)
    yield GaugeMetricFamily(PREFIX + "producers_ended", "Producer ranks whose end message arrived.", value=ended)


def log_metrics(log: Log) -> Iterator[Metric]:
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


def nats_metrics(bridge: NatsBridge) -> Iterator[Metric]:
    """The JetStream stream's size and, per JetStream consumer, depth, lag, deliveries and unacknowledged.

    Nothing (rather than a failed scrape) while the bridge has no connection to the server.
    """
    store = bridge.store
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


async def _stream_and_consumers(store: Any) -> tuple[Any, list[Any]]:
    return await store.conn.js.stream_info(store.stream), await store.conn.js.consumers_info(store.stream)


def start_metrics_server(service: BufferService | NatsBridge, port: int,
                         addr: str = "127.0.0.1") -> tuple[WSGIServer, threading.Thread]:
    """Serve ``service``'s metrics at ``http://ADDR:PORT/metrics`` on a daemon thread.

    The collector goes into a registry of its own (not prometheus_client's global one), so
    several buffers can serve metrics in one process. ``port`` 0 picks a free port
    (``server.server_port`` says which). Raises :class:`TransportError` if the port cannot be
    bound; :func:`stop_metrics_server` shuts the server down.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BufferCollector(service))
    try:
        return start_http_server(port, addr, registry=registry)
    except OSError as exc:
        raise TransportError(f"cannot serve metrics on {addr}:{port}: {exc}") from exc


def stop_metrics_server(server: WSGIServer, thread: threading.Thread) -> None:
    """Stop serving, close the listening socket and wait for the server's thread to end."""
    server.shutdown()
    server.server_close()
    thread.join()


# --- reading metrics back: beamstream buffer status -----------------------------------------


@dataclass(slots=True)
class BufferStatus:
    """A scrape of a buffer: unlabelled samples, per-group samples and per-consumer samples.

    Keys are sample names without the ``beamstream_buffer_`` prefix (counters keep ``_total``).
    """

    totals: dict[str, float] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    consumers: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)


def metrics_url(target: str) -> str:
    """``host:port`` or a URL → the full metrics URL (``http://`` and ``/metrics`` added where missing)."""
    url = target if "://" in target else f"http://{target}"
    parts = urllib.parse.urlsplit(url)
    return parts._replace(path="/metrics").geturl() if parts.path in ("", "/") else url


def parse_status(text: str) -> BufferStatus:
    """The ``beamstream_buffer_*`` samples of a Prometheus text exposition (others are ignored).

    Raises ValueError if ``text`` is not Prometheus text format.
    """
    status = BufferStatus()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIX):
                continue
            name, labels = sample.name.removeprefix(PREFIX), sample.labels
            if "consumer" in labels:
                status.consumers.setdefault((labels["group"], labels["consumer"]), {})[name] = sample.value
            elif "group" in labels:
                status.groups.setdefault(labels["group"], {})[name] = sample.value
            else:
                status.totals[name] = sample.value
    return status


def fetch_status(target: str, timeout: float = 5.0) -> BufferStatus:
    """Scrape a buffer's metrics endpoint (``host:port`` or URL).

    Raises :class:`TransportError` naming the URL when nothing answers within ``timeout``
    seconds, the answer is an HTTP error, or it lacks any of the buffer's unlabelled metrics.
    """
    url = metrics_url(target)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise TransportError(f"no buffer metrics from {url}: {reason}") from None
    try:
        status = parse_status(text)
    except ValueError as exc:
        raise TransportError(f"{url} did not answer with Prometheus metrics: {exc}") from None
    missing = TOTALS - status.totals.keys()
    if missing:
        raise TransportError(f"{url} answered, but without beamstream buffer metrics ({', '.join(sorted(missing))})")
    return status


def count(value: float) -> str:
    return f"{int(value):,}"


def megabytes(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def totals_table(totals: dict[str, float]) -> Table:
    """One row each: messages and bytes in and out, rejected, memory used of its bound, spilled or stored,
    offsets, producers (the rows the buffer's backend has)."""
    rows = {
        "messages in": count(totals["messages_in_total"]),
        "bytes in": megabytes(totals["bytes_in_total"]),
    }
    if "messages_out_total" in totals:
        rows["messages out"] = count(totals["messages_out_total"])
        rows["bytes out"] = megabytes(totals["bytes_out_total"])
    rows["rejected"] = count(totals["rejected_messages_total"])
    if "resident_bytes" in totals:
        used, bound = totals["resident_bytes"], totals["max_bytes"]
        rows["memory"] = f"{megabytes(used)} of {megabytes(bound)} ({100 * used / bound:.0f}%)" if bound else megabytes(used)
        rows["spilled"] = megabytes(totals["spilled_bytes"])
        rows["offsets held"] = f"{count(totals['log_first_offset'])} to {count(totals['log_next_offset'])} (next)"
    if "stored_bytes" in totals:
        rows["stored in NATS"] = megabytes(totals["stored_bytes"])
    rows["producers"] = f"{count(totals['producers_connected'])} connected, {count(totals['producers_ended'])} ended"
    table = Table(title="buffer", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows.items():
        table.add_row(name, value)
    return table


def groups_table(groups: dict[str, dict[str, float]]) -> Table:
    """One row per group: depth, lag, delivered, skipped, members, unacknowledged ("–" where the backend has none)."""
    table = Table(title="groups")
    table.add_column("group")
    for column in ("depth", "lag", "delivered", "skipped", "members", "unacked"):
        table.add_column(column, justify="right")
    for name, samples in sorted(groups.items()):
        table.add_row(name, *(count(samples[key]) if key in samples else "–" for key in (
            "group_depth", "group_lag", "group_delivered_total", "group_skipped_total", "group_members",
            "group_unacknowledged")))
    return table


def consumers_table(consumers: dict[tuple[str, str], dict[str, float]]) -> Table:
    """One row per consumer: its group, identity, credit and unacknowledged messages."""
    table = Table(title="consumers")
    for column in ("group", "consumer"):
        table.add_column(column)
    for column in ("credit", "unacked"):
        table.add_column(column, justify="right")
    for (group, consumer), samples in sorted(consumers.items()):
        table.add_row(group, consumer, count(samples["consumer_credit"]), count(samples["consumer_unacknowledged"]))
    return table


def status_tables(status: BufferStatus) -> list[Table]:
    """The totals table, then the groups and consumers tables where there are any."""
    tables = [totals_table(status.totals)]
    if status.groups:
        tables.append(groups_table(status.groups))
    if status.consumers:
        tables.append(consumers_table(status.consumers))
    return tables
