"""``azimuthal``: integrate each image into a 1D profile with pyFAI's AzimuthalIntegrator.

The geometry comes from a PONI file (``poni:``), or else from the step's options, and what they
leave out from the stream's description as it reaches the step (:meth:`AzimuthalStep.complete`):
the field's ``distance`` and ``pixel_size`` (metres, as sent: after ``roi`` and ``bin``) and the
constant ``photon_energy`` or ``wavelength`` (any unit :mod:`beamstream.quantities` converts).
The beam centre is ``centre: [row, col]`` in pixel-centre index coordinates of the frame as sent
(docs/conventions.md), by default the frame's middle; the detector is flat, with no tilt.

Each event's profile is exactly what ``AzimuthalIntegrator.integrate1d`` returns for that frame with
the same options (the integrator is made once and reused, so pyFAI keeps its CSR or histogram
engine between frames).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from beamstream.batch import Batch
from beamstream.errors import MissingDependency, StepError, needs_extra
from beamstream.quantities import PLANCK_EV_M, photon_energy_ev
from beamstream.spec_paths import ReadPath
from beamstream.stages import StepSpec
from beamstream.steps import BatchwiseStep, require_field
from beamstream.masks import MaskConvention, padding
from beamstream.steps.calibrate import ConstantsFile, bad_pixels
from beamstream.wire.metadata import FieldMetadata, RunMetadata

UNITS = Literal["q_nm^-1", "q_A^-1", "2th_deg", "2th_rad", "r_mm"]
ENGINES = {"csr": ("bbox", "csr", "cython"), "histogram": ("no", "histogram", "cython"),
           "lut": ("bbox", "lut", "cython")}
"""pyFAI's (pixel splitting, algorithm, implementation) for each ``method``."""


def profile_fields(output: str) -> tuple[str, str]:
    """The fields the azimuthal step writes for ``output``: the profiles and their radial positions."""
    return output, f"{output}_radial"


