"""The psana2 source against a real XTC2 run written by psana's own ``xtcwriter``.

The run (10 events) has detectors ``xppcspad`` (raw uint16 (2, 3, 6)), ``xpphsd`` (raw and
fex with only ``calib``) and ``epicsinfo``, scan variables ``motor1``/``motor2`` and the
EPICS variable ``HX2:DVD:GCC:01:PMON``, which has no value in events 0-3. Its events are
about 20 ns apart: closer than float64 ``time`` resolves, so only ``timestamp`` tells them apart.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest
from conftest import run_cli, stream_into_client

from beamstream.batch import Batch
from beamstream.errors import MissingDependency, SourceError
from beamstream.plugins import plugin
from beamstream.sources.psana2 import LCLS_EPOCH_OFFSET, Psana2Source, unix_seconds

EVENTS = 10
EPICS = "HX2:DVD:GCC:01:PMON"
FIELDS = {"image": "xppcspad.raw.raw", "motor": "motor1", "motor2": "motor2"}


def read_all(source: Psana2Source, ranks: int = 1) -> list[list[Batch]]:
    """The batches each of ``ranks`` ranks reads."""
    reader = source.open()
    return [list(reader.read(reader.partition(rank, ranks))) for rank in range(ranks)]


def psana_events(psana, path: str) -> list[tuple[int, dict[str, object]]]:
    """(timestamp, value of each FIELDS path) of every event, read with psana directly."""
    run = next(psana.DataSource(files=path, skip_calib_load="all").runs())
    cspad, motor, motor2 = run.Detector("xppcspad"), run.Detector("motor1"), run.Detector("motor2")
    return [
        (evt.timestamp, {"image": cspad.raw.raw(evt), "motor": motor(evt), "motor2": motor2(evt)})
        for evt in run.events()
    ]


def test_registered_as_plugin():
    assert plugin("sources", "psana2") is Psana2Source


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"image": "xppcspad..raw"}, "'xppcspad..raw' has an empty name between dots"),
        ({"image": ".raw.raw"}, "'.raw.raw' has an empty name between dots"),
        ({"timestamp": "xppcspad.raw.raw"}, "'timestamp' is taken"),
        ({}, "at least 1"),
    ],
)
def test_spec_rejects_malformed_fields(fields, text):
    with pytest.raises(pydantic.ValidationError, match=text):
        Psana2Source(files=["data.xtc2"], fields=fields)


@pytest.mark.psana
@pytest.mark.parametrize("path", ["xppcspad.raw.calib", "xppcspad.raw.image"])
def test_an_area_detectors_calibrated_methods_are_refused_without_calibration_constants(xtc, path):
    reader = path.rpartition(".")[0]
    with pytest.raises(SourceError, match=rf"field 'frame': {path} applies calibration constants, "
                       rf"but skip_calib_load is true.*read {reader}.raw instead, or set skip_calib_load: false"):
        Psana2Source(files=[xtc], fields={"raw": "xppcspad.raw.raw", "frame": path}).open()


@pytest.mark.psana
def test_a_digitizers_calib_is_read_without_calibration_constants(xtc, psana):
    """hsd's ``raw`` and ``fex`` offer ``calib`` but no ``image``: not an area detector, nothing to refuse."""
    (batches,) = read_all(Psana2Source(files=[xtc], fields={"wave": "xpphsd.raw.calib", "fex": "xpphsd.fex.calib"}))
    run = next(psana.DataSource(files=xtc, skip_calib_load="all").runs())
    hsd = run.Detector("xpphsd")
    expected = [(hsd.raw.calib(evt), hsd.fex.calib(evt)) for evt in run.events()]
    assert len(batches) == len(expected) == EVENTS
    for batch, (wave, fex) in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(batch.data["wave"][0], wave)
        np.testing.assert_array_equal(batch.data["fex"][0], fex)


def test_calibrated_methods_are_accepted_where_constants_load():
    source = Psana2Source(files=["data.xtc2"], fields={"frame": "xppcspad.raw.calib"}, skip_calib_load=False)
    assert source.fields == {"frame": "xppcspad.raw.calib"}


