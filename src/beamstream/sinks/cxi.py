"""The CXI 1.5 / NeXus structure around the data of a ``cxi`` file: what a CXI or NeXus reader looks for.

Written once, when the first message arrives (it carries the stream's description)::

    /cxi_version                          150
    /entry_1                              NXentry; experiment_identifier, entry_identifier
      sample_1                            NXsample; name
      instrument_1                        NXinstrument; name
        source_1                          NXsource; name (facility), energy (J), wavelength (m)
        detector_1                        NXdetector; data → the signal field, distance (m),
                                          x_pixel_size, y_pixel_size (m), description
      data_1                              NXdata, signal="data"; data → the signal field
      _beamstream                         NXcollection; seq, time, and the description as JSON

The signal field is the field named ``data`` if there is one, else the field with the most
bytes per event. The constants ``photon_energy`` and ``wavelength`` are converted to the units
CXI names (eV or keV → J; Å, nm, µm or mm → m); the description keeps them as given.
"""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np

from beamstream.quantities import to_si
from beamstream.wire.metadata import FieldMetadata, Quantity, RunMetadata



def signal_field(arrays: dict[str, np.ndarray]) -> str:
    """The field CXI readers should see as the detector data: ``data`` if present, else the largest per event."""
    if "data" in arrays:
        return "data"
    return max(arrays, key=lambda name: arrays[name][:1].nbytes)


def in_si(quantity: Quantity) -> tuple[float, str] | None:
    """``quantity`` in J or m (value, unit), or None if it is not a number in a unit this module knows."""
    if isinstance(quantity.value, (str, bool, list)):
        return None
    return to_si(float(quantity.value), quantity.unit)


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.require_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _value(group: h5py.Group, name: str, value: Any, units: str | None = None) -> None:
    group[name] = value
    if units:
        group[name].attrs["units"] = units


def write_structure(h5: h5py.File, metadata: RunMetadata, fields: str, signal: str, meta: str) -> None:
    """The CXI/NeXus groups, attributes and links of a file whose field datasets are in group ``fields``
    (``signal`` the detector data) and whose seq/time are in group ``meta``."""
    h5.attrs["default"] = "entry_1"
    entry = _group(h5, "entry_1", "NXentry")
    entry.attrs["default"] = "data_1"
    if metadata.experiment:
        _value(entry, "experiment_identifier", metadata.experiment)
    if metadata.run is not None:
        _value(entry, "entry_identifier", f"{metadata.experiment or 'run'} {metadata.run}".strip())
    if metadata.sample:
        _value(_group(entry, "sample_1", "NXsample"), "name", metadata.sample)
    instrument = _group(entry, "instrument_1", "NXinstrument")
    if metadata.instrument:
        _value(instrument, "name", metadata.instrument)
    _write_source(_group(instrument, "source_1", "NXsource"), metadata)
    _write_detector(_group(instrument, "detector_1", "NXdetector"), metadata.fields.get(signal, FieldMetadata()),
                    h5[f"{fields}/{signal}"])
    data = _group(h5, fields, "NXdata")
    data.attrs["signal"] = "data"
    if signal != "data":
        data["data"] = h5[f"{fields}/{signal}"]  # a hard link: the same dataset under CXI's name
    collection = h5[meta]
    collection.attrs["NX_class"] = "NXcollection"
    collection.attrs["description"] = json.dumps(metadata.to_builtins())


def _write_source(source: h5py.Group, metadata: RunMetadata) -> None:
    if metadata.facility:
        _value(source, "name", metadata.facility)
    for constant, name in (("photon_energy", "energy"), ("wavelength", "wavelength")):
        quantity = metadata.constants.get(constant)
        converted = in_si(quantity) if quantity is not None else None
        if converted is not None:
            _value(source, name, converted[0], converted[1])


def _write_detector(detector: h5py.Group, entry: FieldMetadata, dataset: h5py.Dataset) -> None:
    detector["data"] = dataset
    description = ": ".join(part for part in (entry.detector, entry.source) if part)
    if description:
        _value(detector, "description", description)
    if entry.distance is not None:
        _value(detector, "distance", entry.distance, "m")
    if len(entry.pixel_size) >= 2:
        _value(detector, "y_pixel_size", entry.pixel_size[-2], "m")
        _value(detector, "x_pixel_size", entry.pixel_size[-1], "m")
    if entry.mask:
        detector.attrs["mask_convention"] = entry.mask
