"""The files sink: one HDF5 file per message, one CXI file per worker, the end-of-stream JSON."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from beamstream.batch import Batch, Share
from beamstream.errors import TransportError
from beamstream.plugins import plugin
from beamstream.serializers.arrays import ArraysSerializer
from beamstream.serializers.hdf5 import HDF5Serializer
from beamstream.sinks.files import FilesSink
from beamstream.sources.hdf5 import HDF5Source
from beamstream.stages import SinkContext
from beamstream.wire import EndMessage, message_from_batch

CONTEXT = SinkContext(stream_id="scan-7", rank=2, producers=3)
SHARE = Share(rank=2, producers=3, start=0, stop=None, block=4)


def batch(first: int, count: int) -> Batch:
    """Events ``first:first+count``: 4x5 uint16 frames and a float energy per event."""
    seq = np.arange(first, first + count, dtype=np.int64)
    return Batch(
        seq,
        1.7e9 + seq.astype(np.float64),
        {
            "data": np.arange(first * 20, (first + count) * 20, dtype=np.uint16).reshape(count, 4, 5),
            "energy": 9.5 + seq / 100,
        },
    )


def message(item: Batch, index: int, serializer: str = "arrays"):
    codec = (ArraysSerializer() if serializer == "arrays" else HDF5Serializer()).build()
    return message_from_batch(item, codec, stream=CONTEXT.stream_id, rank=CONTEXT.rank,
                              producers=CONTEXT.producers, index=index, share=SHARE)


def end(messages: int, events: int, last_seq: int | None) -> EndMessage:
    return EndMessage(stream=CONTEXT.stream_id, rank=CONTEXT.rank, producers=CONTEXT.producers, share=SHARE,
                      messages=messages, events=events, last_seq=last_seq, status="ok", reason="done")


def assert_batch_in(h5: h5py.Group, expected: Batch, fields: str = "", meta: str = "_beamstream") -> None:
    for name, array in expected.data.items():
        np.testing.assert_array_equal(h5[f"{fields}{name}"][()], array)
        assert h5[f"{fields}{name}"].dtype == array.dtype
    np.testing.assert_array_equal(h5[f"{meta}/seq"][()], expected.seq)
    np.testing.assert_array_equal(h5[f"{meta}/time"][()], expected.time)


def test_registered_as_plugin():
    assert plugin("sinks", "files") is FilesSink


@pytest.mark.parametrize("serializer", ["arrays", "hdf5"])
def test_messages_layout_writes_one_file_per_message(tmp_path, serializer):
    sink = FilesSink(dir=str(tmp_path / "out")).open(CONTEXT)
    batches = [batch(2, 3), batch(14, 2)]
    for index, item in enumerate(batches):
        sink.send(message(item, index, serializer))
    sink.close(end(2, 5, 15))
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert names == ["scan-7-r002-m000000.h5", "scan-7-r002-m000001.h5", "scan-7-r002.end.json"]
    for index, item in enumerate(batches):
        with h5py.File(tmp_path / "out" / f"scan-7-r002-m{index:06d}.h5", "r") as h5:
            assert_batch_in(h5, item)


def test_hdf5_payload_is_written_byte_for_byte(tmp_path):
    sent = message(batch(0, 2), 0, "hdf5")
    sink = FilesSink(dir=str(tmp_path)).open(CONTEXT)
    sink.send(sent)
    assert (tmp_path / "scan-7-r002-m000000.h5").read_bytes() == b"".join(sent.payload)


def test_messages_layout_compresses_arrays_it_writes(tmp_path):
    sink = FilesSink(dir=str(tmp_path), compression="gzip").open(CONTEXT)
    sink.send(message(batch(0, 3), 5))
    with h5py.File(tmp_path / "scan-7-r002-m000005.h5", "r") as h5:
        assert h5["data"].compression == "gzip"
        assert_batch_in(h5, batch(0, 3))


def test_cxi_layout_appends_every_message(tmp_path):
    sink = FilesSink(dir=str(tmp_path), layout="cxi", compression="zstd").open(CONTEXT)
    batches = [batch(2, 3), batch(14, 1), batch(26, 4)]
    for index, item in enumerate(batches):
        sink.send(message(item, index, "hdf5" if index == 1 else "arrays"))
    assert (tmp_path / "scan-7-r002.cxi.part").exists()
    sink.close(end(3, 8, 29))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["scan-7-r002.cxi", "scan-7-r002.end.json"]
    with h5py.File(tmp_path / "scan-7-r002.cxi", "r") as h5:
        assert h5["cxi_version"][()] == 150
        assert_batch_in(h5, Batch.concatenate(batches), fields="/entry_1/data_1/", meta="/entry_1/_beamstream")
        assert h5["/entry_1/data_1/data"].chunks == (1, 4, 5)


def test_cxi_output_reads_back_through_the_hdf5_source(tmp_path):
    sink = FilesSink(dir=str(tmp_path), layout="cxi").open(CONTEXT)
    sink.send(message(batch(0, 3), 0))
    sink.send(message(batch(3, 3), 1))
    sink.close(end(2, 6, 5))
    source = HDF5Source(files=[str(tmp_path / "*.cxi")], time_dataset="/entry_1/_beamstream/time")
    reader = source.open()
    read = Batch.concatenate(list(reader.read(reader.partition(0, 1))))
    expected = batch(0, 6)
    np.testing.assert_array_equal(read.data["data"], expected.data["data"])
    np.testing.assert_array_equal(read.time, expected.time)


def test_cxi_layout_refuses_a_changed_field(tmp_path):
    sink = FilesSink(dir=str(tmp_path), layout="cxi").open(CONTEXT)
    sink.send(message(batch(0, 2), 0))
    other = batch(2, 2)
    smaller = other.replace({"data": other.data["data"][:, :2], "energy": other.data["energy"]})
    with pytest.raises(TransportError, match="message 1 has fields data uint16 \\(2, 5\\)"):
        sink.send(message(smaller, 1))


def test_end_json_reports_the_end_message(tmp_path):
    sink = FilesSink(dir=str(tmp_path), layout="cxi").open(CONTEXT)
    sink.close(end(0, 0, None))
    info = json.loads((tmp_path / "scan-7-r002.end.json").read_text())
    assert info["messages"] == 0 and info["events"] == 0 and info["last_seq"] is None
    assert (info["status"], info["reason"], info["rank"], info["share"]) == ("ok", "done", 2, SHARE.to_wire())
    with h5py.File(tmp_path / "scan-7-r002.cxi", "r") as h5:
        assert h5["/entry_1/_beamstream/seq"].shape == (0,)


def test_unusable_directory_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    with pytest.raises(TransportError, match="cannot create directory .*file/out"):
        FilesSink(dir=str(blocker / "out")).open(CONTEXT)


def test_stream_id_is_made_safe_for_file_names(tmp_path):
    sink = FilesSink(dir=str(tmp_path)).open(SinkContext(stream_id="a/b c", rank=0, producers=1))
    sink.close(end(0, 0, None))
    assert (tmp_path / "a_b_c-r000.end.json").exists()
