"""Saving received messages as .h5 files, in a directory or a tar archive (``beamstream consume --out``).

Every file beamstream writes carries the stream's description (:class:`~beamstream.wire.metadata.RunMetadata`,
docs/wire-format.md) where the stream has one: as JSON in the attribute ``description``
(:data:`DESCRIPTION_ATTRIBUTE`) of its ``_beamstream`` group, ``/_beamstream`` in a saved message and
``/entry_1/_beamstream`` in a ``cxi`` file. ``RunMetadata`` reads it back:
``msgspec.json.decode(h5["_beamstream"].attrs["description"], type=RunMetadata)``.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from pathlib import Path
from typing import Any

from beamstream.atomic import write_atomically
from beamstream.modes import create_file, make_dirs
from beamstream.errors import TransportError
from beamstream.codecs import decode_payload
from beamstream.codecs.hdf5 import LIBVER, META_GROUP, NO_STORAGE, Storage, batch_to_hdf5_bytes
from beamstream.wire.frames import frame_buffer
from beamstream.wire.metadata import RunMetadata

UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
DESCRIPTION_ATTRIBUTE = "description"
"""The attribute of a file's ``_beamstream`` group that holds the stream's description as JSON."""


def safe_name(text: str) -> str:
    """``text`` with every character but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    return UNSAFE.sub("_", text)


def message_filename(message: Any) -> str:
    """``{stream}-r{rank:03d}-m{index:06d}.h5``: unique per message of a stream."""
    return f"{safe_name(message.stream)}-r{message.rank:03d}-m{message.index:06d}.h5"


def write_description(group: Any, metadata: RunMetadata) -> None:
    """Store ``metadata`` in h5py group ``group`` (a file's ``_beamstream``) as :data:`DESCRIPTION_ATTRIBUTE`."""
    group.attrs[DESCRIPTION_ATTRIBUTE] = json.dumps(metadata.to_builtins())


def message_h5_bytes(message: Any, storage: Storage = NO_STORAGE, metadata: RunMetadata | None = None) -> bytes:
    """The message as an HDF5 file image: an ``hdf5`` payload's datasets as they are, others written as
    ``storage`` says; with ``metadata``, the stream's description in ``/_beamstream`` (:func:`write_description`)."""
    if message.serializer == "hdf5":  # its frames, concatenated, are the file
        image = b"".join(frame_buffer(frame) for frame in message.payload)
    else:
        image = batch_to_hdf5_bytes(message.seq, message.time, decode_payload(message), storage)
    if metadata is None:
        return bytes(image)
    import h5py

    buffer = io.BytesIO(image)
    with h5py.File(buffer, "r+", libver=LIBVER) as h5:
        write_description(h5.require_group(META_GROUP), metadata)
    return buffer.getvalue()


def save_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`beamstream.atomic.write_atomically`); TransportError naming it on failure."""
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise TransportError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


class MessageSaver:
    """Writes each message as one .h5 file into a directory, or as one member of a tar archive.

    Each file holds the stream's description (:func:`write_description`) where :meth:`save` is given it.
    Files are created private (:mod:`beamstream.modes`). An existing file is not overwritten
    unless ``overwrite``: TransportError names it and says to pass ``--force``. An archive that got no
    message is removed when closed, so that nothing blocks the next try.
    """

    def __init__(self, directory: Path | None = None, archive: tarfile.TarFile | None = None,
                 overwrite: bool = False, archive_path: Path | None = None) -> None:
        self.directory = directory
        self.archive = archive
        self.archive_path = archive_path
        self.overwrite = overwrite
        self.saved = 0

    @classmethod
    def open(cls, out: Path, overwrite: bool = False) -> MessageSaver:
        """A saver for ``out``: a tar archive when it ends in .tar, else a directory (created if needed)."""
        try:
            if out.suffix == ".tar":
                file = os.fdopen(create_file(out, exclusive=not overwrite), "wb")
                return cls(archive=tarfile.open(fileobj=file, mode="w"), overwrite=overwrite, archive_path=out)
            make_dirs(out)
        except FileExistsError:
            raise TransportError(f"{out} exists; pass --force to overwrite it") from None
        except OSError as exc:
            raise TransportError(f"cannot write to {out}: {exc.strerror or exc}") from None
        return cls(directory=out, overwrite=overwrite)

    def save(self, message: Any, metadata: RunMetadata | None = None) -> None:
        """Write data message ``message`` with ``metadata``, the stream's description (``client.metadata``)."""
        name = message_filename(message)
        image = message_h5_bytes(message, metadata=metadata)
        if self.archive is None:
            path = self.directory / name
            if not self.overwrite and path.exists():
                raise TransportError(f"{path} exists; pass --force to overwrite it")
            save_file(path, image)
            self.saved += 1
            return
        info = tarfile.TarInfo(name)
        info.size = len(image)
        info.mtime = int(time.time())
        try:
            self.archive.addfile(info, io.BytesIO(image))
        except OSError as exc:
            raise TransportError(f"cannot add {name} to {self.archive.name}: {exc.strerror or exc}") from None
        self.saved += 1

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()
            self.archive.fileobj.close()  # tarfile leaves a file it was handed open
            if not self.saved and self.archive_path is not None:
                self.archive_path.unlink(missing_ok=True)
