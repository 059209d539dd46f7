"""``peakfinder8``: find Bragg peaks in detector images and, optionally, keep only hits.

The engine is Cheetah's peakfinder8 (Barty et al., J. Appl. Cryst. 47, 1118, 2014) as the psana
wheel compiles it (``psana.peakfinder8.peakfinder_8``): per radius from the beam it estimates
the background and its noise (iteratively, ignoring bright pixels), then grows connected pixels
above ``adc_threshold`` and ``min_snr`` times the noise within each ASIC, and keeps a peak of
``min_pixels`` to ``max_pixels`` pixels whose signal stands ``min_snr`` above the background of
a ring ``local_bg_radius`` pixels wide around it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from typing import Any, Literal

import msgspec
import numpy as np
from pydantic import Field, model_validator

from beamstream.batch import Batch
from beamstream.errors import MissingDependency, StepError, needs_extra
from beamstream.stages import StepSpec
from beamstream.steps import require_field
from beamstream.steps.calibrate import ConstantsFile
from beamstream.wire.metadata import FieldMetadata, RunMetadata

COLUMNS = ("x", "y", "intensity", "snr")
"""The peak table's columns, each the field ``<output>_peak_<column>``; ``x`` (fast scan, column) and ``y``
(slow scan, row) are peak centres of mass in pixels of the stacked frame (see :class:`Peakfinder8Step`)."""
_ENGINE_COLUMNS = {"x": 0, "y": 1, "intensity": 2, "snr": 7}  # positions in peakfinder_8's returned tuple


class Peakfinder8Step(StepSpec):
    """Find peaks in every event of ``field`` and add a peak table of at most ``max_peaks`` peaks per event.

    Added fields (``<output>`` defaults to ``field``): ``<output>_npeaks`` (int32, peaks found, at most
    ``max_peaks``) and, per column of :data:`COLUMNS`, ``<output>_peak_<column>`` (float32,
    ``max_peaks`` values per event, the first ``npeaks`` of them peaks, the rest 0): ``x`` and ``y``
    the peak's centre of mass (column and row, pixel centres at integer coordinates), ``intensity``
    its background-subtracted total, ``snr`` its signal-to-noise ratio. The input field is unchanged.

    Layout: an event of shape ``(..., rows, cols)`` is searched as one frame with its panels (the
    leading axes, flattened) stacked along the rows, as CrystFEL and Cheetah store multi-panel data,
    so ``y`` of a peak on panel ``p`` is ``p * rows + row``. Each panel is ``asics`` ASICs
    (``[down, across]``); a peak never spans two ASICs.

    Hit veto: with ``min_peaks``, only events with at least that many peaks go on; the others are
    dropped and reported as omitted on purpose (counted apart by every consumer, not lost).

    Attributes:
        field: the images to search (default ``image``).
        output: prefix of the added fields (default: ``field``).
        adc_threshold: a peak's pixels are above this value (default 100).
        min_snr: and this many noise sigmas above the background (default 6).
        min_pixels, max_pixels: a peak has this many pixels at least and at most (default 2 and 200).
        local_bg_radius: width in pixels of the ring around a peak its local background comes from (default 3).
        max_peaks: peaks kept per event, the width of the peak table (default 2048, CrystFEL's and Cheetah's).
        asics: ASICs per panel, down and across (default ``[1, 1]``); they divide the panel's rows and columns.
        centre: the beam centre ``[row, col]`` in pixels of the stacked frame (default its middle), from
            which each pixel's radius is taken; ignored with ``radius_map``.
        radius_map: per-pixel radius from the beam (``{file, dataset}``, shaped as an event), for a
            detector whose panels do not sit as they are stacked.
        mask: per-pixel mask (``{file, dataset}``, broadcasting to an event), 0 marking a bad pixel
            (psana's convention); bad pixels are neither peak nor background.
        min_peaks: keep only events with at least this many peaks (default: keep every event).
    """

    type: Literal["peakfinder8"] = "peakfinder8"
    field: str = Field("image", min_length=1, description="the images to search")
    output: str | None = Field(None, min_length=1, description="prefix of the added fields (default: field)")
    adc_threshold: float = Field(100.0, description="a peak's pixels are above this value")
    min_snr: float = Field(6.0, gt=0, description="and this many noise sigmas above the background")
    min_pixels: int = Field(2, ge=1, description="fewest pixels of a peak")
    max_pixels: int = Field(200, ge=1, description="most pixels of a peak")
    local_bg_radius: int = Field(3, ge=1, le=100, description="width of the local background ring, pixels")
    max_peaks: int = Field(2048, ge=1, le=1 << 16, description="peaks kept per event")
    asics: tuple[int, int] = Field((1, 1), description="ASICs per panel: down, across")
    centre: tuple[float, float] | None = Field(None, description="beam centre [row, col] (default: the middle)")
    radius_map: ConstantsFile | None = Field(None, description="per-pixel radius from the beam")
    mask: ConstantsFile | None = Field(None, description="per-pixel mask, 0 = bad pixel")
    min_peaks: int | None = Field(None, ge=0, description="keep only events with at least this many peaks")

    @model_validator(mode="after")
    def _check_sizes(self) -> Peakfinder8Step:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}")
        if min(self.asics) < 1:
            raise ValueError(f"asics {list(self.asics)} must be at least 1 down and 1 across")
        return self

    @property
    def prefix(self) -> str:
        return self.output or self.field

    def output_fields(self) -> list[str]:
        """The names of the fields this step adds."""
        return [f"{self.prefix}_npeaks", *(f"{self.prefix}_peak_{column}" for column in COLUMNS)]

    def fields_after(self, names: set[str]) -> set[str]:
        return names | set(self.output_fields())

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The added fields are described as found by peakfinder8 on ``field``."""
        detector = metadata.fields.get(self.field, FieldMetadata()).detector
        found = f"peakfinder8 on {self.field!r}"
        added = {f"{self.prefix}_npeaks": FieldMetadata(detector=detector, source=f"{found}: peaks found")}
        units = {"x": "pixels", "y": "pixels", "intensity": "", "snr": ""}
        for column in COLUMNS:
            added[f"{self.prefix}_peak_{column}"] = FieldMetadata(
                detector=detector, units=units[column],
                source=f"{found}: peak {column}, the first {self.prefix}_npeaks values of each event")
        return msgspec.structs.replace(metadata, fields={**metadata.fields, **added})

    def finder(self) -> Peakfinder8:
        """The peak search these options describe (MissingDependency without psana)."""
        return Peakfinder8(self, load_engine())

    def build(self) -> HitFinder:
        return HitFinder(self.finder(), self.field, self.prefix, self.min_peaks)


def load_engine() -> Any:
    """``psana.peakfinder8.peakfinder_8``; MissingDependency saying what to install when psana is absent."""
    from beamstream.sources.psana2 import import_psana

    try:
        import_psana()
        from psana.peakfinder8 import peakfinder_8
    except (ImportError, MissingDependency) as exc:
        raise MissingDependency(needs_extra("the peakfinder8 step", "psana", package="psana", cause=exc)) from None
    return peakfinder_8


@dataclass(frozen=True, slots=True)
class _Layout:
    """How events of one shape are searched: as a ``(rows, cols)`` frame of ``nasics_y`` by ``nasics_x`` ASICs."""

    frame: tuple[int, int]
    asic: tuple[int, int]
    nasics: tuple[int, int]
    radius: np.ndarray  # float32, frame-shaped, C-contiguous
    mask: np.ndarray  # int8, frame-shaped, C-contiguous, 1 = good


class Peakfinder8:
    """peakfinder8 with fixed options over events of any shape (the layout of each shape made once)."""

    def __init__(self, spec: Peakfinder8Step, engine: Any) -> None:
        self.spec = spec
        self.engine = engine
        self._layouts: dict[tuple[int, ...], _Layout] = {}

    def find(self, events: np.ndarray) -> dict[str, np.ndarray]:
        """The peak table of each event of ``events`` (batch axis first), keyed by the added field names
        (see :class:`Peakfinder8Step`); StepError when the events do not fit the options."""
        spec = self.spec
        layout = self._layout(events.shape[1:])
        count = len(events)
        npeaks = np.zeros(count, np.int32)
        table = {column: np.zeros((count, spec.max_peaks), np.float32) for column in COLUMNS}
        frames = events.reshape(count, *layout.frame)
        for index in range(count):
            frame = np.ascontiguousarray(frames[index], dtype=np.float32)
            found = self.engine(spec.max_peaks, frame, layout.mask, layout.radius, layout.asic[1], layout.asic[0],
                                layout.nasics[1], layout.nasics[0], spec.adc_threshold, spec.min_snr,
                                spec.min_pixels, spec.max_pixels, spec.local_bg_radius)
            npeaks[index] = len(found[0])
            for column, position in _ENGINE_COLUMNS.items():
                table[column][index, : npeaks[index]] = found[position]
        return {f"{spec.prefix}_npeaks": npeaks, **{f"{spec.prefix}_peak_{c}": table[c] for c in COLUMNS}}

    def _layout(self, event_shape: tuple[int, ...]) -> _Layout:
        if event_shape not in self._layouts:
            self._layouts[event_shape] = self._make_layout(event_shape)
        return self._layouts[event_shape]

    def _make_layout(self, event_shape: tuple[int, ...]) -> _Layout:
        spec = self.spec
        if len(event_shape) < 2:
            raise StepError(f"peakfinder8: field {spec.field!r} has event shape {event_shape}; it searches images, "
                            "whose events have at least 2 axes (rows, columns)")
        rows, cols = event_shape[-2:]
        down, across = spec.asics
        if rows % down or cols % across:
            raise StepError(f"peakfinder8: asics {list(spec.asics)} do not divide the panels of {rows} rows and "
                            f"{cols} columns of field {spec.field!r}; give ASIC counts that divide them")
        panels = prod(event_shape[:-2])
        frame = (panels * rows, cols)
        return _Layout(frame=frame, asic=(rows // down, cols // across), nasics=(panels * down, across),
                       radius=self._radius(event_shape, frame), mask=self._mask(event_shape, frame))

    def _radius(self, event_shape: tuple[int, ...], frame: tuple[int, int]) -> np.ndarray:
        spec = self.spec
        if spec.radius_map is not None:
            radius = spec.radius_map.load("peakfinder8")
            if radius.shape != event_shape:
                raise StepError(f"peakfinder8: radius_map has shape {radius.shape}, not the event shape "
                                f"{event_shape} of field {spec.field!r}; give one radius per pixel")
            return np.ascontiguousarray(radius.reshape(frame), dtype=np.float32)
        row, col = spec.centre if spec.centre is not None else ((frame[0] - 1) / 2, (frame[1] - 1) / 2)
        rr, cc = np.ogrid[: frame[0], : frame[1]]
        return np.hypot(rr - row, cc - col).astype(np.float32)

    def _mask(self, event_shape: tuple[int, ...], frame: tuple[int, int]) -> np.ndarray:
        spec = self.spec
        if spec.mask is None:
            return np.ones(frame, np.int8)
        mask = spec.mask.load("peakfinder8")
        try:
            good = np.broadcast_to(mask != 0, event_shape)
        except ValueError:
            raise StepError(f"peakfinder8: mask has shape {mask.shape}, which does not broadcast to the event "
                            f"shape {event_shape} of field {spec.field!r}; give a mask of that shape") from None
        return np.ascontiguousarray(good.reshape(frame), dtype=np.int8)


class HitFinder:
    """Adds each event's peak table; with ``min_peaks``, passes only hits and remembers the rest as omitted."""

    def __init__(self, finder: Peakfinder8, field: str, prefix: str, min_peaks: int | None) -> None:
        self.finder = finder
        self.field = field
        self.npeaks = f"{prefix}_npeaks"
        self.min_peaks = min_peaks
        self.omitted: list[int] = []  # dropped non-hits not yet reported

    def take_omitted(self) -> list[int]:
        """The sequence numbers of the events dropped as non-hits since last asked, in increasing order."""
        omitted, self.omitted = self.omitted, []
        return omitted

    def __call__(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """Each batch with its peak tables; with ``min_peaks``, its hits only (a batch without any is not passed)."""
        for batch in batches:
            found = self.finder.find(require_field(batch, self.field, "peakfinder8"))
            batch = batch.replace({**batch.data, **found})
            if self.min_peaks is not None:
                hits = found[self.npeaks] >= self.min_peaks
                if not hits.all():
                    self.omitted.extend(batch.seq[~hits].tolist())
                    batch = Batch(batch.seq[hits], batch.time[hits], {k: v[hits] for k, v in batch.data.items()})
            if len(batch):
                yield batch
