"""The files sink's cxi files as NeXus validation (nexusformat's ``nxcheck``) and CXI readers see them, and the
CXI details a standard CXI file hands the hdf5 source."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
from nexusformat.nexus import validate

from beamstream.errors import SpecError
from beamstream.producer import run_local
from beamstream.sources.hdf5 import HDF5Source
from beamstream.spec import parse_spec

CXI_ONLY = [("/cxi_version", "This field is not defined in NXroot")]
"""The one warning CXI itself requires: CXI 1.5 files must have /cxi_version, which NeXus does not define."""


def nxcheck_warnings(path) -> list[tuple[str, str]]:
    """(path in the file, warning) for each warning of nexusformat's validator, as ``nxcheck FILE`` runs it."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    level = validate.logger.level
    validate.logger.addHandler(handler)
    validate.logger.setLevel(logging.INFO)  # also the lines naming each group and field, to place a warning
    try:
        totals = validate.validate_file(str(path))
    finally:
        validate.logger.removeHandler(handler)
        validate.logger.setLevel(level)
    warnings, where = [], "/"
    for record in records:
        message = record.getMessage().strip()
        if message.startswith("Field: /") or (message.startswith("NX") and ": /" in message):
            where = message.split(": ", 1)[1]
        elif record.levelno == logging.WARNING:
            warnings.append((where, message))
    assert totals == (len(warnings), 0), (totals, warnings)
    return warnings


def cxi_files(tmp_path, source: dict, metadata: dict | None = None, workers: int = 1) -> list:
    out = tmp_path / "out"
    spec = parse_spec({"source": source, "metadata": metadata,
                       "sinks": [{"type": "files", "dir": str(out), "layout": "cxi"}]})
    assert run_local(spec, workers=workers).ok
    return sorted(out.glob("*.cxi"))


def test_cxi_files_pass_nxcheck_with_only_the_warning_cxi_requires(tmp_path):
    source = {"type": "simulated", "n_events": 6, "events_per_read": 3,
              "detectors": [{"kind": "image", "shape": [64, 48]}, {"kind": "waveform", "samples": 256}]}
    metadata = {"experiment": "xpptut15", "run": 7, "sample": "lysozyme",
                "constants": {"photon_energy": {"value": 9.5, "unit": "keV"}},
                "fields": {"image": {"units": "counts", "pixel_size": [75e-6, 75e-6], "distance": 0.1}}}
    (path,) = cxi_files(tmp_path, source, metadata)
    assert nxcheck_warnings(path) == CXI_ONLY
    with h5py.File(path) as h5:
        assert list(h5["entry_1/data_1"].attrs["axes"]) == [".", ".", "."]
        assert h5["entry_1/instrument_1/detector_1/data"].attrs["units"] == "counts"
        assert h5["entry_1/data_1/image_peaks"].attrs["units"] == "pixels"
        assert h5["entry_1/data_1/waveform_hits"].attrs["units"] == "samples"
        time = h5["entry_1/_beamstream/time"]
        assert (time.attrs["units"], time.attrs["start"]) == ("s", "1970-01-01T00:00:00Z")
        energy = h5["entry_1/instrument_1/beam_1/incident_energy"]  # CrystFEL's photon_energy, in eV
        assert energy[()] == pytest.approx(9500) and energy.attrs["units"] == "eV"
    back = HDF5Source(files=[str(path)], datasets={"image": "/entry_1/data_1/image",
                                                   "image_peaks": "/entry_1/data_1/image_peaks"}).open().metadata()
    assert (back.fields["image"].units, back.fields["image_peaks"].units) == ("counts", "pixels")


def test_without_units_in_the_description_nxcheck_warns_of_the_detector_data_only(tmp_path):
    run = tmp_path / "run.h5"
    with h5py.File(run, "w") as h5:
        h5["data"] = np.zeros((2, 8, 8), dtype="<u2")  # no units attribute: the description has none
    (path,) = cxi_files(tmp_path, {"type": "hdf5", "files": [str(run)], "datasets": {"image": "/data"}})
    assert nxcheck_warnings(path) == [*CXI_ONLY, ("/entry_1/instrument_1/detector_1/data",
                                                  "Units of NX_ANY not specified")]


