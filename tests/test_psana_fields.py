"""Fields of the psana2 source as psana exposes them (beamstream.sources.psana_fields), read from real XTC2 runs.

Two runs: the one psana's ``xtcwriter`` writes (conftest ``xtc``: ``xppcspad``, ``xpphsd`` whose
``_info(evt)`` segment holds ``arrayFex`` float32 (2, 3) = 142..147, ``floatFex`` 41.0, ``enumFex2.value``
5 and the text ``charStrFex``, ``epicsinfo``, scan variables), and one written here with psana's own
``DgramEdit`` holding an LCLS-II timing detector (``timing``: psana's ``ts_raw_2_1_0``, whose
``eventcodes(evt)`` unpacks the 18 uint16 ``sequenceValues`` into 288 flags, one per event code).
"""

from __future__ import annotations

import re

import numpy as np
import pydantic
import pytest
from conftest import stream_into_client

from beamstream.batch import Batch
from beamstream.errors import SourceError
from beamstream.sources.psana2 import Psana2Source
from beamstream.sources.psana_fields import FieldEntry, FieldReader, _calls

EPICS = "HX2:DVD:GCC:01:PMON"
HSD_FEX = [[142.0, 143.0, 144.0], [145.0, 146.0, 147.0]]
TIMING_EVENTS = [(40, 41), (40, 162, 287), (), (0, 280), None]  # event codes set per event; None: no timing data


def read_all(**spec) -> list[Batch]:
    reader = Psana2Source(**spec).open()
    return list(reader.read(reader.partition(0, 1)))


def open_fails(xtc: str, match: str, **spec) -> None:
    with pytest.raises(SourceError, match=match):
        Psana2Source(files=[xtc], **spec).open()


@pytest.fixture(scope="module")
def timing_xtc(psana, tmp_path_factory) -> str:
    """A run (tmo12345, run 7) of len(TIMING_EVENTS) events written with psana's DgramEdit: a ``timing`` detector
    (dettype ts, raw 2.1.0) with the event codes of TIMING_EVENTS, as the DAQ records them."""
    from psana.dgramedit import AlgDef, DetectorDef, DgramEdit
    from psana.psexp import TransitionId

    size = 1 << 16
    config = DgramEdit(transition_id=TransitionId.Configure, bufsize=size)
    timing = config.Detector(DetectorDef("timing", "ts", "detnum1"), AlgDef("raw", 2, 1, 0),
                             {"sequenceValues": (np.uint16, 1)})
    runinfo = config.Detector(DetectorDef("runinfo", "runinfo", ""), AlgDef("runinfo", 0, 0, 1),
                              {"expt": (str, 1), "runnum": (np.uint32, 0)})
    buffer = memoryview(bytearray(size))
    path = tmp_path_factory.mktemp("timing") / "timing.xtc2"
    with path.open("wb") as out:
        def save(dgram: DgramEdit) -> None:
            dgram.save(buffer)
            out.write(buffer[:dgram.size])

        save(config)
        begin = DgramEdit(config_dgramedit=config, transition_id=TransitionId.BeginRun, ts=1, bufsize=size)
        runinfo.runinfo.expt, runinfo.runinfo.runnum = "tmo12345", 7
        begin.adddata(runinfo.runinfo)
        save(begin)
        for number, codes in enumerate(TIMING_EVENTS):
            event = DgramEdit(config_dgramedit=config, transition_id=TransitionId.L1Accept, ts=2 + number, bufsize=size)
            if codes is not None:
                words = np.zeros(18, np.uint16)
                for code in codes:
                    words[code >> 4] |= 1 << (code & 15)
                timing.raw.sequenceValues = words
                event.adddata(timing.raw)
            save(event)
    return str(path)


