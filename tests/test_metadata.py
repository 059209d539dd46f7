"""The stream's description (run metadata) end to end, and standard CXI/NeXus files that HDF5 1.10 tools open."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading

import h5py
import hdf5plugin
import numpy as np
import pytest

from beamstream.buffer.local import LocalBuffer
from beamstream.client import Client
from beamstream.producer import run_local
from beamstream.spec import parse_spec
from conftest import start_cli, stream_into_client, wait_until

DESCRIPTION = {"facility": "LCLS", "instrument": "XPP", "experiment": "xpptut15", "run": 7, "sample": "lysozyme",
               "constants": {"photon_energy": {"value": 9.5, "unit": "keV"}},
               "fields": {"image": {"pixel_size": [1e-4, 1e-4], "distance": 0.1}}}
STEPS = [{"type": "roi", "field": "image", "start": [8, 4], "stop": [40, 36]},
         {"type": "bin", "field": "image", "factors": [2, 2]}]


def image_spec(sinks: list, n_events: int = 12, **source) -> object:
    return parse_spec({"source": {"type": "simulated", "n_events": n_events, "events_per_read": 3,
                                  "detectors": [{"kind": "image", "shape": [64, 48]}], **source},
                       "steps": STEPS, "metadata": DESCRIPTION, "sinks": sinks})


def test_the_description_reaches_a_direct_consumer_with_the_geometry_the_steps_made(ipc_endpoint):
    results = {}

    def read() -> None:
        with Client(ipc_endpoint, bind=True, timeout=60) as client:
            results["events"] = sum(1 for _ in client.events())
            results["metadata"] = client.metadata

    reader = threading.Thread(target=read)
    reader.start()
    assert run_local(image_spec([{"type": "stream", "endpoint": ipc_endpoint}])).ok
    reader.join(timeout=60)
    metadata = results["metadata"]
    assert results["events"] == 12
    assert (metadata.facility, metadata.experiment, metadata.run, metadata.sample) == ("LCLS", "xpptut15", 7, "lysozyme")
    assert metadata.constants["photon_energy"].value == 9.5 and metadata.constants["photon_energy"].unit == "keV"
    image = metadata.fields["image"]
    assert image.source == "simulated image" and image.distance == 0.1
    assert image.shape == [16, 16] and image.origin == [8, 4] and image.binning == [2, 2]
    assert image.pixel_size == pytest.approx([2e-4, 2e-4])
    assert "ground truth" in metadata.fields["image_peaks"].source


def test_every_group_member_a_late_group_and_a_restarted_buffer_have_the_description(tmp_path):
    producers, consumers = f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}"
    spill = tmp_path / "spill"
    buffer = LocalBuffer(producers, consumers, spill=spill).start()
    results: dict = {}

    def member(key: str, group: str) -> None:
        with Client(consumers, group=group, timeout=60) as client:
            results[key] = (sum(1 for _ in client.events()), client.metadata)

    members = [threading.Thread(target=member, args=(f"m{n}", "shared")) for n in range(3)]
    for thread in members:
        thread.start()
    wait_until(lambda: len(buffer.members) == 3, "three members to join")
    try:
        assert run_local(image_spec([{"type": "stream", "endpoint": producers}], n_events=30), workers=2).ok
        for thread in members:
            thread.join(timeout=60)
        member("late", "late")
    finally:
        buffer.close()
    assert sum(results[f"m{n}"][0] for n in range(3)) == 30
    for key in ("m0", "m1", "m2", "late"):
        assert results[key][1] is not None and results[key][1].experiment == "xpptut15", key
    restarted = LocalBuffer(producers, consumers, spill=spill).start()
    try:
        member("after-restart", "after-restart")
    finally:
        restarted.close()
    assert results["after-restart"] == (30, results["late"][1])


def h5dump(*args: str) -> subprocess.CompletedProcess:
    """Debian's HDF5 1.10 h5dump, with hdf5plugin's filters on its plugin path."""
    assert shutil.which("h5dump"), "Debian's hdf5-tools (scripts/setup.sh installs it)"
    return subprocess.run(["h5dump", *args], capture_output=True, text=True, timeout=60,
                          env={"HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH, "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("compression", ["none", "gzip", "bitshuffle_lz4", "zstd"])
def test_cxi_files_have_the_nexus_structure_and_open_with_hdf5_1_10(tmp_path, compression):
    out = tmp_path / "out"
    assert run_local(image_spec([{"type": "files", "dir": str(out), "layout": "cxi", "compression": compression}])).ok
    (path,) = out.glob("*.cxi")
    with h5py.File(path) as h5:
        assert h5["cxi_version"][()] == 150
        assert {h5[name].attrs["NX_class"] for name in ("entry_1", "entry_1/instrument_1", "entry_1/data_1",
                                                        "entry_1/instrument_1/detector_1",
                                                        "entry_1/instrument_1/source_1", "entry_1/sample_1")} == {
            "NXentry", "NXinstrument", "NXdata", "NXdetector", "NXsource", "NXsample"}
        data = h5["entry_1/data_1/data"]
        assert data.shape == (12, 16, 16) and h5["entry_1/data_1"].attrs["signal"] == "data"
        assert h5["entry_1/instrument_1/detector_1/data"] == data == h5["entry_1/data_1/image"]
        detector = h5["entry_1/instrument_1/detector_1"]
        assert detector["distance"][()] == 0.1 and detector["distance"].attrs["units"] == "m"
        assert detector["x_pixel_size"][()] == pytest.approx(2e-4) and detector["y_pixel_size"].attrs["units"] == "m"
        energy = h5["entry_1/instrument_1/source_1/energy"]
        assert energy[()] == pytest.approx(9500 * 1.602176634e-19) and energy.attrs["units"] == "J"
        assert h5["entry_1/experiment_identifier"][()].decode() == "xpptut15"
        assert h5["entry_1/sample_1/name"][()].decode() == "lysozyme"
        described = json.loads(h5["entry_1/_beamstream"].attrs["description"])
        assert described["run"] == 7 and described["fields"]["image"]["origin"] == [8, 4]
        first = data[0]
    listing = subprocess.run(["h5ls", "-r", str(path)], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "*ERROR*" not in listing.stdout, listing.stdout
    dumped = h5dump("-y", "-w", "0", "-d", "/entry_1/instrument_1/detector_1/data", "-s", "0,0,0", "-c", "1,1,16",
                    str(path))
    assert dumped.returncode == 0, dumped.stderr
    values = [int(v) for v in dumped.stdout.split("DATA {")[1].split("}")[0].replace(",", " ").split()]
    assert values == first[0].tolist()


@pytest.mark.parametrize("compression", ["gzip", "bitshuffle_lz4", "zstd"])
def test_hdf5_wire_payloads_open_with_hdf5_1_10(tmp_path, compression):
    out = tmp_path / "out"
    spec = parse_spec({"source": {"type": "simulated", "n_events": 2, "detectors": [{"kind": "image", "shape": [8, 8]}]},
                       "serializer": {"type": "hdf5", "compression": compression},
                       "sinks": [{"type": "files", "dir": str(out)}]})
    assert run_local(spec).ok
    saved = sorted(out.glob("*-m*.h5"))
    assert len(saved) == 2 and json.loads(next(out.glob("*.metadata.json")).read_text())["facility"] == "simulated"
    for path in saved:
        dumped = h5dump("-d", "/image", str(path))
        assert dumped.returncode == 0 and "DATA {" in dumped.stdout, dumped.stderr


def test_a_stream_that_did_not_end_ok_leaves_no_file_under_its_final_name(tmp_path, write_spec):
    out = tmp_path / "out"
    path = write_spec({"source": {"type": "simulated", "n_events": 100000, "events_per_read": 1, "rate_hz": 50,
                                  "detectors": [{"kind": "image", "shape": [8, 8]}]},
                       "sinks": [{"type": "files", "dir": str(out), "layout": "cxi"}]})
    producer = start_cli("produce", str(path))
    wait_until(lambda: list(out.glob("*.cxi.part")), "the cxi file to be begun")
    producer.send_signal(signal.SIGTERM)
    producer.communicate(timeout=60)
    assert not list(out.glob("*.cxi"))
    (partial,) = out.glob("*.cxi.part")
    (end,) = out.glob("*.end.json")
    assert json.loads(end.read_text())["status"] == "aborted"
    with h5py.File(partial) as h5:
        assert np.array_equal(h5["entry_1/_beamstream/seq"][()], np.arange(h5["entry_1/_beamstream/seq"].shape[0]))


def stream_to_client(spec: dict, endpoint: str, workers: int = 2) -> tuple[dict, Client]:
    """Run ``spec`` (its sinks: the stream sink at ``endpoint`` added) into a Client; (events by seq, client)."""
    spec = parse_spec({**spec, "sinks": [*spec.get("sinks", []), {"type": "stream", "endpoint": endpoint}]})
    messages, client = stream_into_client(spec, endpoint, workers)
    return {event.seq: event for message in messages for event in message.events()}, client


@pytest.mark.psana
def test_a_psana2_run_describes_itself_to_the_client_and_in_the_files(psana, xtc, tmp_path):
    out = tmp_path / "out"
    spec = {"source": {"type": "psana2", "files": [xtc], "fields": {"image": "xppcspad.raw.raw"}},
            "metadata": {"constants": {"photon_energy": {"value": 9500, "unit": "eV"}}},
            "sinks": [{"type": "files", "dir": str(out), "layout": "cxi"}]}
    events, client = stream_to_client(spec, f"ipc://{tmp_path / 'stream'}")
    run = next(psana.DataSource(files=xtc, skip_calib_load="all").runs())
    metadata = client.metadata
    assert (metadata.facility, metadata.experiment, metadata.run) == ("LCLS", run.expt, run.runnum)
    assert metadata.instrument == run.expt[:3].upper()
    assert metadata.fields["image"].source == "psana xppcspad.raw.raw" and metadata.fields["image"].detector == "xppcspad"
    assert metadata.fields["image"].shape == list(events[0].data["image"].shape)
    for path in out.glob("*.cxi"):
        with h5py.File(path) as h5:
            assert h5["entry_1/experiment_identifier"][()].decode() == run.expt
            assert h5["entry_1/instrument_1/source_1/energy"].attrs["units"] == "J"
            assert json.loads(h5["entry_1/_beamstream"].attrs["description"])["run"] == run.runnum


@pytest.mark.psana
def test_events_psana_skips_are_counted_as_omitted_not_lost(psana, xtc, tmp_path):
    """The EPICS variable has no value in events 0-3: with on_missing: skip they are left out, the stream is
    complete, and the consumer counts them as omitted."""
    spec = {"source": {"type": "psana2", "files": [xtc], "fields": {"pressure": "HX2:DVD:GCC:01:PMON"},
                       "on_missing": "skip"}}
    events, client = stream_to_client(spec, f"ipc://{tmp_path / 'stream'}")
    assert sorted(events) == list(range(4, 10))
    assert client.report.complete and client.report.omitted == 4 and client.report.missing_events == 0
    assert "4 events left out on purpose by the source or a step (not lost)" in client.report.summary()


def test_an_hdf5_run_describes_itself_from_the_datasets_and_attributes_the_spec_names(tmp_path):
    path = tmp_path / "run.cxi"
    with h5py.File(path, "w") as h5:
        h5.attrs["facility"] = "EuXFEL"
        h5["entry_1/data_1/data"] = np.arange(5 * 4 * 4, dtype="<u2").reshape(5, 4, 4)
        h5["entry_1/experiment_identifier"] = "p002345"
        h5["entry_1/run"] = np.int32(42)
        energy = h5.create_dataset("entry_1/instrument_1/source_1/energy", data=9.3)  # a scalar dataset
        energy.attrs["units"] = "keV"
        distance = h5.create_dataset("entry_1/instrument_1/detector_1/distance", data=120.0)
        distance.attrs["units"] = "mm"
        h5["entry_1/instrument_1/detector_1/pixel_size"] = np.array([75.0, 75.0])
        h5["entry_1/instrument_1/detector_1/pixel_size"].attrs["units"] = "um"
    out = tmp_path / "out"
    spec = {"source": {"type": "hdf5", "files": [str(path)], "metadata": {
                "facility": "@facility", "experiment": "/entry_1/experiment_identifier", "run": "/entry_1/run",
                "photon_energy": "/entry_1/instrument_1/source_1/energy",
                "data.distance": "/entry_1/instrument_1/detector_1/distance",
                "data.pixel_size": "/entry_1/instrument_1/detector_1/pixel_size"}},
            "sinks": [{"type": "files", "dir": str(out), "layout": "cxi"}]}
    events, client = stream_to_client(spec, f"ipc://{tmp_path / 'stream'}", workers=1)
    metadata = client.metadata
    assert (metadata.facility, metadata.experiment, metadata.run, metadata.times) == ("EuXFEL", "p002345", 42, "none")
    assert metadata.constants["photon_energy"].value == 9.3 and metadata.constants["photon_energy"].unit == "keV"
    data = metadata.fields["data"]
    assert data.source == "/entry_1/data_1/data"
    assert data.distance == pytest.approx(0.12) and data.pixel_size == pytest.approx([75e-6, 75e-6])
    assert all(np.isnan(event.time) for event in events.values())
    (written,) = out.glob("*.cxi")
    with h5py.File(written) as h5:
        assert h5["entry_1/instrument_1/detector_1/distance"][()] == pytest.approx(0.12)
        assert h5["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(9300 * 1.602176634e-19)


def test_an_hdf5_metadata_entry_that_is_not_there_is_refused_naming_it(tmp_path):
    from beamstream.errors import SourceError
    from beamstream.sources.hdf5 import HDF5Source

    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as h5:
        h5["entry_1/data_1/data"] = np.zeros((2, 2, 2))
    with pytest.raises(SourceError, match=r"metadata 'photon_energy'.*nothing at '/nope'"):
        HDF5Source(files=[str(path)], metadata={"photon_energy": "/nope"}).open()
    with pytest.raises(SourceError, match=r"metadata 'facility'.*no attribute 'site'"):
        HDF5Source(files=[str(path)], metadata={"facility": "@site"}).open()
