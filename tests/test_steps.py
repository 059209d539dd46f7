"""The processing step plugins: exact results on small arrays, re-batching, and their errors."""

from __future__ import annotations

import weakref

import h5py
import numpy as np
import pytest
from pydantic import ValidationError

from beamstream.batch import Batch
from beamstream.errors import StepError
from beamstream.steps.batch import BatchStep
from beamstream.steps.binning import BinStep
from beamstream.steps.calibrate import CalibrateStep, ConstantsFile
from beamstream.steps.cast import CastStep
from beamstream.steps.channels import ChannelsStep
from beamstream.wire.metadata import RunMetadata
from beamstream.steps.pad import PadStep
from beamstream.steps.roi import RoiStep
from beamstream.steps.select import SelectStep


def frozen(array: np.ndarray) -> np.ndarray:
    """``array`` made read-only, so a step that writes into its input fails loudly."""
    array = np.array(array)
    array.flags.writeable = False
    return array


def make_batch(first: int, count: int, **data: np.ndarray) -> Batch:
    seq = np.arange(first, first + count, dtype=np.int64)
    return Batch(frozen(seq), frozen(seq * 0.5), {name: frozen(array) for name, array in data.items()})


def images(count: int = 3, shape: tuple[int, ...] = (4, 6), dtype: str = "uint16") -> np.ndarray:
    return np.arange(count * np.prod(shape), dtype=dtype).reshape(count, *shape)


def run(spec, *batches: Batch) -> list[Batch]:
    return list(spec.build()(iter(batches)))


def run_one(spec, batch: Batch) -> Batch:
    (result,) = run(spec, batch)
    return result


# --- batch -------------------------------------------------------------------------------


def mixed_batches() -> list[Batch]:
    sizes = [1, 5, 2, 0, 8, 3, 1, 13, 4]
    starts = np.cumsum([0, *sizes[:-1]])
    return [make_batch(int(start), size, x=event_data(int(start), size)) for start, size in zip(starts, sizes)]


def event_data(first: int, count: int) -> np.ndarray:
    seq = np.arange(first, first + count)
    return np.stack([seq, -seq], axis=1)


@pytest.mark.parametrize("size", [1, 3, 7])
def test_batch_rechunks_to_exact_size_keeping_every_event_once_in_order(size: int) -> None:
    incoming = mixed_batches()
    total = sum(len(b) for b in incoming)
    out = run(BatchStep(size=size), *incoming)
    assert [len(b) for b in out[:-1]] == [size] * (len(out) - 1)
    assert 0 < len(out[-1]) <= size
    np.testing.assert_array_equal(np.concatenate([b.seq for b in out]), np.arange(total))
    np.testing.assert_array_equal(np.concatenate([b.time for b in out]), np.arange(total) * 0.5)
    np.testing.assert_array_equal(np.concatenate([b.data["x"] for b in out]), event_data(0, total))


def test_batch_keeps_a_big_endian_fields_dtype_in_views_and_joins() -> None:
    incoming = [make_batch(int(start), size, x=event_data(int(start), size).astype(">i2"))
                for start, size in ((0, 5), (5, 5), (10, 5))]
    out = run(BatchStep(size=4), *incoming)  # [0, 4) a view, [4, 8) a join, ..., [12, 15) a held tail
    assert {b.data["x"].dtype.str for b in out} == {"<i2"}
    np.testing.assert_array_equal(np.concatenate([b.data["x"] for b in out]), event_data(0, 15))


def test_batch_of_nothing_is_nothing() -> None:
    assert run(BatchStep(size=3)) == []


def test_batch_holds_no_view_of_a_batch_it_has_moved_past() -> None:
    alive = []

    def source():
        big = event_data(0, 6)
        ref = weakref.ref(big)
        yield Batch(np.arange(6), np.arange(6) * 0.5, {"x": big})
        del big
        alive.append(ref() is not None)
        yield make_batch(6, 2, x=event_data(6, 2))

    seqs = []
    for batch in BatchStep(size=4).build()(source()):
        seqs.append(batch.seq.tolist())
        del batch
    assert seqs == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert alive == [False]


