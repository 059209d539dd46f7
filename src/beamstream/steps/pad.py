"""``pad``: enlarge a field's events to a fixed shape, filling the new pixels with a value."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from beamstream.batch import Batch
from beamstream.description import Geometry, change_geometry
from beamstream.errors import SpecError, StepError
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
            in the field's dtype (e.g. no 0.5 or NaN for integer fields, no 1e40 for float32, no 0.1 for float16,
            whose nearest is 0.0999755859375): refused at ``spec check`` where the source spec gives the
            field's dtype, else when the stream's description is made, before the first event is sent.
        align: where the event lies in the padded array: ``start`` (default; pixels added at the end of each
            axis) or ``centre`` (half before, half after; an odd count puts the extra pixel after). The field's
            origin (docs/conventions.md) moves back by the pixels added before.

    The field's description gains ``valid``: per event axis, the ``[start, stop]`` of the sent indices that hold
    real pixels (docs/conventions.md).
    """

    type: Literal["pad"] = "pad"
    field: str = Field(min_length=1, description="the array to pad")
    shape: Shape = Field(description="target lengths of the trailing axes")
    value: float = Field(0.0, description="value of added pixels")
    align: Literal["start", "centre"] = Field("start", description="the event at the start or in the centre")

    def build(self) -> Padder:
        return Padder(self.field, tuple(self.shape), self.value, self.align == "centre")

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The padded axes take the target lengths and ``valid`` marks the real pixels among them; centred, their
        origin and valid region move by the pixels added before. SpecError when the field's dtype (as described)
        cannot hold ``value`` exactly."""
        dtype = metadata.fields[self.field].dtype if self.field in metadata.fields else ""
        if dtype and (problem := fill_problem(self.value, np.dtype(dtype))):
            raise SpecError(f"field {self.field!r}: {problem}")

        def enlarge(geometry: Geometry) -> None:
            lead = len(geometry.shape) - len(self.shape)
            valid = geometry.valid or [[0, length] for length in geometry.shape]
            for offset, length in enumerate(self.shape):
                axis = lead + offset
                if axis >= 0:
                    added = max(0, length - geometry.shape[axis])
                    before = added // 2 if self.align == "centre" else 0
                    geometry.origin[axis] -= before * geometry.binning[axis]
                    valid[axis] = [valid[axis][0] + before, valid[axis][1] + before]
                    geometry.shape[axis] += added
            geometry.valid = valid

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
        if problem := fill_problem(self.value, dtype):
            raise StepError(f"pad: field {self.field!r}: {problem}")
        return bool(self.value) if dtype.kind == "b" else int(self.value) if dtype.kind in "iu" else self.value


def fill_problem(value: float, dtype: np.dtype) -> str | None:
    """Why ``dtype`` cannot hold ``value`` exactly, and what to use instead; None when it can (NaN and infinities
    are exact in floating dtypes)."""
    name = dtype.name
    if dtype.kind in "fc":
        component = np.finfo(dtype).dtype
        largest = float(np.finfo(component).max)
        if math.isnan(value) or math.isinf(value):
            return None
        if abs(value) > largest:
            return (f"value {value!r} overflows {name} (it would become inf; the largest {component.name} is "
                    f"{largest!r}): use a value within ±{largest!r}, or inf, or cast the field to float64 first")
        held = float(component.type(value))
        if held != value:
            return (f"value {value!r} is not exactly representable in {name} (it would be stored as {held!r}): use "
                    f"{held!r}, or a value {name} holds exactly, or cast the field first")
        return None
    if dtype.kind in "iu":
        low, high = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
        if value.is_integer() and low <= value <= high:
            return None
        return (f"value {value!r} cannot be stored in {name}, which holds whole numbers from {low} to {high}: "
                "use one of those, or cast the field first")
    if dtype.kind == "b":
        return None if value in (0, 1) else f"value {value!r} cannot be stored in bool: use 0 or 1"
    return f"{name} is not a numeric dtype, so it cannot be padded with {value!r}: cast the field first"
