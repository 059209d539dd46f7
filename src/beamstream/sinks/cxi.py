"""The CXI 1.5 / NeXus structure around the data of a ``cxi`` file: what a CXI or NeXus reader looks for.

Written once, when the first message arrives (it carries the stream's description)::

    /cxi_version                          150
    /entry_1                              NXentry; experiment_identifier, entry_identifier
      sample_1                            NXsample; name
      instrument_1                        NXinstrument; name
        source_1                          NXsource; name (facility), energy (J), wavelength (m)
        beam_1                            NXbeam; incident_energy (eV: what CrystFEL reads)
        detector_1                        NXdetector; data → the signal field, distance (m),
                                          x_pixel_size, y_pixel_size (m), description
      data_1                              NXdata, signal="data", axes="." per axis; every field,
                                          data → the signal field
      _beamstream                         NXcollection; seq, time (s since the Unix epoch), and
                                          the description as JSON

Each field's dataset has the ``units`` its description entry gives, and a mask field its
``mask_convention`` (:mod:`beamstream.masks`), so that a reader of the file alone reads it right.
Frame ``k`` of every field is the event whose sequence number is ``_beamstream/seq[k]``.

The signal field is the field named ``data`` if there is one, else the field with the most
bytes per event. The constant ``photon_energy`` or ``wavelength`` (either one is enough: E = hc/λ) is
written as both, in the units CXI names (J and m; converted by pint, :mod:`beamstream.quantities`); the
description keeps them as given.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from beamstream.masks import ATTRIBUTE as MASK_ATTRIBUTE
from beamstream.saving import write_description
from beamstream.quantities import ELECTRONVOLT, PLANCK_EV_M, photon_energy_ev
from beamstream.wire.metadata import FieldMetadata, RunMetadata

UNIX_EPOCH = "1970-01-01T00:00:00Z"
"""When ``_beamstream/time`` counts from (its NeXus ``start`` attribute)."""


def signal_field(arrays: dict[str, np.ndarray]) -> str:
    """The field CXI readers should see as the detector data: ``data`` if present, else the largest per event."""
    if "data" in arrays:
        return "data"
    return max(arrays, key=lambda name: arrays[name][:1].nbytes)


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
    _write_beam(instrument, metadata)
    data = _group(h5, fields, "NXdata")
    data.attrs["signal"] = "data"
    data.attrs["axes"] = ["."] * h5[f"{fields}/{signal}"].ndim  # NeXus: axes without coordinates
    if signal != "data":
        data["data"] = h5[f"{fields}/{signal}"]  # a hard link: the same dataset under CXI's name
    for name, entry in metadata.fields.items():
        if name in data:
            _describe_dataset(data[name], entry)
    h5[f"{meta}/time"].attrs.update({"units": "s", "start": UNIX_EPOCH})
    collection = h5[meta]
    collection.attrs["NX_class"] = "NXcollection"
    write_description(collection, metadata)


def _write_source(source: h5py.Group, metadata: RunMetadata) -> None:
    if metadata.facility:
        _value(source, "name", metadata.facility)
    if (energy := photon_energy_ev(metadata.constants)) is not None:
        _value(source, "energy", energy * ELECTRONVOLT, "J")
        _value(source, "wavelength", PLANCK_EV_M / energy, "m")


def _write_beam(instrument: h5py.Group, metadata: RunMetadata) -> None:
    """The photon energy in eV (NXbeam's ``incident_energy``), which CrystFEL reads without a scale factor."""
    if (energy := photon_energy_ev(metadata.constants)) is not None:
        _value(_group(instrument, "beam_1", "NXbeam"), "incident_energy", energy, "eV")


def _describe_dataset(dataset: h5py.Dataset, entry: FieldMetadata) -> None:
    """A field's units and, for a mask, its convention, as attributes of its dataset."""
    if entry.units:
        dataset.attrs["units"] = entry.units
    if entry.mask:
        dataset.attrs[MASK_ATTRIBUTE] = entry.mask


def _write_detector(detector: h5py.Group, entry: FieldMetadata, dataset: h5py.Dataset) -> None:
    detector["data"] = dataset
    description = ": ".join(part for part in (entry.detector, entry.source) if part)
    if description:
        _value(detector, "description", description)
    if entry.distance is not None:
        _value(detector, "distance", entry.distance, "m")
    if entry.pixel_size:
        _value(detector, "x_pixel_size", entry.pixel_size[-1], "m")
    if len(entry.pixel_size) >= 2:
        _value(detector, "y_pixel_size", entry.pixel_size[-2], "m")
