"""``calibrate``: subtract a pedestal, apply a gain and mask bad pixels, giving float32."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
from pydantic import Field, model_validator

from beamstream.batch import Batch
from beamstream.errors import StepError
from beamstream.masks import MaskConvention, by_name, stated
from beamstream.masks import bad_pixels as marked_bad
from beamstream.spec_paths import ReadPath
from beamstream.stages import SpecModel, StepSpec
from beamstream.steps import BatchwiseStep, require_field
from beamstream.wire.metadata import FieldMetadata, RunMetadata

NUMPY_SUFFIXES = (".npy",)
HDF5_SUFFIXES = (".h5", ".hdf5", ".cxi")


class ConstantsFile(SpecModel):
    """Per-pixel constants stored in a file.

    Attributes:
        file: path of a ``.npy`` file (read with ``numpy.load``) or an HDF5 file
            (``.h5``, ``.hdf5``, ``.cxi``); a relative path is taken from the producer's
            working directory.
        dataset: path of the dataset inside an HDF5 file (required for HDF5, not allowed
            for ``.npy``).
        frame: for an HDF5 dataset whose first axis runs over events (as the files sink's
            ``cxi`` layout writes every field), the index along it of the frame to read
            (default None: the whole dataset).
    """

    file: ReadPath
    dataset: str | None = None
    frame: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _check_format(self) -> ConstantsFile:
        suffix = self.file.suffix.lower()
        if suffix in HDF5_SUFFIXES and not self.dataset:
            raise ValueError(f"{self.file} is an HDF5 file; say which array to read with `dataset: /path/in/file`")
        if suffix in NUMPY_SUFFIXES and (self.dataset is not None or self.frame is not None):
            raise ValueError(f"{self.file} is a .npy file holding one array; remove `dataset` and `frame`")
        if suffix not in NUMPY_SUFFIXES + HDF5_SUFFIXES:
            known = ", ".join(NUMPY_SUFFIXES + HDF5_SUFFIXES)
            raise ValueError(f"cannot read constants from {self.file}: expected a file ending in {known}")
        return self

    def load(self, step: str = "calibrate") -> np.ndarray:
        """The array in the file; StepError (its message led by ``step``) naming the path when it is missing or
        unreadable."""
        if not self.file.is_file():
            raise StepError(f"{step}: constants file {self.file} (absolute: {self.file.absolute()}) does not exist")
        try:
            if self.dataset is None:
                return np.load(self.file, allow_pickle=False)
            return _read_hdf5(self.file, self.dataset, step, self.frame)
        except StepError:
            raise
        except (OSError, ValueError) as exc:
            raise StepError(f"{step}: cannot read constants from {self.file}: {exc}") from exc


def _read_hdf5(path: Path, dataset: str, step: str, frame: int | None = None) -> np.ndarray:
    """Dataset ``dataset`` of HDF5 file ``path`` (only its frame ``frame`` along axis 0, if given); StepError
    listing the datasets there when absent, or giving the number of frames when ``frame`` is not one."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the compression filters constants may be stored with)

    with h5py.File(path, "r") as file:
        node = file.get(dataset)
        if not isinstance(node, h5py.Dataset):
            names: list[str] = []
            file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            raise StepError(
                f"{step}: {path} has no dataset {dataset!r}; datasets there: {', '.join(names) or '(none)'}"
            )
        if frame is None:
            return np.asarray(node[()])
        if node.ndim == 0 or frame >= node.shape[0]:
            raise StepError(f"{step}: dataset {dataset!r} of {path} has {node.shape[0] if node.ndim else 'no'} frames "
                            f"along axis 0 (shape {node.shape}); give a frame below that, or remove frame:")
        return np.asarray(node[frame])


Constant = float | ConstantsFile


