"""Units in the stream's description are read by what they measure (pint): a unit of the wrong dimension, one
nobody knows or none where one is needed is refused naming the constant, at `spec check` for a spec and when a
worker assembles what a source says; photon energy and wavelength are converted into each other for files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from beamstream.errors import SourceError, SpecError
from beamstream.quantities import PLANCK_EV_M, photon_energy_ev
from beamstream.wire.metadata import Quantity
from conftest import run_cli

SOURCE = {"type": "simulated", "n_events": 4, "detectors": [{"kind": "image", "shape": [6, 8]}]}
EV = 1.602176634e-19


STREAM = {"type": "stream", "endpoint": "tcp://127.0.0.1:5555"}


def spec_with(metadata: dict, sink: dict | None = None) -> dict:
    return {"source": SOURCE, "metadata": metadata, "sinks": [sink or STREAM]}


REFUSED = [
    ({"photon_energy": {"value": 1.3, "unit": "Å"}},
     "constant 'photon_energy' is in 'Å', a unit of length, not of energy; write it in eV, keV"),
    ({"wavelength": {"value": 9500, "unit": "eV"}},
     "constant 'wavelength' is in 'eV', a unit of energy, not of length; write it in m, mm, um, nm, pm, Å"),
    ({"photon_energy": {"value": 9.5, "unit": "kev"}},
     "constant 'photon_energy': unit 'kev' is not a unit beamstream knows (did you mean 'keV'?); write one such as eV"),
    ({"photon_energy": {"value": 9500}}, "constant 'photon_energy' has no unit; give one ({value: ..., unit: ...}) "
                                         "such as eV, keV"),
    ({"photon_energy": {"value": -9500, "unit": "eV"}}, "constant 'photon_energy' is -9500 eV; it is a number above 0"),
    ({"gain": {"value": 2, "unit": "quux"}}, "constant 'gain': unit 'quux' is not a unit beamstream knows; write one "
                                            "such as m, eV, pixel"),
    ({"photon_energy": {"value": 9500, "unit": "eV"}, "wavelength": {"value": 1.0, "unit": "A"}},
     "constants photon_energy (9500 eV) and wavelength (a photon of 12398.4 eV) disagree"),
]


def test_spec_check_refuses_a_constant_of_the_wrong_dimension_or_an_unknown_unit(write_spec):
    paths = [str(write_spec(spec_with({"constants": constants}), f"spec{number}.yaml"))
             for number, (constants, _) in enumerate(REFUSED)]
    result = run_cli("spec", "check", "--json", *paths)
    assert result.returncode == 1
    for checked, (_, expected) in zip(json.loads(result.stdout), REFUSED, strict=True):
        assert not checked["ok"] and f"metadata: {expected}" in checked["problems"], checked


def test_spec_check_refuses_a_distance_or_pixel_size_not_above_zero(write_spec):
    result = run_cli("spec", "check", str(write_spec(spec_with(
        {"fields": {"image": {"distance": -0.1, "pixel_size": [75e-6, 0.0]}}}))))
    text = result.stdout + result.stderr
    assert result.returncode == 1
    assert "metadata: field 'image': distance -0.1 m; the sample-to-detector distance is above 0" in text
    assert "metadata: field 'image': pixel_size [7.5e-05, 0.0] m; each pixel size is above 0" in text


def test_spec_check_accepts_every_spelling_pint_knows(write_spec):
    constants = {"photon_energy": {"value": 9537.25, "unit": "electronvolt"},
                 "wavelength": {"value": 130, "unit": "pm"},
                 "beam_centre": {"value": [3, 4], "unit": "pixel"}, "label": {"value": "lysozyme"},
                 "gain": {"value": 2.5, "unit": "ADU/photon"}, "length": {"value": 256, "unit": "samples"}}
    result = run_cli("spec", "check", str(write_spec(spec_with({"constants": constants}))))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("value", "unit"), [(9.5, "keV"), (9500, "eV"), (9500, "electronvolt"),
                                             (1.52207e-15, "J"), (PLANCK_EV_M / 9500 * 1e12, "pm"),
                                             (PLANCK_EV_M / 9500 * 1e10, "Å"), (PLANCK_EV_M / 9500 * 1e10, "A"),
                                             (PLANCK_EV_M / 9500 * 1e9, "nm")])
def test_a_photon_energy_or_wavelength_in_any_unit_gives_the_energy_in_ev(value, unit):
    name = "photon_energy" if unit in ("keV", "eV", "electronvolt", "J") else "wavelength"
    assert photon_energy_ev({name: Quantity(value=value, unit=unit)}) == pytest.approx(9500, rel=1e-5)


@pytest.mark.parametrize("constant", [{"photon_energy": {"value": 9.5, "unit": "keV"}},
                                      {"wavelength": {"value": PLANCK_EV_M / 9500 * 1e10, "unit": "angstrom"}}])
def test_a_cxi_file_gets_the_energy_and_the_wavelength_from_either(tmp_path, write_spec, constant):
    out = tmp_path / "out"
    spec = write_spec(spec_with({"constants": constant}, {"type": "files", "dir": str(out), "layout": "cxi"}))
    produced = run_cli("produce", str(spec))
    assert produced.returncode == 0, produced.stderr
    (written,) = out.glob("*.cxi")
    with h5py.File(written) as h5:
        source = h5["entry_1/instrument_1/source_1"]
        assert source["energy"][()] == pytest.approx(9500 * EV, rel=1e-9) and source["energy"].attrs["units"] == "J"
        assert source["wavelength"][()] == pytest.approx(PLANCK_EV_M / 9500, rel=1e-9)
        assert source["wavelength"].attrs["units"] == "m"


def hdf5_run(path, units: dict[str, str]) -> None:
    with h5py.File(path, "w") as h5:
        h5["data"] = np.zeros((2, 3, 3), dtype="<u2")
        for name, unit in units.items():
            h5[name] = 9.5
            h5[name].attrs["units"] = unit


def test_an_hdf5_distance_that_is_not_a_length_is_refused_naming_it(tmp_path):
    from beamstream.sources.hdf5 import HDF5Source

    hdf5_run(tmp_path / "run.h5", {"distance": "keV"})
    with pytest.raises(SourceError, match=r"metadata 'data.distance' is in 'keV', a unit of energy, not of length"):
        HDF5Source(files=[str(tmp_path / "run.h5")], datasets={"data": "/data"},
                   metadata={"data.distance": "/distance"}).open()


def test_what_a_source_says_is_checked_as_a_spec_is(tmp_path, write_spec):
    from beamstream.description import describe_stream
    from beamstream.spec import load_spec

    hdf5_run(tmp_path / "run.h5", {"energy": "Å"})
    spec = load_spec(write_spec({"source": {"type": "hdf5", "files": [str(tmp_path / "run.h5")],
                                            "datasets": {"data": "/data"}, "metadata": {"photon_energy": "/energy"}},
                                 "sinks": [STREAM]}))
    with pytest.raises(SpecError, match="metadata: constant 'photon_energy' is in 'Å', a unit of length, not of "):
        describe_stream(spec, spec.source.open(), None)
