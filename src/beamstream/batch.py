"""The unit that flows from a source through steps to a serializer: a batch of events.

A :class:`Batch` is columnar (like event-model's EventPage): every field is one array
whose first axis runs over the batch's events, so steps work on all events at once.
The conventions of the data it carries (axes, byte order, times) are in docs/conventions.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import msgspec
import numpy as np

MAX_SEQ = 2**62
"""Sequence numbers run from 0 to this (events of a run, as the wire carries them)."""
MAX_PRODUCERS = 1 << 14
"""Producers of one stream at most (MPI ranks of the biggest jobs with room to spare)."""
MAX_BLOCK = 1 << 30

TIMESTAMP_FIELD = "timestamp"
"""A source's own exact event timestamp, kept as it reads it (psana: uint64 ``seconds << 32 | nanoseconds``)."""
BOOKKEEPING_FIELDS = frozenset({TIMESTAMP_FIELD})
"""Fields that say which event this is rather than what was measured: a step that acts on every
field (``cast`` without ``fields``) leaves them alone, and converts them only when named."""

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
ProducerCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_PRODUCERS)]


@dataclass(frozen=True, slots=True)
class Batch:
    """Events ``seq[i]`` taken at ``time[i]`` (seconds since the epoch), with ``data[name][i]``.

    Promises: ``len(seq) == len(time) == len(array)`` for every array in ``data``;
    ``seq`` is int64 and strictly increasing; every array in ``data`` is little-endian (or
    has no byte order): a big-endian array given is replaced by a little-endian copy, so
    that a field keeps one dtype however its events are sliced and joined.
    """

    seq: np.ndarray
    time: np.ndarray
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = len(self.seq)
        if len(self.time) != count:
            raise ValueError(f"batch has {count} sequence numbers but {len(self.time)} times")
        for name, array in self.data.items():
            if array.shape[:1] != (count,):
                raise ValueError(f"field {name!r} has shape {array.shape}, expected ({count}, ...)")
        if any(array.dtype != little_endian(array.dtype) for array in self.data.values()):
            object.__setattr__(self, "data", {name: array.astype(little_endian(array.dtype), copy=False)
                                              for name, array in self.data.items()})

    def __len__(self) -> int:
        return len(self.seq)

    def replace(self, data: dict[str, np.ndarray]) -> Batch:
        """The same events with other field arrays."""
        return Batch(self.seq, self.time, data)

    def slice(self, start: int, stop: int) -> Batch:
        """Events ``start:stop`` of this batch (views, no copies)."""
        return Batch(
            self.seq[start:stop],
            self.time[start:stop],
            {name: array[start:stop] for name, array in self.data.items()},
        )

    @classmethod
    def concatenate(cls, batches: list[Batch]) -> Batch:
        """One batch holding the events of ``batches`` in order."""
        if len(batches) == 1:
            return batches[0]
        names = batches[0].data.keys()
        return cls(
            np.concatenate([b.seq for b in batches]),
            np.concatenate([b.time for b in batches]),
            {name: np.concatenate([b.data[name] for b in batches]) for name in names},
        )


def little_endian(dtype: np.dtype) -> np.dtype:
    """``dtype`` in little-endian byte order (itself when it has none, e.g. uint8 or bool)."""
    return dtype.newbyteorder("<")