def test_batch_rejects_events_with_different_fields() -> None:
    with pytest.raises(StepError, match=r"\['x'\] and \['y'\].*same fields"):
        run(BatchStep(size=4), make_batch(0, 2, x=images(2)), make_batch(2, 2, y=images(2)))


def test_batch_rejects_events_with_different_shapes() -> None:
    with pytest.raises(StepError, match=r"event shapes differ.*pad or roi"):
        run(BatchStep(size=4), make_batch(0, 2, x=images(2, (3,))), make_batch(2, 2, x=images(2, (4,))))


@pytest.mark.parametrize("size", [0, -1])
def test_batch_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValidationError):
        BatchStep(size=size)


# --- calibrate ---------------------------------------------------------------------------


def calibration_constants(shape: tuple[int, ...] = (4, 6)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pedestal = rng.uniform(0, 10, shape)
    gain = rng.uniform(0.5, 2, shape).astype(np.float32)
    mask = rng.uniform(size=shape) > 0.3
    return pedestal, gain, mask


def expected_calibration(raw, pedestal, gain, mask, masked_value) -> np.ndarray:
    result = (raw.astype(np.float32) - np.float32(pedestal)) * np.float32(gain)
    return np.where(mask, result, np.float32(masked_value))


def test_calibrate_with_numbers() -> None:
    raw = images()
    out = run_one(CalibrateStep(field="x", pedestal=2.5, gain=3), make_batch(0, 3, x=raw))
    assert out.data["x"].dtype == np.float32
    np.testing.assert_array_equal(out.data["x"], (raw.astype(np.float32) - np.float32(2.5)) * np.float32(3))


def test_calibrate_with_npy_constants_and_output_field(tmp_path) -> None:
    raw = images()
    pedestal, gain, mask = calibration_constants()
    for name, array in [("pedestal", pedestal), ("gain", gain), ("mask", mask)]:
        np.save(tmp_path / f"{name}.npy", array)
    spec = CalibrateStep(
        field="x",
        output="calibrated",
        pedestal={"file": tmp_path / "pedestal.npy"},
        gain={"file": str(tmp_path / "gain.npy")},
        mask={"file": tmp_path / "mask.npy"},
        masked_value=-1,
    )
    batch = make_batch(0, 3, x=raw)
    out = run_one(spec, batch)
    assert list(out.data) == ["x", "calibrated"]
    assert out.data["x"] is batch.data["x"]
    np.testing.assert_array_equal(out.data["calibrated"], expected_calibration(raw, pedestal, gain, mask, -1))


def test_calibrate_with_hdf5_constants(tmp_path) -> None:
    raw = images()
    pedestal, gain, mask = calibration_constants()
    path = tmp_path / "constants.h5"
    with h5py.File(path, "w") as file:
        file["calib/pedestal"] = pedestal
        file["calib/gain"] = gain
        file["calib/mask"] = mask.astype(np.uint8)
    spec = CalibrateStep(
        field="x",
        pedestal={"file": path, "dataset": "calib/pedestal"},
        gain={"file": path, "dataset": "/calib/gain"},
        mask={"file": path, "dataset": "calib/mask"},
        mask_convention="zero-is-bad",  # a dataset named mask says none: CXI's would be non-zero = bad
    )
    out = run_one(spec, make_batch(0, 3, x=raw))
    np.testing.assert_array_equal(out.data["x"], expected_calibration(raw, pedestal, gain, mask, 0))


def test_calibrate_broadcasts_per_column_constants(tmp_path) -> None:
    raw = images()
    columns = np.linspace(0, 5, 6)
    np.save(tmp_path / "pedestal.npy", columns)
    spec = CalibrateStep(field="x", pedestal={"file": tmp_path / "pedestal.npy"}, gain=2)
    out = run_one(spec, make_batch(0, 3, x=raw)).data["x"]
    np.testing.assert_array_equal(out, (raw.astype(np.float32) - columns.astype(np.float32)) * np.float32(2))


def test_calibrate_mask_number_zero_masks_every_pixel() -> None:
    out = run_one(CalibrateStep(field="x", mask=0, masked_value=7), make_batch(0, 3, x=images())).data["x"]
    np.testing.assert_array_equal(out, np.full((3, 4, 6), 7, np.float32))


def test_calibrate_constants_of_the_wrong_shape(tmp_path) -> None:
    np.save(tmp_path / "gain.npy", np.ones((4, 5)))
    step = CalibrateStep(field="x", gain={"file": tmp_path / "gain.npy"})
    with pytest.raises(StepError, match=r"gain has shape \(4, 5\).*event shape \(4, 6\)"):
        run(step, make_batch(0, 3, x=images()))


def test_calibrate_missing_constants_file_fails_at_build(tmp_path) -> None:
    spec = CalibrateStep(field="x", pedestal={"file": tmp_path / "nowhere.npy"})
    with pytest.raises(StepError, match=r"nowhere\.npy.*does not exist"):
        spec.build()


def test_calibrate_unreadable_constants_file_names_it(tmp_path) -> None:
    (tmp_path / "gain.npy").write_bytes(b"not an array")
    with pytest.raises(StepError, match=r"cannot read constants from \S+gain\.npy"):
        CalibrateStep(field="x", gain={"file": tmp_path / "gain.npy"}).build()


def test_calibrate_missing_hdf5_dataset_lists_datasets(tmp_path) -> None:
    path = tmp_path / "constants.h5"
    with h5py.File(path, "w") as file:
        file["calib/pedestal"] = np.zeros((4, 6))
    spec = CalibrateStep(field="x", pedestal={"file": path, "dataset": "pedestal"})
    message = r"^calibrate: \S+constants\.h5 has no dataset 'pedestal'; datasets there: calib/pedestal$"
    with pytest.raises(StepError, match=message):
        spec.build()


def test_calibrate_missing_field_lists_fields() -> None:
    with pytest.raises(StepError, match=r"field 'raw' is not in the events; fields present: 'x', 'y'"):
        run(CalibrateStep(field="raw"), make_batch(0, 2, x=images(2), y=images(2)))


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ({"file": "c.h5"}, "dataset"),
        ({"file": "c.npy", "dataset": "d"}, "remove `dataset`"),
        ({"file": "c.txt"}, r"\.npy, \.h5"),
        ({"file": "c.npy", "path": "d"}, "Extra inputs"),
    ],
)
def test_constants_file_validation(reference: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ConstantsFile(**reference)


# --- roi ---------------------------------------------------------------------------------


def test_roi_crops_leading_event_axes() -> None:
    raw = images(3, (4, 6, 2))
    out = run_one(RoiStep(field="x", start=[1, 2], stop=[3, 5]), make_batch(0, 3, x=raw))
    np.testing.assert_array_equal(out.data["x"], raw[:, 1:3, 2:5, :])


def test_roi_outside_the_image() -> None:
    with pytest.raises(StepError, match=r"stop \[3, 7\] lies outside.*\(4, 6\)"):
        run(RoiStep(field="x", start=[0, 0], stop=[3, 7]), make_batch(0, 3, x=images()))


def test_roi_with_more_axes_than_the_events() -> None:
    with pytest.raises(StepError, match=r"3 axes.*event shape \(4, 6\)"):
        run(RoiStep(field="x", start=[0, 0, 0], stop=[1, 1, 1]), make_batch(0, 3, x=images()))


@pytest.mark.parametrize(("start", "stop"), [([2, 0], [2, 3]), ([0], [1, 2]), ([-1], [2])])
def test_roi_spec_bounds(start: list[int], stop: list[int]) -> None:
    with pytest.raises(ValidationError):
        RoiStep(field="x", start=start, stop=stop)


# --- bin ---------------------------------------------------------------------------------


def test_bin_sum_crops_remainder_and_widens_integers() -> None:
    raw = images(2, (5, 7), "uint16")
    out = run_one(BinStep(field="x", factors=[2, 3]), make_batch(0, 2, x=raw))
    expected = raw[:, :4, :6].astype(np.uint32).reshape(2, 2, 2, 2, 3).sum(axis=(2, 4))
    assert out.data["x"].dtype == np.uint32
    np.testing.assert_array_equal(out.data["x"], expected)


def test_bin_mean_over_last_axis_only() -> None:
    raw = images(2, (3, 4), "float32")
    out = run_one(BinStep(field="x", factors=[2], reduce="mean"), make_batch(0, 2, x=raw))
    assert out.data["x"].dtype == np.float32
    np.testing.assert_array_equal(out.data["x"], (raw[..., 0::2] + raw[..., 1::2]) / np.float32(2))


@pytest.mark.parametrize(
    ("dtype", "value", "expected"),
    [
        ("int8", -128, "int16"),
        ("uint8", 255, "uint16"),
        ("uint32", 2**32 - 1, "uint64"),
        ("int64", -5, "int64"),
        ("bool", True, "uint8"),
        ("float16", 60000, "float32"),
        ("float64", 0.25, "float64"),
    ],
)
def test_bin_sum_dtype_rule(dtype: str, value: float, expected: str) -> None:
    raw = np.full((1, 4, 4), value, dtype=dtype)
    out = run_one(BinStep(field="x", factors=[2, 2]), make_batch(0, 1, x=raw)).data["x"]
    assert out.dtype == np.dtype(expected)
    np.testing.assert_array_equal(out, np.full((1, 2, 2), np.asarray(value, dtype=expected) * 4))


def test_bin_factor_larger_than_axis() -> None:
    with pytest.raises(StepError, match=r"factors \[5, 1\] exceed the last axes \[4, 6\]"):
        run(BinStep(field="x", factors=[5, 1]), make_batch(0, 3, x=images()))


def test_bin_with_more_factors_than_axes() -> None:
    with pytest.raises(StepError, match=r"at most 2 factors"):
        run(BinStep(field="x", factors=[1, 1, 1]), make_batch(0, 3, x=images()))


def test_bin_factors_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        BinStep(field="x", factors=[2, 0])


# --- pad ---------------------------------------------------------------------------------


def test_pad_trailing_axes_at_their_end() -> None:
    raw = images(2, (3, 4), "int32")
    out = run_one(PadStep(field="x", shape=[6], value=-1), make_batch(0, 2, x=raw)).data["x"]
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.pad(raw, ((0, 0), (0, 0), (0, 2)), constant_values=-1))


