"""Masks keep their convention end to end: in the description, in the cxi files the files sink writes, when the
hdf5 source reads them back and when calibrate takes one. A mask of the other convention is converted or refused,
never applied inverted."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from beamstream.batch import Batch
from beamstream.errors import SourceError, StepError
from beamstream.producer import run_local
from beamstream.sources.hdf5 import HDF5Source
from beamstream.spec import parse_spec
from beamstream.steps.calibrate import CalibrateStep

SHAPE = (6, 8)
GOOD = np.random.default_rng(5).random(SHAPE) > 0.25  # True: a good pixel
CXI_MASK = "/entry_1/data_1/mask"


def masked_by(step: CalibrateStep) -> np.ndarray:
    """The pixels ``step`` (its masked_value -1) masks in a frame of 7s."""
    frames = np.full((1, *SHAPE), 7, dtype="<u2")
    (out,) = step.build()(iter([Batch(np.arange(1), np.zeros(1), {"image": frames})]))
    return out.data["image"][0] == -1


def test_a_zero_is_bad_mask_round_trips_through_a_cxi_file_into_calibrate(tmp_path):
    run = tmp_path / "run.h5"
    with h5py.File(run, "w") as h5:
        h5["image"] = np.arange(4 * GOOD.size, dtype="<u2").reshape(4, *SHAPE)
        h5["mask"] = np.broadcast_to(GOOD.astype(np.uint8), (4, *SHAPE))  # psana's convention: 0 marks a bad pixel
    out = tmp_path / "out"
    source = {"type": "hdf5", "files": [str(run)], "datasets": {"image": "/image", "mask": "/mask"}}
    spec = parse_spec({"source": source,
                       "metadata": {"fields": {"mask": {"mask": "zero-is-bad"}}},  # over the name's CXI guess
                       "sinks": [{"type": "files", "dir": str(out), "layout": "cxi"}]})
    assert run_local(spec).ok
    (written,) = out.glob("*.cxi")
    with h5py.File(written) as h5:
        assert h5[CXI_MASK].attrs["mask_convention"] == "zero-is-bad"
        assert "mask_convention" not in h5["entry_1/data_1/image"].attrs
    reader = HDF5Source(files=[str(written)], datasets={"image": "/entry_1/data_1/image", "mask": CXI_MASK}).open()
    assert reader.metadata().fields["mask"].mask == "zero-is-bad"  # the file says so, whatever the dataset's name
    from_file = {"file": written, "dataset": CXI_MASK, "frame": 3}
    np.testing.assert_array_equal(masked_by(CalibrateStep(field="image", mask=from_file, masked_value=-1)), ~GOOD)
    agreeing = CalibrateStep(field="image", mask=from_file, mask_convention="zero-is-bad", masked_value=-1)
    np.testing.assert_array_equal(masked_by(agreeing), ~GOOD)
    with pytest.raises(StepError, match="says mask_convention=zero-is-bad but the spec says nonzero-is-bad"):
        CalibrateStep(field="image", mask=from_file, mask_convention="nonzero-is-bad").build()


def test_a_cxi_pixel_mask_that_states_no_convention_is_converted_when_told_and_otherwise_refused(tmp_path):
    path = tmp_path / "detector.cxi"
    with h5py.File(path, "w") as h5:
        h5["entry_1/instrument_1/detector_1/pixel_mask"] = np.where(GOOD, 0, 4).astype("<u4")  # non-zero bits: bad
    reference = {"file": path, "dataset": "/entry_1/instrument_1/detector_1/pixel_mask"}
    with pytest.raises(StepError, match="does not say which pixels it marks bad.*set mask_convention: nonzero-is-bad"):
        CalibrateStep(field="image", mask=reference).build()
    told = CalibrateStep(field="image", mask=reference, mask_convention="nonzero-is-bad", masked_value=-1)
    np.testing.assert_array_equal(masked_by(told), ~GOOD)


def test_a_mask_that_states_its_convention_needs_nothing_from_the_spec(tmp_path):
    path = tmp_path / "constants.h5"
    with h5py.File(path, "w") as h5:
        h5["bad_pixels"] = (~GOOD).astype(np.uint8)
        h5["bad_pixels"].attrs["mask_convention"] = "nonzero-is-bad"
    step = CalibrateStep(field="image", mask={"file": path, "dataset": "/bad_pixels"}, masked_value=-1)
    np.testing.assert_array_equal(masked_by(step), ~GOOD)


def test_a_npy_mask_is_zero_is_bad_unless_the_spec_says_otherwise(tmp_path):
    np.save(tmp_path / "good.npy", GOOD)
    np.save(tmp_path / "bad.npy", ~GOOD)
    default = CalibrateStep(field="image", mask={"file": tmp_path / "good.npy"}, masked_value=-1)
    np.testing.assert_array_equal(masked_by(default), ~GOOD)
    other = CalibrateStep(field="image", mask={"file": tmp_path / "bad.npy"}, mask_convention="nonzero-is-bad",
                          masked_value=-1)
    np.testing.assert_array_equal(masked_by(other), ~GOOD)


def test_a_mask_convention_attribute_that_names_neither_is_refused_by_source_and_step(tmp_path):
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as h5:
        h5["image"] = np.zeros((2, *SHAPE), dtype="<u2")
        h5["bad"] = np.zeros((2, *SHAPE), dtype=np.uint8)
        h5["bad"].attrs["mask_convention"] = "one-is-bad"
    with pytest.raises(SourceError, match="'/bad' has mask_convention='one-is-bad', which is neither zero-is-bad"):
        HDF5Source(files=[str(path)], datasets={"image": "/image", "bad": "/bad"}).open()
    with pytest.raises(StepError, match="calibrate: mask /bad in .* has mask_convention='one-is-bad', which is"):
        CalibrateStep(field="image", mask={"file": path, "dataset": "/bad", "frame": 0}).build()


def test_a_frame_beyond_the_dataset_is_refused_saying_how_many_there_are(tmp_path):
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as h5:
        h5["good"] = np.ones((2, *SHAPE), dtype=np.uint8)
    with pytest.raises(StepError, match=r"has 2 frames along axis 0 \(shape \(2, 6, 8\)\); give a frame below"):
        CalibrateStep(field="image", mask={"file": path, "dataset": "/good", "frame": 2},
                      mask_convention="zero-is-bad").build()


def test_peakfinder8_and_azimuthal_read_a_mask_by_its_stated_convention(tmp_path):
    from beamstream.steps.azimuthal import AzimuthalIntegration, AzimuthalStep
    from beamstream.steps.peakfinder import Peakfinder8Step

    path = tmp_path / "constants.h5"
    with h5py.File(path, "w") as h5:
        h5["bad_pixels"] = (~GOOD).astype(np.uint8)
        h5["bad_pixels"].attrs["mask_convention"] = "nonzero-is-bad"
        h5["good_pixels"] = GOOD.astype(np.uint8)
        h5["good_pixels"].attrs["mask_convention"] = "zero-is-bad"
        h5["entry/pixel_mask"] = (~GOOD).astype(np.uint8)  # CXI's name, no convention stated
    for dataset in ("/bad_pixels", "/good_pixels"):
        finder = Peakfinder8Step(mask={"file": path, "dataset": dataset}).finder()
        np.testing.assert_array_equal(finder._mask((1, *SHAPE), SHAPE), GOOD.astype(np.int8))
        integration = AzimuthalIntegration(AzimuthalStep(field="image", mask={"file": path, "dataset": dataset}))
        np.testing.assert_array_equal(integration.mask, (~GOOD).astype(np.int8))  # pyFAI's: non-zero is masked
    named = {"file": path, "dataset": "/entry/pixel_mask"}
    with pytest.raises(StepError, match="peakfinder8: mask /entry/pixel_mask .* does not say which pixels"):
        Peakfinder8Step(mask=named).finder()._mask((1, *SHAPE), SHAPE)
    integration = AzimuthalIntegration(AzimuthalStep(field="image", mask=named))  # its default is CXI's
    np.testing.assert_array_equal(integration.mask, (~GOOD).astype(np.int8))


def test_padding_is_neither_peak_nor_background_nor_integrated():
    from beamstream.steps.azimuthal import AzimuthalIntegration, AzimuthalStep
    from beamstream.steps.peakfinder import Peakfinder8Step
    from beamstream.wire.metadata import FieldMetadata, RunMetadata

    described = RunMetadata(fields={"image": FieldMetadata(shape=list(SHAPE), valid=[[1, 5], [0, 6]])})
    finder = Peakfinder8Step().complete(described)
    assert finder.valid == [(1, 5), (0, 6)]
    expected = np.zeros(SHAPE, np.int8)
    expected[1:5, 0:6] = 1
    np.testing.assert_array_equal(finder.finder()._mask(SHAPE, SHAPE), expected)
    assert Peakfinder8Step(valid=[(0, 6), (0, 8)]).complete(described).valid == [(0, 6), (0, 8)], "given: kept"
    integration = AzimuthalIntegration(AzimuthalStep(field="image", distance=0.1, pixel_size=(1e-4, 1e-4),
                                                     energy=9000).complete(described))
    integration._prepare(SHAPE)
    np.testing.assert_array_equal(integration.mask, 1 - expected)
    with pytest.raises(StepError, match=r"peakfinder8: field 'image': the real pixels \[\[1, 5\], \[0, 6\]\] do not "
                                        r"fit events of shape \(6, 4\)"):
        finder.finder()._mask((6, 4), (6, 4))
