"""A stream kept in NATS JetStream, as deliveries for :class:`~beamstream.client.Client`.

``Client("nats://HOST:PORT/NAME", group=...)`` reads the stream a buffer started with
``--backend nats://HOST:PORT/NAME`` stores. The stream ends for a reader once the buffer has
stored its verdict (every producer ended, or went silent) and the reader's consumer has
nothing left: no message waiting and none handed to a member of its group unacknowledged.
nats-py is imported only here, so a client that never reads NATS does not need it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from beamstream.buffer.nats_url import split_url
from beamstream.client.report import StreamReport

POLL_S = 0.5  # how long one fetch waits before the reader checks whether the stream has ended


class NatsDeliveries:
    """The messages of one reader: a member of a lossless group, a lossy reader, or (no group) the whole stream.

    Args:
        url: ``nats://HOST:PORT/NAME``.
        group: the consumer group (None: an ephemeral reader of its own).
        lossy: read the newest message each time, counting skipped ones.
        start: where a new group starts: ``earliest`` or ``now``.
        redeliver_after: for a group this reader creates, seconds after which a message a
            member did not acknowledge goes to another member.
        timeout: seconds one request to the server may take.
    """

    def __init__(self, url: str, group: str | None, lossy: bool, start: str, redeliver_after: float,
                 timeout: float = 10.0) -> None:
        server, name = split_url(url)
        try:
            from beamstream.buffer.nats_backend import NatsGroupReader, NatsLatestReader
        except ImportError as exc:
            raise ImportError(f"reading {url} needs nats-py: pip install 'beamstream[nats]' ({exc})") from exc
        self.reader: Any = (NatsLatestReader(server, name, start, timeout=timeout) if lossy else
                            NatsGroupReader(server, name, group, start, ack_wait=redeliver_after, timeout=timeout))

    def close(self) -> None:
        self.reader.close()

    def deliveries(self, report: StreamReport, silence: float | None,
                   on_silence: Callable[[], None]) -> Iterator[tuple[list[memoryview], Callable[[], None]]]:
        """(frames, ack) for each message; at the end sets ``report.verdict``.

        Calls ``on_silence`` (which raises) after ``silence`` seconds without a message or an end.
        """
        quiet_since = time.monotonic()
        while True:
            item = self.reader.fetch(POLL_S)
            report.skipped = getattr(self.reader, "skipped", 0)
            if item is not None:
                yield item
                quiet_since = time.monotonic()
                continue
            verdict = self.reader.verdict()
            if verdict is not None and self.reader.settled():
                report.verdict = (bool(verdict["complete"]), str(verdict["summary"]))
                return
            if silence is not None and time.monotonic() - quiet_since > silence:
                on_silence()
