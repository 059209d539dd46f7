"""``channels``: give a field's events a channel axis, as a model that takes (B, C, H, W) wants them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from beamstream.batch import Batch
from beamstream.description import Geometry, change_geometry
from beamstream.errors import StepError
from beamstream.stages import StepSpec
from beamstream.steps import BatchwiseStep, require_field
from beamstream.wire.metadata import RunMetadata


class ChannelsStep(StepSpec):
    """Insert an axis of length 1 before the event axes of ``field``: events of shape (H, W) become (1, H, W), so
    a batch is (B, 1, H, W). A view: no pixel is copied. Events with ``rank`` axes or more already (a multi-panel
    detector's (P, H, W), whose panels are its channels) pass unchanged.

    Attributes:
        field: the array (required).
        rank: event axes a model input has with its channel axis (default 3: C, H, W).
    """

    type: Literal["channels"] = "channels"
    field: str = Field(min_length=1, description="the array to give a channel axis")
    rank: int = Field(3, ge=2, le=8, description="event axes with the channel axis (default 3: C, H, W)")

    def build(self) -> ChannelAxis:
        return ChannelAxis(self.field, self.rank)

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The new axis comes first, of length 1, origin 0, binning 1; pixel sizes keep to the axes they measure."""

        def add_axis(geometry: Geometry) -> None:
            if len(geometry.shape) == self.rank - 1:
                geometry.shape.insert(0, 1)
                geometry.origin.insert(0, 0)
                geometry.binning.insert(0, 1)
                if geometry.valid:
                    geometry.valid.insert(0, [0, 1])

        return change_geometry(metadata, self.field, add_axis)


class ChannelAxis(BatchwiseStep):
    """Gives ``field``'s events of ``rank - 1`` axes a leading channel axis of length 1."""

    def __init__(self, field: str, rank: int) -> None:
        self.field = field
        self.rank = rank

    def apply(self, batch: Batch) -> Batch:
        array = require_field(batch, self.field, "channels")
        axes = array.ndim - 1
        if axes >= self.rank:
            return batch
        if axes != self.rank - 1:
            raise StepError(f"channels: field {self.field!r} has events of {axes} axes {array.shape[1:]}; a channel "
                            f"axis makes {self.rank - 1} axes into {self.rank}: give rank: {axes + 1}, or reshape "
                            "it first")
        return batch.replace({**batch.data, self.field: array[:, None]})
