"""How fields are stored in the HDF5 files beamstream writes (beamstream.serializers.storage): zfp (reversible
and lossy), gzip + shuffle, bitshuffle + zstd, a dataset path per field; in messages, in the files sink, and in
HDF5 1.10's h5dump with hdf5plugin's filters on its plugin path."""

from __future__ import annotations

import dataclasses
import io

import h5py
import hdf5plugin
import numpy as np
import pytest
from pydantic import ValidationError

from beamstream.batch import Batch, Share
from beamstream.client import Client
from beamstream.codecs import decode_payload
from beamstream.errors import TransportError, WireFormatError
from beamstream.serializers.arrays import ArraysSerializer
from beamstream.serializers.hdf5 import HDF5Serializer
from beamstream.sinks.files import FilesSink
from beamstream.stages import SinkContext
from beamstream.spec import parse_spec
from beamstream.wire import message_from_batch
from test_metadata import h5dump
from test_stream import produce_in_background

SHARE = Share(rank=0, producers=1, start=0, stop=None, block=1)
CONTEXT = SinkContext(stream_id="s", rank=0, producers=1)


def smooth_images(count: int = 3, shape: tuple[int, int] = (64, 80)) -> Batch:
    """Float32 frames a compressor can do something with: a smooth ramp plus a little noise."""
    rows, columns = np.mgrid[0:shape[0], 0:shape[1]]
    noise = np.random.default_rng(7).normal(0, 0.01, (count, *shape))
    frames = (np.sin(rows / 9.0) * np.cos(columns / 7.0) * 100 + noise).astype(np.float32)
    seq = np.arange(count, dtype=np.int64)
    return Batch(seq, 1.7e9 + seq, {"image": frames, "energy": np.linspace(9, 10, count)})


def sent(serializer: HDF5Serializer, item: Batch):
    return message_from_batch(item, serializer.build(), stream="s", rank=0, producers=1, index=0, share=SHARE)


def dataset(message, path: str) -> h5py.Dataset:
    h5 = h5py.File(io.BytesIO(b"".join(message.payload)), "r")
    return h5[path]


def test_zfp_reversible_gives_every_value_back_bit_for_bit():
    item = smooth_images()
    message = sent(HDF5Serializer(compression="zfp"), item)
    arrays = decode_payload(message)
    assert arrays["image"].tobytes() == item.data["image"].tobytes()
    assert arrays["energy"].tobytes() == item.data["energy"].tobytes()
    stored = dataset(message, "image")
    assert str(hdf5plugin.ZFP_ID) in stored._filters and stored.id.get_storage_size() < item.data["image"].nbytes


def test_zfp_lossy_modes_keep_to_their_bound():
    item = smooth_images()
    image = item.data["image"]
    accurate = decode_payload(sent(HDF5Serializer(compression="zfp", zfp={"accuracy": 1e-3}), item))["image"]
    assert 0 < np.abs(accurate.astype(np.float64) - image).max() <= 1e-3
    rated = sent(HDF5Serializer(compression="zfp", zfp={"rate": 8}), item)
    stored = dataset(rated, "image").id.get_storage_size()
    assert stored <= image.size * 8 / 8 * 1.02, "8 bits per value, whatever the values"
    assert np.abs(decode_payload(rated)["image"] - image).max() < 1.0  # of values up to 100


@pytest.mark.parametrize("options, filters", [
    ({"compression": "gzip", "shuffle": True, "level": 6}, {"gzip", "shuffle"}),
    ({"compression": "zstd", "shuffle": True}, {str(hdf5plugin.ZSTD_ID), "shuffle"}),
    ({"compression": "bitshuffle_zstd", "level": 5}, {str(hdf5plugin.BSHUF_ID)}),
])
def test_the_other_filters_round_trip_exactly(options, filters):
    item = smooth_images()
    message = sent(HDF5Serializer(**options), item)
    assert decode_payload(message)["image"].tobytes() == item.data["image"].tobytes()
    assert filters <= set(dataset(message, "image")._filters)


def test_bitshuffle_zstd_is_bitshuffle_with_zstd_at_its_level():
    options = dataset(sent(HDF5Serializer(compression="bitshuffle_zstd", level=5), smooth_images()),
                      "image")._filters[str(hdf5plugin.BSHUF_ID)]
    assert options[-2:] == (3, 5), f"bitshuffle's compressor 3 (zstd), level 5: {options}"


def test_a_field_goes_to_its_path_and_is_read_back_from_there(tmp_path):
    item = smooth_images()
    message = sent(HDF5Serializer(paths={"image": "/data/data"}), item)
    with h5py.File(io.BytesIO(b"".join(message.payload)), "r") as h5:
        assert "image" not in h5 and h5["data/data"].shape == item.data["image"].shape and "energy" in h5
    assert decode_payload(message)["image"].tobytes() == item.data["image"].tobytes()
    sink = FilesSink(dir=str(tmp_path), compression="gzip", shuffle=True, paths={"image": "entry/data/data"})
    writer = sink.open(CONTEXT)
    arrays = message_from_batch(item, ArraysSerializer().build(), stream="s", rank=0, producers=1, index=3, share=SHARE)
    writer.send(arrays)
    with h5py.File(tmp_path / "s-r000-m000003.h5", "r") as h5:
        np.testing.assert_array_equal(h5["entry/data/data"][()], item.data["image"])
        assert h5["entry/data/data"].compression == "gzip" and h5["entry/data/data"].shuffle


