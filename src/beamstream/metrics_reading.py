"""Reading a buffer's figures from its Prometheus metrics: for ``beamstream buffer status``, and for the request
service (a running stream's live rates, whether its groups have drained).

:func:`fetch_status` scrapes a running buffer's metrics endpoint (through httpx); :func:`status_of` reads
metric families already at hand (a buffer in this process). Only the ``beamstream_buffer_*`` samples are kept,
sorted into a :class:`BufferStatus`. The names are listed in :mod:`beamstream.buffer.metrics`, which writes them;
this module, which only reads them, imports nothing of the buffer, so that the service may use it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from beamstream.errors import TransportError

PREFIX = "beamstream_buffer_"

# the unlabelled samples every buffer exposes, whatever its backend (names without PREFIX)
TOTALS = {"messages_in_total", "bytes_in_total", "rejected_messages_total", "producers_connected", "producers_ended"}


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
    parts = urlsplit(url)
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
        answer = httpx.get(url, timeout=timeout)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        raise TransportError(f"no buffer metrics from {url}: {_reason(exc)}") from None
    if not answer.is_success:
        raise TransportError(f"no buffer metrics from {url}: {answer.status_code} {answer.reason_phrase}")
    try:
        status = parse_status(answer.text)
    except ValueError as exc:
        raise TransportError(f"{url} did not answer with Prometheus metrics: {exc}") from None
    missing = TOTALS - status.totals.keys()
    if missing:
        raise TransportError(f"{url} answered, but without beamstream buffer metrics ({', '.join(sorted(missing))})")
    return status



def _reason(exc: Exception) -> str:
    """Why ``exc`` (httpx's) happened: its own words (``[Errno 111] Connection refused``), else its kind."""
    return str(exc) or type(exc).__name__