def test_separate_x_and_y_pixel_sizes_of_a_standard_cxi_file_are_carried_through(tmp_path):
    run = tmp_path / "run.cxi"
    with h5py.File(run, "w") as h5:
        h5["entry_1/data_1/data"] = np.zeros((3, 4, 5), dtype="<u2")
        detector = h5.create_group("entry_1/instrument_1/detector_1")
        detector["x_pixel_size"] = 75.0
        detector["x_pixel_size"].attrs["units"] = "um"
        detector["y_pixel_size"] = 1.1e-4  # no units: metres
    keys = {"data.x_pixel_size": "/entry_1/instrument_1/detector_1/x_pixel_size",
            "data.y_pixel_size": "/entry_1/instrument_1/detector_1/y_pixel_size"}
    source = {"type": "hdf5", "files": [str(run)], "metadata": keys}
    described = HDF5Source.model_validate(source).open().metadata()
    assert described.fields["data"].pixel_size == pytest.approx([1.1e-4, 75e-6])  # slow axis (y) first
    (path,) = cxi_files(tmp_path, source)
    with h5py.File(path) as h5:
        detector = h5["entry_1/instrument_1/detector_1"]
        assert (detector["y_pixel_size"][()], detector["x_pixel_size"][()]) == pytest.approx((1.1e-4, 75e-6))


def test_a_one_axis_pixel_size_is_written_as_x_pixel_size(tmp_path):
    source = {"type": "simulated", "n_events": 2, "detectors": [{"kind": "waveform", "samples": 64}]}
    (path,) = cxi_files(tmp_path, source, {"fields": {"waveform": {"pixel_size": [5e-5]}}})
    with h5py.File(path) as h5:
        detector = h5["entry_1/instrument_1/detector_1"]
        assert detector["x_pixel_size"][()] == pytest.approx(5e-5) and "y_pixel_size" not in detector


@pytest.mark.parametrize("key, problem", [
    ("experimnt", "metadata 'experimnt': did you mean 'experiment'"),
    ("photon_enrgy", "did you mean 'photon_energy'"),
    ("data.distnce", "a field's keys are data.distance, data.pixel_size, data.x_pixel_size, data.y_pixel_"),
    ("image.distance", "the source has no field 'image' \\(its fields: data\\)"),
    ("data.x_pixel_size", "give both data.y_pixel_size and data.x_pixel_size, or data.pixel_size alone"),
])
def test_a_mistyped_metadata_key_is_refused_at_spec_check_not_made_a_constant(tmp_path, key, problem):
    run = tmp_path / "run.h5"
    run.touch()
    with pytest.raises(SpecError, match=problem):
        parse_spec({"source": {"type": "hdf5", "files": [str(run)], "metadata": {key: "/somewhere"}},
                    "sinks": [{"type": "files", "dir": str(tmp_path)}]})


def test_other_keys_are_still_constants(tmp_path):
    run = tmp_path / "run.h5"
    with h5py.File(run, "w") as h5:
        h5["entry_1/data_1/data"] = np.zeros((2, 3, 3))
        h5["temperature"] = 293.0
        h5["temperature"].attrs["units"] = "K"
    source = HDF5Source(files=[str(run)], metadata={"temperature": "/temperature", "motor.x": "/temperature"})
    constants = source.open().metadata().constants
    assert (constants["temperature"].value, constants["temperature"].unit) == (293.0, "K") and "motor.x" in constants


def test_frame_k_of_a_workers_file_is_the_event_numbered_seq_k(tmp_path):
    run = tmp_path / "run.h5"
    with h5py.File(run, "w") as h5:
        h5["entry_1/data_1/data"] = np.broadcast_to(np.arange(20, dtype="<u2")[:, None, None], (20, 3, 3))
    files = cxi_files(tmp_path, {"type": "hdf5", "files": [str(run)], "events_per_read": 3}, workers=2)
    assert len(files) == 2
    seen = []
    for path in files:
        with h5py.File(path) as h5:
            seq, frames = h5["entry_1/_beamstream/seq"][()], h5["entry_1/data_1/data"][()]
        assert np.array_equal(frames[:, 0, 0], seq)  # the frame with value i is event i
        assert not np.array_equal(seq, np.arange(seq[0], seq[0] + len(seq)))  # a share of blocks, not a range
        seen.extend(seq.tolist())
    assert sorted(seen) == list(range(20))
