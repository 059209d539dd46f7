"""``cast``: convert fields to another numeric dtype."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from beamstream.batch import BOOKKEEPING_FIELDS, Batch, little_endian
from beamstream.stages import StepSpec
from beamstream.steps import BatchwiseStep, require_field
from beamstream.wire.metadata import RunMetadata

NUMERIC_KINDS = "biufc"
DTYPE_EXAMPLES = "float32, float64, uint16, int32, bool, complex64, '<f4'"


class CastStep(StepSpec):
    """Convert ``fields`` (or every measured field) to ``dtype`` with numpy's ``astype``.

    Conversion follows numpy's unsafe casting: floats truncate toward zero when cast to
    integers, and values the target cannot hold are not checked. Fields already of
    ``dtype`` pass without a copy. Without ``fields``, bookkeeping fields
    (:data:`~beamstream.batch.BOOKKEEPING_FIELDS`: psana's uint64 ``timestamp``) keep their
    dtype; naming one in ``fields`` converts it. ``seq`` and ``time`` are never fields.

    Attributes:
        fields: the fields to convert, or None for every field of the batch but the
            bookkeeping ones (default None).
        dtype: the target dtype, any numeric numpy dtype name (required), e.g. ``float32``;
            not big-endian, as the stream is little-endian (docs/conventions.md).
    """

    type: Literal["cast"] = "cast"
    fields: list[str] | None = Field(None, min_length=1, description="fields to convert (default: all but timestamp)")
    dtype: str = Field(description="target numpy dtype, e.g. float32")

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, value: str) -> str:
        try:
            dtype = np.dtype(value)
        except TypeError:
            raise ValueError(f"{value!r} is not a numpy dtype; use one such as {DTYPE_EXAMPLES}") from None
        if dtype.kind not in NUMERIC_KINDS:
            raise ValueError(f"{value!r} is not a numeric dtype; use one such as {DTYPE_EXAMPLES}")
        if dtype != little_endian(dtype):
            raise ValueError(f"{value!r} is big-endian; the stream is little-endian (docs/conventions.md), "
                             f"so write {little_endian(dtype).str!r} or a name such as float32")
        return value

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The converted fields' ``dtype`` is the target's (without ``fields``: every described field with a
        dtype, but the bookkeeping ones)."""
        names = self.fields or [name for name, entry in metadata.fields.items()
                                if entry.dtype and name not in BOOKKEEPING_FIELDS]
        for name in names:
            metadata = metadata.with_field(name, dtype=np.dtype(self.dtype).str)
        return metadata

    def build(self) -> Caster:
        return Caster(self.fields, np.dtype(self.dtype))


class Caster(BatchwiseStep):
    """Converts the chosen fields of every batch to one dtype."""

    def __init__(self, fields: list[str] | None, dtype: np.dtype) -> None:
        self.fields = fields
        self.dtype = dtype

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with the chosen fields as ``dtype``."""
        names = [name for name in batch.data if name not in BOOKKEEPING_FIELDS] if self.fields is None else self.fields
        converted = {name: require_field(batch, name, "cast").astype(self.dtype, copy=False) for name in names}
        return batch.replace({**batch.data, **converted})
