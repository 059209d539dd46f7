"""``beamstream view ENDPOINT``: a live web viewer of a stream, read as a lossy consumer group by default."""

from __future__ import annotations

import threading
from typing import Annotated, Optional

import typer

from beamstream.display import console, fail
from beamstream.errors import needs_extra
from beamstream.reading_cli import KeyFile, RedeliverAfter, Start, open_client
from beamstream.transport import copies_if_shared


def view(
    endpoint: Annotated[str, typer.Argument(
        help="the stream to show: a buffer's consumer endpoint (tcp://, ipc://), a request service's stream "
             "(http(s)://SERVICE/v1/streams/ID, through its relay) or nats://HOST:PORT/NAME", metavar="ENDPOINT")],
    group: Annotated[str, typer.Option(help="read as a member of this consumer group")] = "viewer",
    lossy: Annotated[bool, typer.Option(
        help="always take the newest message, skipping older ones, so that the viewer never slows the stream "
             "(--no-lossy: a lossless group, which holds the producers back when the viewer falls behind)")] = True,
    start: Start = None,
    redeliver_after: RedeliverAfter = None,
    timeout: Annotated[Optional[float], typer.Option(
        metavar="SECONDS", help="seconds of silence before the stream counts as ended (default: wait)")] = None,
    key_file: KeyFile = None,
    host: Annotated[str, typer.Option(help="address the page is served at")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port the page is served at (0: any free one)")] = 8765,
) -> None:
    """Show a stream live in a web page: the newest image, the waveforms, events/s, what was skipped, the verdict.

    The page, at http://HOST:PORT/, needs no internet; it draws as fast as the browser can, never more.

    After the stream ends, the page keeps its last event and the verdict. Ctrl-C stops the viewer (exit 130).
    """
    try:
        from beamstream.viewer.latest import Latest, read_into
        from beamstream.viewer.serve import ViewerServer
    except ImportError as exc:
        fail(needs_extra("the viewer", "service", cause=exc))
    client = open_client(endpoint, start=start, key_file=key_file, timeout=timeout, group=group, lossy=lossy,
                         redeliver_after=redeliver_after, **copies_if_shared(endpoint))  # the page keeps the newest
    latest = Latest(endpoint)
    try:
        server = ViewerServer(latest, host, port)
    except BaseException:
        client.close()
        raise
    stop = threading.Event()
    threading.Thread(target=read_into, args=(latest, client, stop), name="beamstream-viewer-reader",
                     daemon=True).start()
    console.print(f"viewer: {server.url} (reading {endpoint} as group {group!r}{', lossy' if lossy else ''})",
                  highlight=False)
    try:
        server.run()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        stop.set()
