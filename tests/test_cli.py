"""The command line as a user meets it: real processes, messages checked word for word."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from beamstream.client import Client
from beamstream.plugins import plugin_names
from conftest import run_cli

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_spec_check_lists_every_problem_with_what_to_write(write_spec):
    path = write_spec({
        "source": {"type": "simulated", "detectors": [{"kind": "image", "shapee": [4, 4]}]},
        "steps": [{"type": "batch", "size": 2}, {"type": "batchx", "size": 3}],
        "sinks": [{"type": "stream", "endpoint": "tcp://localhost"}],
    })
    result = run_cli("spec", "check", str(path))
    assert result.returncode == 1
    steps = ", ".join(sorted(plugin_names("steps")))
    assert {"batch", "bin", "calibrate", "cast", "pad", "roi", "select"} <= set(plugin_names("steps"))
    assert f"steps[1].type: unknown 'batchx'; expected one of: {steps}" in result.stderr
    assert "source.detectors[0].shapee: unknown option" in result.stderr
    assert "sinks[0].endpoint: 'tcp://localhost': a tcp endpoint needs a host and a port" in result.stderr
    assert "Traceback" not in result.stderr


def test_spec_check_names_unknown_stage_options_and_allowed_ones(write_spec):
    path = write_spec({"source": {"type": "simulated"}, "steps": [{"type": "batch", "sizee": 2}],
                       "sinks": [{"type": "stream", "endpoint": "tcp://127.0.0.1:5555"}]})
    result = run_cli("spec", "check", str(path))
    assert "steps[0].sizee: unknown option; allowed: size" in result.stderr
    assert "steps[0].size: required, not given" in result.stderr


def test_spec_check_for_the_service_checks_a_spec_as_the_service_does(write_spec):
    """A spec for the request service may leave out its sinks: the service replaces its stream sinks with one to the
    stream's buffer and keeps the others."""
    path = write_spec({"source": {"type": "simulated", "n_events": 4}, "steps": [{"type": "batch", "size": 2}]})
    plain = run_cli("spec", "check", str(path))
    assert plain.returncode == 1
    assert ("sinks: required, not given (a spec for the request service may leave its sinks out: check it with "
            "`beamstream spec check --for-service`)") in plain.stderr
    for_service = run_cli("spec", "check", "--for-service", str(path))
    assert for_service.returncode == 0, for_service.stderr
    assert f"✓ {path}: simulated → batch → arrays → stream" in for_service.stderr
    sinks = write_spec({"source": {"type": "simulated"}, "sinks": [{"type": "files", "dir": "out"},
                                                                    {"type": "stream", "endpoint": "tcp://localhost"}]},
                       name="sinks.yaml")
    assert run_cli("spec", "check", str(sinks)).returncode == 1, "tcp://localhost has no port"
    checked = json.loads(run_cli("spec", "check", "--for-service", "--json", str(sinks)).stdout)
    assert checked == [{"file": str(sinks), "ok": True, "source": "simulated", "steps": [], "serializer": "arrays",
                        "sinks": ["files", "stream"]}]
    bad = write_spec({"source": {"type": "simulated", "n_events": 0}}, name="bad.yaml")
    refused = run_cli("spec", "check", "--for-service", str(bad))
    assert refused.returncode == 1 and "source.n_events: Input should be greater than or equal to 1" in refused.stderr
    assert "sinks" not in refused.stderr
    karabo = write_spec({"source": {"type": "simulated"}, "sinks": [{"type": "karabo", "endpoint": "tcp://*:4545"}]},
                        name="karabo.yaml")
    assert run_cli("spec", "check", str(karabo)).returncode == 0, "a producer run alone may serve Karabo clients"
    unsealable = run_cli("spec", "check", "--for-service", str(karabo))
    assert unsealable.returncode == 1
    assert "sinks[0] (karabo) cannot carry a sealed stream, and a request service seals every stream" in unsealable.stderr


