"""The stream's description follows every step: a field ``calibrate`` makes, the real pixels after ``pad`` (its
``valid`` region through roi/bin/pad/channels), and ``pad`` values the field's dtype cannot hold (issue 23)."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from beamstream.batch import Batch
from beamstream.description import describe_steps
from beamstream.errors import SpecError
from beamstream.plugins import plugin
from beamstream.producer import run_local
from beamstream.spec import parse_spec
from beamstream.wire.metadata import FieldMetadata, RunMetadata
from conftest import run_cli, stream_into_client

GEOMETRY = {"fields": {"image": {"pixel_size": [1e-4, 1e-4], "distance": 0.1}}}


def simulated(steps: list, sinks: list, shape: list[int] = (64, 48), dtype: str = "uint16", **spec) -> dict:
    return {"source": {"type": "simulated", "n_events": 6, "events_per_read": 3,
                       "detectors": [{"kind": "image", "shape": list(shape), "dtype": dtype}]},
            "steps": steps, "sinks": sinks, **spec}


def test_a_calibrate_output_field_has_its_geometry_in_the_client_and_in_the_cxi_file(tmp_path):
    out = tmp_path / "out"
    endpoint = f"ipc://{tmp_path / 'stream'}"
    steps = [{"type": "roi", "field": "image", "start": [8, 4], "stop": [40, 36]},
             {"type": "calibrate", "field": "image", "output": "data", "pedestal": 0.5},
             {"type": "pad", "field": "data", "shape": [40, 40], "align": "centre", "value": -1}]
    spec = parse_spec(simulated(steps, [{"type": "stream", "endpoint": endpoint},
                                        {"type": "files", "dir": str(out), "layout": "cxi"}], metadata=GEOMETRY))
    messages, client = stream_into_client(spec, endpoint)
    data, image = client.metadata.fields["data"], client.metadata.fields["image"]
    assert (data.detector, data.source) == ("image", "simulated image, calibrated")
    assert data.distance == 0.1 and data.pixel_size == pytest.approx([1e-4, 1e-4])
    assert data.shape == [40, 40] and data.origin == [4, 0] and data.valid == [[4, 36], [4, 36]]
    assert data.dtype == "<f4" and image.dtype == "<u2"
    assert image.shape == [32, 32] and image.origin == [8, 4] and image.valid == []
    frames = np.concatenate([message.arrays["data"] for message in messages])
    assert frames.dtype == np.float32 and frames.shape == (6, 40, 40)
    assert (frames[:, 4:36, 4:36] != -1).all() and (frames[:, :4] == -1).all() and (frames[:, :, 36:] == -1).all()
    (path,) = out.glob("*.cxi")
    with h5py.File(path) as h5:
        detector = h5["entry_1/instrument_1/detector_1"]
        assert detector["data"] == h5["entry_1/data_1/data"] and detector["data"].shape == (6, 40, 40)
        assert detector["distance"][()] == 0.1 and detector["distance"].attrs["units"] == "m"
        assert detector["x_pixel_size"][()] == pytest.approx(1e-4)
        assert detector["y_pixel_size"][()] == pytest.approx(1e-4)


def test_spec_check_passes_a_step_on_a_field_calibrate_makes_and_refuses_one_before_it(write_spec):
    later = simulated([{"type": "calibrate", "field": "image", "output": "data"},
                       {"type": "bin", "field": "data", "factors": [2, 2]}],
                      [{"type": "stream", "endpoint": "tcp://127.0.0.1:5555"}])
    result = run_cli("spec", "check", str(write_spec(later)))
    assert result.returncode == 0, result.stderr
    before = {**later, "steps": later["steps"][::-1]}
    result = run_cli("spec", "check", str(write_spec(before, "before.yaml")))
    assert result.returncode == 1
    assert "steps[0] (bin): field 'data' is not there; the batches have: image, image_peaks" in result.stderr


@pytest.mark.parametrize(("dtype", "value", "problem"), [
    ("float32", 1e40, "value 1e+40 overflows float32 (it would become inf; the largest float32 is "
                      "3.4028234663852886e+38): use a value within ±3.4028234663852886e+38, or inf, or cast the "
                      "field to float64 first"),
    ("float16", 0.1, "value 0.1 is not exactly representable in float16 (it would be stored as 0.0999755859375): "
                     "use 0.0999755859375, or a value float16 holds exactly, or cast the field first"),
    ("uint8", 256, "value 256.0 cannot be stored in uint8, which holds whole numbers from 0 to 255: use one of "
                   "those, or cast the field first"),
    ("int16", 0.5, "value 0.5 cannot be stored in int16, which holds whole numbers from -32768 to 32767"),
    ("uint16", math.nan, "value nan cannot be stored in uint16"),
])
def test_spec_check_refuses_a_pad_value_the_fields_dtype_cannot_hold_saying_what_to_use(write_spec, dtype, value,
                                                                                        problem):
    spec = simulated([{"type": "pad", "field": "image", "shape": [80, 64], "value": value}],
                     [{"type": "stream", "endpoint": "tcp://127.0.0.1:5555"}], dtype=dtype)
    result = run_cli("spec", "check", str(write_spec(spec)))
    assert result.returncode == 1
    assert f"steps[0] (pad): field 'image': {problem}" in " ".join(result.stderr.split())


@pytest.mark.parametrize(("dtype", "value"), [("float16", 0.0999755859375), ("float32", math.nan),
                                              ("float32", -math.inf), ("float32", 3.4028234663852886e38),
                                              ("uint8", 255), ("int8", -128), ("bool", 1)])
def test_a_pad_value_the_dtype_holds_exactly_is_accepted_and_written_as_given(dtype, value):
    spec = parse_spec(simulated([{"type": "pad", "field": "image", "shape": [8, 8], "value": value}],
                                [{"type": "stream", "endpoint": "tcp://127.0.0.1:5555"}], shape=(6, 7), dtype=dtype))
    padded = spec.steps[0].build().apply(Batch(np.arange(2), np.zeros(2), {"image": np.zeros((2, 6, 7), dtype)}))
    corner = padded.data["image"][:, 7, 7]
    assert padded.data["image"].dtype == np.dtype(dtype)
    assert np.isnan(corner).all() if math.isnan(value) else (corner == np.array(value, dtype)).all()
    assert float(corner[0]) == value or math.isnan(value)


def test_the_dtype_steps_give_is_what_later_pads_are_checked_against(write_spec):
    """uint16 → bin mean → float64 takes 0.1; uint16 → cast float16 or complex64 does not; calibrate → float32
    refuses 1e40."""
    sinks = [{"type": "stream", "endpoint": "tcp://127.0.0.1:5555"}]
    pad = {"type": "pad", "field": "image", "shape": [80, 64], "value": 0.1}
    parse_spec(simulated([{"type": "bin", "field": "image", "factors": [2, 2], "reduce": "mean"}, pad], sinks))
    with pytest.raises(SpecError, match=r"steps\[1\] \(pad\): field 'image': value 0.1 is not exactly .* float16"):
        parse_spec(simulated([{"type": "cast", "dtype": "float16"}, pad], sinks))
    with pytest.raises(SpecError, match=r"value 0.1 is not exactly representable in complex64 \(it would be stored "
                                        r"as 0.10000000149011612\)"):
        parse_spec(simulated([{"type": "cast", "fields": ["image"], "dtype": "complex64"}, pad], sinks))
    with pytest.raises(SpecError, match=r"steps\[1\] \(pad\): field 'image': value 1e\+40 overflows float32"):
        parse_spec(simulated([{"type": "calibrate", "field": "image"}, {**pad, "value": 1e40}], sinks))


def test_a_pad_value_is_refused_before_any_event_is_sent_when_only_the_file_says_the_dtype(tmp_path):
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as h5:
        h5["frames"] = np.ones((4, 3, 5), dtype="<f2")
    out = tmp_path / "out"
    spec = parse_spec({"source": {"type": "hdf5", "files": [str(path)], "datasets": {"image": "/frames"}},
                       "steps": [{"type": "pad", "field": "image", "shape": [4, 8], "value": 0.1}],
                       "sinks": [{"type": "files", "dir": str(out), "layout": "messages"}]})
    result = run_local(spec)
    assert not result.ok and result.workers[0].events == 0
    assert ("steps[0] (pad): field 'image': value 0.1 is not exactly representable in float16 (it would be stored "
            "as 0.0999755859375)") in result.errors[0]


PIPELINES = {  # steps after a float32 frame of 18x45 is padded with NaN → the valid region they describe
    "start": ([{}], [[0, 18], [0, 45]]),
    "centre": ([{"align": "centre"}], [[6, 24], [7, 52]]),
    "roi inside": ([{"align": "centre"}, {"type": "roi", "start": [5, 10], "stop": [28, 50]}], [[1, 19], [0, 40]]),
    "roi of padding only": ([{}, {"type": "roi", "start": [20, 0], "stop": [30, 60]}], [[0, 0], [0, 45]]),
    "roi of real pixels only": ([{}, {"type": "roi", "start": [2, 3], "stop": [10, 40]}], []),
    "bin": ([{"align": "centre"}, {"type": "bin", "factors": [4, 4]}], [[2, 6], [2, 13]]),
    "bin, remainder cropped": ([{}, {"type": "bin", "factors": [7, 7]}], [[0, 2], [0, 6]]),
    "roi, bin, pad again": ([{"align": "centre"}, {"type": "roi", "start": [3, 0], "stop": [27, 60]},
                             {"type": "bin", "factors": [2, 3]},
                             {"type": "pad", "shape": [16, 24], "align": "centre", "value": math.nan}],
                            [[4, 12], [5, 19]]),
    "channels": ([{}, {"type": "channels"}], [[0, 1], [0, 18], [0, 45]]),
}


@pytest.mark.parametrize("name", PIPELINES)
def test_valid_marks_exactly_the_pixels_no_padding_reached(name):
    """NaN padding spreads into every sum it enters, so after the steps the pixels inside ``valid`` must all be finite
    and those outside all NaN: the description and the steps' arithmetic agree."""
    changes, valid = PIPELINES[name]
    specs = [{"type": "pad", "field": "image", "shape": [30, 60], "value": math.nan, **changes[0]},
             *({"field": "image", **step} for step in changes[1:])]
    steps = [plugin("steps", step["type"]).model_validate(step) for step in specs]
    before = RunMetadata(fields={"image": FieldMetadata(shape=[18, 45], dtype="<f4", pixel_size=[1e-4, 1e-4])})
    _, described = describe_steps(steps, before)
    entry = described.fields["image"]
    assert entry.valid == valid
    batch = Batch(np.arange(2), np.zeros(2), {"image": np.ones((2, 18, 45), np.float32)})
    for step in steps:
        batch = step.build().apply(batch)
    frames = batch.data["image"]
    assert list(frames.shape[1:]) == entry.shape
    inside = np.zeros(frames.shape[1:], bool)
    inside[tuple(slice(start, stop) for start, stop in (valid or [[0, n] for n in entry.shape]))] = True
    assert np.isfinite(frames[:, inside]).all() and np.isnan(frames[:, ~inside]).all()


