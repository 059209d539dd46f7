"""``calibrate``: subtract a pedestal, apply a gain and mask bad pixels, giving float32."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from beamstream.batch import Batch
from beamstream.errors import StepError
from beamstream.spec_paths import ReadPath
from beamstream.stages import SpecModel, StepSpec
from beamstream.steps import BatchwiseStep, require_field

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
    """

    file: ReadPath
    dataset: str | None = None

    @model_validator(mode="after")
    def _check_format(self) -> ConstantsFile:
        suffix = self.file.suffix.lower()
        if suffix in HDF5_SUFFIXES and not self.dataset:
            raise ValueError(f"{self.file} is an HDF5 file; say which array to read with `dataset: /path/in/file`")
        if suffix in NUMPY_SUFFIXES and self.dataset is not None:
            raise ValueError(f"{self.file} is a .npy file holding one array; remove `dataset`")
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
            return _read_hdf5(self.file, self.dataset, step)
        except StepError:
            raise
        except (OSError, ValueError) as exc:
            raise StepError(f"{step}: cannot read constants from {self.file}: {exc}") from exc


def _read_hdf5(path: Path, dataset: str, step: str) -> np.ndarray:
    """Dataset ``dataset`` of HDF5 file ``path``; StepError listing the datasets there when absent."""
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
        return np.asarray(node[()])


Constant = float | ConstantsFile


class CalibrateStep(StepSpec):
    """Calibrate ``field``: ``(raw - pedestal) * gain`` as float32, masked pixels set to ``masked_value``.

    Per-pixel constants must broadcast to the event shape (the array's shape without the
    batch axis), e.g. ``(y, x)`` constants for ``(n, y, x)`` data.

    Attributes:
        field: the array to calibrate (required).
        pedestal: a number, or a ``{file, dataset}`` reference to per-pixel pedestals (default 0).
        gain: a number, or a ``{file, dataset}`` reference to per-pixel gains (default 1).
        mask: a number, or a ``{file, dataset}`` reference; pixels where it is 0/False are
            masked (default None: no mask).
        masked_value: the value written to masked pixels (default 0.0).
        output: the field to write the result to (default None: replace ``field``; an
            existing field of that name is replaced).
    """

    type: Literal["calibrate"] = "calibrate"
    field: str = Field(min_length=1, description="the array to calibrate")
    pedestal: Constant = Field(0.0, description="subtracted from the raw values")
    gain: Constant = Field(1.0, description="multiplies the pedestal-subtracted values")
    mask: Constant | None = Field(None, description="pixels where this is 0 are set to masked_value")
    masked_value: float = Field(0.0, description="value of masked pixels")
    output: str | None = Field(None, min_length=1, description="result field (default: replace field)")

    def build(self) -> Calibrator:
        mask = None if self.mask is None else _constant(self.mask) == 0
        return Calibrator(
            field=self.field,
            output=self.output or self.field,
            pedestal=_constant(self.pedestal).astype(np.float32),
            gain=_constant(self.gain).astype(np.float32),
            masked=mask,
            masked_value=self.masked_value,
        )


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
