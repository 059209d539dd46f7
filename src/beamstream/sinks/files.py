"""``files``: messages written as HDF5 files into a directory, one per message or one per worker.

Every worker (producer rank) writes its own files, named ``{stream}-r{rank:03d}...``, so
workers never share a file. Characters other than letters, digits, ``.``, ``_`` and ``-``
in the stream id become ``_`` in file names. Files appear complete or not at all: each is
written under a temporary name and renamed when done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle, zstd and zfp filters)
import numpy as np
from pydantic import model_validator

from beamstream.errors import TransportError
from beamstream.codecs import decode_payload
from beamstream.codecs.hdf5 import LIBVER, Storage
from beamstream.stages import SinkContext, SinkSpec
from beamstream.atomic import commit, partial_path
from beamstream.modes import create_file, make_dirs
from beamstream.saving import message_h5_bytes, safe_name, save_file
from beamstream.serializers.storage import HDF5Storage
from beamstream.sinks.cxi import signal_field, write_structure
from beamstream.spec_paths import WritePath
from beamstream.wire import DataMessage, EndMessage
from beamstream.wire.metadata import RunMetadata

CXI_VERSION = 150
CXI_FIELDS = "/entry_1/data_1"
CXI_META = "/entry_1/_beamstream"


def file_prefix(context: SinkContext) -> str:
    """``{stream}-r{rank:03d}``, the start of every file name this worker writes."""
    return f"{safe_name(context.stream_id)}-r{context.rank:03d}"


def prepare_directory(directory: Path) -> None:
    """Create ``directory`` if needed; TransportError naming it if it cannot be created or written."""
    try:
        make_dirs(directory)
    except OSError as exc:
        raise TransportError(f"files sink: cannot create directory {str(directory)!r}: {exc.strerror or exc}; "
                             "set dir: to a writable directory") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise TransportError(f"files sink: directory {str(directory)!r} is not writable; set dir: to a writable directory")


def _write_failed(path: Path, exc: OSError) -> TransportError:
    return TransportError(f"files sink: cannot write {str(path)!r}: {exc.strerror or exc}")


class FilesWriter:
    """Common part of both layouts: where files go, and the end-of-stream JSON file."""

    def __init__(self, directory: Path, context: SinkContext) -> None:
        self.directory = directory
        self.prefix = file_prefix(context)

    def close(self, end: EndMessage) -> None:
        """Finish the data files (a stream that did not end ``ok`` leaves none under a final name), then
        write ``{prefix}.end.json`` with what ``end`` reports."""
        self.finish(end.status == "ok")
        path = self.directory / f"{self.prefix}.end.json"
        info = {
            "stream": end.stream,
            "rank": end.rank,
            "producers": end.producers,
            "share": end.share.to_wire(),
            "messages": end.messages,
            "events": end.events,
            "last_seq": end.last_seq,
            "status": end.status,
            "reason": end.reason,
            "extra": end.extra,
        }
        save_file(path, (json.dumps(info, indent=2, default=str) + "\n").encode())

    def finish(self, ok: bool) -> None:
        """Complete and release the data files, under their final names only if ``ok`` (nothing to do
        for one file per message: each is a message received whole)."""

    def describe(self, message: DataMessage) -> None:
        """Write ``{prefix}.metadata.json``, the stream's description, if ``message`` carries it."""
        if message.metadata is not None:
            path = self.directory / f"{self.prefix}.metadata.json"
            save_file(path, (json.dumps(message.metadata.to_builtins(), indent=2) + "\n").encode())


class MessageFiles(FilesWriter):
    """Layout ``messages``: data message ``index`` becomes ``{prefix}-m{index:06d}.h5``.

    An ``hdf5`` payload is written as it is, the description added; other payloads are decoded and written with
    :func:`beamstream.codecs.hdf5.write_batch`, so both read the same: one dataset per
    field at the root, plus ``/_beamstream/seq`` and ``/_beamstream/time``, and the stream's description in
    ``/_beamstream`` (:func:`beamstream.saving.write_description`).
    """

    def __init__(self, directory: Path, context: SinkContext, storage: Storage) -> None:
        super().__init__(directory, context)
        self.storage = storage
        self.metadata: RunMetadata | None = None  # the stream's description, from the first message carrying it

    def send(self, message: DataMessage) -> None:
        self.describe(message)
        self.metadata = self.metadata or message.metadata
        path = self.directory / f"{self.prefix}-m{message.index:06d}.h5"
        save_file(path, message_h5_bytes(message, self.storage, self.metadata))


