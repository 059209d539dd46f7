"""Data conventions end to end (docs/conventions.md): one dtype per field in every message, byte
order included; NaN times where the source has none; ``cast`` leaves bookkeeping fields alone.

Real files and real producer processes (``run_local``), read by the files sink and the Client.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from beamstream.batch import Batch
from beamstream.producer import run_local
from beamstream.spec import parse_spec
from conftest import stream_into_client

EVENTS = 50
FRAME = (8, 8)


def big_endian_frames() -> np.ndarray:
    """50 frames of 8x8 as ``>u2``, every element unique and above 255 for most (both bytes matter)."""
    return (np.arange(EVENTS * 64, dtype=np.uint16) * 17).astype(">u2").reshape(EVENTS, *FRAME)


@pytest.fixture
def big_endian_file(tmp_path: Path) -> str:
    """A CXI-like file whose ``/entry_1/data_1/data`` is ``>u2``, chunked 5 events at a time, with no times."""
    path = tmp_path / "big-endian.cxi"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("/entry_1/data_1/data", data=big_endian_frames(), chunks=(5, *FRAME))
    return str(path)


def hdf5_spec(path: str, serializer: str, sink: dict) -> object:
    """The file read 5 events at a time and re-batched by 7 (so messages are views, joins and a held tail)."""
    return parse_spec({
        "source": {"type": "hdf5", "files": [path]},
        "steps": [{"type": "batch", "size": 7}],
        "serializer": {"type": serializer},
        "sinks": [sink],
    })


def stream_to_client(spec: object, endpoint: str) -> tuple[list, object]:
    """Run ``spec`` in one producer process while a Client bound at ``endpoint`` reads it: (messages, client)."""
    messages, client = stream_into_client(spec, endpoint)
    assert client.report.complete
    return messages, client


def test_batch_makes_a_big_endian_field_little_endian():
    values = np.arange(6, dtype=">u2").reshape(3, 2)
    batch = Batch(np.arange(3), np.zeros(3), {"x": values, "flag": np.ones(3, dtype=bool)})
    assert batch.data["x"].dtype.str == "<u2" and batch.data["flag"].dtype == bool
    np.testing.assert_array_equal(batch.data["x"], values)
    little = np.arange(3, dtype="<u2")
    assert Batch(np.arange(3), np.zeros(3), {"x": little}).data["x"] is little


@pytest.mark.parametrize("serializer", ["arrays", "hdf5"])
def test_big_endian_dataset_reaches_a_cxi_file_whole(big_endian_file, tmp_path, serializer):
    out = tmp_path / "out"
    result = run_local(hdf5_spec(big_endian_file, serializer, {"type": "files", "dir": str(out), "layout": "cxi"}))
    assert result.ok, result.errors
    (written,) = out.glob("*.cxi")
    with h5py.File(written, "r") as h5:
        data = h5["/entry_1/data_1/data"]
        assert data.dtype.str == "<u2"
        np.testing.assert_array_equal(data[()], big_endian_frames())
        np.testing.assert_array_equal(h5["/entry_1/_beamstream/seq"][()], np.arange(EVENTS))
        assert np.all(np.isnan(h5["/entry_1/_beamstream/time"][()]))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("serializer", ["arrays", "hdf5"])
def test_client_gets_one_dtype_and_nan_times_in_every_message(big_endian_file, tmp_path, serializer):
    endpoint = f"ipc://{tmp_path / 'stream'}"
    messages, _ = stream_to_client(hdf5_spec(big_endian_file, serializer, {"type": "stream", "endpoint": endpoint}),
                                   endpoint)
    assert [len(message.seq) for message in messages] == [7] * 7 + [1]
    assert {message.arrays["data"].dtype.str for message in messages} == {"<u2"}
    assert {info.dtype for message in messages for info in message.header.fields} == {"<u2"}
    np.testing.assert_array_equal(np.concatenate([message.arrays["data"] for message in messages]),
                                  big_endian_frames())
    events = [event for message in messages for event in message.events()]
    assert [event.seq for event in events] == list(range(EVENTS))
    assert all(np.isnan(event.time) for event in events)


@pytest.mark.psana
def test_cast_of_every_field_keeps_psanas_timestamp(psana, xtc, tmp_path):
    endpoint = f"ipc://{tmp_path / 'stream'}"
    spec = parse_spec({
        "source": {"type": "psana2", "files": [xtc], "fields": {"image": "xppcspad.raw.raw"}},
        "steps": [{"type": "cast", "dtype": "float32"}, {"type": "batch", "size": 4}],
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    })
    messages, _ = stream_to_client(spec, endpoint)
    run = next(psana.DataSource(files=xtc, skip_calib_load="all").runs())
    expected = [evt.timestamp for evt in run.events()]
    assert {message.arrays["image"].dtype.str for message in messages} == {"<f4"}
    assert {message.arrays["timestamp"].dtype.str for message in messages} == {"<u8"}
    assert np.concatenate([message.arrays["timestamp"] for message in messages]).tolist() == expected
