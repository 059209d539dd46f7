"""``beamstream bridge``: serve a beamstream stream in another facility's protocol (:mod:`beamstream.bridges`).

``beamstream bridge karabo ENDPOINT --bind tcp://*:4545`` reads ENDPOINT with a beamstream Client, taking
every option ``beamstream consume`` takes (the Client checks where each applies), and serves each event as a
Karabo bridge train (docs/karabo-bridge.md). An ``https://`` stream is read with the TLS files given, else
their environment variables, else the profile's (as ``beamstream request`` finds them), and the bearer token
in ``$BEAMSTREAM_TOKEN`` if set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from beamstream.display import console
from beamstream.reading_cli import KeyFile, RedeliverAfter, Start, Subscribe, open_client

if TYPE_CHECKING:
    from beamstream.bridges.karabo import KaraboBridge

bridge_app = typer.Typer(help="Serve a beamstream stream in another facility's protocol.", no_args_is_help=True)


@bridge_app.command("karabo")
def karabo(
    endpoints: Annotated[list[str], typer.Argument(
        metavar="ENDPOINT", help="what to read: producers (tcp://, ipc://), a buffer with --group, a request "
                                 "service's stream (http(s)://SERVICE/v1/streams/ID, with --group) or nats://")],
    bind: Annotated[str, typer.Option(metavar="ADDRESS", help="where Karabo bridge clients connect (REQ)")]
    = "tcp://*:4545",
    source: Annotated[Optional[str], typer.Option(
        metavar="NAME", help="the Karabo source of every field (default: per field, the detector the stream's "
                             "metadata names, else 'beamstream')")] = None,
    group: Annotated[Optional[str], typer.Option(help="read as a member of this consumer group")] = None,
    lossy: Annotated[bool, typer.Option(
        help="with --group or nats://: always take the newest message, skipping older ones")] = False,
    start: Start = None,
    listen: Annotated[bool, typer.Option(
        "--listen", help="bind ENDPOINT instead of connecting to it (producers connect)")] = False,
    subscribe: Subscribe = False,
    redeliver_after: RedeliverAfter = None,
    timeout: Annotated[float, typer.Option(
        metavar="SECONDS", help="seconds of silence from the stream before giving up")] = 30.0,
    key_file: KeyFile = None,
    cert: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="https:// streams: your certificate (PEM; default: $BEAMSTREAM_CERT, else the "
                             "profile's)")] = None,
    key: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="https:// streams: the key of --cert (PEM; default: $BEAMSTREAM_KEY, else the "
                             "profile's)")] = None,
    ca: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="https:// streams: the CA certificate that verifies the service (default: "
                             "$BEAMSTREAM_CA, else the profile's, else the system's)")] = None,
) -> None:
    """Serve a stream to Karabo bridge clients (karabo_bridge.Client, REQ): each event a train, served once.

    Exits 0 when the stream has ended and every event was served; 1, with its report, if it ended incomplete.

    Ctrl-C stops it (exit 130). Clients still waiting for a train then keep waiting: give them a timeout.
    """
    from beamstream.allocator import release_freed_buffers
    from beamstream.bridges.karabo import PROTOCOL, KaraboBridge
    from beamstream.errors import StreamIncomplete
    from beamstream.transport import copies_if_shared

    client = open_client(endpoints, start=start, key_file=key_file, timeout=timeout, bind=listen,
                         pattern="sub" if subscribe else "pull", group=group, lossy=lossy,
                         redeliver_after=redeliver_after, **copies_if_shared(endpoints[0]),  # see serve()
                         **_credentials(endpoints, cert, key, ca))
    release_freed_buffers()  # each received message reuses freed memory, not fresh pages (it holds a few at most)
    with client:
        bridge = KaraboBridge(bind, source=source)
        console.print(f"karabo bridge: serving {client.transport.where} at {bridge.address} "
                      f"(protocol {PROTOCOL}, REQ clients)", highlight=False)
        try:
            with bridge:
                bridge.serve(client)
        except KeyboardInterrupt:
            _say_served(client.report.summary(), bridge)
            console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None
        except StreamIncomplete as exc:
            _say_served(exc.report.summary(), bridge)
            raise typer.Exit(1) from None
    _say_served(client.report.summary(), bridge)


def _say_served(report: str, bridge: KaraboBridge) -> None:
    """Print the stream's report, then what ``bridge`` served."""
    console.print(report, highlight=False)
    console.print(bridge.served.summary(bridge.address), highlight=False)


def _credentials(endpoints: list[str], cert: Path | None, key: Path | None, ca: Path | None) -> dict[str, Any]:
    """The Client's ``tls`` and ``token`` for reading ``endpoints``: for an https:// stream, the TLS files as
    ``beamstream request`` finds them and ``$BEAMSTREAM_TOKEN``; elsewhere the files given, if any (the Client
    then refuses them, saying where they apply)."""
    if not endpoints[0].startswith("https://"):
        return {"tls": (cert, key, ca)} if (cert, key, ca) != (None, None, None) else {}
    from beamstream.profile import service_target

    target = service_target(endpoints[0], cert, key, ca)
    files = (target.cert, target.key, target.ca)
    token = os.environ.get("BEAMSTREAM_TOKEN") or None
    return {**({"tls": files} if files != (None, None, None) else {}), **({"token": token} if token else {})}
