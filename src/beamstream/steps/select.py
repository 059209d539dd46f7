"""``select``: keep only some fields, in a given order."""

from __future__ import annotations

from typing import Literal

import msgspec
from pydantic import Field, field_validator

from beamstream.batch import Batch
from beamstream.stages import StepSpec, each_once
from beamstream.wire.metadata import RunMetadata
from beamstream.steps import BatchwiseStep, require_field


class SelectStep(StepSpec):
    """Keep only ``fields``, in that order; every other field is dropped.

    Attributes:
        fields: the fields to keep (required, at least one, no repeats).
    """

    type: Literal["select"] = "select"
    fields: list[str] = Field(min_length=1, description="fields to keep, in order")

    @field_validator("fields")
    @classmethod
    def _check_unique(cls, value: list[str]) -> list[str]:
        return each_once(value, "fields")

    def fields_after(self, names: set[str]) -> set[str]:
        return set(self.fields)

    def build(self) -> Selector:
        return Selector(self.fields)

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """Only the kept fields stay described."""
        kept = {name: entry for name, entry in metadata.fields.items() if name in self.fields}
        return msgspec.structs.replace(metadata, fields=kept)


class Selector(BatchwiseStep):
    """Keeps the chosen fields of every batch."""

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with only the chosen fields, in their order."""
        return batch.replace({name: require_field(batch, name, "select") for name in self.fields})
