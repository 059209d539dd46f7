"""``beamstream request``: ask the request service for a stream and read it, from the command line
(:mod:`beamstream.service_client` is the same in Python; docs/requests.md); with what the other commands for the
service (``beamstream streams``, ``beamstream runs``: :mod:`beamstream.streams_cli`) share.

Each command finds the service, and the TLS files for one with mutual TLS, from its options, else their
environment variables, else the user's profile (:func:`connect`, :mod:`beamstream.profile`); a bearer token comes
from ``$BEAMSTREAM_TOKEN``. Errors end a command as :mod:`beamstream.cli` says (exit 1, 2 for bad usage).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer
from rich.text import Text

from beamstream.display import console, fail, read_to_the_end
from beamstream.protocol.states import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from beamstream.service_client import Change, ServiceClient, Stream


T = TypeVar("T")
ServiceURL = Annotated[Optional[str], typer.Option(
    "--service", envvar="BEAMSTREAM_SERVICE", show_envvar=False, metavar="URL",
    help="the request service (default: $BEAMSTREAM_SERVICE, else the profile's, else http://127.0.0.1:8080)")]


CertFile = Annotated[Optional[Path], typer.Option(
    "--cert", envvar="BEAMSTREAM_CERT", show_envvar=False, metavar="FILE",
    help="your certificate (PEM), for a service with mutual TLS (default: $BEAMSTREAM_CERT, else the profile's)")]
KeyFile = Annotated[Optional[Path], typer.Option(
    "--key", envvar="BEAMSTREAM_KEY", show_envvar=False, metavar="FILE",
    help="the key of --cert (PEM; default: $BEAMSTREAM_KEY, else the profile's)")]
CAFile = Annotated[Optional[Path], typer.Option(
    "--ca", envvar="BEAMSTREAM_CA", show_envvar=False, metavar="FILE",
    help="the CA certificate that verifies the service (default: $BEAMSTREAM_CA, else the profile's, else the system's)")]
StreamID = Annotated[str, typer.Argument(
    metavar="ID", help="the stream's id, or the start of it that no other of your streams' ids starts with "
                       "(as `beamstream streams list` shows it)")]


def connect(url: str | None, cert: Path | None = None, key: Path | None = None,
            ca: Path | None = None) -> ServiceClient:
    """The request service at ``url``, with the TLS files given (an https:// service): as
    :meth:`ServiceClient.from_profile <beamstream.service_client.ServiceClient.from_profile>` finds it.

    Each value is taken from its option, else its environment variable (both already in the arguments),
    else the profile (``$BEAMSTREAM_PROFILE``, else ``~/.config/beamstream/profile.yaml``), else the default.
    The profile's TLS files apply only to an https:// service.
    """
    from beamstream.service_client import ServiceClient

    return ServiceClient.from_profile(url=url, cert=cert, key=key, ca=ca)


def request(
    spec_file: Annotated[Optional[Path], typer.Argument(
        help="stream spec (YAML or JSON); may be left out with --experiment and --run", metavar="SPEC")] = None,
    service_url: ServiceURL = None,
    cert: CertFile = None,
    key: KeyFile = None,
    ca: CAFile = None,
    experiment: Annotated[Optional[str], typer.Option(help="stream a run of this experiment (with --run)")] = None,
    run: Annotated[Optional[int], typer.Option(
        min=0, help="the run (with --experiment): the service finds its files")] = None,
    name: Annotated[Optional[str], typer.Option(help="the stream's name (default: the spec's)")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1,
                                                   help="producer workers (default: 1)")] = None,
    executor: Annotated[Optional[str], typer.Option(
        help="where the jobs run: local or slurm (default: the service's)")] = None,
    group: Annotated[str, typer.Option(help="read the stream as a member of this consumer group")] = "default",
    relay: Annotated[bool, typer.Option(
        help="read through the service's HTTP relay instead of from the stream's buffer")] = False,
    timeout: Annotated[float, typer.Option(help="seconds of silence from the running stream before giving up")] = 60.0,
) -> None:
    """Ask the request service for a stream, show its state as it changes, read it; exit 1 unless it completes.

    Ctrl-C cancels the stream (its jobs are stopped) and exits 130.
    """
    if spec_file is None and (experiment is None or run is None):
        fail("give a SPEC, or --experiment E --run R (or both)", code=2)
    if (experiment is None) != (run is None):
        fail("--experiment and --run go together", code=2)
    resources = {key: value for key, value in (("workers", workers), ("executor", executor)) if value is not None}
    with connect(service_url, cert, key, ca) as service:
        stream = service.request(spec_file, resources=resources or None, experiment=experiment, run=run, name=name)
        console.print(f"stream {stream.id} requested from {service.url}", highlight=False)
        run_cancellable(stream, lambda: follow_and_read(stream, group, relay, timeout))


CANCEL_GRACE_S = 1.0  # after Ctrl-C cancelled a stream, for its reader to show how it ended (Ctrl-C ends within 2 s)


def run_cancellable(stream: Stream, work: Callable[[], None]) -> None:
    """Run ``work`` as :func:`run_interruptible` does; on Ctrl-C, cancel ``stream``, give ``work``
    CANCEL_GRACE_S seconds to show how the stream ended, say what became of the stream, exit 130."""
    run_interruptible(work, lambda: cancel_interrupted(stream), CANCEL_GRACE_S)


def run_interruptible(work: Callable[[], T], interrupted: Callable[[], str], grace: float) -> T:
    """What ``work`` returns, run on a thread while this main thread waits for it, so that Ctrl-C lands here, not
    inside a library's clean-up (a generator being closed, say) that would swallow it. On Ctrl-C: call
    ``interrupted`` for what to say, give ``work`` ``grace`` seconds to end, say it, exit 130; if ``work`` is still
    running then, the process ends at once (see :func:`_exit_now`). Otherwise raise what ``work`` raised.

    This thread prints nothing while ``work`` runs: rich's live displays (``work``'s progress) and a print from
    another thread can deadlock on rich's locks."""
    import signal
    import threading

    raised: list[BaseException] = []
    returned: list[T] = []
    done = threading.Event()  # not Thread.join: Ctrl-C inside join() marks a running thread stopped (CPython 3.11)

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # Linux may hand a process's SIGINT to any
        try:  # thread that does not block it; here, the main thread asleep in wait() would never hear of it (seen)
            returned.append(work())
        except BaseException as exc:  # typer.Exit included: raised again in the main thread
            raised.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="beamstream-command", daemon=True).start()
    try:
        done.wait()
    except KeyboardInterrupt:
        said = interrupted()
        if not done.wait(grace):
            _exit_now(said, 130)
        console.print(Text(said), highlight=False)
        raise typer.Exit(130) from None
    if raised:
        raise raised[0]
    return returned[0]


