"""What every command that reads a stream (``consume``, ``view``, ``bridge karabo``) says the same way: the options of
where and how it reads, declared once, and :func:`open_client`, which makes its Client or exits 2 saying, in the
command line's words, which option does not apply or which key file cannot be used."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from beamstream.display import fail

if TYPE_CHECKING:
    from beamstream.client import Client

GroupEndpoint = Annotated[str, typer.Argument(
    metavar="ENDPOINT", help="a buffer's consumer endpoint (tcp://, ipc://) or another endpoint a Client reads")]
Start = Annotated[Optional[str], typer.Option(
    metavar="earliest|now", help="with --group or nats://: a new group starts at the 'earliest' message held or "
                                 "'now' (default: earliest)")]
RedeliverAfter = Annotated[Optional[float], typer.Option(
    metavar="SECONDS", help="with nats:// and a new lossless group: seconds before a message a member did not "
                            "acknowledge goes to another (default: 30)")]
Subscribe = Annotated[bool, typer.Option("--sub", help="subscribe to a broadcast (pub) stream")]
KeyFile = Annotated[Optional[Path], typer.Option(
    "--key-file", metavar="FILE", help="the stream is sealed: open its messages with the stream key in FILE "
                                       "(readable by its owner only); others are refused as forged")]
OPTION_WORDS = (("pattern='sub'", "--sub"), ("redeliver_after", "--redeliver-after"), ("group=...", "--group"),
                ("lossy", "--lossy"), ("start", "--start"), ("bind", "--bind"))
"""How the Client's refusals name its options, and how the command line does."""


def stream_key(key_file: Path | None) -> object:
    """The StreamKey in ``key_file`` (None without one); exit 2 naming the problem for a file that cannot be
    read, that others may read or change, or that holds no key."""
    if key_file is None:
        return None
    from beamstream.security.streamkey import StreamKey, StreamKeyError, read_key_file

    try:
        return StreamKey.from_text(read_key_file(key_file))
    except StreamKeyError as exc:
        fail(f"--key-file: {exc}", code=2)


def option_words(text: str) -> str:
    """A Client's OptionError in the command line's words (``lossy`` → ``--lossy``)."""
    for name, option in OPTION_WORDS:
        text = text.replace(name, option)
    return text


def open_client(endpoints: str | list[str], *, start: str | None = None, key_file: Path | None = None,
                **options: Any) -> Client:
    """``Client(endpoints, start=start, key=<the key in key_file>, **options)``; exit 2 for a ``start`` other than
    earliest or now, a key file that cannot be used (:func:`stream_key`) or an option that does not apply where
    the stream is read (the Client's refusal, in the command line's words)."""
    from beamstream.client import Client
    from beamstream.errors import OptionError

    if start not in (None, "earliest", "now"):
        fail(f"--start must be 'earliest' or 'now', not {start!r}", code=2)
    key = stream_key(key_file)
    try:
        return Client(endpoints, start=start, key=key, **options)
    except OptionError as exc:
        fail(option_words(str(exc)), code=2)
