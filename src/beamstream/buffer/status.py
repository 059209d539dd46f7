"""A buffer's figures as ``beamstream buffer status`` shows them: read from its metrics, drawn as tables.

:meth:`Buffer.status <beamstream.buffer.base.Buffer.status>` gives them for a buffer in this
process; :func:`~beamstream.metrics_reading.fetch_status` scrapes them from a running buffer's
metrics endpoint (the reading is in :mod:`beamstream.metrics_reading`, which the request service
uses too; its names are kept here for the buffer's callers). The metric names are listed in
:mod:`beamstream.buffer.metrics`.
"""

from __future__ import annotations

from rich.table import Table

from beamstream.metrics_reading import BufferStatus, fetch_status, metrics_url, parse_status, status_of

__all__ = ["BufferStatus", "consumers_table", "fetch_status", "groups_table", "metrics_url", "parse_status",
           "status_of", "status_tables", "totals_table"]


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