def test_entries_flatten_a_detectors_fields_and_keep_paths_as_given():
    source = Psana2Source(files=["d.xtc2"], fields={
        "image": "xppcspad.raw.raw",
        "codes": {"path": "timing.raw.eventcodes", "dtype": "bool"},
        "hsd": {"detector": "xpphsd", "fields": {"peaks": "fex._info.arrayFex", "gain": {"path": "fex._info.enumFex2.value",
                                                                                        "dtype": "int8"}}},
    })
    assert {name: (entry.path, entry.dtype) for name, entry in source.entries().items()} == {
        "image": ("xppcspad.raw.raw", None), "codes": ("timing.raw.eventcodes", "bool"),
        "peaks": ("xpphsd.fex._info.arrayFex", None), "gain": ("xpphsd.fex._info.enumFex2.value", "int8")}
    assert source.field_names() == {"image", "codes", "peaks", "gain", "timestamp"}
    assert source.fields["image"] == "xppcspad.raw.raw"


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"a": {"path": "x.y", "dtype": "U4"}}, "'U4' is not a numeric little-endian dtype"),
        ({"a": {"path": "x.y", "dtype": ">f4"}}, "'>f4' is not a numeric little-endian dtype"),
        ({"a": {"path": "x.y", "dtype": "float"}}, None),
        ({"a": {"path": "x.y", "dtype": "pixels"}}, "'pixels' is not a numpy dtype"),
        ({"a": {"path": "x.y", "dtyp": "uint8"}}, "dtyp"),
        ({"g": {"detector": "xpp.cspad", "fields": {"a": "raw.raw"}}}, "'xpp.cspad' is not a detector name"),
        ({"g": {"detector": "xppcspad", "fields": {"timestamp": "raw.raw"}}},
         r"field 'timestamp' \(in g\): 'timestamp' is taken"),
        ({"raw": "xppcspad.raw.raw", "g": {"detector": "xppcspad", "fields": {"raw": "raw.raw"}}},
         r"field 'raw' \(in g\): a field needs a name of its own"),
        ({"g": {"detector": "xppcspad", "fields": {"a": "raw..raw"}}}, "'xppcspad.raw..raw' has an empty name"),
        ({"g": {"detector": "xppcspad", "fields": {}}}, "at least 1"),
        ({"a": 3}, r"expected a path \(xppcspad.raw.raw\), \{path, dtype\} or \{detector, fields\}"),
    ],
)
def test_spec_rejects_malformed_entries(fields, text):
    if text is None:
        Psana2Source(files=["d.xtc2"], fields=fields)
        return
    with pytest.raises(pydantic.ValidationError, match=text):
        Psana2Source(files=["d.xtc2"], fields=fields)


@pytest.mark.psana
def test_an_area_detectors_calibrating_method_is_refused_anywhere_in_a_path(xtc):
    with pytest.raises(SourceError, match=r"field 'frame': xppcspad.raw.calib applies calibration "
                       r"constants.*read xppcspad.raw.raw instead"):
        Psana2Source(files=[xtc], fields={"g": {"detector": "xppcspad", "fields": {"frame": "raw.calib.T"}}}).open()


def test_paths_reach_no_python_internals():
    with pytest.raises(pydantic.ValidationError, match=r"field 'f': 'xppcspad.raw.__class__.__init__' names Python's "
                       r"internals \(a name starting with __\); a path reads psana's attributes and methods only"):
        Psana2Source(files=["d.xtc2"], fields={"f": "xppcspad.raw.__class__.__init__"})
    with pytest.raises(pydantic.ValidationError, match=r"constant 'c': 'xppcspad.__dict__' names Python's internals"):
        Psana2Source(files=["d.xtc2"], fields={"f": "xppcspad.raw.raw"}, constants={"c": "xppcspad.__dict__"})


def test_only_psanas_own_methods_are_called():
    """A spec comes over the network: the methods of plain Python values (here a dict's ``clear``) are never called."""
    with pytest.raises(SourceError, match=r"field 'f': d.x.clear is builtin_function_or_method, not one of psana's "
                       r"methods; a path calls psana's own methods only"):
        _calls({}.clear, "d.x.clear", "field 'f'")
    assert not _calls(np.zeros(3), "d.x.y", "field 'f'")


@pytest.mark.parametrize(("constants", "text"), [({"": "xppcspad.raw._uniqueid"}, "a name has 1 to 256"),
                                                 ({"id": "xppcspad..x"}, "constant 'id': 'xppcspad..x' has an empty")])
def test_spec_rejects_malformed_constants(constants, text):
    with pytest.raises(pydantic.ValidationError, match=text):
        Psana2Source(files=["d.xtc2"], fields={"image": "xppcspad.raw.raw"}, constants=constants)