class CalibrateStep(StepSpec):
    """Calibrate ``field``: ``(raw - pedestal) * gain`` as float32, masked pixels set to ``masked_value``.

    Per-pixel constants must broadcast to the event shape (the array's shape without the
    batch axis), e.g. ``(y, x)`` constants for ``(n, y, x)`` data.

    Attributes:
        field: the array to calibrate (required).
        pedestal: a number, or a ``{file, dataset}`` reference to per-pixel pedestals (default 0).
        gain: a number, or a ``{file, dataset}`` reference to per-pixel gains (default 1).
        mask: a number, or a ``{file, dataset}`` reference to a per-pixel mask (default None:
            no mask); the pixels it marks bad are masked (:func:`bad_pixels`).
        mask_convention: which pixels ``mask`` marks bad: ``zero-is-bad`` (psana) or
            ``nonzero-is-bad`` (CXI/NeXus ``pixel_mask``). Default: what an HDF5 mask's
            ``mask_convention`` attribute states (a value here must agree with it), else
            ``zero-is-bad``; an HDF5 mask named ``pixel_mask`` or ``mask`` that states none needs it.
        masked_value: the value written to masked pixels (default 0.0).
        output: the field to write the result to (default None: replace ``field``; an
            existing field of that name is replaced).

    The result is described as ``field`` is (detector, shape, origin, binning, pixel size, distance, valid
    region), as float32 values of no stated unit (a gain may change it) and no mask convention.
    """

    type: Literal["calibrate"] = "calibrate"
    field: str = Field(min_length=1, description="the array to calibrate")
    pedestal: Constant = Field(0.0, description="subtracted from the raw values")
    gain: Constant = Field(1.0, description="multiplies the pedestal-subtracted values")
    mask: Constant | None = Field(None, description="the pixels this marks bad are set to masked_value")
    mask_convention: MaskConvention | None = Field(None, description="zero-is-bad or nonzero-is-bad")
    masked_value: float = Field(0.0, description="value of masked pixels")
    output: str | None = Field(None, min_length=1, description="result field (default: replace field)")

    def fields_after(self, names: set[str]) -> set[str]:
        return names | {self.output or self.field}

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The result field described as ``field`` is, its values calibrated float32 (see above)."""
        entry = metadata.fields.get(self.field, FieldMetadata())
        source = f"{entry.source}, calibrated" if entry.source else f"{self.field!r} calibrated"
        result = msgspec.structs.replace(entry, source=source, units="", mask="", dtype=np.dtype(np.float32).str)
        return msgspec.structs.replace(metadata, fields={**metadata.fields, self.output or self.field: result})

    def build(self) -> Calibrator:
        mask = None if self.mask is None else bad_pixels(self.mask, self.mask_convention)
        return Calibrator(
            field=self.field,
            output=self.output or self.field,
            pedestal=_constant(self.pedestal).astype(np.float32),
            gain=_constant(self.gain).astype(np.float32),
            masked=mask,
            masked_value=self.masked_value,
        )


def bad_pixels(mask: Constant, convention: str | None, step: str = "calibrate",
               default: str = "zero-is-bad") -> np.ndarray:
    """True where ``mask`` marks a bad pixel, read by the convention an HDF5 mask's ``mask_convention`` attribute
    states, else by ``convention``, else by the step's ``default``.

    Raises StepError when ``convention`` contradicts the attribute, or when an HDF5 mask named as CXI and NeXus
    name masks whose non-zero values mark bad pixels (``pixel_mask``, ``mask``) states none, ``convention`` is
    None and the default is the other one: such a mask is never read inverted by a default.
    """
    values = _constant(mask)
    named = mask.dataset if isinstance(mask, ConstantsFile) and mask.dataset else None
    in_file = _stated_convention(mask.file, named, step) if named else None
    if in_file and convention and in_file != convention:
        raise StepError(f"{step}: mask {named} in {mask.file} says mask_convention={in_file} but the spec says "
                        f"{convention}; remove mask_convention: (the file's is used) or name another mask")
    if not (in_file or convention) and named and by_name(named) not in ("", default):
        raise StepError(f"{step}: mask {named} in {mask.file} does not say which pixels it marks bad, and CXI/NeXus "
                        f"masks of that name mark them non-zero, the opposite of {step}'s default (0 = bad); "
                        "set mask_convention: nonzero-is-bad (or zero-is-bad)")
    return marked_bad(values, in_file or convention or default)


def _stated_convention(path: Path, dataset: str, step: str) -> str | None:
    """The convention dataset ``dataset`` of HDF5 file ``path`` states, None if none."""
    import h5py

    with h5py.File(path, "r") as file:
        try:
            return stated(file[dataset].attrs, f"{step}: mask {dataset} in {path}")
        except ValueError as exc:
            raise StepError(str(exc)) from None


def _constant(value: Constant) -> np.ndarray:
    return value.load() if isinstance(value, ConstantsFile) else np.asarray(value)


class Calibrator(BatchwiseStep):
    """Applies pedestal, gain and mask to one field of every batch."""

    def __init__(
        self,
        field: str,
        output: str,
        pedestal: np.ndarray,
        gain: np.ndarray,
        masked: np.ndarray | None,
        masked_value: float,
    ) -> None:
        self.field = field
        self.output = output
        self.pedestal = pedestal
        self.gain = gain
        self.masked = masked
        self.masked_value = masked_value

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with the calibrated float32 array under ``output``."""
        raw = require_field(batch, self.field, "calibrate")
        self._check_shapes(raw.shape[1:])
        result = raw.astype(np.float32)
        result -= self.pedestal
        result *= self.gain
        if self.masked is not None:
            np.copyto(result, np.float32(self.masked_value), where=self.masked)
        return batch.replace({**batch.data, self.output: result})

    def _check_shapes(self, event_shape: tuple[int, ...]) -> None:
        """StepError unless every constant broadcasts to ``event_shape`` without growing it."""
        constants = {"pedestal": self.pedestal, "gain": self.gain, "mask": self.masked}
        for name, constant in constants.items():
            if constant is not None and not _fits(constant.shape, event_shape):
                raise StepError(
                    f"calibrate: {name} has shape {constant.shape}, which does not broadcast to the "
                    f"event shape {event_shape} of field {self.field!r}; give {name} of shape "
                    f"{event_shape} (or a number)."
                )


def _fits(shape: tuple[int, ...], event_shape: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, event_shape) == event_shape
    except ValueError:
        return False
