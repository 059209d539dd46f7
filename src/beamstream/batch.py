"""The unit that flows from a source through steps to a serializer: a batch of events.

A :class:`Batch` is columnar (like event-model's EventPage): every field is one array
whose first axis runs over the batch's events, so steps work on all events at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import msgspec
import numpy as np

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


@dataclass(frozen=True, slots=True)
class Batch:
    """Events ``seq[i]`` taken at ``time[i]`` (seconds since the epoch), with ``data[name][i]``.

    Promises: ``len(seq) == len(time) == len(array)`` for every array in ``data``;
    ``seq`` is int64 and strictly increasing.
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


class Share(msgspec.Struct, frozen=True, array_like=True):
    """The events one producer rank owns: block-cyclic over a range of sequence numbers.

    Rank ``rank`` of ``producers`` owns every ``seq`` with ``start <= seq < stop`` (``stop``
    None: no end known) and ``((seq - start) // block) % producers == rank``. Shares of all
    ranks cover the range exactly once. Every data message carries its producer's share,
    so a consumer can name the events of a producer that died without saying goodbye. On the
    wire a share is the array ``[rank, producers, start, stop, block]``.
    """

    rank: NonNegative
    producers: Positive
    start: int = 0
    stop: int | None = None
    block: Positive = 1

    def __post_init__(self) -> None:
        if self.rank >= self.producers:
            raise ValueError(f"share of rank {self.rank} among {self.producers} producers: the rank must be below {self.producers}")

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
        """The owned sequence numbers below ``until`` and ``stop``, ascending (int64)."""
        limit = self.stop if until is None else until if self.stop is None else min(until, self.stop)
        if limit is None:
            raise ValueError("an unbounded share has no finite list of sequence numbers")
        block_count = max(0, -(-(limit - self.start) // self.block))
        firsts = self.start + np.arange(self.rank, block_count, self.producers, dtype=np.int64) * self.block
        seqs = (firsts[:, None] + np.arange(self.block, dtype=np.int64)).ravel()
        return seqs[seqs < limit]

    def to_wire(self) -> list[int | None]:
        """``[rank, producers, start, stop, block]``, as in a message header."""
        return list(msgspec.structs.astuple(self))

    def with_rank(self, rank: int) -> Share:
        """The share of another rank of the same run."""
        return msgspec.structs.replace(self, rank=rank)