def test_pad_to_the_same_shape_passes_unchanged() -> None:
    batch = make_batch(0, 2, x=images(2))
    assert run_one(PadStep(field="x", shape=[4, 6]), batch) is batch


def test_pad_target_smaller_than_the_data() -> None:
    with pytest.raises(StepError, match=r"event shape \(4, 6\), larger than the target shape \[5, 5\]"):
        run(PadStep(field="x", shape=[5, 5]), make_batch(0, 3, x=images()))


def test_pad_to_the_centre_puts_the_event_in_the_middle_and_moves_its_origin() -> None:
    raw = images(2, (3, 4), "int32")
    out = run_one(PadStep(field="x", shape=[8, 7], align="centre"), make_batch(0, 2, x=raw)).data["x"]
    np.testing.assert_array_equal(out, np.pad(raw, ((0, 0), (2, 3), (1, 2))))
    metadata = RunMetadata().with_field("x", shape=[3, 4], origin=[10, 20], binning=[2, 1])
    padded = PadStep(field="x", shape=[8, 7], align="centre").describe(metadata).fields["x"]
    assert (padded.shape, padded.origin) == ([8, 7], [10 - 2 * 2, 20 - 1])
    at_start = PadStep(field="x", shape=[8, 7]).describe(metadata).fields["x"]
    assert (at_start.shape, at_start.origin) == ([8, 7], [10, 20])


