"""``bin``: sum or average blocks of neighbouring pixels (detector binning)."""

from __future__ import annotations

from math import prod
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

SIGNED = (np.int8, np.int16, np.int32, np.int64)
UNSIGNED = (np.uint8, np.uint16, np.uint32, np.uint64)


class BinStep(StepSpec):
    """Combine blocks of ``factors`` pixels of ``field`` into one, over its last ``len(factors)`` axes.

    An axis whose length is not a multiple of its factor loses its remainder: the last
    ``length % factor`` indices are cropped, so an axis of length 10 binned by 3 gives 3 bins
    from indices 0..8.

    Result dtypes:
        ``sum``: float32 and float64 (and complex) stay as they are; float16 becomes float32;
        integers become the narrowest integer of the same signedness (at least the input's)
        that cannot overflow for ``prod(factors)`` pixels, e.g. uint16 binned 2x2 gives
        uint32, int8 binned 2x2 gives int16; 64-bit integers stay 64-bit (sums beyond
        their range wrap); bool gives the narrowest unsigned integer holding the count.
        ``mean``: the sum divided by ``prod(factors)``; float64 for integer input, the
        summed float dtype otherwise.

    Attributes:
        field: the array to bin (required).
        factors: pixels per bin along each of the last ``len(factors)`` axes (required, each >= 1).
        reduce: ``sum`` or ``mean`` of the pixels in a bin (default ``sum``).
    """

    type: Literal["bin"] = "bin"
    field: str = Field(min_length=1, description="the array to bin")
    factors: Shape = Field(description="pixels per bin along the last axes")
    reduce: Literal["sum", "mean"] = Field("sum", description="how the pixels of a bin combine")

    def build(self) -> Binner:
        return Binner(self.field, self.factors, self.reduce)

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The binned axes shrink by their factor; their binning and pixel size grow by it; a ``valid`` region (after
        ``pad``) keeps the bins made only of real pixels (a bin mixing real pixels and padding lies outside it)."""

        def combine(geometry: Geometry) -> None:
            lead = len(geometry.shape) - len(self.factors)
            for offset, factor in enumerate(self.factors):
                axis = lead + offset
                if axis < 0:
                    continue
                geometry.shape[axis] //= factor
                geometry.binning[axis] *= factor
                if geometry.valid:
                    first, last = geometry.valid[axis]
                    start = min(-(-first // factor), geometry.shape[axis])
                    geometry.valid[axis] = [start, max(start, last // factor)]
                if (pixel := geometry.pixel_axis(axis)) is not None:
                    geometry.pixel_size[pixel] *= factor

        metadata = change_geometry(metadata, self.field, combine)
        dtype = metadata.fields[self.field].dtype if self.field in metadata.fields else ""
        return metadata.with_field(self.field, dtype=self.binned_dtype(np.dtype(dtype)).str) if dtype else metadata

    def binned_dtype(self, dtype: np.dtype) -> np.dtype:
        """The dtype binning gives values of ``dtype`` (see Result dtypes above)."""
        summed = sum_dtype(dtype, prod(self.factors))
        return (np.zeros(0, summed) / prod(self.factors)).dtype if self.reduce == "mean" else summed


class Binner(BatchwiseStep):
    """Bins one field of every batch."""

    def __init__(self, field: str, factors: list[int], reduce: Literal["sum", "mean"]) -> None:
        self.field = field
        self.factors = factors
        self.reduce = reduce

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with ``field`` replaced by its binned array."""
        array = require_field(batch, self.field, "bin")
        self._check_shape(array.shape[1:])
        binned = bin_array(array, self.factors, sum_dtype(array.dtype, prod(self.factors)))
        if self.reduce == "mean":
            binned = binned / prod(self.factors)
        return batch.replace({**batch.data, self.field: binned})

    def _check_shape(self, event_shape: tuple[int, ...]) -> None:
        """StepError unless ``factors`` fit the trailing axes of ``event_shape``."""
        if len(self.factors) > len(event_shape):
            raise StepError(
                f"bin: factors {self.factors} give {len(self.factors)} axes but field {self.field!r} has "
                f"event shape {event_shape}; give at most {len(event_shape)} factors."
            )
        axes = event_shape[len(event_shape) - len(self.factors) :]
        if any(factor > size for factor, size in zip(self.factors, axes, strict=True)):
            raise StepError(
                f"bin: factors {self.factors} exceed the last axes {list(axes)} of field {self.field!r} "
                f"(event shape {event_shape}); each factor must be at most its axis length."
            )


def bin_array(array: np.ndarray, factors: list[int], dtype: np.dtype) -> np.ndarray:
    """Sums of ``factors``-sized blocks over the last axes of ``array``, remainders cropped, as ``dtype``."""
    lead = array.ndim - len(factors)
    counts = [size // factor for size, factor in zip(array.shape[lead:], factors, strict=True)]
    cropped = array[(Ellipsis, *(slice(0, count * factor) for count, factor in zip(counts, factors, strict=True)))]
    blocks = cropped.reshape(*array.shape[:lead], *(n for pair in zip(counts, factors, strict=True) for n in pair))
    return blocks.sum(axis=tuple(range(lead + 1, blocks.ndim, 2)), dtype=dtype)


def sum_dtype(dtype: np.dtype, count: int) -> np.dtype:
    """The dtype a sum of ``count`` values of ``dtype`` is computed in (see :class:`BinStep`)."""
    if dtype.kind in "biu":
        low, high, bits = _integer_range(dtype)
        candidates = SIGNED if dtype.kind == "i" else UNSIGNED
        for candidate in candidates:
            wide = np.iinfo(candidate)
            if wide.bits >= bits and wide.min <= low * count and high * count <= wide.max:
                return np.dtype(candidate)
        return np.dtype(candidates[-1])
    if dtype.kind == "f":
        return np.promote_types(dtype, np.float32)
    if dtype.kind == "c":
        return dtype
    raise StepError(f"bin: cannot bin values of dtype {dtype}; cast the field to a numeric dtype first.")


def _integer_range(dtype: np.dtype) -> tuple[int, int, int]:
    """Lowest value, highest value and bits of an integer or bool dtype."""
    if dtype.kind == "b":
        return 0, 1, 8
    info = np.iinfo(dtype)
    return info.min, info.max, info.bits