class AzimuthalStep(StepSpec):
    """Integrate the images of ``field`` (``(y, x)`` per event) into ``npt``-point profiles.

    Adds ``OUTPUT`` (float32 ``(npt,)`` per event: mean intensity per radial bin, pyFAI's
    ``intensity``) and ``OUTPUT_radial`` (float32 ``(npt,)``: the bins' centres in ``unit``).

    Attributes:
        field: the image field (required).
        output: the profile field (default ``FIELD_azimuthal``).
        npt: radial bins (default 1000).
        unit: ``q_nm^-1`` (default), ``q_A^-1``, ``2th_deg``, ``2th_rad`` or ``r_mm``.
        method: pyFAI's engine: ``csr`` (bounding-box pixel splitting, default), ``histogram``
            (no splitting) or ``lut``.
        poni: a PONI file (pyFAI's calibration) giving the whole geometry; the options below are
            then not allowed.
        distance: sample-to-detector distance in metres (default: the field's ``distance``).
        pixel_size: ``[y, x]`` in metres (default: the field's ``pixel_size``).
        centre: beam centre ``[row, col]`` in pixels (default: the frame's middle).
        energy: photon energy in eV (default: the constant ``photon_energy`` or ``wavelength``).
        mask: a ``{file, dataset}`` reference to a per-pixel mask of the frame's shape.
        mask_convention: which pixels ``mask`` marks bad: what an HDF5 mask's ``mask_convention`` attribute
            states (a value here must agree), else this, else ``nonzero-is-bad`` (CXI's and pyFAI's); or
            ``zero-is-bad`` (psana's).
        valid: the real pixels of a frame, ``[start, stop]`` per axis (default: the field's ``valid``
            description entry, which a ``pad`` step sets); the others (padding) are masked.
        solid_angle: correct for each pixel's solid angle (default true).
        polarization: the beam's polarization factor in [-1, 1] (default none: no correction).
    """

    type: Literal["azimuthal"] = "azimuthal"
    field: str = Field(min_length=1, description="the image field")
    output: str | None = Field(None, min_length=1, description="the profile field (default FIELD_azimuthal)")
    npt: int = Field(1000, ge=2, le=1 << 20, description="radial bins")
    unit: UNITS = Field("q_nm^-1", description="radial unit")
    method: Literal["csr", "histogram", "lut"] = Field("csr", description="pyFAI's integration engine")
    poni: ReadPath | None = Field(None, description="a PONI file with the whole geometry")
    distance: float | None = Field(None, gt=0, description="sample-to-detector distance (m)")
    pixel_size: tuple[float, float] | None = Field(None, description="pixel size [y, x] (m)")
    centre: tuple[float, float] | None = Field(None, description="beam centre [row, col] (pixels)")
    energy: float | None = Field(None, gt=0, description="photon energy (eV)")
    mask: ConstantsFile | None = Field(None, description="a per-pixel mask")
    mask_convention: MaskConvention | None = Field(None, description="zero-is-bad or nonzero-is-bad")
    valid: list[tuple[int, int]] | None = Field(None, description="the real pixels, [start, stop] per axis")
    solid_angle: bool = Field(True, description="correct for each pixel's solid angle")
    polarization: float | None = Field(None, ge=-1, le=1, description="polarization factor")

    @model_validator(mode="after")
    def _check_geometry(self) -> AzimuthalStep:
        given = [name for name in ("distance", "pixel_size", "centre", "energy") if getattr(self, name) is not None]
        if self.poni is not None and given:
            raise ValueError(f"poni gives the whole geometry: remove {', '.join(given)}, or remove poni")
        if self.pixel_size is not None and min(self.pixel_size) <= 0:
            raise ValueError(f"pixel_size {list(self.pixel_size)} must be positive (metres)")
        return self

    @property
    def outputs(self) -> tuple[str, str]:
        return profile_fields(self.output or f"{self.field}_azimuthal")

    def complete(self, metadata: RunMetadata) -> AzimuthalStep:
        """Distance, pixel size and energy the options leave out, from ``metadata`` (not with a PONI file), and
        the real pixels (``valid``)."""
        entry = metadata.fields.get(self.field, FieldMetadata())
        changes = {"valid": [tuple(pair) for pair in entry.valid]} if self.valid is None and entry.valid else {}
        if self.poni is not None:
            return self.model_copy(update=changes)
        if self.distance is None and entry.distance is not None:
            changes["distance"] = entry.distance
        if self.pixel_size is None and len(entry.pixel_size) >= 2:
            changes["pixel_size"] = tuple(entry.pixel_size[-2:])
        if self.energy is None and (energy := photon_energy_ev(metadata.constants)) is not None:
            changes["energy"] = energy
        return self.model_copy(update=changes)

    def fields_after(self, names: set[str]) -> set[str]:
        return names | set(self.outputs)

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The profile and radial fields, described."""
        profile, radial = self.outputs
        detector = metadata.fields.get(self.field, FieldMetadata()).detector
        metadata = metadata.with_field(profile, detector=detector, shape=[self.npt],
                                       source=f"azimuthal profiles of {self.field!r} (pyFAI, {self.method})")
        return metadata.with_field(radial, detector=detector, shape=[self.npt], units=self.unit,
                                   source=f"radial bin centres of {profile!r}")

    def build(self) -> AzimuthalIntegration:
        return AzimuthalIntegration(self)


def integrator(spec: AzimuthalStep, frame_shape: tuple[int, int]):
    """pyFAI's AzimuthalIntegrator for ``spec``'s geometry and frames of ``frame_shape``; StepError naming what is
    missing, MissingDependency without pyFAI."""
    try:
        import pyFAI
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    except ImportError as exc:
        raise MissingDependency(needs_extra("the azimuthal step", "azimuthal", package="pyFAI", cause=exc)) from exc
    if spec.poni is not None:
        if not spec.poni.is_file():
            raise StepError(f"azimuthal: PONI file {spec.poni} does not exist")
        return pyFAI.load(str(spec.poni))
    missing = [what for what, value in (("distance (m)", spec.distance), ("pixel_size [y, x] (m)", spec.pixel_size))
               if value is None]
    if spec.energy is None and spec.unit.startswith("q"):
        missing.append("energy (eV), needed for q")
    if missing:
        raise StepError(f"azimuthal: the geometry of {spec.field!r} lacks {', '.join(missing)}; give them in the "
                        "step, a PONI file (poni: FILE), or the stream's description (metadata: {fields: "
                        f"{{{spec.field}: {{distance: ..., pixel_size: [..., ...]}}}}, constants: "
                        "{photon_energy: {value: ..., unit: eV}}})")
    rows, cols = frame_shape
    row, col = spec.centre if spec.centre is not None else ((rows - 1) / 2, (cols - 1) / 2)
    pixel1, pixel2 = spec.pixel_size
    wavelength = PLANCK_EV_M / spec.energy if spec.energy is not None else None
    return AzimuthalIntegrator(dist=spec.distance, poni1=(row + 0.5) * pixel1, poni2=(col + 0.5) * pixel2,
                               pixel1=pixel1, pixel2=pixel2, wavelength=wavelength)


class AzimuthalIntegration(BatchwiseStep):
    """Integrates every image of a batch with one AzimuthalIntegrator, made at the first batch."""

    def __init__(self, spec: AzimuthalStep) -> None:
        self.spec = spec
        self.mask = None if spec.mask is None else bad_pixels(spec.mask, spec.mask_convention, "azimuthal",
                                                              default="nonzero-is-bad").astype(np.int8)
        self.integrator = None
        self.shape: tuple[int, ...] | None = None

    def integrate(self, frame: np.ndarray):
        """pyFAI's result for one frame, with the step's options (a read-only frame, as sources and clients give
        them, is copied: pyFAI's engines take writable buffers only)."""
        frame = frame if frame.flags.writeable else np.array(frame)
        return self.integrator.integrate1d(frame, self.spec.npt, unit=self.spec.unit, method=ENGINES[self.spec.method],
                                           mask=self.mask, correctSolidAngle=self.spec.solid_angle,
                                           polarization_factor=self.spec.polarization)

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with every event's profile and radial positions added."""
        images = require_field(batch, self.spec.field, "azimuthal")
        self._prepare(images.shape[1:])
        profiles = np.empty((len(images), self.spec.npt), dtype=np.float32)
        radial = np.empty_like(profiles)
        for index, frame in enumerate(images):
            result = self.integrate(frame)
            profiles[index], radial[index] = result.intensity, result.radial
        profile, radial_name = self.spec.outputs
        return batch.replace({**batch.data, profile: profiles, radial_name: radial})

    def _prepare(self, frame_shape: tuple[int, ...]) -> None:
        """Make the integrator for frames of ``frame_shape`` once; StepError if frames are not 2-D or change shape."""
        if len(frame_shape) != 2:
            raise StepError(f"azimuthal: field {self.spec.field!r} has event shape {frame_shape}; it integrates one "
                            "(y, x) image per event: select a panel or assemble the panels first")
        if self.mask is not None and self.mask.shape != frame_shape:
            raise StepError(f"azimuthal: the mask has shape {self.mask.shape}, the frames of {self.spec.field!r} "
                            f"{frame_shape}; give a mask of the frame's shape")
        if self.integrator is None:
            self.integrator, self.shape = integrator(self.spec, frame_shape), frame_shape
            try:
                padded = padding(self.spec.valid, frame_shape, f"azimuthal: field {self.spec.field!r}")
            except ValueError as exc:
                raise StepError(str(exc)) from None
            if padded is not None:
                self.mask = padded.astype(np.int8) | (0 if self.mask is None else self.mask)
        elif frame_shape != self.shape:
            raise StepError(f"azimuthal: frames of {self.spec.field!r} changed shape from {self.shape} to "
                            f"{frame_shape}")

