"""``peakfinder8``: find Bragg peaks in detector images and, optionally, keep only hits.

The algorithm is Cheetah's peakfinder8 (Barty et al., J. Appl. Cryst. 47, 1118, 2014): per radius
from the beam it estimates the background and its noise (iteratively, ignoring bright pixels), then
grows connected pixels above ``adc_threshold`` and ``min_snr`` times the noise within each ASIC, and
keeps a peak of ``min_pixels`` to ``max_pixels`` pixels whose signal stands ``min_snr`` above the
background of a ring ``local_bg_radius`` pixels wide around it. Two engines run it and find the same
peaks with the same values: ``numba`` (default; :mod:`beamstream.steps.peakfinder8_kernel`, several
times faster) and ``psana``, the psana wheel's compiled C (``psana.peakfinder8.peakfinder_8``), kept
as the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from math import prod
from typing import Any, Literal, Protocol

import msgspec
import numpy as np
from pydantic import Field, FiniteFloat, model_validator

from beamstream.batch import Batch
from beamstream.errors import MissingDependency, StepError, needs_extra
from beamstream.stages import StepSpec
from beamstream.steps import require_field
from beamstream.masks import MaskConvention, padding
from beamstream.steps.calibrate import ConstantsFile, bad_pixels
from beamstream.wire.metadata import FieldMetadata, RunMetadata

COLUMNS = ("x", "y", "intensity", "snr")
"""The peak table's columns, each the field ``<output>_peak_<column>``; ``x`` (fast scan, column) and ``y``
(slow scan, row) are peak centres of mass in pixels of the stacked frame (see :class:`Peakfinder8Step`)."""


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
        mask: per-pixel mask (``{file, dataset}``, broadcasting to an event); the pixels it marks bad are neither
            peak nor background.
        mask_convention: which pixels ``mask`` marks bad, as for ``calibrate``: what an HDF5 mask's
            ``mask_convention`` attribute states (a value here must agree), else this, else ``zero-is-bad``
            (psana's); a mask named ``pixel_mask`` or ``mask`` that states none needs it.
        valid: the real pixels of an event, ``[start, stop]`` per event axis (default: the field's ``valid``
            description entry, which a ``pad`` step sets); the others (padding) are neither peak nor background.
        min_peaks: keep only events with at least this many peaks (default: keep every event).
        engine: ``numba`` (default, ``pip install 'beamstream[crystallography]'``) or ``psana``
            (``pip install 'beamstream[psana]'``); both find the same peaks, numba's several times faster.
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
    centre: tuple[FiniteFloat, FiniteFloat] | None = Field(None, description="beam centre [row, col] (default: middle)")
    radius_map: ConstantsFile | None = Field(None, description="per-pixel radius from the beam")
    mask: ConstantsFile | None = Field(None, description="per-pixel mask")
    mask_convention: MaskConvention | None = Field(None, description="zero-is-bad or nonzero-is-bad")
    valid: list[tuple[int, int]] | None = Field(None, description="the real pixels, [start, stop] per event axis")
    min_peaks: int | None = Field(None, ge=0, description="keep only events with at least this many peaks")
    engine: Literal["numba", "psana"] = Field("numba", description="the compiled peakfinder8: numba's or psana's")

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
        """The peak search these options describe (MissingDependency without the engine's package)."""
        return Peakfinder8(self, load_engine(self.engine))

    def complete(self, metadata: RunMetadata) -> Peakfinder8Step:
        """The real pixels (``valid``) from the field's description when the options do not say."""
        entry = metadata.fields.get(self.field)
        if self.valid is None and entry is not None and entry.valid:
            return self.model_copy(update={"valid": [tuple(pair) for pair in entry.valid]})
        return self

    def build(self) -> HitFinder:
        return HitFinder(self.finder(), self.field, self.prefix, self.min_peaks)


class Search(Protocol):
    """An engine's search over frames of one layout (:class:`~beamstream.steps.peakfinder8_kernel.FrameSearch`)."""

    frame: tuple[int, ...]

    def find(self, frames: np.ndarray, npeaks: np.ndarray, table: np.ndarray) -> None: ...


def load_engine(name: str) -> Callable[..., Search]:
    """What makes engine ``name``'s search for one layout, called as
    :class:`~beamstream.steps.peakfinder8_kernel.FrameSearch` is; MissingDependency saying what to install when
    the engine's package is absent."""
    if name == "psana":
        from beamstream.sources.psana2 import import_psana

        try:
            import_psana()
            from psana.peakfinder8 import peakfinder_8
        except (ImportError, MissingDependency) as exc:
            raise MissingDependency(needs_extra("the peakfinder8 step", "psana", package="psana", cause=exc)) from None
        return partial(PsanaSearch, peakfinder_8)
    try:
        from beamstream.steps.peakfinder8_kernel import FrameSearch
    except ImportError as exc:
        raise MissingDependency(needs_extra("the peakfinder8 step", "crystallography", package="numba",
                                            cause=exc)) from None
    return FrameSearch


class PsanaSearch:
    """psana's ``peakfinder_8`` over frames of one layout, one frame a call, as FrameSearch's ``find`` is called."""

    def __init__(self, peakfinder_8: Callable[..., tuple], radius: np.ndarray, good: np.ndarray,
                 asic: tuple[int, int], **options: Any) -> None:
        self.frame = radius.shape
        self._peakfinder_8 = peakfinder_8
        self._layout = (np.ascontiguousarray(good != 0, dtype=np.int8), np.ascontiguousarray(radius, np.float32),
                        asic[1], asic[0], radius.shape[1] // asic[1], radius.shape[0] // asic[0])
        self._options = tuple(options[name] for name in ("adc_threshold", "min_snr", "min_pixels", "max_pixels",
                                                         "local_bg_radius"))
        self._max_peaks = options["max_peaks"]

    def find(self, frames: np.ndarray, npeaks: np.ndarray, table: np.ndarray) -> None:
        """As :meth:`FrameSearch.find <beamstream.steps.peakfinder8_kernel.FrameSearch.find>`."""
        for index, frame in enumerate(frames):
            found = self._peakfinder_8(self._max_peaks, np.ascontiguousarray(frame, np.float32), *self._layout,
                                       *self._options)
            npeaks[index] = len(found[0])
            for row, position in enumerate((0, 1, 2, 7)):  # x, y, intensity, snr in peakfinder_8's tuple
                table[row, index, : npeaks[index]] = found[position]


class Peakfinder8:
    """peakfinder8 with fixed options over events of any shape (the engine's search for each shape made once;
    one call at a time, as a step's batches come)."""

    def __init__(self, spec: Peakfinder8Step, engine: Callable[..., Search]) -> None:
        self.spec = spec
        self.engine = engine
        self._searches: dict[tuple[int, ...], Search] = {}

    def find(self, events: np.ndarray) -> dict[str, np.ndarray]:
        """The peak table of each event of ``events`` (batch axis first), keyed by the added field names
        (see :class:`Peakfinder8Step`); StepError when the events do not fit the options."""
        spec = self.spec
        if events.dtype.kind not in "biuf":
            raise StepError(f"peakfinder8: field {spec.field!r} holds {events.dtype}; it searches real numbers "
                            "(integers or floats): cast it first (a cast step)")
        search = self._search(events.shape[1:])
        count = len(events)
        npeaks = np.zeros(count, np.int32)
        table = np.zeros((len(COLUMNS), count, spec.max_peaks), np.float32)
        search.find(events.reshape(count, *search.frame), npeaks, table)
        return {f"{spec.prefix}_npeaks": npeaks, **{f"{spec.prefix}_peak_{c}": table[i] for i, c in enumerate(COLUMNS)}}

    def _search(self, event_shape: tuple[int, ...]) -> Search:
        if event_shape not in self._searches:
            self._searches[event_shape] = self._make_search(event_shape)
        return self._searches[event_shape]

    def _make_search(self, event_shape: tuple[int, ...]) -> Search:
        spec = self.spec
        if len(event_shape) < 2:
            raise StepError(f"peakfinder8: field {spec.field!r} has event shape {event_shape}; it searches images, "
                            "whose events have at least 2 axes (rows, columns)")
        rows, cols = event_shape[-2:]
        down, across = spec.asics
        if rows % down or cols % across:
            raise StepError(f"peakfinder8: asics {list(spec.asics)} do not divide the panels of {rows} rows and "
                            f"{cols} columns of field {spec.field!r}; give ASIC counts that divide them")
        frame = (prod(event_shape[:-2]) * rows, cols)
        options = spec.model_dump(include={"adc_threshold", "min_snr", "min_pixels", "max_pixels", "local_bg_radius",
                                           "max_peaks"})
        return self.engine(self._radius(event_shape, frame), self._mask(event_shape, frame),
                           (rows // down, cols // across), **options)

    def _radius(self, event_shape: tuple[int, ...], frame: tuple[int, int]) -> np.ndarray:
        spec = self.spec
        if spec.radius_map is not None:
            radius = spec.radius_map.load("peakfinder8")
            if radius.shape != event_shape:
                raise StepError(f"peakfinder8: radius_map has shape {radius.shape}, not the event shape "
                                f"{event_shape} of field {spec.field!r}; give one radius per pixel")
            radius = np.ascontiguousarray(radius.reshape(frame), dtype=np.float32)
            if not (np.isfinite(radius).all() and radius.min() >= 0):
                raise StepError("peakfinder8: radius_map has values below 0, NaN or infinite; give each pixel's "
                                "distance from the beam in pixels")
            return radius
        row, col = spec.centre if spec.centre is not None else ((frame[0] - 1) / 2, (frame[1] - 1) / 2)
        rr, cc = np.ogrid[: frame[0], : frame[1]]
        return np.hypot(rr - row, cc - col).astype(np.float32)

    def _mask(self, event_shape: tuple[int, ...], frame: tuple[int, int]) -> np.ndarray:
        """1 where a pixel may be searched: not marked bad by ``mask``, not padding (outside ``valid``)."""
        spec = self.spec
        good = np.ones(event_shape, bool)
        if spec.mask is not None:
            bad = bad_pixels(spec.mask, spec.mask_convention, "peakfinder8")
            try:
                good &= ~np.broadcast_to(bad, event_shape)
            except ValueError:
                raise StepError(f"peakfinder8: mask has shape {bad.shape}, which does not broadcast to the event "
                                f"shape {event_shape} of field {spec.field!r}; give a mask of that shape") from None
        try:
            padded = padding(spec.valid, event_shape, f"peakfinder8: field {spec.field!r}")
        except ValueError as exc:
            raise StepError(str(exc)) from None
        if padded is not None:
            good &= ~padded
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
