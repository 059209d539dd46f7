"""The simplon serializer: DECTRIS Stream V2 messages that cbor2 and dectris-compression decode to the frames sent."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
from pathlib import Path

import cbor2
import h5py
import hdf5plugin
import numpy as np
import pytest
import zmq
from dectris.compression import decompress

from beamstream.batch import Batch, Share
from beamstream.client import Client
from beamstream.codecs import decode_payload
from beamstream.codecs.simplon import SimplonCodec, bslz4, geometry
from beamstream.errors import SpecError, WireFormatError
from beamstream.plugins import plugin
from beamstream.producer import run_local
from beamstream.serializers.simplon import SimplonSerializer
from beamstream.sources.simulated import SimulatedSource
from beamstream.spec import parse_spec
from beamstream.wire import message_from_batch
from beamstream.wire.metadata import FieldMetadata, Quantity, RunMetadata

SOURCE = {"type": "simulated", "n_events": 10, "bank_size": 4, "events_per_read": 3,
          "detectors": [{"kind": "image", "shape": [32, 48], "peaks": 3}]}
METADATA = {"run": 42, "constants": {"photon_energy": {"value": 9.5, "unit": "keV"},
                                     "beam_centre": {"value": [15.25, 20.5], "unit": "pixel"}},
            "fields": {"image": {"pixel_size": [75e-6, 75e-6], "distance": 0.12}}}
ROI = {"type": "roi", "field": "image", "start": [2, 4], "stop": [30, 44]}  # origin [2, 4]: the centre moves
TYPED = {64: "u1", 69: "<u2", 70: "<u4", 71: "<u8", 72: "i1", 77: "<i2", 78: "<i4", 79: "<i8", 85: "<f4", 86: "<f8"}
DOCS = Path(__file__).parent.parent / "docs" / "simplon.md"


def tag_hook(tag, immutable):
    """DECTRIS's decoding (stream_v2/examples/client.py): compressed bytes, typed arrays, multi-dimensional arrays."""
    if tag.tag == 56500:
        algorithm, elem_size, data = tag.value
        return decompress(data, algorithm, elem_size=elem_size)
    if tag.tag in TYPED:
        return np.frombuffer(tag.value, TYPED[tag.tag])
    if tag.tag == 40:
        return tag.value[1].reshape(tag.value[0])
    return tag


def spec(sink: dict, steps: list | None = None, serializer: dict | None = None, source: dict = SOURCE):
    return parse_spec({"source": source, "steps": steps or [], "metadata": METADATA,
                       "serializer": serializer or {"type": "simplon", "channels": ["image"]}, "sinks": [sink]})


def produce(spec_, workers: int = 1) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_local(spec_, workers)))
    thread.start()
    return thread, outcome


def receive_series(pull: zmq.Socket, ends: int = 1) -> list[dict]:
    """Decoded messages until ``ends`` end messages came (each within 60 s)."""
    messages = []
    while sum(message["type"] == "end" for message in messages) < ends:
        assert pull.poll(60_000), f"no message within 60 s after {len(messages)}"
        messages.append(cbor2.loads(pull.recv(), tag_hook=tag_hook))
    return messages


@pytest.fixture
def pull(ipc_endpoint):
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.bind(ipc_endpoint)
    yield socket
    socket.close(linger=0)
    context.term()


def test_registered_as_serializer_and_codec():
    assert plugin("serializers", "simplon") is SimplonSerializer
    assert isinstance(SimplonSerializer(channels=["image"]).build(), SimplonCodec)


def test_bslz4_is_the_hdf5_filters_chunk_that_dectris_compression_reads():
    frame = (np.arange(35 * 47, dtype="<u2") * 7 % 1000).reshape(35, 47)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        dataset = h5.create_dataset("d", data=frame, chunks=frame.shape, **hdf5plugin.Bitshuffle(cname="lz4"))
        chunk = dataset.id.read_direct_chunk((0, 0))[1]
    assert bslz4(frame) == chunk
    for dtype in ("u1", "<u4", "<f4", "<f8", "<i8"):
        values = (np.random.default_rng(0).random((33, 65)) * 200).astype(dtype)
        restored = decompress(bslz4(values), "bslz4", elem_size=values.dtype.itemsize)
        assert np.frombuffer(restored, values.dtype).tobytes() == values.tobytes()


