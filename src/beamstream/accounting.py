"""A stream's account: who ended, what arrived, what never will.

Kept by every reader of a stream — a consumer (``Client.report``) and a buffer, which turns
its account into the stream's :class:`~beamstream.wire.control.Verdict` — so both count the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from beamstream.batch import Share
from beamstream.wire import DataMessage, EndMessage
from beamstream.wire.control import Verdict


def to_ranges(seqs: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique sequence numbers as inclusive ``(first, last)`` ranges."""
    if len(seqs) == 0:
        return []
    breaks = np.flatnonzero(np.diff(seqs) != 1)
    firsts = np.concatenate([[seqs[0]], seqs[breaks + 1]])
    lasts = np.concatenate([seqs[breaks], [seqs[-1]]])
    return [(int(a), int(b)) for a, b in zip(firsts, lasts, strict=True)]


def format_ranges(ranges: list[tuple[int, int]], limit: int = 10) -> str:
    """``0-9, 12, 20-29`` (at most ``limit`` ranges, then how many more)."""
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        shown.append(f"… ({len(ranges) - limit} more ranges)")
    return ", ".join(shown)


@dataclass(slots=True)
class ProducerRecord:
    """What arrived from one producer rank."""

    share: Share
    seqs: list[np.ndarray] = field(default_factory=list)
    messages: int = 0
    end: EndMessage | None = None

    def received(self) -> np.ndarray:
        return np.unique(np.concatenate(self.seqs)) if self.seqs else np.empty(0, np.int64)

    def missing(self) -> tuple[list[tuple[int, int]], int | None]:
        """Missing ranges, and the seq after which nothing is known (unbounded share, no clean end)."""
        received = self.received()
        share = self.share
        if share.stop is not None:
            expected, unknown_after = share.seqs(), None
        elif self.end is not None and self.end.status == "ok":
            until = -1 if self.end.last_seq is None else self.end.last_seq
            expected, unknown_after = share.seqs(until=until + 1), None
        else:
            last = int(received[-1]) if len(received) else share.start - 1
            expected, unknown_after = share.seqs(until=last + 1), last
        return to_ranges(np.setdiff1d(expected, received, assume_unique=True)), unknown_after


@dataclass(slots=True)
class StreamReport:
    """A consumer's account of one stream.

    ``complete`` is True only when every producer sent its end message with status ok and
    every event its share announced arrived.
    """

    endpoints: list[str]
    stream: str | None = None
    producers: int | None = None
    records: dict[int, ProducerRecord] = field(default_factory=dict)  # by rank
    events: int = 0
    messages: int = 0
    bytes: int = 0
    duplicates: int = 0
    foreign: int = 0
    skipped: int = 0
    verdict: Verdict | None = None  # a buffer's verdict on the whole stream, for a consumer of a group

    def add_data(self, message: DataMessage) -> None:
        """Count a data message (the first message names the stream, if nothing did before)."""
        self.stream = self.stream or message.stream
        record = self._record(message.rank, message.share, message.producers)
        record.seqs.append(message.seq)
        record.messages += 1
        self.messages += 1
        self.events += len(message.seq)
        self.bytes += message.nbytes

    def add_end(self, end: EndMessage) -> None:
        """Record a producer's end message (the first message names the stream, if nothing did before)."""
        self.stream = self.stream or end.stream
        self._record(end.rank, end.share, end.producers).end = end

    def _record(self, rank: int, share: Share, producers: int) -> ProducerRecord:
        self.producers = producers
        if rank not in self.records:
            self.records[rank] = ProducerRecord(share=share)
        return self.records[rank]

    @property
    def ended(self) -> list[int]:
        """Ranks whose end message arrived."""
        return sorted(rank for rank, record in self.records.items() if record.end is not None)

    @property
    def all_ended(self) -> bool:
        return self.producers is not None and len(self.ended) == self.producers

    def all_records(self) -> dict[int, ProducerRecord]:
        """A record for every announced rank; a rank never heard from gets its share derived from the others'."""
        if not self.records:
            return {}
        known = next(iter(self.records.values())).share
        return {
            rank: self.records.get(rank) or ProducerRecord(share=known.with_rank(rank))
            for rank in range(self.producers or 0)
        }

    @property
    def missing(self) -> list[tuple[int, int]]:
        """Sequence ranges announced by a producer's share that did not arrive (known ones)."""
        ranges = [r for record in self.all_records().values() for r in record.missing()[0]]
        return sorted(ranges)

    @property
    def complete(self) -> bool:
        if self.verdict is not None:
            return self.verdict.complete
        return (
            self.all_ended
            and all(record.end.status == "ok" for record in self.records.values())
            and not self.missing
        )

    def final_verdict(self) -> Verdict:
        """This account as the stream's verdict (what a buffer tells every group once the producers are done)."""
        return Verdict(complete=self.complete, summary=self.summary(), missing=self.missing)

    def problems(self) -> list[str]:
        """One sentence per reason the stream is not complete."""
        lines = []
        if self.producers is None:
            return [f"nothing arrived from {', '.join(self.endpoints)}"]
        for rank, record in self.all_records().items():
            missing, unknown_after = record.missing()
            if rank not in self.records:
                lines.append(f"producer {rank}: nothing arrived and no end-of-stream (did it die?)")
            elif record.end is None:
                lines.append(f"producer {rank}: no end-of-stream after {record.messages} messages (did it die?)")
            elif record.end.status != "ok":
                lines.append(f"producer {rank}: ended with status {record.end.status}: {record.end.reason}")
            elif record.end.messages != record.messages:
                lines.append(f"producer {rank}: sent {record.end.messages} messages, {record.messages} arrived")
            if missing:
                count = sum(b - a + 1 for a, b in missing)
                lines.append(f"producer {rank}: {count} events never arrived: {format_ranges(missing)}")
            if unknown_after is not None:
                lines.append(f"producer {rank}: events after {unknown_after} unknown (the source had no announced end)")
        return lines

    def summary(self) -> str:
        """One line on what arrived, then the problems, if any (a buffer's own summary for a group)."""
        if self.verdict is not None:
            mine = f"this consumer: {self.events} events in {self.messages} messages ({self.bytes / 1e6:.1f} MB)"
            skipped = f", {self.skipped} messages skipped (lossy group)" if self.skipped else ""
            return f"{self.verdict.summary}\n{mine}{skipped}"
        state = "complete" if self.complete else "INCOMPLETE"
        head = (f"stream {self.stream}: {state}: {self.events} events in {self.messages} messages "
                f"({self.bytes / 1e6:.1f} MB) from {len(self.records)}/{self.producers or '?'} producers")
        extra = [f"{self.duplicates} duplicate messages dropped"] if self.duplicates else []
        extra += [f"{self.foreign} messages of other streams ignored"] if self.foreign else []
        return "\n".join([head, *extra, *([] if self.complete else self.problems())])
