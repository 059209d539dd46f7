"""``batch``: re-chunk the stream into messages of a fixed number of events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from beamstream.batch import Batch
from beamstream.errors import StepError
from beamstream.limits import BatchSize, check_memory
from beamstream.stages import StepSpec


class BatchStep(StepSpec):
    """Group events into batches of exactly ``size`` events; the last batch may be smaller.

    Events keep their order and each appears exactly once. Besides the incoming batch, at
    most ``size - 1`` held-back events are kept; the tail of a batch is copied when held back,
    so it does not keep the rest of its batch alive. Full-size output batches cut from an
    incoming batch are views of it.

    Attributes:
        size: events per output batch (required, > 0).
    """

    type: Literal["batch"] = "batch"
    size: BatchSize = Field(description="events per output batch")

    def build(self) -> Rebatcher:
        return Rebatcher(self.size)


class Rebatcher:
    """Turns batches of any size into batches of ``size`` events."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """StepError at the first event if ``size`` such events would not fit in the memory available."""
        pending: list[Batch] = []
        held = 0
        checked = False
        for batch in batches:
            if not checked and len(batch):
                event_bytes = sum(array.nbytes for array in batch.data.values()) // len(batch)
                check_memory(self.size * event_bytes, f"batch: {self.size:,} events of {event_bytes:,} bytes",
                             "lower size", StepError)
                checked = True
            start = 0
            if held:
                start = min(self.size - held, len(batch))
                pending.append(batch.slice(0, start))
                held += start
                if held < self.size:
                    continue
                yield _join(pending)
                pending, held = [], 0
            while len(batch) - start >= self.size:
                yield batch.slice(start, start + self.size)
                start += self.size
            if start < len(batch):
                pending = [_detach(batch.slice(start, len(batch))) if start else batch]
                held = len(batch) - start
            del batch  # lets the source free it while it reads the next one
        if pending:
            yield _join(pending)


def _detach(batch: Batch) -> Batch:
    """A copy of ``batch`` that does not keep the arrays it was sliced from alive."""
    return Batch(batch.seq.copy(), batch.time.copy(), {name: array.copy() for name, array in batch.data.items()})


def _join(parts: list[Batch]) -> Batch:
    """The events of ``parts`` as one batch; StepError when their fields or event shapes differ."""
    names = list(parts[0].data)
    for part in parts[1:]:
        if list(part.data) != names:
            raise StepError(
                f"batch: cannot join events with fields {names} and {list(part.data)}; "
                "every event must carry the same fields (use a select step to keep common ones)."
            )
    try:
        return Batch.concatenate(parts)
    except ValueError as exc:
        shapes = {name: sorted({part.data[name].shape[1:] for part in parts}) for name in names}
        raise StepError(
            f"batch: cannot join events whose event shapes differ ({shapes}): {exc}; "
            "bring them to one shape first with a pad or roi step."
        ) from exc
