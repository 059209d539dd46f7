"""What an HDF5 run says about itself: the description entries a spec's hdf5 source names, read from its first file.

Each entry of the source's ``metadata:`` maps a description key to where its value is:
``/path/to/dataset`` (a scalar dataset, or a small 1-D one), ``/path@attribute`` (an attribute
of a group or dataset) or ``@attribute`` (of the file). Keys:

- ``facility``, ``instrument``, ``experiment``, ``sample`` (text) and ``run`` (an integer);
- ``FIELD.distance`` and ``FIELD.pixel_size`` for a field of the stream, converted to metres
  from the dataset's ``units`` attribute (any length unit pint knows: m, mm, µm, …; none: metres);
  ``FIELD.x_pixel_size`` and ``FIELD.y_pixel_size`` (both, as a standard CXI file holds them)
  instead of ``FIELD.pixel_size``;
- any other name: a per-run constant, with the ``units`` attribute of its dataset as its unit;
  :func:`check_keys` refuses a name that looks like a mistyped key instead.

Each field's entry says its dataset and the dataset's ``units`` attribute. A mask field's
convention is what its dataset's ``mask_convention`` attribute states (the files sink's ``cxi``
layout writes both attributes), else ``nonzero-is-bad`` for a dataset named ``pixel_mask`` or
``mask`` (CXI/NeXus), else none (:mod:`beamstream.masks`).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from typing import Any

import h5py
import msgspec
import numpy as np

from beamstream.errors import SourceError, SpecError
from beamstream.masks import by_name, stated
from beamstream.quantities import length_in_metres
from beamstream.wire.metadata import MAX_ENTRIES, FieldMetadata, Quantity, RunMetadata

TEXT_KEYS = ("facility", "instrument", "experiment", "sample")
FIELD_KEYS = ("distance", "pixel_size", "x_pixel_size", "y_pixel_size")
AXIS_PIXEL_SIZES = ("y_pixel_size", "x_pixel_size")  # slow axis, fast axis
READ_CONSTANTS = ("photon_energy", "wavelength")  # the constants the cxi layout and steps read
UNITS_LENGTH = 64  # as long as a description's units may be


def check_keys(entries: Collection[str], fields: Collection[str]) -> None:
    """ValueError saying what to fix for keys of an hdf5 source's ``metadata:`` that look mistyped.

    Refused: a key of a field the source does not have, a field key that is none of ``FIELD_KEYS``,
    a key a close match of a key beamstream reads (it would become a per-run constant), and one of
    ``FIELD.x_pixel_size`` and ``FIELD.y_pixel_size`` without the other or with ``FIELD.pixel_size``.
    """
    known = {*TEXT_KEYS, "run", *READ_CONSTANTS, *(f"{field}.{key}" for field in fields for key in FIELD_KEYS)}
    for key in entries:
        field, _, attribute = key.rpartition(".")
        if key in known:
            continue
        if field in fields:
            raise ValueError(f"metadata {key!r}: a field's keys are {', '.join(f'{field}.{k}' for k in FIELD_KEYS)}")
        if attribute in FIELD_KEYS:
            raise ValueError(f"metadata {key!r}: the source has no field {field!r} (its fields: "
                             f"{', '.join(sorted(fields))})")
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
        if close:
            raise ValueError(f"metadata {key!r}: did you mean {close[0]!r}? (a key beamstream does not read is a "
                             "per-run constant: rename it if you meant one)")
    for field in fields:
        axes = [f"{field}.{key}" for key in AXIS_PIXEL_SIZES if f"{field}.{key}" in entries]
        if axes and (len(axes) == 1 or f"{field}.pixel_size" in entries):
            raise ValueError(f"metadata {', '.join(axes)}: give both {field}.y_pixel_size and {field}.x_pixel_size, "
                             f"or {field}.pixel_size alone")


def describe_files(path: str, datasets: dict[str, str], time_dataset: str | None,
                   entries: dict[str, str]) -> RunMetadata:
    """The description of a run whose first file is ``path`` (its ``entries`` passed :func:`check_keys`);
    SourceError naming an entry that cannot be read."""
    axis_sizes: dict[str, dict[str, float]] = {}
    with h5py.File(path, "r") as h5:
        fields = {name: FieldMetadata(source=dataset, units=_units(h5[dataset].attrs, path, dataset),
                                      mask=_mask_convention(h5, path, dataset)) for name, dataset in datasets.items()}
        metadata = RunMetadata(times="event" if time_dataset is not None else "none", fields=fields)
        for key, location in entries.items():
            value, unit = _read(h5, path, key, location)
            field, _, attribute = key.rpartition(".")
            if field in datasets and attribute in AXIS_PIXEL_SIZES:
                axis_sizes.setdefault(field, {})[attribute] = _metres(value, unit, key, path)
            else:
                metadata = _put(metadata, key, value, unit, path, location)
    for field, sizes in axis_sizes.items():
        metadata = metadata.with_field(field, pixel_size=[sizes[key] for key in AXIS_PIXEL_SIZES])
    return metadata


def _mask_convention(h5: h5py.File, path: str, dataset: str) -> str:
    """The mask convention of ``dataset``: the one it states, else the one its name implies, else ''."""
    try:
        return stated(h5[dataset].attrs, f"hdf5 source: {path}: dataset {dataset!r}") or by_name(dataset)
    except ValueError as exc:
        raise SourceError(str(exc)) from None


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
    return _plain(target[()], key, location), _units(target.attrs, path, name)


def _units(attrs: Any, path: str, name: str) -> str:
    """The ``units`` attribute in ``attrs`` (of ``name`` in ``path``) as text, '' if there is none."""
    units = attrs.get("units", "")
    text = units.decode() if isinstance(units, bytes) else str(units)
    if len(text) > UNITS_LENGTH:
        raise SourceError(f"hdf5 source: {name!r} in {path} has units {text[:UNITS_LENGTH]!r}… longer than "
                          f"{UNITS_LENGTH} characters; fix its units attribute")
    return text


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
    try:
        return length_in_metres(key, number, unit)
    except SpecError as exc:
        raise SourceError(f"hdf5 source: metadata {exc} (read from {path})") from None