def test_start_images_end_through_the_plain_sink_equal_the_source(ipc_endpoint, pull):
    thread, outcome = produce(spec({"type": "plain", "endpoint": ipc_endpoint}, steps=[ROI]))
    messages = receive_series(pull)
    thread.join()
    assert outcome["result"].ok, outcome["result"].errors
    start, *images, end = messages
    stream = outcome["result"].stream_id
    assert [message["type"] for message in messages] == ["start", *["image"] * 10, "end"]
    for message in messages:
        assert list(message)[:3] == ["type", "series_id", "series_unique_id"]
        assert (message["series_id"], message["series_unique_id"]) == (42, stream)
    assert start["channels"] == ["image"] and start["image_dtype"] == "uint16"
    assert (start["image_size_x"], start["image_size_y"], start["number_of_images"]) == (40, 28, 10)
    assert (start["pixel_size_x"], start["pixel_size_y"], start["detector_distance"]) == (75e-6, 75e-6, 0.12)
    assert start["incident_energy"] == pytest.approx(9500)
    assert start["incident_wavelength"] == pytest.approx(1.305097, rel=1e-6)  # Å
    assert (start["beam_center_y"], start["beam_center_x"]) == (15.25 + 0.5 - 2, 20.5 + 0.5 - 4)
    assert start["user_data"]["beamstream"]["run"] == 42
    bank = SimulatedSource.model_validate(SOURCE).open().bank()
    assert [image["image_id"] for image in images] == list(range(10))
    for image in images:
        sent = bank["image"][image["image_id"] % 4][2:30, 4:44]
        assert image["data"]["image"].dtype == np.dtype("<u2")
        assert image["data"]["image"].tobytes() == np.ascontiguousarray(sent).tobytes()  # bit for bit
        np.testing.assert_array_equal(image["user_data"]["image_peaks"], bank["image_peaks"][image["image_id"] % 4])


def test_each_producer_sends_a_series_of_its_own(ipc_endpoint, pull):
    thread, outcome = produce(spec({"type": "plain", "endpoint": ipc_endpoint}), workers=2)
    messages = receive_series(pull, ends=2)
    thread.join()
    assert outcome["result"].ok, outcome["result"].errors
    stream = outcome["result"].stream_id
    by_series: dict[str, list[dict]] = {}
    for message in messages:
        by_series.setdefault(message["series_unique_id"], []).append(message)
    assert sorted(by_series) == [f"{stream}-r000", f"{stream}-r001"]
    ids = []
    for series in by_series.values():
        assert series[0]["type"] == "start" and series[-1]["type"] == "end"
        images = [message["image_id"] for message in series[1:-1]]
        assert series[0]["number_of_images"] == len(images)
        ids += images
    assert sorted(ids) == list(range(10))


