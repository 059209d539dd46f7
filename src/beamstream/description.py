"""A stream's description (:class:`~beamstream.wire.metadata.RunMetadata`) as each worker assembles it.

In this order: what the source knows (its reader's ``metadata()``, where it has one), each
field's event shape from the first batch the source yields (where the source did not say),
the spec's ``metadata:`` section put over that, then each step's ``describe`` in the order the
steps run (roi, bin and pad change a field's geometry; select drops fields), each step first
completed from the description as it reaches it (azimuthal takes its geometry from there).
Geometry lists (``origin``, ``binning``) have one entry per event axis once a step fills them;
``pixel_size`` covers the last ``len(pixel_size)`` axes.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Any

import msgspec

from beamstream.batch import Batch
from beamstream.errors import SpecError
from beamstream.wire.metadata import FieldMetadata, RunMetadata


def metadata_from_spec(section: dict[str, Any]) -> RunMetadata:
    """The spec's ``metadata:`` section as a RunMetadata; ValueError saying which key is wrong."""
    try:
        return msgspec.convert(section, RunMetadata)
    except msgspec.ValidationError as exc:
        raise ValueError(f"metadata: {exc}") from None


def first_batch(batches: Iterator[Batch]) -> tuple[Batch | None, Iterator[Batch]]:
    """The first batch of ``batches`` (None if there is none) and an iterator that still yields it."""
    for batch in batches:
        return batch, chain([batch], batches)
    return None, iter(())


def describe_stream(spec: Any, reader: Any, first: Batch | None) -> tuple[Any, RunMetadata]:
    """``spec`` with each step completed from the description as it reaches that step (``StepSpec.complete``),
    and the description of the stream it makes, read by ``reader``, whose first batch is ``first``."""
    describe = getattr(reader, "metadata", None)
    metadata = describe() if describe is not None else RunMetadata()
    if first is not None:
        for name, array in first.data.items():
            if not metadata.fields.get(name, FieldMetadata()).shape:
                metadata = metadata.with_field(name, shape=list(array.shape[1:]))
    if spec.metadata is not None:
        try:
            metadata = metadata.merged(metadata_from_spec(spec.metadata))
        except ValueError as exc:  # validated with the spec already; kept for specs built in code
            raise SpecError(str(exc)) from None
    steps = []
    for step in spec.steps:
        steps.append(step.complete(metadata))
        metadata = steps[-1].describe(metadata)
    return spec.model_copy(update={"steps": steps}), metadata


class Geometry:
    """A field's shape, origin and binning (one entry per event axis) and pixel size, to change and put back."""

    def __init__(self, entry: FieldMetadata) -> None:
        self.shape = list(entry.shape)
        axes = len(self.shape)
        self.origin = list(entry.origin) if len(entry.origin) == axes else [0] * axes
        self.binning = list(entry.binning) if len(entry.binning) == axes else [1] * axes
        self.pixel_size = list(entry.pixel_size)

    def pixel_axis(self, axis: int) -> int | None:
        """The index in ``pixel_size`` of event axis ``axis`` (None if no pixel size covers it)."""
        index = axis - (len(self.shape) - len(self.pixel_size))
        return index if 0 <= index < len(self.pixel_size) else None

    def changes(self) -> dict[str, list]:
        return {"shape": self.shape, "origin": self.origin, "binning": self.binning, "pixel_size": self.pixel_size}


def change_geometry(metadata: RunMetadata, field: str, change: Any) -> RunMetadata:
    """``metadata`` with ``change(geometry)`` applied to ``field``'s geometry; unchanged when its shape is unknown."""
    entry = metadata.fields.get(field)
    if entry is None or not entry.shape:
        return metadata
    geometry = Geometry(entry)
    change(geometry)
    return metadata.with_field(field, **geometry.changes())
