"""``roi``: crop a field to a rectangular region of interest."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from beamstream.batch import Batch
from beamstream.description import Geometry, change_geometry
from beamstream.errors import StepError
from beamstream.limits import MAX_DIMENSIONS, Index, Shape
from beamstream.stages import StepSpec
from beamstream.wire.metadata import RunMetadata
from beamstream.steps import BatchwiseStep, require_field


class RoiStep(StepSpec):
    """Keep ``start[i] <= index < stop[i]`` along event axis ``i`` of ``field``.

    ``start``/``stop`` apply to the leading event axes (the first axes after the batch
    axis); axes they do not cover are kept whole. For ``(n, y, x)`` images,
    ``start: [y0, x0]``, ``stop: [y1, x1]``; for ``(n, panel, y, x)`` stacks,
    ``start: [p0]``, ``stop: [p1]`` keeps panels ``p0..p1-1``. The result is a view of the
    input, not a copy.

    Attributes:
        field: the array to crop (required).
        start: first index kept per axis (required, each >= 0).
        stop: index after the last one kept per axis (required, same length as ``start``,
            each > ``start``, at most the axis length).
    """

    type: Literal["roi"] = "roi"
    field: str = Field(min_length=1, description="the array to crop")
    start: list[Index] = Field(min_length=1, max_length=MAX_DIMENSIONS, description="first index kept per axis")
    stop: Shape = Field(description="index after the last kept per axis")

    @model_validator(mode="after")
    def _check_bounds(self) -> RoiStep:
        if len(self.start) != len(self.stop):
            raise ValueError(f"start {self.start} and stop {self.stop} must have the same length (one entry per axis)")
        empty = [axis for axis, (a, b) in enumerate(zip(self.start, self.stop, strict=True)) if a >= b]
        if empty:
            raise ValueError(
                f"start must be below stop on every axis; not so on axes {empty} "
                f"of start {self.start}, stop {self.stop}"
            )
        return self

    def build(self) -> Cropper:
        return Cropper(self.field, self.start, self.stop)

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The field's shape is the region's; its origin moves by ``start`` (in source pixels); a ``valid`` region
        (after ``pad``) is cropped with it, ``[k, k]`` when the region holds only padding along an axis."""

        def crop(geometry: Geometry) -> None:
            for axis, (first, stop) in enumerate(zip(self.start, self.stop, strict=True)):
                if axis < len(geometry.shape):
                    geometry.origin[axis] += first * geometry.binning[axis]
                    geometry.shape[axis] = stop - first
                    if geometry.valid:
                        geometry.valid[axis] = [min(max(index - first, 0), stop - first)
                                                for index in geometry.valid[axis]]

        return change_geometry(metadata, self.field, crop)


class Cropper(BatchwiseStep):
    """Crops one field of every batch to ``start:stop`` on its leading event axes."""

    def __init__(self, field: str, start: list[int], stop: list[int]) -> None:
        self.field = field
        self.start = start
        self.stop = stop

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with ``field`` replaced by a view of its region of interest."""
        array = require_field(batch, self.field, "roi")
        self._check_shape(array.shape[1:])
        region = (slice(None), *(slice(a, b) for a, b in zip(self.start, self.stop, strict=True)))
        return batch.replace({**batch.data, self.field: array[region]})

    def _check_shape(self, event_shape: tuple[int, ...]) -> None:
        """StepError unless the region lies inside ``event_shape``."""
        if len(self.stop) > len(event_shape):
            raise StepError(
                f"roi: start/stop give {len(self.stop)} axes but field {self.field!r} has event shape "
                f"{event_shape} ({len(event_shape)} axes); give at most {len(event_shape)} entries."
            )
        if any(b > size for b, size in zip(self.stop, event_shape)):
            raise StepError(
                f"roi: stop {self.stop} lies outside field {self.field!r} of event shape {event_shape}; "
                f"each stop must be at most the axis length {list(event_shape[: len(self.stop)])}."
            )
