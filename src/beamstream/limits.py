"""Bounds on the sizes a stream spec may ask for, so that an absurd value is refused, not attempted.

Spec models use these types; what a worker will hold in memory is checked against what the
machine has available (:func:`check_memory`) when its source opens (a simulated bank, an HDF5
block) and when a batch step sees its first event (``size`` events of that event's bytes).
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field

from beamstream.errors import BeamstreamError, SourceError

MAX_AXIS = 1 << 20  # elements along one axis of an event (a 1M-sample waveform, a 1M-pixel row)
MAX_DIMENSIONS = 8
MAX_EVENT_BYTES = 1 << 32  # one event of one field: 4 GiB
MAX_EVENTS_PER_BATCH = 1 << 24
MAX_RATE_HZ = 1e8
MIN_RATE_HZ = 1e-3  # one event each 1000 s; slower rates are not a stream (and their delays overflow timers)
MAX_FILES = 100_000  # files one source reads (what its glob patterns may match, together)
MAX_EVENTS = 2**62

Axis = Annotated[int, Field(ge=1, le=MAX_AXIS)]
Index = Annotated[int, Field(ge=0, le=MAX_AXIS)]
Shape = Annotated[list[Axis], Field(min_length=1, max_length=MAX_DIMENSIONS)]
BatchSize = Annotated[int, Field(ge=1, le=MAX_EVENTS_PER_BATCH)]
EventCount = Annotated[int, Field(ge=1, le=MAX_EVENTS)]
Rate = Annotated[float, Field(ge=MIN_RATE_HZ, le=MAX_RATE_HZ)]


def available_memory() -> int | None:
    """Bytes of memory available on this machine now (None where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, remedy: str, error: type[BeamstreamError] = SourceError) -> None:
    """``error`` if ``needed`` bytes (for ``what``) exceed the memory available now, saying ``remedy``."""
    available = available_memory()
    if available is not None and needed > available:
        raise error(f"{what} needs about {needed / 1e9:,.1f} GB of memory per worker; this machine has "
                          f"{available / 1e9:,.1f} GB available: {remedy}")
