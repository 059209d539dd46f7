"""Who may read what beamstream writes: experiment data is private to its owner unless told otherwise.

Files (spill segments and indexes, group positions, saved messages, CXI files, end records)
are created with :func:`file_mode` (default ``0600``) and the directories beamstream creates
for them, and the folders of the ipc:// sockets it binds, with :func:`dir_mode` (``0700``).
Set ``BEAMSTREAM_FILE_MODE`` (octal, e.g. ``640`` to let the owner's group read) to change
both: a directory gets the execute bit wherever the file mode can read.
"""

from __future__ import annotations

import os
from pathlib import Path

from beamstream.errors import OptionError

DEFAULT_FILE_MODE = 0o600


def file_mode() -> int:
    """The mode of the files beamstream creates (``BEAMSTREAM_FILE_MODE``, octal; default 0600).

    Raises OptionError (a ValueError) naming the variable when it is not an octal mode.
    """
    text = os.environ.get("BEAMSTREAM_FILE_MODE")
    if text is None:
        return DEFAULT_FILE_MODE
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise OptionError(f"BEAMSTREAM_FILE_MODE={text!r}: expected an octal file mode such as 600 or 640")
    return mode


def dir_mode() -> int:
    """The mode of the directories beamstream creates: the file mode, searchable wherever it can be read."""
    mode = file_mode()
    return mode | ((mode & 0o444) >> 2)


def make_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents with :func:`dir_mode` (existing ones are left as they are)."""
    missing = []
    path = directory
    while not path.exists():
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=dir_mode())
        except FileExistsError:
            continue
        path.chmod(dir_mode())  # mkdir's mode is filtered by the umask


def create_file(path: Path, *, exclusive: bool = False, append: bool = False) -> int:
    """Open ``path`` for writing, created with :func:`file_mode`; returns the descriptor. An existing file
    is truncated, or appended to with ``append``, or refused with ``exclusive`` (FileExistsError)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_APPEND if append else os.O_TRUNC)
    descriptor = os.open(path, flags, file_mode())
    os.fchmod(descriptor, file_mode())  # the creation mode is filtered by the umask; a file that existed keeps its own
    return descriptor
