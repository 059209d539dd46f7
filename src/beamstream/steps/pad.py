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
    """Pad the last ``len(shape)`` axes of ``field`` at their end up to ``shape``, keeping the dtype.

    Events that already have the target shape pass unchanged (no copy); an axis longer
    than its target is an error (crop it first with ``roi``).

    Attributes:
        field: the array to pad (required).
        shape: target lengths of the trailing event axes (required, each >= 1).
        value: the value of added pixels (default 0); it must be exactly representable
            in the field's dtype (e.g. no 0.5 or NaN for integer fields).
    """

    type: Literal["pad"] = "pad"
    field: str = Field(min_length=1, description="the array to pad")
    shape: Shape = Field(description="target lengths of the trailing axes")
    value: float = Field(0.0, description="value of added pixels")

    def build(self) -> Padder:
        return Padder(self.field, tuple(self.shape), self.value)

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The padded axes take the target lengths (pixels are added at their end: the origin stays)."""

        def enlarge(geometry: Geometry) -> None:
            lead = len(geometry.shape) - len(self.shape)
            for offset, length in enumerate(self.shape):
                if lead + offset >= 0:
                    geometry.shape[lead + offset] = max(length, geometry.shape[lead + offset])

        return change_geometry(metadata, self.field, enlarge)


class Padder(BatchwiseStep):
    """Pads one field of every batch to the target trailing shape."""

    def __init__(self, field: str, shape: tuple[int, ...], value: float) -> None:
        self.field = field
        self.shape = shape
        self.value = value

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with ``field`` padded to the target shape."""
        array = require_field(batch, self.field, "pad")
        self._check_shape(array.shape)
        lead = array.ndim - len(self.shape)
        if array.shape[lead:] == self.shape:
            return batch
        padded = np.full((*array.shape[:lead], *self.shape), self._fill(array.dtype), dtype=array.dtype)
        padded[(Ellipsis, *(slice(0, size) for size in array.shape[lead:]))] = array
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