@pytest.mark.parametrize(("value", "dtype", "expected"), [
    ([0, 1, 1], "bool", [False, True, True]),
    ([0, 2], "bool", "the int64 value np.int64(2) at index (1,) is not exactly a bool"),
    (np.array([-1, 5]), "uint64", "the int64 value np.int64(-1) at index (0,)"),
    (np.array([2**64 - 1], np.uint64), "int64", "the uint64 value np.uint64(18446744073709551615)"),
    (300, "uint8", "the int64 value np.int64(300) is not exactly a uint8 (it would become np.uint8(44))"),
    ([1.5], "int32", "the float64 value np.float64(1.5) at index (0,)"),
    ([np.nan, 1.0], "float32", [np.nan, 1.0]),
    ([np.nan], "int32", "the float64 value np.float64(nan)"),
    ([0.1], "float32", "the float64 value np.float64(0.1)"),
    ([2**24 + 1], "float32", "the int64 value np.int64(16777217)"),
    ([1 + 0j], "float64", [1.0]),
    ([1 + 1j], "float64", "the complex128 value np.complex128(1+1j)"),
])
def test_dtype_keeps_every_value_or_names_one_it_would_change(value, dtype, expected):
    """The conversion alone, fed by a stand-in for a psana method."""
    class Event:
        timestamp = 7

    reader = FieldReader("f", FieldEntry(path="d.raw.m", dtype=dtype), lambda evt: value, [], "run.xtc2")
    if isinstance(expected, str):
        with pytest.raises(SourceError, match=re.escape(expected)):
            reader(Event())
    else:
        row = reader(Event())
        assert row.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(row, [expected])


@pytest.mark.psana
def test_attribute_chains_read_what_psana_gives(psana, xtc):
    """Chains through a method that takes the event (``_info(evt)``) into its result's attributes, any depth."""
    batches = read_all(files=[xtc], fields={
        "segment0": "xppcspad.raw._info.arrayRaw",
        "segment1": "xppcspad.raw.raw.1",
        "hsd": {"detector": "xpphsd", "fields": {"peaks": "fex._info.arrayFex", "level": "fex._info.floatFex",
                                                  "gain": "fex._info.enumFex2.value", "pgp": "raw._info.array0Pgp"}},
    })
    run = next(psana.DataSource(files=xtc, skip_calib_load="all").runs())
    cspad, hsd = run.Detector("xppcspad"), run.Detector("xpphsd")
    events = list(run.events())
    assert len(batches) == len(events) == 10
    for batch, evt in zip(batches, events, strict=True):
        fex = hsd.fex._info(evt)
        expected = {"segment0": cspad.raw._info(evt).arrayRaw, "peaks": fex.arrayFex, "level": fex.floatFex,
                    "gain": fex.enumFex2.value, "pgp": hsd.raw._info(evt).array0Pgp}
        for name, value in expected.items():
            value = np.asarray(value)
            assert batch.data[name].dtype == value.dtype and batch.data[name].shape == (1, *value.shape), name
            np.testing.assert_array_equal(batch.data[name][0], value)
        np.testing.assert_array_equal(batch.data["segment0"][0], cspad.raw.raw(evt)[0])
        np.testing.assert_array_equal(batch.data["segment1"][0], cspad.raw.raw(evt)[1])
    assert batches[0].data["peaks"].tolist() == [HSD_FEX] and batches[0].data["gain"].tolist() == [5]


@pytest.mark.psana
def test_dtype_converts_exactly_or_names_the_value_that_does_not_fit(xtc):
    (batch, *_) = read_all(files=[xtc], max_events=1, fields={
        "peaks": {"path": "xpphsd.fex._info.arrayFex", "dtype": "uint8"},
        "image": {"path": "xppcspad.raw.raw", "dtype": "uint8"},
        "level": {"path": "xpphsd.fex._info.floatFex", "dtype": "int16"},
        "wide": {"path": "xppcspad.raw.raw", "dtype": "float64"},
    })
    assert batch.data["peaks"].dtype == np.uint8 and batch.data["peaks"].tolist() == [HSD_FEX]
    assert batch.data["image"].dtype == np.uint8 and batch.data["image"].shape == (1, 2, 3, 6)
    assert batch.data["level"].dtype == np.int16 and batch.data["level"].tolist() == [41]
    np.testing.assert_array_equal(batch.data["wide"], batch.data["image"])
    reader = Psana2Source(files=[xtc], fields={"peaks": {"path": "xpphsd.fex._info.arrayFex", "dtype": "int8"}}).open()
    with pytest.raises(SourceError, match=r"field 'peaks' \(xpphsd.fex._info.arrayFex\), event with timestamp \d+ "
                       r"of .*: the float32 value np.float32\(142.0\) at index \(0, 0\) is not exactly a int8 \(it would "
                       r"become np.int8\(-114\)\).*add a cast step"):
        next(reader.read(reader.partition(0, 1)))