def test_a_pad_that_adds_nothing_leaves_valid_absent_and_a_second_pad_moves_it():
    pad = plugin("steps", "pad")
    before = RunMetadata(fields={"image": FieldMetadata(shape=[18, 45], dtype="<u2")})
    same = pad(field="image", shape=[18, 45], align="centre").describe(before)
    assert same.fields["image"].valid == [] and same.fields["image"].origin == [0, 0]
    once = pad(field="image", shape=[47], align="centre").describe(before)
    twice = pad(field="image", shape=[24, 50], align="centre").describe(once)
    assert once.fields["image"].valid == [[0, 18], [1, 46]] and once.fields["image"].origin == [0, -1]
    assert twice.fields["image"].valid == [[3, 21], [2, 47]] and twice.fields["image"].origin == [-3, -2]


def test_calibrate_in_place_describes_float32_values_of_no_stated_unit_and_keeps_the_geometry():
    raw = FieldMetadata(detector="jungfrau", source="psana jungfrau.raw.raw", shape=[4, 6], units="ADU",
                        origin=[2, 0], binning=[1, 1], pixel_size=[75e-6, 75e-6], distance=0.2, dtype="<u2",
                        valid=[[0, 3], [0, 6]])
    after = plugin("steps", "calibrate")(field="raw", gain=0.1).describe(RunMetadata(fields={"raw": raw}))
    assert set(after.fields) == {"raw"}
    assert after.fields["raw"] == FieldMetadata(detector="jungfrau", source="psana jungfrau.raw.raw, calibrated",
                                                shape=[4, 6], origin=[2, 0], binning=[1, 1], pixel_size=[75e-6, 75e-6],
                                                distance=0.2, dtype="<f4", valid=[[0, 3], [0, 6]])
