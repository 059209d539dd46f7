"""The file that tells a stream's producers where its buffer listens, when their job starts with the buffer's.

On an executor whose jobs may run on other hosts (Slurm), the buffer picks its ports once it runs, so a
producers job submitted together with the buffer's cannot be given the buffer's endpoint on its command line.
The request service instead writes the endpoint to :data:`ENDPOINT_FILE` in the stream's folder once the buffer
has called back and the service has reached it (:func:`write_endpoint`, whole or not at all), and the producers
wait for that file (:func:`wait_for_endpoint`) after their own slow start (interpreter, imports, the source
opened): the two jobs start at once, and the first event waits for one job start instead of two in turn.

The folder is the service's state directory, which a multi-node cluster shares between its nodes; on NFS mounted
with ``lookupcache=all`` a new file may be seen only once the client's directory cache expires (``acdirmax``),
which delays the stream's start by that much and loses nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

from beamstream.atomic import write_atomically
from beamstream.errors import OptionError

ENDPOINT_FILE = "buffer.endpoint"
MAX_BYTES = 1024  # an endpoint is a URL of a few dozen bytes; a file longer than this holds none
POLL_S = 0.02  # how often a waiting producer looks for the file: the first event waits half of this on average


def write_endpoint(path: Path, endpoint: str) -> None:
    """Write ``endpoint`` (one line) to ``path``; a reader sees the whole file or none."""
    write_atomically(path, f"{endpoint}\n".encode())


def wait_for_endpoint(path: Path, timeout: float | None = None, poll: float = POLL_S) -> str:
    """The endpoint in ``path``, once the file exists (looked for every ``poll`` seconds, for at most ``timeout``
    seconds; None: until it appears, the job being cancelled if its stream ends first).

    Raises TimeoutError if it did not appear in time, OptionError if it holds no endpoint (empty, not text,
    control characters, spaces, longer than :data:`MAX_BYTES`); what the endpoint names is checked where it is used.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_BYTES + 1)
            break
        except FileNotFoundError:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{path} did not appear within {timeout:g} s: the buffer never said where it "
                                   "listens") from None
            time.sleep(poll)
    try:
        endpoint = data.decode("ascii").strip()
    except UnicodeDecodeError:
        endpoint = ""
    if len(data) > MAX_BYTES or not endpoint or not endpoint.isprintable() or " " in endpoint:
        raise OptionError(f"{path} should hold one endpoint (e.g. tcp://host:port) on one line; it holds "
                          f"{data[:60]!r}{'…' if len(data) > 60 else ''}")
    return endpoint