@pytest.mark.psana
def test_constants_go_into_the_description_not_the_events(xtc):
    reader = Psana2Source(files=[xtc], fields={"image": "xppcspad.raw.raw"}, constants={
        "cspad_id": "xppcspad.raw._uniqueid", "cspad_detid": "xppcspad._detid", "cspad_type": "xppcspad.raw._dettype",
        "cspad_segments": "xppcspad.raw._sorted_segment_inds",
        "pressure_pv": f"epicsinfo.epicsinfo.{EPICS}.epicsname"}).open()
    metadata = reader.metadata()
    assert {key: quantity.value for key, quantity in metadata.constants.items()} == {
        "cspad_id": "cspad_detnum1234_detnum1234", "cspad_detid": "detnum1234", "cspad_type": "cspad",
        "cspad_segments": [0.0, 1.0], "pressure_pv": f"{EPICS},hello1"}
    assert set(next(reader.read(reader.partition(0, 1))).data) == {"image", "timestamp"}
    assert metadata.fields["image"].source == "psana xppcspad.raw.raw" and metadata.fields["image"].detector == "xppcspad"


@pytest.mark.psana
@pytest.mark.parametrize(("constants", "text"), [
    ({"x": "xppcspad.raw.raw"}, r"constant 'x': xppcspad.raw.raw reads the event.*list it under fields: instead"),
    ({"x": "motor1"}, r"constant 'x': motor1 reads the event"),
    ({"x": "xppcspad.raw._seg_configs"}, r"constant 'x': xppcspad.raw._seg_configs in .* is dict; a constant is a text"),
    ({"x": "xppcspad.raw._segment_ids"}, r"is list of <U10 \(2,\); a constant is a text, a number or at most 1024"),
    ({"x": "xppcspad.raw._configs.0.service"}, r"constant 'x': cannot tell which arguments "
                                                r"xppcspad.raw._configs.0.service takes"),
    ({"x": "xppcspad.raw._nope"}, r"has no raw._nope \(constant 'x': xppcspad.raw has no '_nope'\).*psana's own: "
                                  r".*xppcspad.raw._uniqueid.*fix constants: in the spec"),
])
def test_constants_refuse_what_is_no_run_level_value(xtc, constants, text):
    open_fails(xtc, text, fields={"image": "xppcspad.raw.raw"}, constants=constants)


@pytest.mark.psana
@pytest.mark.parametrize(("path", "text"), [
    ("xppcspad.raw._uniqueid", r"field 'f': xppcspad.raw._uniqueid reads no event .* list it under constants:"),
    ("xppcspad.raw._segment_ids", r"field 'f': xppcspad.raw._segment_ids reads no event"),
    ("xppcspad.raw", r"field 'f': xppcspad.raw is psana's cspad_raw_2_3_42, not a value; name one of what it offers: "
                     r"xppcspad.raw.calib, xppcspad.raw.config, xppcspad.raw.image, xppcspad.raw.raw"),
    ("xppcspad.raw._nope", r"detector 'xppcspad' in .* has no raw._nope \(field 'f': xppcspad.raw has no '_nope'\); "
                           r"it offers: xppcspad.raw.calib, .*; and psana's own: .*xppcspad.raw._info, .*fix fields:"),
    ("xppcspad.raw._seg_configs.nope", r"has no raw._seg_configs.nope \(field 'f': xppcspad.raw._seg_configs has no "
                                       r"'nope'\); it offers: xppcspad.raw._seg_configs.0, xppcspad.raw._seg_configs.1;"),
    ("epicsinfo.epicsinfo", r"epicsinfo.epicsinfo is psana's dict, not a value; name one of what it offers: "
                            r"epicsinfo.epicsinfo.HX2:DVD:GCC:01:PMON, epicsinfo.epicsinfo.HX2:DVD:GPI:01:PMON;"),
    ("a.b.c.d", r"has no detector 'a' \(nor a variable 'a.b.c.d'\) \(field 'f'\); its detectors: epicsinfo, xppcspad, "
                r"xpphsd; its scan and EPICS variables: .*motor1"),
    ("xppcspad.raw._return_types", r"xppcspad.raw._return_types needs the arguments rtype, rrank"),
])
def test_fields_refuse_paths_that_are_no_per_event_value(xtc, path, text):
    open_fails(xtc, text, fields={"f": path})


