"""``simplon``: each event one DECTRIS Stream V2 (SIMPLON 1.8) image message, CBOR; and the series around them.

The payload of a message holds one frame per event, a CBOR map (RFC 8949)::

    {"type": "image", "image_id": SEQ,
     "data": {CHANNEL: 40([[rows, cols], TYPED(56500(["bslz4", ITEMSIZE, BYTES]))]), ...},
     "user_data": {FIELD: 40([EVENT_SHAPE, TYPED(BYTES)]), ...}}

Each channel is a field of 2-D frames: a multi-dimensional array (tag 40, RFC 8746, row-major) over a typed
array (tag 64-86 by dtype, little-endian: 69 for uint16) whose bytes are compressed with DECTRIS's tag 56500:
bitshuffle + LZ4 in the HDF5 filter's framing (``bslz4``, the element size, then a 12-byte header: the
uncompressed size as big-endian uint64 and the block size in bytes as big-endian uint32, then the blocks
``bitshuffle.compress_lz4`` writes). Every other field travels uncompressed in ``user_data``, so nothing is
dropped. The image id is the event's sequence number.

A series needs its ids in every message and a start and an end message around the images; they depend on
the stream and the producer, which a codec does not see. The ``plain`` sink (:mod:`beamstream.sinks.plain`)
asks the codec for :meth:`SimplonCodec.plain_framing`, which sends, per producer, a start message built from
the stream's description and the first message's fields, each image with the series' ids added, and an end.
Carried by the ``stream`` sink or written by the ``files`` sink, the payload is decoded back to arrays like
any other (:meth:`SimplonCodec.decode`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import bitshuffle
import cbor2
import numpy as np

from beamstream.batch import Batch
from beamstream.errors import SpecError, WireFormatError
from beamstream.quantities import PLANCK_EV_M, photon_energy_ev
from beamstream.wire import FieldInfo
from beamstream.wire.metadata import FieldMetadata, RunMetadata

if TYPE_CHECKING:
    from beamstream.stages import SinkContext
    from beamstream.wire import DataMessage, EndMessage

MULTI_DIMENSIONAL = 40  # RFC 8746 section 3.1, row-major
COMPRESSED = 56500  # DECTRIS's compressed byte string: [algorithm, element size, bytes]
TYPED_ARRAYS = {"|u1": 64, "<u2": 69, "<u4": 70, "<u8": 71, "|i1": 72, "<i2": 77, "<i4": 78, "<i8": 79,
                "<f2": 84, "<f4": 85, "<f8": 86}
"""RFC 8746 typed-array tag of each (little-endian) dtype a field may have."""
DTYPES = {tag: np.dtype(dtype) for dtype, tag in TYPED_ARRAYS.items()}
FRAMING = struct.Struct(">QI")  # bitshuffle's HDF5 filter: uncompressed bytes, block size in bytes
TARGET_BLOCK_BYTES = 8192  # bitshuffle's default block size (bshuf_default_block_size), in bytes
IMAGE_KEYS = ("type", "series_id", "series_unique_id")  # what the plain sink's framing puts first


def bslz4(frame: np.ndarray) -> bytes:
    """``frame``'s bytes bitshuffled and LZ4-compressed in the HDF5 filter's framing, as DECTRIS sends ``bslz4``."""
    itemsize = frame.dtype.itemsize
    block = max(128, TARGET_BLOCK_BYTES // itemsize // 8 * 8)  # in elements, as bitshuffle chooses it
    blocks = bitshuffle.compress_lz4(np.ascontiguousarray(frame), block)
    return b"".join((FRAMING.pack(frame.nbytes, block * itemsize), memoryview(blocks)))


def unbslz4(data: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The array of ``shape`` and ``dtype`` that :func:`bslz4` compressed into ``data``; WireFormatError if the
    framing does not match them."""
    if len(data) < FRAMING.size:
        raise WireFormatError(f"bslz4 data of {len(data)} bytes is shorter than its {FRAMING.size}-byte header")
    size, block_bytes = FRAMING.unpack_from(data)
    expected = int(np.prod(shape)) * dtype.itemsize
    if size != expected or block_bytes % dtype.itemsize:
        raise WireFormatError(f"bslz4 header says {size} bytes in blocks of {block_bytes}; {dtype} {shape} "
                              f"is {expected} bytes")
    blocks = np.frombuffer(data, dtype=np.uint8, offset=FRAMING.size)
    return bitshuffle.decompress_lz4(blocks, shape, dtype, block_bytes // dtype.itemsize)


def tagged(array: np.ndarray, compress: bool) -> cbor2.CBORTag:
    """``array`` as a multi-dimensional typed array (tags 40 and 64-86), its bytes compressed if ``compress``."""
    content = bslz4(array) if compress else np.ascontiguousarray(array).tobytes()
    if compress:
        content = cbor2.CBORTag(COMPRESSED, ["bslz4", array.dtype.itemsize, content])
    return cbor2.CBORTag(MULTI_DIMENSIONAL, [list(array.shape), cbor2.CBORTag(TYPED_ARRAYS[array.dtype.str], content)])


def untagged(item: Any, name: str) -> np.ndarray:
    """The array a :func:`tagged` item holds; WireFormatError naming field ``name`` if it holds none."""
    if not (isinstance(item, cbor2.CBORTag) and item.tag == MULTI_DIMENSIONAL and len(item.value) == 2):
        raise WireFormatError(f"simplon field {name!r} is not a multi-dimensional array (tag 40)")
    shape, typed = item.value
    if not (isinstance(typed, cbor2.CBORTag) and typed.tag in DTYPES):
        raise WireFormatError(f"simplon field {name!r} is not a typed array of a known dtype (tags 64-86)")
    dtype, content = DTYPES[typed.tag], typed.value
    shape = tuple(int(axis) for axis in shape)
    if isinstance(content, cbor2.CBORTag) and content.tag == COMPRESSED:
        algorithm, _, data = content.value
        if algorithm != "bslz4":
            raise WireFormatError(f"simplon field {name!r} is compressed with {algorithm!r}; this codec reads bslz4")
        return unbslz4(data, dtype, shape)
    if not isinstance(content, bytes) or len(content) != int(np.prod(shape)) * dtype.itemsize:
        raise WireFormatError(f"simplon field {name!r}: its bytes do not hold {dtype} {shape}")
    return np.frombuffer(content, dtype=dtype).reshape(shape)


class SimplonCodec:
    """Encodes each event of a batch as a DECTRIS image message: ``channels`` (2-D fields of one shape and dtype)
    compressed in ``data``, other fields in ``user_data``. Built by the ``simplon`` serializer; called without
    arguments it decodes (every image says which fields are its channels)."""

    name = "simplon"

    def __init__(self, channels: Sequence[str] = ()) -> None:
        self.channels = tuple(channels)

    def encode(self, batch: Batch) -> list[Any]:
        self._check(batch)
        frames = []
        for index, seq in enumerate(batch.seq):
            image: dict[str, Any] = {"type": "image", "image_id": int(seq)}
            image["data"] = {name: tagged(batch.data[name][index], compress=True) for name in self.channels}
            others = {name: tagged(array[index], compress=False) for name, array in batch.data.items()
                      if name not in self.channels}
            if others:
                image["user_data"] = others
            frames.append(cbor2.dumps(image))
        return frames

    def _check(self, batch: Batch) -> None:
        """SpecError saying what to change when a channel is missing, not 2-D, or unlike the first, or when a
        field has a dtype no typed array holds."""
        missing = [name for name in self.channels if name not in batch.data]
        if missing:
            raise SpecError(f"serializer simplon: channel(s) {', '.join(missing)} are not fields of the stream; "
                            f"its fields: {', '.join(batch.data) or '(none)'}")
        first = batch.data[self.channels[0]] if self.channels else None
        for name in self.channels:
            frames = batch.data[name]
            if frames.ndim != 3:
                raise SpecError(f"serializer simplon: channel {name!r} has events of shape {frames.shape[1:]}; "
                                "a channel is a 2-D image per event (of a multi-panel detector, its assembled image: "
                                "psana's image method); left out of channels, the field travels in user_data")
            if (frames.shape[1:], frames.dtype) != (first.shape[1:], first.dtype):
                raise SpecError(f"serializer simplon: channels {self.channels[0]!r} ({first.dtype} {first.shape[1:]}) "
                                f"and {name!r} ({frames.dtype} {frames.shape[1:]}) differ; a series has one image "
                                "size and dtype (cast, roi or pad them alike)")
        for name, array in batch.data.items():
            if array.dtype.str not in TYPED_ARRAYS:
                raise SpecError(f"serializer simplon: field {name!r} is {array.dtype}, which no CBOR typed array "
                                "holds; convert it with a cast step (e.g. to uint8, uint16, uint32 or float32)")

    def decode(self, fields: Sequence[FieldInfo], frames: Sequence[Any]) -> dict[str, np.ndarray]:
        events = fields[0].shape[0] if fields else len(frames)
        if len(frames) != events:
            raise WireFormatError(f"a simplon message has one frame per event: {events} events, {len(frames)} frames")
        arrays: dict[str, list[np.ndarray]] = {info.name: [] for info in fields}
        for frame in frames:
            image = _image(frame)
            found = {**image.get("user_data", {}), **image["data"]}
            for info in fields:
                if info.name not in found:
                    raise WireFormatError(f"simplon image {image.get('image_id')} lacks field {info.name!r}")
                try:
                    arrays[info.name].append(untagged(found[info.name], info.name))
                except WireFormatError:
                    raise
                except (ValueError, TypeError, RuntimeError) as exc:  # a malformed tag, corrupt compressed bytes
                    raise WireFormatError(f"simplon field {info.name!r} cannot be read: {exc}") from None
        decoded = {}
        for info in fields:
            array = np.stack(arrays[info.name])
            if array.dtype.str != info.dtype or array.shape != tuple(info.shape):
                raise WireFormatError(f"simplon field {info.name!r} holds {array.dtype.str} {array.shape}; the header "
                                      f"says {info.dtype} {tuple(info.shape)}")
            array.setflags(write=False)
            decoded[info.name] = array
        return decoded

    def plain_framing(self, context: SinkContext) -> SimplonSeries:
        """The series the ``plain`` sink sends for producer ``context.rank``: start, images, end."""
        return SimplonSeries(context)


def _image(frame: Any) -> dict[str, Any]:
    """The image message CBOR ``frame`` holds (tags left as they are); WireFormatError if it holds none."""
    try:
        image = cbor2.loads(bytes(frame))
    except (cbor2.CBORDecodeError, ValueError) as exc:
        raise WireFormatError(f"simplon payload is not CBOR: {exc}") from None
    if not (isinstance(image, dict) and image.get("type") == "image" and isinstance(image.get("data"), dict)):
        raise WireFormatError("simplon payload frame is not an image message (type image, a data map)")
    return image


class SimplonSeries:
    """One producer's series on a plain sink: its ids (``series_unique_id``: the stream id, with ``-rNNN`` when the
    stream has several producers, each a series of its own; ``series_id``: the run number, or 0), the start
    message, each image with the ids added after ``type``, and the end message."""

    def __init__(self, context: SinkContext) -> None:
        several = context.producers > 1
        self.unique_id = f"{context.stream_id}-r{context.rank:03d}" if several else context.stream_id
        self.series_id = 0

    def ids(self) -> dict[str, Any]:
        return {"series_id": self.series_id, "series_unique_id": self.unique_id}

    def opening(self, message: DataMessage) -> list[bytes]:
        """The start message, from the first data message: its fields, share and the stream's description."""
        metadata = message.metadata or RunMetadata()
        self.series_id = max(metadata.run or 0, 0)
        channels = list(_image(message.payload[0])["data"]) if message.payload else []
        if not channels:
            raise WireFormatError("the plain sink's simplon series starts from an image message; the first has none")
        info = next(info for info in message.fields if info.name == channels[0])
        start = {"type": "start", **self.ids(), "arm_date": datetime.now(timezone.utc), "channels": channels,
                 "image_dtype": np.dtype(info.dtype).name, "image_size_x": info.shape[-1],
                 "image_size_y": info.shape[-2]}
        if message.share.stop is not None:
            start["number_of_images"] = message.share.count()
        start |= geometry(metadata, channels[0])
        start["user_data"] = {"beamstream": metadata.to_builtins()}
        return [cbor2.dumps(start)]

    def blobs(self, message: DataMessage) -> list[bytes]:
        """Each image of ``message`` with the series' ids."""
        blobs = []
        for frame in message.payload:
            image = _image(frame)
            blobs.append(cbor2.dumps({"type": "image", **self.ids(), **{key: value for key, value in image.items()
                                                                         if key not in IMAGE_KEYS}}))
        return blobs

    def closing(self, end: EndMessage) -> list[bytes]:
        return [cbor2.dumps({"type": "end", **self.ids()})]


def geometry(metadata: RunMetadata, channel: str) -> dict[str, Any]:
    """What the description says of the detector and beam, in the start message's keys and units: pixel sizes
    and ``detector_distance`` (m), ``incident_energy`` (eV) and ``incident_wavelength`` (Å) from the constant
    ``photon_energy`` or ``wavelength``, ``beam_center_x``/``_y`` (pixels from the first pixel's corner) from the
    constant ``beam_centre`` ([row, col] in the source's frame, mapped through the channel's ``origin`` and
    ``binning``), and ``detector_description``."""
    entry = metadata.fields.get(channel, FieldMetadata())
    known: dict[str, Any] = {}
    if entry.detector:
        known["detector_description"] = entry.detector
    if len(entry.pixel_size) >= 2:
        known["pixel_size_y"], known["pixel_size_x"] = entry.pixel_size[-2:]
    if entry.distance is not None:
        known["detector_distance"] = entry.distance
    if (energy := photon_energy_ev(metadata.constants)) is not None:
        known["incident_energy"] = energy
        known["incident_wavelength"] = PLANCK_EV_M / energy * 1e10
    if (centre := metadata.constants.get("beam_centre")) is not None:
        known["beam_center_y"], known["beam_center_x"] = _sent_centre(centre.value, centre.unit, entry)
    return known


def _sent_centre(value: Any, unit: str, entry: FieldMetadata) -> tuple[float, float]:
    """The constant ``beam_centre`` ([row, col], pixel-centre index coordinates of the source's frame,
    docs/conventions.md) in pixels of the frame as sent, counted from the first pixel's corner (DECTRIS's way:
    the first pixel's centre is at 0.5): ``(centre + 0.5 - origin) / binning`` along each axis."""
    if not (isinstance(value, list) and len(value) == 2 and unit in ("", "pixel", "pixels")):
        raise SpecError(f"the constant beam_centre is {value!r} ({unit or 'no unit'}); give it as "
                        "{value: [row, col], unit: pixel} in pixels of the source's frame")
    origin = (list(entry.origin) or [0, 0])[-2:]
    binning = (list(entry.binning) or [1, 1])[-2:]
    return tuple((float(centre) + 0.5 - start) / step for centre, start, step in zip(value, origin, binning))
