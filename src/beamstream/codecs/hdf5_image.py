"""Uncompressed HDF5 file images at array speed: laid out once per batch layout, the arrays' own buffers as frames.

Writing: an uncompressed message's HDF5 file (the one :func:`~beamstream.codecs.hdf5.write_batch` writes) is the
same bytes for every batch of one layout (the fields' paths, dtypes and shapes), but where each dataset's
contiguous data lies. :class:`ImageLayout` writes that file once per layout with h5py and records where the data
go; a message is then its frames: the layout's fixed bytes (slices of one buffer, not copied) with each array's
own buffer, and the event numbers and times, in between. The frames, concatenated, are an ordinary HDF5 file that
h5py, HDF5 1.10's tools and the files sink open.

Reading: :func:`read_arrays` opens the frames as a file without joining them (:class:`FramesFile`), and gives
a contiguous, unfiltered dataset that lies within one frame as a read-only view of that frame (no copy); any
other dataset (compressed, chunked, or spread over frames) is read through h5py.
"""

from __future__ import annotations

import bisect
import io
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from beamstream.wire.frames import frame_buffer

T = TypeVar("T")
LAYOUTS_KEPT = 8
"""Batch layouts a codec keeps the image of (a stream has a few: a full batch, the last shorter one)."""


@dataclass(frozen=True, slots=True)
class Region:
    """Where one array's data lie in a file image: ``offset``, and its ``dtype`` and ``nbytes`` there."""

    name: str
    offset: int
    dtype: np.dtype
    nbytes: int


class ImageLayout:
    """The file image of every batch of one layout: ``fixed``, the file's bytes, and ``regions``, the contiguous
    data of each array (the fields, then ``seq`` and ``time``), in file order, none overlapping."""

    def __init__(self, fixed: memoryview, regions: list[Region]) -> None:
        self.fixed = fixed
        self.regions = regions

    @classmethod
    def written_by(cls, write: Callable[[Any], None], names: Mapping[str, str], libver: Any) -> ImageLayout | None:
        """The layout of the file that ``write(h5)`` makes in an h5py file opened with ``libver``, ``names``
        mapping the arrays to the datasets it writes (``{name: path}``); None if a dataset has no contiguous
        storage in it (an empty array, or compression)."""
        import h5py

        buffer = io.BytesIO()
        regions = []
        with h5py.File(buffer, "w", libver=libver) as h5:
            write(h5)
            for name, path in names.items():
                dataset = h5[path]
                offset = dataset.id.get_offset()
                if offset is None or dataset.chunks is not None:
                    return None
                regions.append(Region(name, offset, dataset.dtype, dataset.size * dataset.dtype.itemsize))
        fixed = buffer.getbuffer()
        regions.sort(key=lambda region: region.offset)
        ends = [region.offset + region.nbytes for region in regions]
        if any(end > start for end, start in zip(ends, (region.offset for region in regions[1:]))) or ends[-1] > len(fixed):
            return None  # not the layout this module expects: h5py's own way then
        return cls(fixed, regions)

    def frames(self, arrays: Mapping[str, np.ndarray]) -> list[Any]:
        """The file image of ``arrays`` (by region name; each of its region's dtype and size) as frames."""
        frames: list[Any] = []
        at = 0
        for region in self.regions:
            if region.offset > at:
                frames.append(self.fixed[at:region.offset])
            array = np.ascontiguousarray(arrays[region.name], dtype=region.dtype)
            frames.append(array.data.cast("B") if array.size else b"")
            at = region.offset + region.nbytes
        if at < len(self.fixed):
            frames.append(self.fixed[at:])
        return frames


class Layouts(Generic[T]):
    """Layouts met lately, by key: at most :data:`LAYOUTS_KEPT`, the least recently used dropped first."""

    def __init__(self) -> None:
        self.layouts: OrderedDict[tuple, T] = OrderedDict()

    def __len__(self) -> int:
        return len(self.layouts)

    def get(self, key: tuple, make: Callable[[], T]) -> T:
        """The layout of ``key``, made by ``make()`` on first use."""
        if key in self.layouts:
            self.layouts.move_to_end(key)
            return self.layouts[key]
        return self.put(key, make())

    def find(self, key: tuple) -> T | None:
        """The layout of ``key``, if it is kept."""
        if key in self.layouts:
            self.layouts.move_to_end(key)
        return self.layouts.get(key)

    def put(self, key: tuple, layout: T) -> T:
        self.layouts[key] = layout
        self.layouts.move_to_end(key)
        if len(self.layouts) > LAYOUTS_KEPT:
            self.layouts.popitem(last=False)
        return layout


