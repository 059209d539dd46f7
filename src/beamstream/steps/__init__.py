"""Processing step plugins: each module holds one spec model whose ``build()`` gives the step.

Every step maps ``Iterator[Batch] -> Iterator[Batch]``, works on all events of a batch at
once, never writes into the arrays it receives, and raises :class:`~beamstream.errors.StepError`
saying what to change when the events do not fit its options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np

from beamstream.batch import Batch
from beamstream.errors import StepError


def require_field(batch: Batch, name: str, step: str) -> np.ndarray:
    """The array ``name`` of ``batch``; StepError listing the fields present when it is absent."""
    try:
        return batch.data[name]
    except KeyError:
        present = ", ".join(repr(key) for key in batch.data) or "(none)"
        raise StepError(
            f"{step}: field {name!r} is not in the events; fields present: {present}. "
            "Name one of those, or add an earlier step that produces it."
        ) from None


class BatchwiseStep(ABC):
    """A step that transforms each batch on its own; subclasses define ``apply(batch)``."""

    def __call__(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        return map(self.apply, batches)

    @abstractmethod
    def apply(self, batch: Batch) -> Batch:
        """``batch`` transformed."""
