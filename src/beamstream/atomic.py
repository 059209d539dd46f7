"""Files that appear complete or not at all: written under a ``.part`` name, fsynced, then renamed to ``NAME``.

Every file beamstream writes for others to read (saved messages, CXI files, end-of-stream
records, the buffer's group positions and segment indexes) goes through here, so a reader
never sees half a file, also after a crash of the machine; they are created private
(:mod:`beamstream.modes`). A file written whole (:func:`write_atomically`) is written under a name of its
writer's own, so that several processes may write the same file at once (the members of a consumer group
writing the same geometry file): the last rename wins and no writer loses its partial file to another.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from beamstream.modes import create_file


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete: ``path`` with ``.part`` appended."""
    return path.with_name(path.name + ".part")


def commit(path: Path, partial: Path | None = None) -> None:
    """Give the complete file at ``partial`` (default :func:`partial_path` of ``path``) its final name ``path``:
    fsync it, then rename.

    Raises OSError (the partial file is left for the caller to remove).
    """
    partial = partial or partial_path(path)
    descriptor = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(partial, path)


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that ``path`` is complete or absent, under a partial name of this writer's
    own (``NAME.PID-THREAD.part``).

    Raises OSError, after removing the partial file.
    """
    partial = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        with os.fdopen(create_file(partial), "wb") as file:
            file.write(data)
        commit(path, partial)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