def test_channels_gives_a_view_with_a_channel_axis_and_leaves_panels_as_they_are() -> None:
    batch = make_batch(0, 2, x=images(2, (4, 6)))
    out = run_one(ChannelsStep(field="x"), batch).data["x"]
    assert out.shape == (2, 1, 4, 6) and np.shares_memory(out, batch.data["x"])
    panels = make_batch(0, 2, x=images(2, (3, 4, 6)))
    assert run_one(ChannelsStep(field="x"), panels) is panels
    described = ChannelsStep(field="x").describe(RunMetadata().with_field("x", shape=[4, 6], pixel_size=[1e-4, 1e-4]))
    assert described.fields["x"].shape == [1, 4, 6] and described.fields["x"].pixel_size == [1e-4, 1e-4]
    with pytest.raises(StepError, match=r"events of 1 axes \(6,\); a channel axis makes 2 axes into 3"):
        run(ChannelsStep(field="x"), make_batch(0, 2, x=images(2, (6,))))


def test_pad_value_the_dtype_cannot_hold() -> None:
    with pytest.raises(StepError, match=r"value 0\.5 cannot be stored.*uint16"):
        run(PadStep(field="x", shape=[5, 7], value=0.5), make_batch(0, 3, x=images()))


# --- cast --------------------------------------------------------------------------------