def test_the_readme_reader_reads_the_series(tmp_path):
    """docs/simplon.md's ten-line reader, run as written against a producer that binds."""
    code = re.search(r"## Reading it.*?```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) == 10
    endpoint = f"ipc://{tmp_path / 'series'}"
    reader = subprocess.Popen([sys.executable, "-c", code.replace("tcp://HOST:31001", endpoint)],
                              stdout=subprocess.PIPE, text=True)
    try:
        thread, outcome = produce(spec({"type": "plain", "endpoint": endpoint, "bind": True}))
        output, _ = reader.communicate(timeout=120)
        thread.join()
    finally:
        reader.kill()
    assert outcome["result"].ok, outcome["result"].errors
    assert reader.returncode == 0
    assert output.splitlines() == ["start None {}", *[f"image {seq} {{'image': (32, 48)}}" for seq in range(10)]]


def test_the_stream_sink_carries_images_that_decode_to_the_events(ipc_endpoint):
    with Client(ipc_endpoint, bind=True, timeout=60) as client:
        thread, outcome = produce(spec({"type": "stream", "endpoint": ipc_endpoint}))
        events = list(client.events())
        thread.join()
    assert outcome["result"].ok, outcome["result"].errors
    bank = SimulatedSource.model_validate(SOURCE).open().bank()
    assert sorted(event.seq for event in events) == list(range(10))
    for event in events:
        for name in ("image", "image_peaks"):
            np.testing.assert_array_equal(event.data[name], bank[name][event.seq % 4])
            assert event.data[name].dtype == bank[name].dtype


def events(count: int, **fields: np.ndarray) -> Batch:
    seq = np.arange(count, dtype=np.int64)
    return Batch(seq, np.zeros(count), fields)


def test_the_codec_round_trips_every_field_and_dtype():
    rng = np.random.default_rng(3)
    batch = events(2, a=rng.integers(0, 2**32, (2, 5, 7), dtype="<u4"), b=rng.integers(0, 2**32, (2, 5, 7), dtype="<u4"),
                   energy=rng.random(2), peaks=rng.random((2, 4, 2)).astype("<f4"), flag=np.arange(2, dtype="i1"))
    message = message_from_batch(batch, SimplonCodec(["b", "a"]), stream="s", rank=0, producers=1, index=0,
                                 share=Share(rank=0, producers=1))
    assert len(message.payload) == 2  # one image message per event
    first = cbor2.loads(message.payload[0], tag_hook=tag_hook)
    assert list(first["data"]) == ["b", "a"] and sorted(first["user_data"]) == ["energy", "flag", "peaks"]
    decoded = decode_payload(message)
    assert list(decoded) == list(batch.data)
    for name, array in batch.data.items():
        assert decoded[name].dtype == array.dtype and decoded[name].tobytes() == array.tobytes()


@pytest.mark.parametrize("channels, data, message", [
    (["img"], {"image": np.zeros((1, 4, 4), "u2")}, "channel(s) img are not fields of the stream; its fields: image"),
    (["image"], {"image": np.zeros((1, 2, 4, 4), "u2")}, "a channel is a 2-D image per event"),
    (["a", "b"], {"a": np.zeros((1, 4, 4), "u2"), "b": np.zeros((1, 4, 4), "u4")}, "a series has one image size"),
    (["image"], {"image": np.zeros((1, 4, 4), "u2"), "ok": np.zeros(1, bool)}, "convert it with a cast step"),
])
def test_frames_a_series_cannot_hold_are_refused_naming_the_fix(channels, data, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        SimplonCodec(channels).encode(events(1, **data))


def test_a_channel_missing_fails_the_producer_saying_so(ipc_endpoint, pull):
    result = run_local(spec({"type": "plain", "endpoint": ipc_endpoint},
                            serializer={"type": "simplon", "channels": ["detector"]}))
    assert "channel(s) detector are not fields of the stream; its fields: image, image_peaks" in result.errors[0]


@pytest.mark.parametrize("serializer, message", [
    ({"type": "simplon"}, "serializer.channels: required, not given"),
    ({"type": "simplon", "channels": []}, "at least 1 item"),
    ({"type": "simplon", "channels": ["image", "image"]}, "each of the channels once: image given more than once"),
    ({"type": "simplon", "channels": ["image"], "compression": "lz4"}, "serializer.compression: unknown option; allowed: channels"),
])
def test_bad_serializer_options_are_spec_errors(serializer, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        spec({"type": "plain", "endpoint": "ipc:///tmp/unused"}, serializer=serializer)


def test_geometry_maps_the_beam_centre_through_roi_and_bin():
    metadata = RunMetadata(constants={"beam_centre": Quantity([101.0, 60.0], "pixel"),
                                      "wavelength": Quantity(1.0, "A")},
                           fields={"image": FieldMetadata(origin=[10, 20], binning=[2, 4])})
    start = geometry(metadata, "image")
    assert (start["beam_center_y"], start["beam_center_x"]) == ((101.5 - 10) / 2, (60.5 - 20) / 4)
    assert start["incident_wavelength"] == pytest.approx(1.0)
    assert start["incident_energy"] == pytest.approx(12398.42, rel=1e-6)
    with pytest.raises(SpecError, match=re.escape("give it as {value: [row, col], unit: pixel}")):
        geometry(RunMetadata(constants={"beam_centre": Quantity([1.0, 2.0], "mm")}), "image")


def test_a_corrupt_payload_is_a_wire_format_error():
    message = message_from_batch(events(1, image=np.ones((1, 8, 8), "<u2")), SimplonCodec(["image"]), stream="s",
                                 rank=0, producers=1, index=0, share=Share(rank=0, producers=1))
    good = message.payload[0]
    for frame, text in ((b"\xff\x00", "not CBOR"), (cbor2.dumps({"type": "start"}), "not an image message"),
                        (good[:-10] + b"\x00" * 10, "cannot be read")):
        with pytest.raises(WireFormatError, match=text):
            SimplonCodec().decode(message.fields, [frame])
