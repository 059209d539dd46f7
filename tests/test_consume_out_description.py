"""Every file beamstream writes carries the stream's description: ``consume --out`` (a directory or a tar
archive, arrays or hdf5 payloads) and the files sink's ``messages`` layout, from real producer processes."""

from __future__ import annotations

import io
import tarfile

import h5py
import msgspec
import pytest

from beamstream.saving import DESCRIPTION_ATTRIBUTE
from beamstream.wire.metadata import RunMetadata
from conftest import run_cli, start_cli

SOURCE = {"type": "simulated", "n_events": 12, "bank_size": 4, "events_per_read": 3,
          "detectors": [{"kind": "image", "shape": [6, 8], "peaks": 1}]}
METADATA = {"facility": "EuXFEL", "experiment": "p900123", "run": 17, "sample": "lysozyme",
            "constants": {"photon_energy": {"value": 9.5, "unit": "keV"}},
            "fields": {"image": {"pixel_size": [75e-6, 75e-6], "distance": 0.12, "mask": "zero-is-bad"}}}


def described(h5: h5py.File) -> RunMetadata:
    """The description a saved file holds in ``/_beamstream``."""
    return msgspec.json.decode(h5["_beamstream"].attrs[DESCRIPTION_ATTRIBUTE], type=RunMetadata)


def assert_describes_the_run(metadata: RunMetadata) -> None:
    assert (metadata.facility, metadata.experiment, metadata.run, metadata.sample) == ("EuXFEL", "p900123", 17,
                                                                                      "lysozyme")
    assert metadata.constants["photon_energy"].value == 9.5 and metadata.constants["photon_energy"].unit == "keV"
    image = metadata.fields["image"]
    assert (image.pixel_size, image.distance, image.mask, image.shape) == ([75e-6, 75e-6], 0.12, "zero-is-bad", [6, 8])


@pytest.mark.parametrize("serializer", ["arrays", "hdf5"])
def test_consume_out_files_hold_the_description(tmp_path, write_spec, serializer):
    for out in (tmp_path / "out", tmp_path / "out.tar"):
        endpoint = f"ipc://{tmp_path / (out.name + '.sock')}"
        spec = write_spec({"source": SOURCE, "steps": [{"type": "batch", "size": 3}], "metadata": METADATA,
                           "serializer": {"type": serializer}, "sinks": [{"type": "stream", "endpoint": endpoint}]})
        consumer = start_cli("consume", endpoint, "--bind", "--out", str(out), "--timeout", "60")
        produced = run_cli("produce", str(spec), "--workers", "2")
        _, err = consumer.communicate(timeout=60)
        assert produced.returncode == 0, produced.stderr
        assert consumer.returncode == 0 and "complete: 12 events in 4 messages" in err, err
    files = sorted((tmp_path / "out").glob("*.h5"))
    assert len(files) == 4, "each message is a file, the later messages of each worker too"
    for path in files:
        with h5py.File(path) as h5:
            assert_describes_the_run(described(h5))
            assert h5["image"].shape == (3, 6, 8)
    with tarfile.open(tmp_path / "out.tar") as archive:
        members = [member for member in archive.getmembers() if member.name.endswith(".h5")]
        assert len(members) == 4
        for member in members:
            with h5py.File(io.BytesIO(archive.extractfile(member).read())) as h5:
                assert_describes_the_run(described(h5))


def test_files_sink_message_files_hold_the_description(tmp_path, write_spec):
    spec = write_spec({"source": SOURCE, "steps": [{"type": "batch", "size": 3}], "metadata": METADATA,
                       "sinks": [{"type": "files", "dir": str(tmp_path / "files")}]})
    produced = run_cli("produce", str(spec), "--workers", "2")
    assert produced.returncode == 0, produced.stderr
    files = sorted((tmp_path / "files").glob("*.h5"))
    assert len(files) == 4
    for path in files:
        with h5py.File(path) as h5:
            assert_describes_the_run(described(h5))