class FramesFile(io.RawIOBase):
    """Frames read as one file (their concatenation), without joining them: for ``h5py.File``."""

    def __init__(self, frames: Sequence[Any]) -> None:
        super().__init__()
        self.views = [memoryview(frame_buffer(frame)).cast("B") for frame in frames]
        self.starts = []
        total = 0
        for view in self.views:
            self.starts.append(total)
            total += len(view)
        self.size = total
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        done = 0
        while done < len(target) and self.position < self.size:
            index = bisect.bisect_right(self.starts, self.position) - 1
            view, inside = self.views[index], self.position - self.starts[index]
            count = min(len(view) - inside, len(target) - done)
            target[done:done + count] = view[inside:inside + count]
            done += count
            self.position += count
        return done

    def where(self, offset: int, nbytes: int) -> tuple[int, int] | None:
        """(frame index, offset in it) of the bytes ``[offset, offset + nbytes)`` if one frame holds them all."""
        if offset < 0 or offset + nbytes > self.size:
            return None
        index = bisect.bisect_right(self.starts, offset) - 1
        inside = offset - self.starts[index]
        return (index, inside) if inside + nbytes <= len(self.views[index]) else None


@dataclass(frozen=True, slots=True)
class Found:
    """A dataset's data in a payload's frames: in frame ``index`` from ``inside``; ``whole`` if that frame is the
    data and nothing else."""

    array: np.ndarray
    index: int
    whole: bool


def view_of(file: FramesFile, dataset: Any) -> Found | None:
    """A read-only view of ``dataset``'s data in the frames of ``file`` if they are contiguous, unfiltered and in
    one frame; None otherwise (read it through h5py)."""
    if dataset.chunks is not None or dataset.dtype.hasobject or dataset.dtype.kind not in "biufc":
        return None
    offset = dataset.id.get_offset()
    nbytes = dataset.size * dataset.dtype.itemsize
    found = None if offset is None else file.where(offset, nbytes)
    if found is None:
        return None
    index, inside = found
    return Found(_view(file.views[index], dataset.dtype, dataset.shape, inside), index,
                 inside == 0 and len(file.views[index]) == nbytes)


def _view(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], inside: int = 0) -> np.ndarray:
    array = np.frombuffer(buffer, dtype=dtype, count=int(np.prod(shape)), offset=inside).reshape(shape)
    array.flags.writeable = False
    return array


@dataclass(frozen=True)
class ReadLayout:
    """What reading one payload found, for the next ones of the same layout: the bytes of its frames that are not
    data (``fixed``: index → bytes; every piece of the file h5py looked at) and, per field, the frame that is its
    data alone, with the dtype and shape h5py read."""

    fixed: dict[int, bytes]
    fields: dict[str, tuple[int, np.dtype, tuple[int, ...]]]

    def arrays(self, views: Sequence[memoryview]) -> dict[str, np.ndarray] | None:
        """The fields of a payload whose frames are ``views``, if its fixed frames are these bytes exactly (the
        same file but for the data: what h5py found holds), else None."""
        if any(views[index] != fixed for index, fixed in self.fixed.items()):
            return None
        return {name: _view(views[index], dtype, shape) for name, (index, dtype, shape) in self.fields.items()}


class ReadLayouts:
    """The :class:`ReadLayout` of the payload layouts read lately (at most :data:`LAYOUTS_KEPT`), by their fields
    and frame sizes."""

    def __init__(self) -> None:
        self.layouts: Layouts[ReadLayout] = Layouts()

    def arrays(self, key: tuple, file: FramesFile) -> dict[str, np.ndarray] | None:
        layout = self.layouts.find((key, tuple(map(len, file.views))))
        return None if layout is None else layout.arrays(file.views)

    def learn(self, key: tuple, file: FramesFile, found: Mapping[str, Found | None],
              others: Sequence[Found | None] = ()) -> None:
        """Keep what reading ``file`` ``found``, if every field was a frame of its own (else nothing is kept); the
        frames of ``others`` (datasets not read, such as the events' numbers) that are their data alone are not
        compared either."""
        if not found or not all(each is not None and each.whole for each in found.values()):
            return
        data = {each.index for each in [*found.values(), *others] if each is not None and each.whole}
        fields = {name: (each.index, each.array.dtype, each.array.shape) for name, each in found.items()}
        fixed = {index: bytes(view) for index, view in enumerate(file.views) if index not in data}
        self.layouts.put((key, tuple(map(len, file.views))), ReadLayout(fixed, fields))

