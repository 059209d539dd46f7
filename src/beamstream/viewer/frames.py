"""What the page draws, made from one event: images as 8-bit pictures, waveforms as short traces, packed in one
binary message.

The page asks for a frame with its :class:`Look` (which image, log or linear, the value range, its largest
side); :func:`encode` answers with one binary message, ``[u32 little-endian header length][JSON
header][payload]``, whose header gives each section's place in the payload:

- ``image``: ``{name, width, height, offset, lo, hi, scale, panels: [rows, columns], of: [width, height]}``:
  ``width × height`` bytes, row by row, 0 for ``lo`` (or below) and 255 for ``hi`` (or above), in ``scale``
  (``log``: ``log1p`` of the value above ``lo``). The page maps the bytes through its colour map. A detector
  with panels (leading axes before the last two) is laid out as a grid of panels, a 2-pixel gap between them
  (``of``: the picture's size then); a picture wider or taller than the page's ``size`` (the pixels it shows
  it in) is reduced to fit, each pixel sent the *largest* of the block of pixels it covers, so that a
  one-pixel Bragg peak stays visible.
- ``waveforms``: ``[{name, offset, length, lo, hi, samples}]``: ``length`` float32 values, at most
  :data:`TRACE_POINTS`: a trace with more samples is reduced to the lowest and the highest value of each
  stretch of samples, alternately, so that no narrow hit disappears.

Why 8 bits, and no more pixels than the page shows: one byte a pixel is what the page draws anyway (through a
256-colour map), needs no encoding here nor decoding there (PNG would cost more CPU than the bytes it saves on
a local link), and what a browser spends on a frame grows with its bytes (a 1024 × 1024 picture is 1 MiB).

Which fields are which, from one event's shapes: an image has at least two axes, the last two of at least
:data:`MIN_SIDE` pixels; a waveform one axis of at least :data:`MIN_SAMPLES` samples; anything else (ground
truth tables such as ``image_peaks``, scalars) is not drawn.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

MIN_SIDE = 16
MIN_SAMPLES = 64
TRACE_POINTS = 2048
GAP = 2  # pixels between panels
MAX_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Look:
    """How the page wants the image: ``field`` (None: the first image), ``scale``, the value range (``lo``,
    ``hi``; None: the frame's own lowest and highest value) and the largest side, in pixels, it shows it in."""

    field: str | None = None
    scale: Literal["linear", "log"] = "linear"
    lo: float | None = None
    hi: float | None = None
    size: int = 1024

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Look:
        """The look a page asked for (its request's query: ``field``, ``scale``, ``lo``, ``hi``, ``size``); what is
        missing or malformed takes the default."""
        def number(key: str) -> float | None:
            try:
                value = float(query.get(key, ""))
            except ValueError:
                return None
            return value if math.isfinite(value) else None

        size = number("size")
        return cls(field=query.get("field") or None, scale="log" if query.get("scale") == "log" else "linear",
                   lo=number("lo"), hi=number("hi"), size=1024 if size is None else int(min(max(size, 64), MAX_SIZE)))


def kinds(data: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """The names of the fields of one event that are images, and those that are waveforms (in order)."""
    images = [name for name, array in data.items()
              if array.ndim >= 2 and min(array.shape[-2:]) >= MIN_SIDE and array.dtype.kind in "biuf"]
    waveforms = [name for name, array in data.items()
                 if array.ndim == 1 and array.shape[0] >= MIN_SAMPLES and array.dtype.kind in "biuf"]
    return images, waveforms


def picture_of(array: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """``array`` as one 2-D picture at most ``size`` pixels a side: its panels (every leading axis, flattened),
    each reduced alike if the whole would be larger (its aspect kept, each pixel the largest of the block of
    pixels it covers), laid out in a grid of about as many columns as rows, :data:`GAP` pixels apart (filled with
    the lowest value; reducing panels, not the laid-out picture, keeps the gaps). Also the grid's (rows, columns)
    and the (width, height) of the picture unreduced."""
    panels = array.reshape(-1, *array.shape[-2:])
    count, height, width = panels.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    full = (columns * (width + GAP) - GAP, rows * (height + GAP) - GAP)
    if max(full) > size:
        scale = max(rows * height / max(size - (rows - 1) * GAP, rows), columns * width / max(size - (columns - 1) * GAP,
                                                                                              columns))
        panels = block_maxima(block_maxima(panels, max(1, math.floor(height / scale)), axis=1),
                              max(1, math.floor(width / scale)), axis=2)
        count, height, width = panels.shape
    if count == 1:
        return panels[0], (1, 1), full
    picture = np.full((rows * (height + GAP) - GAP, columns * (width + GAP) - GAP), panels.min(), panels.dtype)
    for index, panel in enumerate(panels):
        top, left = divmod(index, columns)
        picture[top * (height + GAP):top * (height + GAP) + height,
                left * (width + GAP):left * (width + GAP) + width] = panel
    return picture, (rows, columns), full


def block_maxima(array: np.ndarray, count: int, axis: int) -> np.ndarray:
    """The largest value of each of ``count`` consecutive blocks of ``array`` along ``axis`` (``count`` at most its
    length): one gathered copy per offset into the blocks, each block's last index repeated in shorter blocks
    (several times faster than ``np.maximum.reduceat`` across rows)."""
    length = array.shape[axis]
    starts = (np.arange(count) * (length / count)).astype(np.intp)
    lasts = np.append(starts[1:], length) - 1
    reduced = np.take(array, starts, axis=axis)
    for offset in range(1, int((lasts - starts).max()) + 1):
        np.maximum(reduced, np.take(array, np.minimum(starts + offset, lasts), axis=axis), out=reduced)
    return reduced


def to_bytes(picture: np.ndarray, look: Look) -> tuple[np.ndarray, float, float]:
    """``picture`` as uint8 (0 at ``lo``, 255 at ``hi``, in the look's scale), and the ``lo`` and ``hi`` used.
    In log scale, pixels of up to 16 unsigned bits go through a table of every value they may take (a
    logarithm per pixel costs several times more)."""
    lo = finite(float(picture.min()), 0.0) if look.lo is None else look.lo
    hi = finite(float(picture.max()), lo) if look.hi is None else look.hi
    hi = hi if hi > lo else lo + 1.0
    if look.scale == "log" and picture.dtype.kind == "u" and picture.dtype.itemsize <= 2:
        table = scaled(np.arange(np.iinfo(picture.dtype).max + 1, dtype=np.float32), lo, hi, look.scale)
        return table[picture], lo, hi
    return scaled(picture.astype(np.float32), lo, hi, look.scale), lo, hi


def scaled(values: np.ndarray, lo: float, hi: float, scale: str) -> np.ndarray:
    """float32 ``values`` (overwritten) as uint8: 0 at ``lo`` or below, 255 at ``hi`` (> ``lo``) or above."""
    np.subtract(values, lo, out=values)
    np.maximum(values, 0, out=values)
    top = hi - lo
    if scale == "log":
        np.log1p(values, out=values)
        top = math.log1p(top)
    np.multiply(values, 255.0 / top, out=values)
    np.minimum(values, 255.0, out=values)
    return values.astype(np.uint8)


def trace(values: np.ndarray) -> np.ndarray:
    """A waveform as at most :data:`TRACE_POINTS` float32 values: itself if short enough, else each stretch's
    lowest and highest value, alternately."""
    values = values.astype(np.float32, copy=False)
    if values.shape[0] <= TRACE_POINTS:
        return values
    stretch = math.ceil(values.shape[0] / (TRACE_POINTS // 2))
    count = values.shape[0] // stretch
    blocks = values[:count * stretch].reshape(count, stretch)
    return np.column_stack([blocks.min(axis=1), blocks.max(axis=1)]).ravel()


def encode(data: Mapping[str, np.ndarray] | None, look: Look, status: Mapping[str, Any]) -> bytes:
    """One message for the page: ``status`` (the stream's figures, as JSON) and, with ``data`` (one event's
    arrays), the image ``look`` picks and every waveform, laid out as the module says."""
    header: dict[str, Any] = {**status, "images": [], "waveforms": []}
    sections: list[bytes] = []
    offset = 0
    if data is not None:
        images, waveforms = kinds(data)
        header["images"] = images
        if images:
            name = look.field if look.field in images else images[0]
            picture, panels, full = picture_of(data[name], look.size)
            pixels, lo, hi = to_bytes(picture, look)
            header["image"] = {"name": name, "width": pixels.shape[1], "height": pixels.shape[0], "offset": 0,
                               "lo": lo, "hi": hi, "scale": look.scale, "panels": panels, "of": full}
            sections.append(pixels.tobytes())
            offset = len(sections[0]) + (-len(sections[0]) % 4)  # float32 sections start at a multiple of 4
            sections.append(bytes(offset - len(sections[0])))
        for name in waveforms:
            points = trace(data[name])
            header["waveforms"].append({"name": name, "offset": offset, "length": int(points.shape[0]),
                                        "lo": finite(float(points.min()), 0.0),
                                        "hi": finite(float(points.max()), 1.0),
                                        "samples": int(data[name].shape[0])})
            sections.append(points.astype("<f4").tobytes())
            offset += points.nbytes
    text = json.dumps(header, allow_nan=False, default=_plain).encode()
    text += b" " * (-(len(text) + 4) % 4)  # the payload starts at a multiple of 4
    return struct.pack("<I", len(text)) + text + b"".join(sections)


def finite(value: float, otherwise: float) -> float:
    """``value``, or ``otherwise`` if it is NaN or infinite (JSON has neither)."""
    return value if math.isfinite(value) else otherwise


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