SHOW_CURSOR = "\x1b[?25h"  # a live display hides the terminal's cursor while it runs


def _exit_now(line: str, code: int) -> None:
    """Write ``line`` to stderr with a bare system call (on a terminal, after showing the cursor again, which the
    reader's live display hid) and end the process without Python's shutdown: a thread still inside a live display
    or a socket holds locks that shutdown (or rich) would wait on forever."""
    import os

    os.write(2, f"{SHOW_CURSOR if os.isatty(2) else ''}\n{line}\n".encode())
    os._exit(code)


def follow_and_read(stream: Stream, group: str, relay: bool, timeout: float) -> None:
    """Show the stream's changes until it runs, read it as a member of ``group``, show its changes until it
    ends; typer.Exit(1) unless it completed and arrived complete."""
    last = show_changes(stream, until_running=True)
    complete = False
    if last.state is State.RUNNING:
        with stream.client(group=group, relay=relay, timeout=timeout) as client:
            complete = read_to_the_end(client)
        last = show_changes(stream, after=last.index)
    if last.state is not State.COMPLETED:
        fail(f"stream {stream.id} {last.state.value}: {last.reason}")
    if not complete:
        raise typer.Exit(1)


def show_changes(stream: Stream, after: int | None = None, until_running: bool = False) -> Change:
    """Print each state change of ``stream`` after the ``after``-th (time, state, reason) as the service pushes
    it, until the stream runs (with ``until_running``) or ends; the last one printed."""
    from contextlib import closing

    with closing(stream.changes(after)) as changes, console.status(f"stream {stream.id}…") as status:
        for change in changes:
            console.print(Text(f"{clock_time(change.at)} {change.state.value:<9} {change.reason}"), highlight=False)
            status.update(f"stream {stream.id}: {change.state.value}…")
            if change.state.final or (until_running and change.state is State.RUNNING):
                break
    return change


def cancel_interrupted(stream: Stream) -> str:
    """Cancel ``stream`` after Ctrl-C; what to say of it (cancelled, or why not: it has ended, say)."""
    from beamstream.errors import ServiceError

    try:
        stream.cancel()
    except ServiceError as exc:
        return f"interrupted; stream {stream.id} not cancelled: {exc}"
    return f"interrupted: stream {stream.id} cancelled"


def clock_time(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
