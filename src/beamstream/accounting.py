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


MAX_MISSING_RANGES = 1000
"""Missing sequence ranges listed at most, per producer and per stream (their count is always exact)."""


def format_ranges(ranges: list[tuple[int, int]], limit: int = 10, more: bool = False) -> str:
    """``0-9, 12, 20-29`` (at most ``limit`` ranges, then how many more; ``more``: the list itself was cut)."""
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        shown.append(f"… ({len(ranges) - limit}{'+' if more else ''} more ranges)")
    elif more:
        shown.append("… (more ranges)")
    return ", ".join(shown)


@dataclass(frozen=True, slots=True)
class Missing:
    """What never arrived from one producer: how many events, their first ranges, and where knowledge ends.

    ``ranges`` lists at most :data:`MAX_MISSING_RANGES` inclusive sequence ranges, in order;
    ``events`` counts them all. ``unknown_after``: the seq after which nothing is known (a share
    with no announced end, and no clean end message), else None.
    """

    events: int
    ranges: list[tuple[int, int]]
    unknown_after: int | None

    @property
    def cut(self) -> bool:
        """True if ``ranges`` lists fewer events than ``events`` (the list was cut at its maximum)."""
        return self.events > sum(last - first + 1 for first, last in self.ranges)


@dataclass(slots=True)
class ProducerRecord:
    """What arrived from one producer rank."""

    share: Share
    seqs: list[np.ndarray] = field(default_factory=list)
    omitted: list[np.ndarray] = field(default_factory=list)  # left out by the source or a step on purpose
    messages: int = 0
    end: EndMessage | None = None

    def accounted(self) -> np.ndarray:
        """Every sequence number of this producer's share that arrived or that its source said it left out,
        sorted, once each."""
        parts = self.seqs + self.omitted
        seqs = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)
        return seqs[self.share.owns(seqs)]

    def missing(self, limit: int = MAX_MISSING_RANGES) -> Missing:
        """What never arrived and was not left out on purpose (its first ``limit`` ranges), counted by
        arithmetic on the share: no list of the share's events is made, so a share of any size costs
        only what arrived."""
        received = self.accounted()
        share = self.share
        unknown_after = None
        if share.stop is not None:
            expected = share.count()
        elif self.end is not None and self.end.status == "ok":
            expected = share.count(until=(-1 if self.end.last_seq is None else self.end.last_seq) + 1)
        else:
            unknown_after = int(received[-1]) if len(received) else share.start - 1
            expected = share.count(until=unknown_after + 1)
        positions = share.positions(received)
        positions = positions[positions < expected]
        edges = np.concatenate([[-1], positions, [expected]])
        gaps = np.flatnonzero(np.diff(edges) > 1)
        ranges: list[tuple[int, int]] = []
        for gap in gaps:
            if len(ranges) >= limit:
                break
            ranges += share.seq_ranges(int(edges[gap]) + 1, int(edges[gap + 1]) - 1, limit - len(ranges))
        return Missing(expected - len(positions), ranges, unknown_after)


