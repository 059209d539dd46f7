"""Files that appear complete or not at all: written under ``NAME.part``, fsynced, then renamed to ``NAME``.

Every file beamstream writes for others to read (saved messages, CXI files, end-of-stream
records, the buffer's group positions and segment indexes) goes through here, so a reader
never sees half a file, also after a crash of the machine; they are created private
(:mod:`beamstream.modes`).
"""

from __future__ import annotations

import os
from pathlib import Path

from beamstream.modes import create_file


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete: ``path`` with ``.part`` appended."""
    return path.with_name(path.name + ".part")


def commit(path: Path) -> None:
    """Give the complete file at :func:`partial_path` (``path``) its final name: fsync it, then rename.

    Raises OSError (the partial file is left for the caller to remove).
    """
    partial = partial_path(path)
    descriptor = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(partial, path)


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that ``path`` is complete or absent.

    Raises OSError, after removing the partial file.
    """
    partial = partial_path(path)
    try:
        with os.fdopen(create_file(partial), "wb") as file:
            file.write(data)
        commit(path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