@pytest.mark.psana
@pytest.mark.parametrize(("path", "text"), [
    ("xpphsd.fex._info.charStrFex", r"field 'f' \(xpphsd.fex._info.charStrFex\), event with timestamp \d+ of .*: gave "
                                    r"the text 'Test String'; a field is numeric"),
    ("xppcspad.raw._info.nope", r"field 'f' \(xppcspad.raw._info.nope\), event with timestamp \d+ .*: Container has no "
                                r"'nope'; it offers: arrayRaw; fix fields:"),
])
def test_per_event_parts_of_a_path_fail_at_the_event_naming_it(xtc, path, text):
    reader = Psana2Source(files=[xtc], fields={"f": path}).open()
    with pytest.raises(SourceError, match=text):
        next(reader.read(reader.partition(0, 1)))


@pytest.mark.psana
def test_event_codes_of_an_lcls2_timing_detector(psana, timing_xtc):
    """``timing.raw.eventcodes`` as psana gives it: 288 flags per event, here sent as bool; an event without timing
    data is left out with on_missing: skip (psana itself raises there, see the next test)."""
    present = [codes for codes in TIMING_EVENTS if codes is not None]
    spec = {"files": [timing_xtc], "fields": {"codes": {"path": "timing.raw.eventcodes", "dtype": "bool"}},
            "max_events": TIMING_EVENTS.index(None)}
    batches = read_all(**spec)
    assert [batch.data["codes"].shape for batch in batches] == [(1, 288)] * len(batches)
    assert all(batch.data["codes"].dtype == np.bool_ for batch in batches)
    assert [tuple(np.flatnonzero(batch.data["codes"][0])) for batch in batches] == present[:len(batches)]
    run = next(psana.DataSource(files=timing_xtc, skip_calib_load="all").runs())
    timing = run.Detector("timing")
    for batch, evt in zip(batches, run.events(), strict=False):
        np.testing.assert_array_equal(batch.data["codes"][0], np.asarray(timing.raw.eventcodes(evt), dtype=bool))
    (plain, *_) = read_all(files=[timing_xtc], max_events=1, fields={"codes": "timing.raw.eventcodes"})
    assert plain.data["codes"].dtype == np.int64 and plain.data["codes"].shape == (1, 288)


@pytest.mark.psana
def test_an_event_psana_cannot_read_is_an_error_naming_field_and_event(timing_xtc):
    reader = Psana2Source(files=[timing_xtc], fields={"codes": "timing.raw.eventcodes"}).open()
    missing = TIMING_EVENTS.index(None)
    batches = []
    with pytest.raises(SourceError, match=r"field 'codes' \(timing.raw.eventcodes\), event with timestamp \d+ of "
                       r".*timing.xtc2: psana raised AttributeError: 'NoneType' object has no attribute 'sequenceValues'"):
        batches.extend(reader.read(reader.partition(0, 1)))
    assert len(batches) == missing


@pytest.mark.psana
def test_client_receives_fields_and_constants(psana, xtc, tmp_path):
    """A producer process streams a detector's fields; the client's arrays equal psana's, and the constants arrive
    in the stream's description."""
    from beamstream.spec import parse_spec

    endpoint = f"ipc://{tmp_path / 'stream'}"
    spec = parse_spec({
        "source": {"type": "psana2", "files": [xtc], "constants": {"hsd_id": "xpphsd.raw._uniqueid"}, "fields": {
            "hsd": {"detector": "xpphsd", "fields": {"peaks": {"path": "fex._info.arrayFex", "dtype": "uint8"},
                                                      "gain": "fex._info.enumFex2.value"}}}},
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    })
    messages, client = stream_into_client(spec, endpoint)
    events = [event for message in messages for event in message.events()]
    assert client.report.complete and len(events) == 10
    assert all(event.data["peaks"].dtype == np.uint8 and event.data["peaks"].tolist() == HSD_FEX for event in events)
    assert all(event.data["gain"] == 5 for event in events)
    assert client.metadata.constants["hsd_id"].value == "hsd_detnum1234_detnum1234"
    assert client.metadata.fields["peaks"].source == "psana xpphsd.fex._info.arrayFex as uint8"