class CxiFile(FilesWriter):
    """Layout ``cxi``: one ``{prefix}.cxi`` per worker, every message appended along axis 0.

    Field ``name`` goes to ``/entry_1/data_1/<name>``, sequence numbers and times to
    ``/entry_1/_beamstream/seq`` and ``/entry_1/_beamstream/time``; ``/cxi_version`` is 150, and
    the CXI/NeXus structure around them (:mod:`beamstream.sinks.cxi`) links the detector data
    to ``/entry_1/data_1/data`` and ``/entry_1/instrument_1/detector_1/data`` whatever its field
    is named. Every message must carry the same fields with the same dtypes and frame shapes as
    the first. The file is written as ``{prefix}.cxi.part`` and renamed by ``close`` if the
    stream ended ``ok``; otherwise it stays ``.part``. It opens with HDF5 1.10 and later
    (:data:`~beamstream.codecs.hdf5.LIBVER`).
    """

    def __init__(self, directory: Path, context: SinkContext, storage: Storage) -> None:
        super().__init__(directory, context)
        self.path = directory / f"{self.prefix}.cxi"
        self.storage = storage
        try:
            os.close(create_file(partial_path(self.path)))  # private from the start; h5py keeps the mode
            self.h5 = h5py.File(partial_path(self.path), "w", libver=LIBVER)
            self.h5["cxi_version"] = CXI_VERSION
            meta = self.h5.require_group(CXI_META)
            meta.create_dataset("seq", shape=(0,), maxshape=(None,), dtype="<i8", chunks=True)
            meta.create_dataset("time", shape=(0,), maxshape=(None,), dtype="<f8", chunks=True)
        except OSError as exc:
            raise _write_failed(self.path, exc) from None
        self.fields: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None

    def send(self, message: DataMessage) -> None:
        arrays = decode_payload(message)
        if self.fields is None:
            self._create_fields(arrays)
            write_structure(self.h5, message.metadata or RunMetadata(), CXI_FIELDS, signal_field(arrays), CXI_META)
        else:
            self._check_fields(message, arrays)
        try:
            _append(self.h5[f"{CXI_META}/seq"], message.seq)
            _append(self.h5[f"{CXI_META}/time"], message.time)
            for name, array in arrays.items():
                _append(self.h5[f"{CXI_FIELDS}/{name}"], array)
        except OSError as exc:
            raise _write_failed(self.path, exc) from None

    def _create_fields(self, arrays: dict[str, np.ndarray]) -> None:
        try:
            self.storage.check(arrays)
        except ValueError as exc:
            raise TransportError(f"files sink: {exc}") from None
        self.fields = {name: (array.dtype, array.shape[1:]) for name, array in arrays.items()}
        group = self.h5.require_group(CXI_FIELDS)
        for name, (dtype, frame) in self.fields.items():
            chunks = (1, *frame) if frame else True
            group.create_dataset(name, shape=(0, *frame), maxshape=(None, *frame), dtype=dtype,
                                 chunks=chunks, **self.storage.filters)

    def _check_fields(self, message: DataMessage, arrays: dict[str, np.ndarray]) -> None:
        got = {name: (array.dtype, array.shape[1:]) for name, array in arrays.items()}
        if got != self.fields:
            raise TransportError(
                f"files sink: message {message.index} has fields {_describe(got)} but the first message had "
                f"{_describe(self.fields)}; the cxi layout needs them all alike (use layout: messages)"
            )

    def finish(self, ok: bool) -> None:
        """Close the file and, if ``ok``, give it its final name."""
        try:
            self.h5.close()
            if ok:
                commit(self.path)
        except OSError as exc:
            raise _write_failed(self.path, exc) from None


def _append(dataset: h5py.Dataset, values: np.ndarray) -> None:
    """Grow ``dataset`` along axis 0 by ``values``."""
    old = dataset.shape[0]
    dataset.resize(old + len(values), axis=0)
    dataset[old:] = values


def _describe(fields: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> str:
    return ", ".join(f"{name} {dtype} {shape}" for name, (dtype, shape) in fields.items())


class FilesSink(HDF5Storage, SinkSpec):
    """Writes each worker's messages as HDF5 files into a directory.

    Attributes:
        dir: the directory (created if missing).
        layout: ``messages``: one ``{stream}-r{rank:03d}-m{index:06d}.h5`` per message;
            ``cxi``: one ``{stream}-r{rank:03d}.cxi`` per worker, all events appended.
            Either way ``close`` writes ``{stream}-r{rank:03d}.end.json`` (messages, events,
            last_seq, status, reason of the worker's end message); the ``messages`` layout
            also writes the stream's description to ``{stream}-r{rank:03d}.metadata.json``
            (the ``cxi`` layout keeps it in the file). A ``cxi`` file of a worker that did not
            end ``ok`` stays ``.cxi.part``.
        compression, level, shuffle, zfp, paths: how the arrays the sink writes itself are stored
            (:class:`~beamstream.serializers.storage.HDF5Storage`); an ``hdf5`` message in the ``messages``
            layout keeps its serializer's choice. ``paths`` is for the ``messages`` layout: the ``cxi`` layout
            places every field itself.
    """

    type: Literal["files"] = "files"
    dir: WritePath
    layout: Literal["messages", "cxi"] = "messages"

    @model_validator(mode="after")
    def _paths_in_messages_only(self) -> FilesSink:
        if self.paths and self.layout == "cxi":
            raise ValueError("paths: the cxi layout places every field under /entry_1/data_1 (its detector data also "
                             "at /entry_1/data_1/data); paths are for layout: messages")
        return self

    def open(self, context: SinkContext) -> FilesWriter:
        """A writer for worker ``context.rank``; TransportError if ``dir`` is not usable."""
        directory = Path(self.dir).expanduser()
        prepare_directory(directory)
        writer = MessageFiles if self.layout == "messages" else CxiFile
        return writer(directory, context, self.storage())
