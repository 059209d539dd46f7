"""Reading a stream kept in NATS JetStream (``beamstream buffer --backend nats://…``; docs/nats-backend.md).

nats-py is imported only here (and only when such a transport is made), so a client that
never reads NATS does not need it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from beamstream.client.transports.base import Delivery, Options, StreamEnd, Transport, refusal
from beamstream.errors import MissingDependency, needs_extra
from beamstream.wire.metadata import RunMetadata

if TYPE_CHECKING:
    from beamstream.security.streamkey import StreamKey

POLL_S = 0.5  # how long one fetch waits before the reader checks whether the stream has ended
DEFAULT_REDELIVER_AFTER = 30.0


class NatsTransport(Transport):
    """One reader of ``nats://HOST:PORT/NAME``: a member of a lossless group, a lossy reader, or (no group) alone.

    The URL may name several servers of one cluster (``nats://H1:P1,H2:P2,H3:P3/NAME``, and the
    buffer's ``?replicas=N``, which a reader ignores): the reader reads through any of them and
    carries on through another when one is lost (a group's position is kept on the stream's replicas).
    A stream the buffer spread over several JetStream streams (its ``?streams=N``, which a reader need
    not be given: the stream says it) is read from all of them, merged in the order the buffer stored it.

    The stream ends for this reader once the buffer has stored its verdict and the reader's
    consumer has nothing left: no message waiting and none handed to a member of its group
    unacknowledged. ``redeliver_after``: for a group this reader creates, seconds after which a
    message a member did not acknowledge goes to another member. ``admission``: the stream's admission key (a
    sealed stream): only verdicts the stream's buffer wrote count.
    """

    ends_with_verdict = True
    takes = frozenset({"group", "lossy", "start", "redeliver_after"})
    scope = "to a nats:// stream"
    scopes = {"redeliver_after": "to a group of a nats:// stream"}
    refuses = {"endpoints": "a nats:// stream is one URL", "max_message": "a NATS server bounds its own messages"}

    def __init__(self, url: str, *, group: str | None = None, lossy: bool = False,
                 start: Literal["earliest", "now"] = "earliest", redeliver_after: float = DEFAULT_REDELIVER_AFTER,
                 request_timeout: float = 10.0, admission: Any = None) -> None:
        from beamstream.jetstream.urls import split_url  # here: importing beamstream.client imports no jetstream

        server, name, _ = split_url(url)  # replicas (and streams): for the buffer that creates the stream
        try:
            from beamstream.jetstream.readers import NatsGroupReader, NatsLatestReader
        except ImportError as exc:
            raise MissingDependency(needs_extra(f"reading {url}", "nats", package="nats-py", cause=exc)) from exc
        self.where = url if group is None else f"{url} (group {group})"
        self.reader: Any = (
            NatsLatestReader(server, name, start, timeout=request_timeout, admission=admission) if lossy else
            NatsGroupReader(server, name, group, start, ack_wait=redeliver_after, timeout=request_timeout,
                            admission=admission))
        self.described: RunMetadata | None = None

    @classmethod
    def from_options(cls, endpoints: list[str], options: Options, key: StreamKey | None) -> NatsTransport:
        if "redeliver_after" in options and ("group" not in options or options.get("lossy")):
            raise refusal("redeliver_after", "to a lossless group (group=..., lossy=False) of a nats:// stream",
                          endpoints, options)
        return cls(endpoints[0], **options, admission=None if key is None else key.admission)

    def deliveries(self, timeout: float | None) -> Iterator[Delivery | StreamEnd | None]:
        quiet_since = time.monotonic()
        while True:
            item = self.reader.fetch(POLL_S)
            if item is not None:
                frames, ack = item
                self._learn_metadata()
                yield Delivery(frames, done=ack, skipped=self.reader.skipped)
                quiet_since = time.monotonic()
                continue
            verdict = self.reader.verdict()
            if verdict is not None and self.reader.settled():
                self._learn_metadata()
                yield StreamEnd(verdict, self.reader.skipped)
                return
            if timeout is not None and time.monotonic() - quiet_since > timeout:
                yield None
                quiet_since = time.monotonic()

    def metadata(self) -> RunMetadata | None:
        return self.described

    def _learn_metadata(self) -> None:
        """Read the stream's description from the server until it is there (asked with each delivery until
        then, and at the end: the buffer stores it just after the first message)."""
        if self.described is None:
            self.described = self.reader.metadata()

    def close(self) -> None:
        self.reader.close()
