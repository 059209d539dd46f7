"""Uncompressed hdf5 payloads laid out once per batch layout: the frames are the very file h5py writes, any HDF5
reader opens their concatenation, and the reader gets views of the frames without copying."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest

from beamstream.batch import Batch
from beamstream.codecs.hdf5 import HDF5Codec, Storage, batch_to_hdf5_bytes
from beamstream.errors import WireFormatError
from beamstream.wire import FieldInfo
from test_metadata import h5dump


def batch(events: int = 3, shape: tuple[int, ...] = (16, 24), dtype: str = "<u2") -> Batch:
    rng = np.random.default_rng(events)
    image = rng.integers(0, 60_000, (events, *shape)).astype(dtype)
    return Batch(seq=np.arange(10, 10 + events, dtype=np.int64), time=np.linspace(1e9, 1e9 + 1, events),
                 data={"image": image, "energy": rng.random(events), "flags": rng.integers(0, 2, events).astype("u1")})


def fields_of(item: Batch) -> list[FieldInfo]:
    return [FieldInfo.of(name, array) for name, array in item.data.items()]


@pytest.mark.parametrize("storage", [Storage(), Storage(paths={"image": "/entry/data/data"})], ids=["root", "paths"])
@pytest.mark.parametrize("dtype", ["<u2", "<f4", "<i8", "u1"])
def test_the_frames_are_the_file_h5py_writes_byte_for_byte(storage, dtype):
    codec = HDF5Codec(storage)
    for events in (3, 3, 1):  # a layout made, used again, and another one
        item = batch(events, dtype=dtype)
        frames = codec.encode(item)
        assert len(frames) > 1, "the arrays travel as frames of their own"
        assert b"".join(frames) == bytes(batch_to_hdf5_bytes(item.seq, item.time, item.data, storage))
    assert len(codec.layouts.layouts) == 2


def test_the_arrays_are_sent_and_received_without_a_copy():
    codec = HDF5Codec()
    item = batch(4, shape=(256, 256))
    frames = codec.encode(item)
    assert any(np.shares_memory(np.frombuffer(frame, dtype="u1"), item.data["image"]) for frame in frames
               if len(frame)), "the image's own buffer is a frame"
    received = [bytes(frame) for frame in frames]  # as they arrive: one buffer per frame
    arrays = codec.decode(fields_of(item), received)
    image_frame = max(received, key=len)
    assert np.shares_memory(arrays["image"], np.frombuffer(image_frame, dtype="u1"))
    assert not arrays["image"].flags.writeable
    for name, array in item.data.items():
        np.testing.assert_array_equal(arrays[name], array)


def test_a_dataset_spread_over_frames_is_read_through_h5py():
    codec = HDF5Codec()
    item = batch(2)
    whole = b"".join(codec.encode(item))
    halves = [whole[:len(whole) // 2], whole[len(whole) // 2:]]  # the image's data cut in two
    arrays = codec.decode(fields_of(item), halves)
    np.testing.assert_array_equal(arrays["image"], item.data["image"])
    assert arrays["image"].flags.writeable, "read by h5py: its own copy"


def test_compressed_and_empty_fields_take_h5pys_way():
    compressed = HDF5Codec(Storage(filters={"compression": "gzip"}))
    item = batch(2)
    assert len(compressed.encode(item)) == 1
    empty = Batch(seq=np.arange(2, dtype=np.int64), time=np.zeros(2), data={"none": np.zeros((2, 0), "<f4")})
    codec = HDF5Codec()
    frames = codec.encode(empty)
    assert len(frames) == 1
    assert codec.decode(fields_of(empty), frames)["none"].shape == (2, 0)


def test_a_payload_whose_data_lie_beyond_its_frames_is_refused():
    codec = HDF5Codec()
    item = batch(2)
    frames = codec.encode(item)
    truncated = [bytes(frame) for frame in frames[:-2]]  # the last datasets' data missing
    with pytest.raises(WireFormatError, match="hdf5 payload"):
        codec.decode(fields_of(item), truncated)


def test_hdf5_1_10_and_h5py_open_the_concatenation(tmp_path):
    item = batch(3, shape=(8, 4))
    path = tmp_path / "message.h5"
    path.write_bytes(b"".join(HDF5Codec().encode(item)))
    with h5py.File(io.BytesIO(path.read_bytes()), "r") as h5:
        np.testing.assert_array_equal(h5["image"][()], item.data["image"])
        np.testing.assert_array_equal(h5["_beamstream/seq"][()], item.seq)
    dumped = h5dump("-d", "/image", "-c", "1,1,4", str(path))
    assert dumped.returncode == 0, dumped.stderr
    assert ", ".join(map(str, item.data["image"][0, 0, :4])) in dumped.stdout.replace("\n", " ")


def test_a_payload_of_a_known_layout_is_not_parsed_again_but_its_fixed_bytes_are_checked():
    codec = HDF5Codec()
    first, second = batch(3), batch(3)
    second.data["image"] += 1
    reader = HDF5Codec()
    reader.decode(fields_of(first), [bytes(frame) for frame in codec.encode(first)])
    assert len(reader.read_layouts.layouts) == 1
    frames = [bytes(frame) for frame in codec.encode(second)]
    arrays = reader.decode(fields_of(second), frames)
    for name, array in second.data.items():
        np.testing.assert_array_equal(arrays[name], array)
    altered = list(frames)  # the same sizes, a fixed byte changed: parsed again, and refused
    altered[0] = altered[0][:8] + bytes([altered[0][8] ^ 0xFF]) + altered[0][9:]
    with pytest.raises(WireFormatError):
        reader.decode(fields_of(second), altered)