def test_spec_check_reports_yaml_position(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("source: {type: simulated\nsteps: [\n")
    result = run_cli("spec", "check", str(path))
    assert result.returncode == 1 and "not valid YAML at line 2" in result.stderr


def test_spec_check_accepts_the_examples():
    result = run_cli("spec", "check", *map(str, sorted(EXAMPLES.glob("*.y*ml"))))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("✓") == len(list(EXAMPLES.glob("*.y*ml")))


def test_spec_schema_is_json_schema_of_installed_plugins():
    result = run_cli("spec", "schema")
    schema = json.loads(result.stdout)
    assert schema["title"] == "StreamSpec" and {"source", "steps", "serializer", "sinks"} <= set(schema["properties"])
    text = result.stdout
    assert all(f'"const": "{name}"' in text for name in ("simulated", "hdf5", "psana2", "calibrate", "stream", "files"))


def test_plugins_lists_installed_names():
    result = run_cli("plugins")
    assert "sources: hdf5, psana2, simulated" in result.stdout.splitlines() and not result.stderr


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"type": "hdf5", "files": ["nowhere/run.cxi"]}, "nowhere/run.cxi"),
        ({"type": "hdf5", "files": ["{data}"], "datasets": {"data": "/entry_1/nope"}}, "/entry_1/data_1/data"),
    ],
)
def test_produce_refuses_bad_input_in_one_line(write_spec, tmp_path, source, expected):
    data = tmp_path / "run.h5"
    with h5py.File(data, "w") as h5:
        h5["/entry_1/data_1/data"] = np.zeros((3, 2, 2))
    source = {**source, "files": [name.format(data=data) for name in source["files"]]}
    path = write_spec({"source": source, "sinks": [{"type": "stream", "endpoint": "tcp://127.0.0.1:5555"}]})
    result = run_cli("produce", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and expected in result.stderr and "Traceback" not in result.stderr


@pytest.mark.psana
def test_produce_names_the_detectors_that_exist(write_spec, xtc):
    path = write_spec({"source": {"type": "psana2", "files": [xtc], "fields": {"image": "cspadx.raw.raw"}},
                       "sinks": [{"type": "stream", "endpoint": "tcp://127.0.0.1:5555"}]})
    result = run_cli("produce", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cspadx" in result.stderr and "epicsinfo, xppcspad, xpphsd" in result.stderr


def test_produce_missing_spec_file():
    result = run_cli("produce", "no-such-spec.yaml")
    assert result.returncode == 1 and "no-such-spec.yaml: no such spec file" in result.stderr


@pytest.mark.mpi
def test_mpirun_ranks_are_the_workers(write_spec, tmp_path):
    mpirun = Path(sys.executable).parent / "mpirun"
    if not mpirun.exists() and not shutil.which("mpirun"):
        pytest.skip("mpirun not installed (pip install 'beamstream[mpi]')")
    endpoint = f"ipc://{tmp_path / 'stream'}"
    path = write_spec({"source": {"type": "simulated", "n_events": 30, "events_per_read": 5,
                                  "detectors": [{"kind": "waveform", "samples": 64}]},
                       "sinks": [{"type": "stream", "endpoint": endpoint}]})
    outcome: dict = {}
    import subprocess

    command = [str(mpirun if mpirun.exists() else shutil.which("mpirun")), "-n", "2",
               sys.executable, "-m", "beamstream.cli", "produce", str(path)]
    with Client(endpoint, bind=True, timeout=120) as client:
        runner = threading.Thread(target=lambda: outcome.setdefault(
            "run", subprocess.run(command, capture_output=True, text=True, timeout=300)))
        runner.start()
        events = list(client.events())
        runner.join()
    assert outcome["run"].returncode == 0, outcome["run"].stderr
    assert sorted(event.seq for event in events) == list(range(30))
    assert client.report.producers == 2 and {event.rank for event in events} == {0, 1}
    assert "30 events" in outcome["run"].stderr


def test_version_and_machine_readable_output_on_stdout(tmp_path, write_spec):
    import json
    from importlib.metadata import version

    assert run_cli("--version").stdout.strip() == f"beamstream {version('beamstream')}"
    plugins = json.loads(run_cli("plugins", "--json").stdout)
    assert "simulated" in plugins["sources"] and "arrays" in plugins["serializers"]
    good = write_spec({"source": {"type": "simulated", "n_events": 4}, "sinks": [{"type": "files", "dir": "out"}]},
                      "good.yaml")
    bad = write_spec({"source": {"type": "simulated", "n_eventz": 4}, "sinks": []}, "bad.yaml")
    result = run_cli("spec", "check", "--json", str(good), str(bad))
    checked = json.loads(result.stdout)
    assert result.returncode == 1 and [entry["ok"] for entry in checked] == [True, False]
    assert checked[0]["source"] == "simulated" and "source.n_eventz: unknown option" in checked[1]["problems"]
    assert json.loads(run_cli("spec", "schema").stdout)["title"] == "StreamSpec"


def test_consume_does_not_overwrite_an_output_file_without_force(tmp_path):
    (tmp_path / "run.tar").write_bytes(b"precious")
    result = run_cli("consume", "tcp://127.0.0.1:1", "--out", str(tmp_path / "run.tar"), "--timeout", "0.5")
    assert result.returncode == 1 and "run.tar exists; pass --force to overwrite it" in result.stderr
    assert (tmp_path / "run.tar").read_bytes() == b"precious"