@pytest.mark.psana
def test_produce_refuses_a_calib_field_before_reading(write_spec, xtc):
    path = write_spec({"source": {"type": "psana2", "files": [xtc], "fields": {"frame": "xppcspad.raw.calib"}},
                       "sinks": [{"type": "stream", "endpoint": "tcp://127.0.0.1:5555"}]})
    result = run_cli("produce", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "field 'frame': xppcspad.raw.calib applies calibration constants" in result.stderr


def test_spec_needs_a_file():
    with pytest.raises(pydantic.ValidationError, match="at least 1"):
        Psana2Source(files=[], fields={"image": "xppcspad.raw.raw"})


def test_unix_seconds_counts_from_1990():
    assert unix_seconds((1 << 32) | 500_000_000) == LCLS_EPOCH_OFFSET + 1.5
    epoch_1990 = datetime.datetime(1990, 1, 1, tzinfo=datetime.UTC).timestamp()
    assert LCLS_EPOCH_OFFSET == epoch_1990


def test_missing_psana_raises_install_hint(monkeypatch):
    monkeypatch.setenv("PS_PARALLEL", "none")
    monkeypatch.setitem(sys.modules, "psana", None)
    source = Psana2Source(files=["data.xtc2"], fields={"image": "xppcspad.raw.raw"})
    with pytest.raises(MissingDependency, match=r"pip install 'beamstream\[psana\]'.*libkrb5-dev"):
        source.open()


@pytest.mark.psana
def test_events_equal_psanas_own_read(psana, xtc):
    (batches,) = read_all(Psana2Source(files=[xtc], fields=FIELDS))
    expected = psana_events(psana, xtc)
    assert [int(batch.seq[0]) for batch in batches] == list(range(EVENTS)) == list(range(len(expected)))
    for batch, (timestamp, values) in zip(batches, expected, strict=True):
        assert len(batch) == 1 and set(batch.data) == {"timestamp", *FIELDS}
        assert batch.data["timestamp"].dtype == np.uint64 and int(batch.data["timestamp"][0]) == timestamp
        for name, value in values.items():
            value = np.asarray(value)
            assert batch.data[name].dtype == value.dtype and batch.data[name].shape == (1, *value.shape)
            np.testing.assert_array_equal(batch.data[name][0], value)
    assert batches[0].data["image"].shape == (1, 2, 3, 6)


@pytest.mark.psana
def test_time_is_unix_seconds_of_the_psana_timestamp(psana, xtc):
    from psana.detector.utils_psana import seconds

    (batches,) = read_all(Psana2Source(files=[xtc], fields={"image": "xppcspad.raw.raw"}))
    run = next(psana.DataSource(files=xtc, skip_calib_load="all").runs())
    for batch, evt in zip(batches, run.events(), strict=True):
        assert batch.time.dtype == np.float64
        assert batch.time[0] == pytest.approx(seconds(evt.timestamp), abs=1e-6)
        as_datetime = datetime.datetime.fromtimestamp(batch.time[0], datetime.UTC).replace(tzinfo=None)
        assert abs(as_datetime - evt.datetime()) < datetime.timedelta(microseconds=2)
    assert np.all(np.diff(np.concatenate([batch.time for batch in batches])) >= 0)
    assert np.all(np.diff(np.concatenate([batch.data["timestamp"] for batch in batches]).astype(np.int64)) > 0)


@pytest.mark.psana
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_shares_cover_every_event_once(xtc, ranks):
    per_rank = read_all(Psana2Source(files=[xtc], fields={"image": "xppcspad.raw.raw"}), ranks)
    seqs = [int(batch.seq[0]) for batches in per_rank for batch in batches]
    assert sorted(seqs) == list(range(EVENTS))
    for rank, batches in enumerate(per_rank):
        assert [int(batch.seq[0]) for batch in batches] == list(range(rank, EVENTS, ranks))


@pytest.mark.psana
def test_max_events_bounds_the_read_not_the_share(xtc):
    reader = Psana2Source(files=[xtc], fields={"image": "xppcspad.raw.raw"}, max_events=4).open()
    share = reader.partition(1, 2)
    assert (share.start, share.stop, share.block) == (0, None, 1)
    assert [int(batch.seq[0]) for batch in reader.read(share)] == [1, 3]


@pytest.mark.psana
def test_files_are_read_in_order_with_consecutive_seq(xtc, tmp_path):
    second = tmp_path / "second.xtc2"
    second.write_bytes(Path(xtc).read_bytes())
    (batches,) = read_all(Psana2Source(files=[xtc, str(second)], fields={"image": "xppcspad.raw.raw"}))
    assert [int(batch.seq[0]) for batch in batches] == list(range(2 * EVENTS))
    stamps = [int(batch.data["timestamp"][0]) for batch in batches]
    assert stamps[:EVENTS] == stamps[EVENTS:]


@pytest.mark.psana
def test_missing_value_is_an_error_naming_event_and_field(xtc):
    reader = Psana2Source(files=[xtc], fields={"pressure": EPICS}).open()
    with pytest.raises(SourceError, match=rf"event 0 .*{xtc}.*'pressure' \({EPICS}\).*on_missing: skip"):
        list(reader.read(reader.partition(0, 1)))


@pytest.mark.psana
def test_missing_value_skips_the_event_when_asked(psana, xtc):
    (batches,) = read_all(Psana2Source(files=[xtc], fields={"pressure": EPICS}, on_missing="skip"))
    run = next(psana.DataSource(files=xtc, skip_calib_load="all").runs())
    pressure = run.Detector(EPICS)
    expected = {seq: value for seq, value in enumerate(pressure(evt) for evt in run.events()) if value is not None}
    assert 0 < len(expected) < EVENTS
    assert {int(batch.seq[0]): float(batch.data["pressure"][0]) for batch in batches} == expected


@pytest.mark.psana
def test_missing_file_is_named(psana, tmp_path):
    missing = str(tmp_path / "nope.xtc2")
    with pytest.raises(SourceError, match=rf"file '{missing}' not found"):
        Psana2Source(files=[missing], fields={"image": "xppcspad.raw.raw"}).open()


@pytest.mark.psana
def test_unreadable_file_is_named(psana, tmp_path):
    garbage = tmp_path / "garbage.xtc2"
    garbage.write_bytes(b"not xtc2\n")
    with pytest.raises(SourceError, match=rf"cannot read {garbage} as XTC2"):
        Psana2Source(files=[str(garbage)], fields={"image": "xppcspad.raw.raw"}).open()


@pytest.mark.psana
def test_unknown_detector_lists_the_detectors(xtc):
    with pytest.raises(SourceError, match=r"no detector 'jungfrau'.*its detectors: epicsinfo, xppcspad, xpphsd"):
        Psana2Source(files=[xtc], fields={"image": "jungfrau.raw.raw"}).open()


@pytest.mark.psana
@pytest.mark.parametrize("path", ["xppcspad.fex.raw", "xppcspad.raw.peaks"])
def test_unknown_interface_or_method_lists_what_the_detector_offers(xtc, path):
    offered = "xppcspad.raw.calib, xppcspad.raw.config, xppcspad.raw.image, xppcspad.raw.raw"
    with pytest.raises(SourceError, match=rf"has no {path[9:]} .*it offers: {offered}"):
        Psana2Source(files=[xtc], fields={"image": path}).open()


@pytest.mark.psana
def test_unknown_variable_lists_detectors_and_variables(xtc):
    with pytest.raises(SourceError, match=rf"no detector or variable 'motor9'.*variables: {EPICS}, HX2:DVD:GPI:01:PMON, motor1, motor2"):
        Psana2Source(files=[xtc], fields={"x": "motor9"}).open()


@pytest.mark.psana
def test_detector_without_method_asks_for_one(xtc):
    with pytest.raises(SourceError, match=r"'xpphsd' is a detector; name one of its methods: xpphsd.fex.calib"):
        Psana2Source(files=[xtc], fields={"x": "xpphsd"}).open()


@pytest.mark.psana
def test_non_array_method_is_an_error(xtc):
    reader = Psana2Source(files=[xtc], fields={"config": "xppcspad.raw.config"}).open()
    with pytest.raises(SourceError, match=r"field 'config' \(xppcspad.raw.config\) gave dict .*not a numeric array"):
        next(reader.read(reader.partition(0, 1)))


@pytest.mark.psana
def test_exp_and_run_must_match_the_files(xtc):
    Psana2Source(files=[xtc], exp="xpptut15", run=14, fields={"image": "xppcspad.raw.raw"}).open()
    with pytest.raises(SourceError, match=r"is run 14, not 15; fix run:"):
        Psana2Source(files=[xtc], run=15, fields={"image": "xppcspad.raw.raw"}).open()
    with pytest.raises(SourceError, match=r"is exp 'xpptut15', not 'mfx123'; fix exp:"):
        Psana2Source(files=[xtc], exp="mfx123", fields={"image": "xppcspad.raw.raw"}).open()


@pytest.mark.psana
def test_client_receives_what_psana_reads(psana, xtc, tmp_path):
    """Two producer processes stream the run; the client's arrays equal psana's own read, element for element."""
    from beamstream.spec import parse_spec

    endpoint = f"ipc://{tmp_path / 'stream'}"
    spec = parse_spec({
        "source": {"type": "psana2", "files": [xtc], "fields": {"image": "xppcspad.raw.raw", "motor": "motor1"}},
        "steps": [{"type": "batch", "size": 2}],
        "serializer": {"type": "hdf5"},
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    })
    messages, client = stream_into_client(spec, endpoint, workers=2)
    events = {event.seq: event for message in messages for event in message.events()}
    assert client.report.complete and sorted(events) == list(range(EVENTS))
    for seq, (timestamp, values) in enumerate(psana_events(psana, xtc)):
        np.testing.assert_array_equal(events[seq].data["image"], values["image"])
        assert events[seq].data["motor"] == values["motor"]
        assert events[seq].data["timestamp"] == timestamp
