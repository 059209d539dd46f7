"""The hdf5 source: partitions, slice-by-slice reads across files, and its error messages."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from beamstream.batch import Batch
from beamstream.errors import SourceError
from beamstream.plugins import plugin
from beamstream.sources.hdf5 import HDF5Source

DATA = "/entry_1/data_1/data"
LENGTHS = (10, 7)


def frames(start: int, count: int) -> np.ndarray:
    """Events ``start:start+count`` of the test data: every element unique."""
    return np.arange(start * 20, (start + count) * 20, dtype=np.uint16).reshape(count, 4, 5)


@pytest.fixture
def files(tmp_path) -> list[str]:
    """Two CXI-like files of 10 and 7 events, chunks of 3, with a time dataset."""
    paths, start = [], 0
    for number, count in enumerate(LENGTHS):
        path = tmp_path / f"run_{number}.cxi"
        with h5py.File(path, "w") as h5:
            h5.create_dataset(DATA, data=frames(start, count), chunks=(3, 4, 5))
            h5.create_dataset("/entry_1/time", data=1000.0 + np.arange(start, start + count))
        paths.append(str(path))
        start += count
    return paths


def read_all(source: HDF5Source, ranks: int) -> list[list[Batch]]:
    reader = source.open()
    return [list(reader.read(reader.partition(rank, ranks))) for rank in range(ranks)]


def test_registered_as_plugin():
    assert plugin("sources", "hdf5") is HDF5Source


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_ranks_read_every_event_once_with_file_values(files, ranks):
    per_rank = read_all(HDF5Source(files=files), ranks)
    seqs = np.concatenate([batch.seq for batches in per_rank for batch in batches])
    assert sorted(seqs.tolist()) == list(range(17))
    for batches in per_rank:
        rank_seq = np.concatenate([batch.seq for batch in batches])
        assert np.all(np.diff(rank_seq) > 0)
        for batch in batches:
            for seq, frame in zip(batch.seq, batch.data["data"], strict=True):
                np.testing.assert_array_equal(frame, frames(int(seq), 1)[0])
                assert frame.dtype == np.uint16


def test_partition_covers_all_events_in_chunk_blocks(files):
    reader = HDF5Source(files=files).open()
    share = reader.partition(1, 3)
    assert (share.start, share.stop, share.block, share.rank, share.producers) == (0, 17, 3, 1, 3)
    with pytest.raises(ValueError, match="rank 3"):
        reader.partition(3, 3)


def test_block_spanning_two_files_is_one_batch(files):
    reader = HDF5Source(files=files).open()
    batches = list(reader.read(reader.partition(0, 3)))  # blocks 0 and 3: [0, 3), [9, 12)
    assert [batch.seq.tolist() for batch in batches] == [[0, 1, 2], [9, 10, 11]]
    np.testing.assert_array_equal(batches[1].data["data"], frames(9, 3))


def test_reads_only_owned_slices(files, monkeypatch):
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(self, key, *args, **kwargs):
        reads.append((self.name, key))
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    reader = HDF5Source(files=files).open()
    list(reader.read(reader.partition(1, 2)))
    assert reads and all(isinstance(key, slice) and key.stop - key.start <= 3 for _, key in reads)
    read_events = sum(key.stop - key.start for _, key in reads)
    assert read_events == 8  # rank 1 owns blocks [3, 6), [9, 12) (two files) and [15, 17)


def test_max_events_and_events_per_read(files):
    reader = HDF5Source(files=files, max_events=11, events_per_read=4).open()
    share = reader.partition(0, 1)
    assert (share.stop, share.block) == (11, 4)
    batches = list(reader.read(share))
    assert [len(batch) for batch in batches] == [4, 4, 3]
    np.testing.assert_array_equal(Batch.concatenate(batches).data["data"], frames(0, 11))


def test_unchunked_dataset_reads_16_per_block(tmp_path):
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as h5:
        h5["images"] = frames(0, 20)
        h5["energy"] = np.linspace(1, 2, 20)
    reader = HDF5Source(files=[str(path)], datasets={"img": "images", "energy": "/energy"}).open()
    batches = list(reader.read(reader.partition(0, 1)))
    assert [len(batch) for batch in batches] == [16, 4]
    assert set(batches[0].data) == {"img", "energy"}
    np.testing.assert_array_equal(batches[1].data["energy"], np.linspace(1, 2, 20)[16:])


def test_time_from_dataset_or_nan(files):
    os.utime(files[1], (1234.5, 1234.5))
    batch = Batch.concatenate(read_all(HDF5Source(files=files), 1)[0])
    assert batch.time.dtype == np.float64 and len(batch.time) == 17
    assert np.all(np.isnan(batch.time)), "without time_dataset no event may carry a time, not even the file's mtime"
    timed = Batch.concatenate(read_all(HDF5Source(files=files, time_dataset="/entry_1/time"), 1)[0])
    np.testing.assert_array_equal(timed.time, 1000.0 + np.arange(17))


def test_glob_patterns_expand_sorted(files, tmp_path):
    reader = HDF5Source(files=[str(tmp_path / "run_*.cxi")]).open()
    assert [extent.path for extent in reader.extents] == files
    assert reader.total == 17


def test_missing_file(files, tmp_path):
    with pytest.raises(SourceError, match="nope.h5' not found"):
        HDF5Source(files=[*files, str(tmp_path / "nope.h5")]).open()


def test_pattern_matching_nothing(tmp_path):
    with pytest.raises(SourceError, match=r"pattern .*\*\.nxs' matches no file"):
        HDF5Source(files=[str(tmp_path / "*.nxs")]).open()


def test_bad_dataset_path_lists_existing_datasets(files):
    with pytest.raises(SourceError) as error:
        HDF5Source(files=files, datasets={"data": "/entry_1/data_1/images"}).open()
    message = str(error.value)
    assert "no dataset '/entry_1/data_1/images'" in message
    assert "/entry_1/data_1/data (10, 4, 5) uint16" in message
    assert "/entry_1/time" in message


def test_group_is_not_a_dataset(files):
    with pytest.raises(SourceError, match="a group, not a dataset"):
        HDF5Source(files=files, datasets={"data": "/entry_1"}).open()


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not hdf5")
    with pytest.raises(SourceError, match="notes.h5 is not an HDF5 file"):
        HDF5Source(files=[str(path)]).open()


def test_datasets_of_different_lengths(tmp_path):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as h5:
        h5["a"] = np.zeros(5)
        h5["b"] = np.zeros(6)
    with pytest.raises(SourceError, match="differ in length"):
        HDF5Source(files=[str(path)], datasets={"a": "a", "b": "b"}).open()


def test_files_with_different_frame_shapes(files, tmp_path):
    path = tmp_path / "other.cxi"
    with h5py.File(path, "w") as h5:
        h5[DATA] = np.zeros((2, 3, 3), dtype=np.uint16)
    with pytest.raises(SourceError, match="all files must agree"):
        HDF5Source(files=[*files, str(path)]).open()


def test_files_differing_only_in_byte_order_stream_one_little_endian_dtype(files, tmp_path):
    path = tmp_path / "big.cxi"
    with h5py.File(path, "w") as h5:
        h5[DATA] = frames(17, 4).astype(">u2")
    reader = HDF5Source(files=[*files, str(path)]).open()
    batches = list(reader.read(reader.partition(0, 1)))
    assert {batch.data["data"].dtype.str for batch in batches} == {"<u2"}
    np.testing.assert_array_equal(Batch.concatenate(batches).data["data"], frames(0, 21))


def test_files_with_different_dtypes(files, tmp_path):
    path = tmp_path / "wide.cxi"
    with h5py.File(path, "w") as h5:
        h5[DATA] = frames(17, 2).astype(np.uint32)
    with pytest.raises(SourceError, match=r"'data' is <u4 frames of \(4, 5\) in .*wide.cxi but <u2 .*all files must agree"):
        HDF5Source(files=[*files, str(path)]).open()
