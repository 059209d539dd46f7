"""A running stream's live rates and counts, read from its buffer's metrics endpoint.

``GET /v1/streams/{id}`` shows them for a running stream (its ``figures``): events, messages and payload bytes
the buffer accepted, the mean rate since the stream started running, producers connected and
ended, and per consumer group its members, deliveries and the messages it has not yet
acknowledged (lag). Missing sequence ranges are known only once the stream ended: they are in
its verdict.

Each buffer is scraped at most once per :data:`MAX_AGE_S` seconds however often the stream is
shown, with a short timeout: an unreachable buffer costs the API at most
:data:`SCRAPE_TIMEOUT_S` and yields ``{"error": ...}`` instead of numbers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from beamstream.errors import TransportError
from beamstream.metrics_reading import BufferStatus, fetch_status

MAX_AGE_S = 1.0
SCRAPE_TIMEOUT_S = 2.0
MAX_KEPT = 4096  # streams whose last scrape is kept; the oldest are forgotten beyond


class LiveRates:
    """The last scrape of each running stream's buffer, renewed when older than :data:`MAX_AGE_S`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scrapes: dict[str, tuple[float, dict[str, Any]]] = {}

    def of(self, stream_id: str, metrics_url: str, running_since: float) -> dict[str, Any]:
        """The live numbers of the stream whose buffer serves ``metrics_url``, running since ``running_since``
        (epoch s): what ``GET /v1/streams/{id}`` shows as its ``figures``."""
        with self._lock:
            kept = self._scrapes.get(stream_id)
        if kept is not None and time.time() - kept[0] < MAX_AGE_S:
            return kept[1]
        now = time.time()
        try:
            figures = summarise(fetch_status(metrics_url, timeout=SCRAPE_TIMEOUT_S), now - running_since)
        except TransportError as exc:
            figures = {"error": str(exc)}
        figures["at"] = now
        with self._lock:
            self._scrapes[stream_id] = (now, figures)
            while len(self._scrapes) > MAX_KEPT:
                del self._scrapes[next(iter(self._scrapes))]
        return figures

    def forget(self, stream_id: str) -> None:
        with self._lock:
            self._scrapes.pop(stream_id, None)


def summarise(status: BufferStatus, running_for_s: float) -> dict[str, Any]:
    """The numbers a user reads from a buffer's scrape (``running_for_s``: seconds since the stream started running)."""
    totals = status.totals
    bytes_in = int(totals.get("bytes_in_total", 0))
    return {
        "events": int(totals.get("events_in_total", 0)),
        "messages": int(totals.get("messages_in_total", 0)),
        "bytes": bytes_in,
        "rate_bytes_per_s": bytes_in / running_for_s if running_for_s > 0 else 0.0,
        "producers_connected": int(totals.get("producers_connected", 0)),
        "producers_ended": int(totals.get("producers_ended", 0)),
        "groups": {name: {"members": int(group.get("group_members", 0)),
                          "delivered": int(group.get("group_delivered_total", 0)),
                          "lag": int(group.get("group_lag", 0))}
                   for name, group in sorted(status.groups.items())},
    }
