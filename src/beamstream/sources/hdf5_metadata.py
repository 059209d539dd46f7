"""What an HDF5 run says about itself: the description entries a spec's hdf5 source names, read from its first file.

Each entry of the source's ``metadata:`` maps a description key to where its value is:
``/path/to/dataset`` (a scalar dataset, or a small 1-D one), ``/path@attribute`` (an attribute
of a group or dataset) or ``@attribute`` (of the file). Keys:

- ``facility``, ``instrument``, ``experiment``, ``sample`` (text) and ``run`` (an integer);
- ``FIELD.distance`` and ``FIELD.pixel_size`` for a field of the stream, converted to metres
  from the dataset's ``units`` attribute (m, mm, µm; none: metres);
- any other name: a per-run constant, with the ``units`` attribute of its dataset as its unit.
"""

from __future__ import annotations

from typing import Any

import h5py
import msgspec
import numpy as np

from beamstream.errors import SourceError
from beamstream.quantities import to_si
from beamstream.wire.metadata import MAX_ENTRIES, FieldMetadata, Quantity, RunMetadata

TEXT_KEYS = ("facility", "instrument", "experiment", "sample")
MASK_NAMES = ("pixel_mask", "mask")  # CXI/NeXus masks: non-zero marks a bad pixel


def describe_files(path: str, datasets: dict[str, str], time_dataset: str | None,
                   entries: dict[str, str]) -> RunMetadata:
    """The description of a run whose first file is ``path``; SourceError naming an entry that cannot be read."""
    fields = {name: FieldMetadata(source=dataset, mask="nonzero-is-bad" if dataset.rsplit("/", 1)[-1] in MASK_NAMES
                                  else "") for name, dataset in datasets.items()}
    metadata = RunMetadata(times="event" if time_dataset is not None else "none", fields=fields)
    if not entries:
        return metadata
    with h5py.File(path, "r") as h5:
        for key, location in entries.items():
            value, unit = _read(h5, path, key, location)
            metadata = _put(metadata, key, value, unit, path, location)
    return metadata


def _read(h5: h5py.File, path: str, key: str, location: str) -> tuple[Any, str]:
    """The value at ``location`` (as int, float, str or a list of floats) and its ``units`` attribute."""
    name, _, attribute = location.partition("@")
    if name and name not in h5:
        raise SourceError(f"hdf5 source: metadata {key!r}: {path} has nothing at {name!r}; fix metadata: in the spec")
    target = h5[name] if name else h5
    if attribute:
        if attribute not in target.attrs:
            raise SourceError(f"hdf5 source: metadata {key!r}: {name or '/'} in {path} has no attribute {attribute!r} "
                              f"(it has: {', '.join(target.attrs) or 'none'})")
        return _plain(target.attrs[attribute], key, location), ""
    if not isinstance(target, h5py.Dataset):
        raise SourceError(f"hdf5 source: metadata {key!r}: {name!r} in {path} is a group; name a dataset or an attribute")
    if target.size > MAX_ENTRIES or target.ndim > 1:
        raise SourceError(f"hdf5 source: metadata {key!r}: {name!r} in {path} has shape {target.shape}; "
                          f"name a scalar or a 1-D dataset of at most {MAX_ENTRIES} values")
    units = target.attrs.get("units", "")
    return _plain(target[()], key, location), units.decode() if isinstance(units, bytes) else str(units)


def _plain(value: Any, key: str, location: str) -> Any:
    """``value`` (read by h5py) as int, float, bool, str or a list of floats."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    array = np.asarray(value)
    if array.dtype.kind in "OSU" and array.size == 1:
        return _plain(array.item(), key, location)
    if array.dtype.kind not in "biuf" or array.size > MAX_ENTRIES:
        raise SourceError(f"hdf5 source: metadata {key!r}: {location!r} holds {array.dtype} {array.shape}; "
                          "name a number, a text or a short list of numbers")
    return array.item() if array.ndim == 0 else [float(item) for item in array.ravel()]


def _put(metadata: RunMetadata, key: str, value: Any, unit: str, path: str, location: str) -> RunMetadata:
    """``metadata`` with ``key`` set to ``value`` (in ``unit``)."""
    if key in TEXT_KEYS:
        return msgspec.structs.replace(metadata, **{key: str(value)})
    if key == "run":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise SourceError(f"hdf5 source: metadata 'run': {location!r} in {path} holds {value!r}, not a run number")
        return msgspec.structs.replace(metadata, run=value)
    field, _, attribute = key.rpartition(".")
    if field and attribute in ("distance", "pixel_size"):
        metres = [_metres(number, unit, key, path) for number in (value if isinstance(value, list) else [value])]
        return metadata.with_field(field, **{attribute: metres[0] if attribute == "distance" else metres})
    return msgspec.structs.replace(metadata, constants={**metadata.constants, key: Quantity(value=value, unit=unit)})


def _metres(number: Any, unit: str, key: str, path: str) -> float:
    if isinstance(number, (str, bool)):
        raise SourceError(f"hdf5 source: metadata {key!r} in {path} holds {number!r}, not a length")
    converted = to_si(float(number), unit or "m")
    if converted is None or converted[1] != "m":
        raise SourceError(f"hdf5 source: metadata {key!r} in {path} is in {unit!r}, not a length unit (m, mm, um)")
    return converted[0]
