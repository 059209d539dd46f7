"""A buffer's figures as ``beamstream buffer status`` shows them: read from its metrics, drawn as tables.

:meth:`Buffer.status <beamstream.buffer.base.Buffer.status>` gives them for a buffer in this
process; :func:`fetch_status` scrapes them from a running buffer's metrics endpoint. The
metric names are listed in :mod:`beamstream.buffer.metrics`.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from beamstream.buffer.metrics import PREFIX, TOTALS
from beamstream.errors import TransportError


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


def status_of(families: Iterable[Metric]) -> BufferStatus:
    """The ``beamstream_buffer_*`` samples of metric families (others are ignored)."""
    status = BufferStatus()
    for family in families:
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


def parse_status(text: str) -> BufferStatus:
    """The ``beamstream_buffer_*`` samples of a Prometheus text exposition (others are ignored).

    Raises ValueError if ``text`` is not Prometheus text format.
    """
    return status_of(text_string_to_metric_families(text))


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
    if "refused_consumers_total" in totals:
        rows["consumers refused"] = count(totals["refused_consumers_total"])
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
