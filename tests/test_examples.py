"""Every spec in examples/ validates, and runs end to end on small data."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from beamstream.spec import load_spec
from conftest import stream_into_client

EXAMPLES = Path(__file__).parent.parent / "examples"
SPECS = sorted([*EXAMPLES.glob("*.yaml"), *EXAMPLES.glob("*.yml")])


def test_there_are_examples_of_both_extensions():
    assert {path.suffix for path in SPECS} == {".yaml", ".yml"}


@pytest.mark.parametrize("path", SPECS, ids=lambda path: path.name)
def test_example_validates(path):
    load_spec(path)


def write_cxi_inputs(folder: Path) -> None:
    """Two small CXI files plus pedestal and mask, as examples/hdf5-cxi-ml.yaml expects."""
    rng = np.random.default_rng(1)
    (folder / "data").mkdir()
    for number in (1, 2):
        with h5py.File(folder / "data" / f"run0001_{number}.cxi", "w") as h5:
            h5["/entry_1/data_1/data"] = rng.integers(0, 1000, (5, 500, 500), dtype=np.uint16)
    np.save(folder / "data" / "pedestal.npy", np.full((500, 500), 3.0, np.float32))
    np.save(folder / "data" / "mask.npy", np.ones((500, 500), bool))


def write_xtc2_input(folder: Path, xtc: str) -> None:
    (folder / "data").mkdir()
    shutil.copy(xtc, folder / "data" / "xpptut15-r0014.xtc2")


@pytest.mark.parametrize("path", SPECS, ids=lambda path: path.name)
def test_example_runs(path, tmp_path, monkeypatch, request):
    """The example's own source and steps, with its stream sinks pointed at a test client."""
    monkeypatch.chdir(tmp_path)
    spec = load_spec(path)
    if spec.source.type == "hdf5":
        write_cxi_inputs(tmp_path)
    if spec.source.type == "psana2":
        write_xtc2_input(tmp_path, request.getfixturevalue("xtc"))
    source = spec.source
    if source.type == "simulated":
        source = source.model_copy(update={"n_events": 2 * source.events_per_read, "rate_hz": None})
    endpoint = f"ipc://{tmp_path / 'stream'}"
    sinks = [sink.model_copy(update={"endpoint": endpoint, "bind": False, "pattern": "push"})
             if sink.type == "stream" else sink for sink in spec.sinks]
    spec = spec.model_copy(update={"source": source, "sinks": sinks})
    messages, client = stream_into_client(spec, endpoint)
    events = [event for message in messages for event in message.events()]
    assert client.report.complete and len(events) > 0
    assert sorted(event.seq for event in events) == list(range(len(events)))