def test_a_stream_with_zfp_and_a_path_arrives_whole_and_h5dump_reads_the_file(tmp_path):
    endpoint = f"ipc://{tmp_path / 'stream'}"
    spec = {"source": {"type": "simulated", "n_events": 6, "seed": 3,
                       "detectors": [{"kind": "image", "shape": [32, 32], "dtype": "float32"}]},
            "serializer": {"type": "hdf5", "compression": "zfp", "paths": {"image": "/data/data"}},
            "sinks": [{"type": "stream", "endpoint": endpoint},
                      {"type": "files", "dir": str(tmp_path / "out"), "compression": "bitshuffle_zstd"}]}
    with Client(endpoint, bind=True, timeout=60) as client:
        thread, outcome = produce_in_background(parse_spec(spec), workers=1)
        events = list(client.events())
        thread.join()
    assert outcome["result"].ok and client.report.complete and len(events) == 6
    written = sorted((tmp_path / "out").glob("*.h5"))
    assert written
    dumped = h5dump("-d", "/data/data", "-c", "1,1,4", str(written[0]))
    assert dumped.returncode == 0 and "DATASET \"/data/data\"" in dumped.stdout, dumped.stdout + dumped.stderr
    with h5py.File(written[0], "r") as h5:
        np.testing.assert_array_equal(h5["data/data"][0], events[0].data["image"])


@pytest.mark.parametrize("options, words", [
    ({"compression": "zfp", "zfp": {"rate": 8, "accuracy": 0.1}}, "give one of rate, precision or accuracy"),
    ({"compression": "gzip", "zfp": {"rate": 8}}, "give it with compression: zfp"),
    ({"compression": "zfp", "shuffle": True}, "shuffle is for gzip or zstd"),
    ({"compression": "gzip", "level": 12}, "gzip levels go from 0 to 9"),
    ({"compression": "bitshuffle_lz4", "level": 3}, "takes none"),
    ({"paths": {"image": "/_beamstream/image"}}, "beamstream's own group"),
    ({"paths": {"image": "/a", "energy": "/a/b"}}, "cannot also be a group"),
    ({"paths": {"image": "/a/../b"}}, ". and .. are no group names"),
    ({"paths": {"image": "/x", "energy": "x"}}, "the same dataset"),
    ({"paths": {"image": "/a b"}}, "should match pattern"),
])
def test_settings_that_cannot_work_are_refused_saying_why(options, words):
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(".", r"\.")):
        HDF5Serializer(**options)


def test_zfp_refuses_a_field_it_cannot_store_naming_it(tmp_path):
    item = Batch(np.arange(2), np.zeros(2), {"frame": np.zeros((2, 4, 4), np.uint16)})
    with pytest.raises(ValueError, match="field 'frame' is uint16: convert it first"):
        sent(HDF5Serializer(compression="zfp"), item)
    writer = FilesSink(dir=str(tmp_path), layout="cxi", compression="zfp").open(CONTEXT)
    arrays = message_from_batch(item, ArraysSerializer().build(), stream="s", rank=0, producers=1, index=0, share=SHARE)
    with pytest.raises(TransportError, match="field 'frame' is uint16"):
        writer.send(arrays)
    with pytest.raises(ValidationError, match="paths are for layout: messages"):
        FilesSink(dir=str(tmp_path), layout="cxi", paths={"frame": "/x"})


@pytest.mark.parametrize("paths, words", [
    ('{"image": "/elsewhere"}', "missing link"),
    ('["image"]', "not a JSON object of dataset paths"),
    ("{not json", "not a JSON object of dataset paths"),
])
def test_a_payload_whose_paths_mislead_is_refused(paths, words):
    message = sent(HDF5Serializer(paths={"image": "/data/data"}), smooth_images())
    buffer = io.BytesIO(b"".join(message.payload))
    with h5py.File(buffer, "r+") as h5:
        h5["_beamstream"].attrs["paths"] = paths
    forged = dataclasses.replace(message, payload=[buffer.getvalue()])
    with pytest.raises(WireFormatError, match=words):
        decode_payload(forged)


def test_a_path_through_a_soft_link_is_refused():
    message = sent(HDF5Serializer(paths={"image": "/data/data"}), smooth_images())
    buffer = io.BytesIO(b"".join(message.payload))
    with h5py.File(buffer, "r+") as h5:
        h5.move("data", "real")
        h5["data"] = h5py.SoftLink("/real")
    forged = dataclasses.replace(message, payload=[buffer.getvalue()])
    with pytest.raises(WireFormatError, match="or under one"):
        decode_payload(forged)