class Share(msgspec.Struct, frozen=True, array_like=True):
    """The events one producer rank owns: block-cyclic over a range of sequence numbers.

    Rank ``rank`` of ``producers`` owns every ``seq`` with ``start <= seq < stop`` (``stop``
    None: no end known) and ``((seq - start) // block) % producers == rank``. Shares of all
    ranks cover the range exactly once. Every data message carries its producer's share,
    so a consumer can name the events of a producer that died without saying goodbye. On the
    wire a share is the array ``[rank, producers, start, stop, block]``.
    """

    rank: NonNegative
    producers: ProducerCount
    start: Seq = 0
    stop: Seq | None = None
    block: Annotated[int, msgspec.Meta(ge=1, le=MAX_BLOCK)] = 1

    def __post_init__(self) -> None:
        if self.rank >= self.producers:
            raise ValueError(f"share of rank {self.rank} among {self.producers} producers: the rank must be below {self.producers}")
        if self.stop is not None and self.stop < self.start:
            raise ValueError(f"share stops at {self.stop}, before it starts at {self.start}")

    def owns(self, seq: np.ndarray) -> np.ndarray:
        """Boolean mask of the sequence numbers in ``seq`` that this share owns."""
        inside = seq >= self.start
        if self.stop is not None:
            inside &= seq < self.stop
        return inside & (((seq - self.start) // self.block) % self.producers == self.rank)

    def blocks(self) -> range:
        """Indices of the blocks this rank owns (unbounded shares stop at 2**62)."""
        stop = self.stop if self.stop is not None else 2**62
        block_count = -(-(stop - self.start) // self.block)
        return range(self.rank, block_count, self.producers)

    def block_range(self, block_index: int) -> tuple[int, int]:
        """Sequence numbers ``[first, stop)`` of block ``block_index``."""
        first = self.start + block_index * self.block
        stop = first + self.block
        if self.stop is not None:
            stop = min(stop, self.stop)
        return first, stop

    def seqs(self, until: int | None = None) -> np.ndarray:
        """The owned sequence numbers below ``until`` and ``stop``, ascending (int64); for small shares
        (tests, examples): a run's share may own more than memory holds, use :meth:`count` and
        :meth:`seq_ranges` there."""
        limit = self._limit(until)
        block_count = max(0, -(-(limit - self.start) // self.block))
        firsts = self.start + np.arange(self.rank, block_count, self.producers, dtype=np.int64) * self.block
        seqs = (firsts[:, None] + np.arange(self.block, dtype=np.int64)).ravel()
        return seqs[seqs < limit]

    def _limit(self, until: int | None) -> int:
        limit = self.stop if until is None else until if self.stop is None else min(until, self.stop)
        if limit is None:
            raise ValueError("an unbounded share has no finite list of sequence numbers")
        return limit

    def count(self, until: int | None = None) -> int:
        """How many sequence numbers this share owns below ``until`` and ``stop`` (arithmetic, no list)."""
        span = self._limit(until) - self.start
        if span <= 0:
            return 0
        cycles, rest = divmod(span, self.block * self.producers)
        return cycles * self.block + min(max(rest - self.rank * self.block, 0), self.block)

    def positions(self, seqs: np.ndarray) -> np.ndarray:
        """Where each owned sequence number in ``seqs`` comes among this share's: 0 for the first, 1 for the next…"""
        cycles, within = np.divmod(np.asarray(seqs, dtype=np.int64) - self.start, self.block * self.producers)
        return cycles * self.block + within - self.rank * self.block

    def seq_ranges(self, first: int, last: int, limit: int) -> list[tuple[int, int]]:
        """Inclusive sequence ranges of the share's positions ``first`` … ``last``, at most ``limit`` of them
        (one per block touched when several producers share the run; one in all for a single producer)."""
        if self.producers == 1:
            return [(self.start + first, self.start + last)][:limit]
        ranges = []
        position = first
        while position <= last and len(ranges) < limit:
            cycle, within = divmod(position, self.block)
            seq = self.start + (cycle * self.producers + self.rank) * self.block + within
            through = min(last, (cycle + 1) * self.block - 1)
            ranges.append((seq, seq + through - position))
            position = through + 1
        return ranges

    def to_wire(self) -> list[int | None]:
        """``[rank, producers, start, stop, block]``, as in a message header."""
        return list(msgspec.structs.astuple(self))

    def with_rank(self, rank: int) -> Share:
        """The share of another rank of the same run."""
        return msgspec.structs.replace(self, rank=rank)
