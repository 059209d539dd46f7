"""What `beamstream spec check` finds before `produce` would: a psana2 source's exp/run labels and calibrated
fields checked in its files where they are on this machine, numbers PyYAML read as text, and mistyped keys of the
description."""

from __future__ import annotations

import json

import pytest

from beamstream.errors import SpecError
from beamstream.spec import parse_spec
from conftest import run_cli

SINKS = [{"type": "stream", "endpoint": "tcp://127.0.0.1:5555"}]


@pytest.mark.psana
def test_spec_check_refuses_exp_and_run_labels_the_files_contradict_as_produce_does(write_spec, xtc):
    specs = {label: write_spec({"source": {"type": "psana2", "files": [xtc], "fields": {"image": "xppcspad.raw.raw"},
                                           **labels}, "sinks": SINKS}, f"{label}.yaml")
             for label, labels in {"exp": {"exp": "xpptut16"}, "run": {"exp": "xpptut15", "run": 15},
                                   "right": {"exp": "xpptut15", "run": 14}}.items()}
    checked = run_cli("spec", "check", "--json", *map(str, specs.values()))
    results = {result["file"]: result for result in json.loads(checked.stdout)}
    assert checked.returncode == 1
    assert "is exp 'xpptut15', not 'xpptut16'; fix exp: in the spec" in results[str(specs["exp"])]["problems"]
    assert "is run 14, not 15; fix run: in the spec" in results[str(specs["run"])]["problems"]
    assert results[str(specs["right"])]["ok"]
    produced = run_cli("produce", str(specs["exp"]))
    assert produced.returncode == 1 and "is exp 'xpptut15', not 'xpptut16'" in produced.stderr


@pytest.mark.psana
def test_spec_check_refuses_an_area_detectors_calib_but_not_a_digitizers(write_spec, xtc):
    area = write_spec({"source": {"type": "psana2", "files": [xtc], "fields": {"frame": "xppcspad.raw.calib"}},
                       "sinks": SINKS}, "area.yaml")
    digitizer = write_spec({"source": {"type": "psana2", "files": [xtc], "fields": {"wave": "xpphsd.raw.calib"}},
                            "sinks": SINKS}, "digitizer.yaml")
    checked = run_cli("spec", "check", "--json", str(area), str(digitizer))
    refused, accepted = json.loads(checked.stdout)
    assert checked.returncode == 1
    assert refused["problems"].startswith(f"{area}: psana2 source: field 'frame': xppcspad.raw.calib applies "
                                          "calibration constants, but skip_calib_load is true")
    assert accepted["ok"], accepted


def test_spec_check_says_yaml_read_a_number_without_a_dot_as_text(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("source: {type: simulated, n_events: 4e2, detectors: [{kind: image, shape: [8, 8]}]}\n"
                    "sinks: [{type: stream, endpoint: 'tcp://127.0.0.1:5555'}]\n"
                    "metadata:\n"
                    "  constants: {photon_energy: {value: 95e2, unit: eV}, dose: {value: 75e-6, unit: Gy}}\n"
                    "  fields: {image: {pixel_size: [75e-6, 7.5e-5]}}\n")
    checked = run_cli("spec", "check", "--json", str(spec))
    (result,) = json.loads(checked.stdout)
    problems = result["problems"]
    assert checked.returncode == 1
    hint = "(YAML read {} as text: PyYAML reads a number with an exponent only with a dot; write {})"
    assert f"source.n_events: Input should be a valid integer, unable to parse string as an integer " \
           f"{hint.format('4e2', '400')}" in problems
    assert f"metadata: constants.photon_energy.value: '95e2' {hint.format('95e2', '9500')}" in problems
    assert f"metadata: constants.dose.value: '75e-6' {hint.format('75e-6', '7.5e-05')}" in problems
    assert f"metadata: fields.image.pixel_size[0]: '75e-6' {hint.format('75e-6', '7.5e-05')}" in problems
    assert "pixel_size[1]" not in problems and "unit" not in problems


@pytest.mark.parametrize("metadata, words", [
    ({"experimnt": "x"}, "metadata: experimnt: not a key of the description (did you mean 'experiment'?"),
    ({"fields": {"image": {"pixel_sise": [1e-4]}}}, "fields.image.pixel_sise: not a key of the description (did "
                                                     "you mean 'pixel_size'?"),
    ({"constants": {"photon_energy": {"value": 9000, "units": "eV"}}}, "constants.photon_energy.units: not a key "
                                                                        "of the description (did you mean 'unit'?"),
])
def test_a_mistyped_metadata_key_is_refused_not_dropped(metadata, words):
    spec = {"source": {"type": "simulated", "n_events": 2}, "sinks": [{"type": "stream", "endpoint": "ipc:///tmp/x"}]}
    with pytest.raises(SpecError) as refused:
        parse_spec({**spec, "metadata": metadata})
    assert words in str(refused.value)