def test_cast_chosen_fields() -> None:
    x, y = images(2), images(2, (3,), "int64")
    batch = make_batch(0, 2, x=x, y=y)
    out = run_one(CastStep(fields=["y"], dtype="float32"), batch)
    assert out.data["x"] is batch.data["x"]
    assert out.data["y"].dtype == np.float32
    np.testing.assert_array_equal(out.data["y"], y.astype(np.float32))


def test_cast_all_fields() -> None:
    out = run_one(CastStep(dtype="<f8"), make_batch(0, 2, x=images(2), y=images(2, (3,), "int8")))
    assert [array.dtype for array in out.data.values()] == [np.float64, np.float64]


def test_cast_missing_field() -> None:
    with pytest.raises(StepError, match=r"field 'z'.*fields present: 'x'"):
        run(CastStep(fields=["z"], dtype="float32"), make_batch(0, 2, x=images(2)))


@pytest.mark.parametrize("dtype", ["floatt", "U5", "object", ">f4"])
def test_cast_rejects_bad_dtype_at_validation(dtype: str) -> None:
    with pytest.raises(ValidationError, match="float32"):
        CastStep(dtype=dtype)


def test_cast_without_fields_leaves_the_timestamp_alone() -> None:
    stamps = np.array([(7 << 32) | 123_456_789, (7 << 32) | 123_456_790], dtype=np.uint64)
    batch = make_batch(0, 2, image=images(2), timestamp=stamps)
    out = run_one(CastStep(dtype="float32"), batch)
    assert out.data["image"].dtype == np.float32
    assert out.data["timestamp"] is batch.data["timestamp"]


def test_cast_converts_the_timestamp_when_named() -> None:
    batch = make_batch(0, 2, image=images(2), timestamp=np.array([1, 2], dtype=np.uint64))
    out = run_one(CastStep(fields=["timestamp"], dtype="float64"), batch)
    assert out.data["timestamp"].dtype == np.float64
    assert out.data["image"] is batch.data["image"]


# --- select ------------------------------------------------------------------------------


def test_select_keeps_fields_in_the_given_order() -> None:
    batch = make_batch(0, 2, x=images(2), y=images(2), z=images(2))
    out = run_one(SelectStep(fields=["z", "x"]), batch)
    assert list(out.data) == ["z", "x"]
    assert out.data["z"] is batch.data["z"]


def test_select_missing_field() -> None:
    with pytest.raises(StepError, match=r"field 'w' is not in the events; fields present: 'x', 'y'"):
        run(SelectStep(fields=["x", "w"]), make_batch(0, 2, x=images(2), y=images(2)))


@pytest.mark.parametrize("fields", [[], ["x", "x"]])
def test_select_spec_validation(fields: list[str]) -> None:
    with pytest.raises(ValidationError):
        SelectStep(fields=fields)


# --- every spec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "batch", "size": 2},
        {"type": "calibrate", "field": "x"},
        {"type": "roi", "field": "x", "start": [0], "stop": [1]},
        {"type": "bin", "field": "x", "factors": [2]},
        {"type": "pad", "field": "x", "shape": [8]},
        {"type": "cast", "dtype": "float32"},
        {"type": "select", "fields": ["x"]},
        {"type": "channels", "field": "x"},
    ],
)
def test_specs_reject_unknown_keys(spec: dict) -> None:
    from beamstream.plugins import plugin

    model = plugin("steps", spec["type"])
    assert model.model_validate(spec).type == spec["type"]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate({**spec, "sise": 3})
