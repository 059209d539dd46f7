"""``pad``: enlarge a field's events to a fixed shape, filling the new pixels with a value."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from beamstream.batch import Batch
from beamstream.description import Geometry, change_geometry
from beamstream.errors import StepError
from beamstream.limits import Shape
from beamstream.stages import StepSpec
from beamstream.wire.metadata import RunMetadata
from beamstream.steps import BatchwiseStep, require_field


class PadStep(StepSpec):
    """Pad the last ``len(shape)`` axes of ``field`` up to ``shape``, keeping the dtype: at their end, or evenly on
    both sides (``align: centre``, as a model that wants the beam centre in the middle of its input).

    Events that already have the target shape pass unchanged (no copy); an axis longer
    than its target is an error (crop it first with ``roi``).

    Attributes:
        field: the array to pad (required).
        shape: target lengths of the trailing event axes (required, each >= 1).
        value: the value of added pixels (default 0); it must be exactly representable
            in the field's dtype (e.g. no 0.5 or NaN for integer fields).
        align: where the event lies in the padded array: ``start`` (default; pixels added at the end of each
            axis) or ``centre`` (half before, half after; an odd count puts the extra pixel after). The field's
            origin (docs/conventions.md) moves back by the pixels added before.
    """

    type: Literal["pad"] = "pad"
    field: str = Field(min_length=1, description="the array to pad")
    shape: Shape = Field(description="target lengths of the trailing axes")
    value: float = Field(0.0, description="value of added pixels")
    align: Literal["start", "centre"] = Field("start", description="the event at the start or in the centre")

    def build(self) -> Padder:
        return Padder(self.field, tuple(self.shape), self.value, self.align == "centre")

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The padded axes take the target lengths; centred, their origin moves back by the pixels added before."""

        def enlarge(geometry: Geometry) -> None:
            lead = len(geometry.shape) - len(self.shape)
            for offset, length in enumerate(self.shape):
                axis = lead + offset
                if axis >= 0:
                    added = max(0, length - geometry.shape[axis])
                    if self.align == "centre":
                        geometry.origin[axis] -= added // 2 * geometry.binning[axis]
                    geometry.shape[axis] += added

        return change_geometry(metadata, self.field, enlarge)


class Padder(BatchwiseStep):
    """Pads one field of every batch to the target trailing shape, the events at the start or ``centred``."""

    def __init__(self, field: str, shape: tuple[int, ...], value: float, centred: bool = False) -> None:
        self.field = field
        self.shape = shape
        self.value = value
        self.centred = centred

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with ``field`` padded to the target shape."""
        array = require_field(batch, self.field, "pad")
        self._check_shape(array.shape)
        lead = array.ndim - len(self.shape)
        if array.shape[lead:] == self.shape:
            return batch
        padded = np.full((*array.shape[:lead], *self.shape), self._fill(array.dtype), dtype=array.dtype)
        before = [(target - size) // 2 if self.centred else 0 for size, target in zip(array.shape[lead:], self.shape)]
        padded[(Ellipsis, *(slice(first, first + size) for first, size in zip(before, array.shape[lead:])))] = array
        return batch.replace({**batch.data, self.field: padded})

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        """StepError unless the trailing axes of ``shape`` (batch axis first) fit inside the target."""
        event_shape = shape[1:]
        lead = len(shape) - len(self.shape)
        if lead < 1:
            raise StepError(
                f"pad: shape {list(self.shape)} gives {len(self.shape)} axes but field {self.field!r} has "
                f"event shape {event_shape}; give at most {len(event_shape)} lengths."
            )
        if any(size > target for size, target in zip(shape[lead:], self.shape, strict=True)):
            raise StepError(
                f"pad: field {self.field!r} has event shape {event_shape}, larger than the target shape "
                f"{list(self.shape)} on its last axes; raise the target or crop first with a roi step."
            )

    def _fill(self, dtype: np.dtype) -> float | int | bool:
        """``value`` as a scalar of ``dtype``; StepError when ``dtype`` cannot hold it exactly."""
        value = self.value
        if dtype.kind in "fc":
            return value
        if dtype.kind in "iu" and value.is_integer() and np.iinfo(dtype).min <= value <= np.iinfo(dtype).max:
            return int(value)
        if dtype.kind == "b" and value in (0, 1):
            return bool(value)
        raise StepError(
            f"pad: value {value} cannot be stored in field {self.field!r} of dtype {dtype}; "
            "choose a value that dtype holds exactly, or cast the field first."
        )