@dataclass(slots=True)
class StreamReport:
    """A consumer's account of one stream.

    ``complete`` is True only when every producer sent its end message with status ok and
    every event its share announced arrived.
    """

    endpoints: list[str]
    stream: str | None = None
    producers: int | None = None
    ranks: range | None = None  # the ranks this reader accounts for: all, or its receiver's ones (``receivers``)
    records: dict[int, ProducerRecord] = field(default_factory=dict)  # by rank
    events: int = 0
    messages: int = 0
    bytes: int = 0
    duplicates: int = 0
    foreign: int = 0
    refused: int = 0  # unreadable messages (malformed, or a payload that did not match its checksum)
    forged: int = 0  # messages of a sealed stream that its key did not open (forged, altered, unsealed): refused
    skipped: int = 0
    omitted: int = 0  # events sources or steps left out on purpose (psana on_missing: skip, a hit veto): not lost
    verdict: Verdict | None = None  # a buffer's verdict on the whole stream, for a consumer of a group

    def add_data(self, message: DataMessage) -> None:
        """Count a data message (the first message names the stream, if nothing did before)."""
        self.stream = self.stream or message.stream
        record = self._record(message)
        record.seqs.append(message.seq)
        self._omit(record, message.omitted_seqs)
        record.messages += 1
        self.messages += 1
        self.events += len(message.seq)
        self.bytes += message.nbytes

    def add_end(self, end: EndMessage) -> None:
        """Record a producer's end message (the first message names the stream, if nothing did before)."""
        self.stream = self.stream or end.stream
        record = self._record(end)
        record.end = end
        self._omit(record, end.omitted_seqs)

    def _omit(self, record: ProducerRecord, seqs: np.ndarray) -> None:
        if len(seqs):
            record.omitted.append(seqs)
            self.omitted += len(seqs)

    def refusal(self, message: DataMessage | EndMessage) -> str | None:
        """Why ``message`` may not be accounted here, or None: a stream spread over several receivers (its
        header's ``receivers``) sends rank ``r`` to receiver ``r % receivers``; the first message a reader
        accounts tells it which receiver it is, and a message of another receiver's ranks is refused."""
        if self.ranks is None or message.rank in self.ranks:
            return None
        spread = message.receivers or 1  # an end message's is unset when 1
        return (f"producer {message.rank} of {message.producers} sends to receiver {message.rank % spread} "
                f"of {spread}; this one reads the producers {_ranks(self.ranks)}: the producers' stream "
                "sink lists its endpoints in another order, or two of its endpoints reach this reader")

    def _record(self, message: DataMessage | EndMessage) -> ProducerRecord:
        if self.ranks is None:
            spread = message.receivers or 1  # an end message's is unset when 1
            self.ranks = range(message.rank % spread, message.producers, spread)
        self.producers = message.producers
        if message.rank not in self.records:
            self.records[message.rank] = ProducerRecord(share=message.share)
        return self.records[message.rank]

    @property
    def ended(self) -> list[int]:
        """Ranks whose end message arrived."""
        return sorted(rank for rank, record in self.records.items() if record.end is not None)

    @property
    def all_ended(self) -> bool:
        return self.ranks is not None and len(self.ended) == len(self.ranks)

    def all_records(self) -> dict[int, ProducerRecord]:
        """A record for every announced rank; a rank never heard from gets its share derived from the others'."""
        if not self.records:
            return {}
        known = next(iter(self.records.values())).share
        return {
            rank: self.records.get(rank) or ProducerRecord(share=known.with_rank(rank))
            for rank in self.ranks or ()
        }

    @property
    def missing(self) -> list[tuple[int, int]]:
        """Sequence ranges announced by a producer's share that did not arrive (known ones): at most
        :data:`MAX_MISSING_RANGES`, the first ones of each producer, in order."""
        records = self.all_records()
        each = -(-MAX_MISSING_RANGES // max(1, len(records)))
        return sorted(r for record in records.values() for r in record.missing(each).ranges)[:MAX_MISSING_RANGES]

    @property
    def missing_events(self) -> int:
        """How many events announced by producers' shares did not arrive (known ones)."""
        return sum(record.missing().events for record in self.all_records().values())

    @property
    def complete(self) -> bool:
        if self.verdict is not None:
            return self.verdict.complete
        return (
            self.all_ended
            and all(record.end.status == "ok" for record in self.records.values())
            and not self.missing_events
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
            missing = record.missing()
            if rank not in self.records:
                lines.append(f"producer {rank}: nothing arrived and no end-of-stream (did it die?)")
            elif record.end is None:
                lines.append(f"producer {rank}: no end-of-stream after {record.messages} messages (did it die?)")
            elif record.end.status != "ok":
                lines.append(f"producer {rank}: ended with status {record.end.status}: {record.end.reason}")
            elif record.end.messages != record.messages:
                lines.append(f"producer {rank}: sent {record.end.messages} messages, {record.messages} arrived")
            if missing.events:
                lines.append(f"producer {rank}: {missing.events} events never arrived: "
                             f"{format_ranges(missing.ranges, more=missing.cut)}")
            if missing.unknown_after is not None:
                lines.append(f"producer {rank}: events after {missing.unknown_after} unknown "
                             "(the source had no announced end)")
        return lines

    def _expected(self) -> str:
        """The producers this reader expects: their number, ``'?'`` before any message, and which ranks when
        the stream is spread over several receivers."""
        if self.ranks is None:
            return "?"
        return str(len(self.ranks)) + ("" if self.ranks.step == 1 else f" (ranks {_ranks(self.ranks)})")

    def summary(self) -> str:
        """One line on what arrived, then the problems, if any (a buffer's own summary for a group)."""
        if self.verdict is not None:
            mine = f"this consumer: {self.events} events in {self.messages} messages ({self.bytes / 1e6:.1f} MB)"
            skipped = f", {self.skipped} messages skipped (lossy group)" if self.skipped else ""
            forged = f", {self.forged} forged messages refused" if self.forged else ""
            return f"{self.verdict.summary}\n{mine}{skipped}{forged}"
        state = "complete" if self.complete else "INCOMPLETE"
        head = (f"stream {self.stream}: {state}: {self.events} events in {self.messages} messages "
                f"({self.bytes / 1e6:.1f} MB) from {len(self.records)}/{self._expected()} producers")
        extra = [f"{self.omitted} events left out on purpose by the source or a step (not lost)"] if self.omitted else []
        extra += [f"{self.duplicates} duplicate messages dropped"] if self.duplicates else []
        extra += [f"{self.foreign} messages of other streams refused"] if self.foreign else []
        extra += [f"{self.refused} unreadable messages refused"] if self.refused else []
        extra += [f"{self.forged} forged messages refused (not sealed with the stream's key)"] if self.forged else []
        return "\n".join([head, *extra, *([] if self.complete else self.problems())])


def _ranks(ranks: range) -> str:
    """``ranks`` in words: ``0, 2, 4`` (the first ones and a count past eight)."""
    shown = ", ".join(map(str, ranks[:8]))
    return shown + (f" … ({len(ranks)} in all)" if len(ranks) > 8 else "")
