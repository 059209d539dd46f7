"""``beamstream request``, ``beamstream streams`` and ``beamstream runs``: the request service from the command line
(:mod:`beamstream.service_client` is the same in Python; docs/requests.md).

Each command finds the service, and the TLS files for one with mutual TLS, from its options, else their
environment variables, else the user's profile (:func:`connect`, :mod:`beamstream.profile`); a bearer token comes
from ``$BEAMSTREAM_TOKEN``. Errors end a command as :mod:`beamstream.cli` says (exit 1, 2 for bad usage).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer

from beamstream.display import Column, console, fail, fitted_table, read_to_the_end, short_ids
from beamstream.protocol.states import State

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from rich.table import Table

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
        console.print(said, highlight=False)
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
            console.print(f"{_clock(change.at)} {change.state.value:<9} {change.reason}", highlight=False)
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


def _clock(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


streams_app = typer.Typer(help="List, show and cancel the streams of a request service; read their jobs' logs.",
                          no_args_is_help=True)


@streams_app.command("list")
def streams_list(
    service_url: ServiceURL = None,
    cert: CertFile = None,
    key: KeyFile = None,
    ca: CAFile = None,
    state: Annotated[Optional[State], typer.Option(case_sensitive=False, help="only streams in this state")] = None,
    experiment: Annotated[Optional[str], typer.Option(help="only streams of this experiment")] = None,
    owner: Annotated[Optional[str], typer.Option(help="only streams of this owner")] = None,
    limit: Annotated[int, typer.Option(min=1, help="show at most this many (the newest)")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print the streams as JSON on standard output")] = False,
) -> None:
    """The service's streams, newest first, one line each, no wider than the terminal: id (its shortest start that no
    other listed stream's shares, of 8 characters at least), name, run, owner, state, since when and why."""
    from rich.console import Console

    with connect(service_url, cert, key, ca) as service:
        streams = service.streams(state=state, experiment=experiment, owner=owner, limit=limit)
        if as_json:
            print(json.dumps([stream.view for stream in streams], indent=2))
            return
    out = Console()
    out.print(streams_table(service.url, [stream.view for stream in streams], out.width))


def streams_table(url: str, views: Sequence[dict[str, Any]], width: int) -> Table:
    """The streams of ``views`` as a table at most ``width`` cells wide (:func:`~beamstream.display.fitted_table`),
    one line each: the id shortened (:func:`~beamstream.display.short_ids`), the name, the run
    (``experiment/run``; the column only when one has one), the owner (only when they have several; else the
    title names the owner), the state, since when (the time of day today, else the day) and why (the reason's first
    line). Names, runs, owners and reasons are cut to fit."""
    short = short_ids([view["id"] for view in views])
    owners = {view["owner"] for view in views}
    columns = [Column("id"), Column("name", 8)]
    columns += [Column("run", 8)] if any(view["experiment"] for view in views) else []
    columns += [Column("owner", 8)] if len(owners) > 1 else []
    columns += [Column("state"), Column("since"), Column("reason", 12)]
    rows = [[texts[column.header] for column in columns] for texts in (_texts(view, short) for view in views)]
    title = f"streams of {next(iter(owners))} at {url}" if len(owners) == 1 else f"streams at {url}"
    return fitted_table(columns, rows, width, title=title)


def _texts(view: dict[str, Any], short: dict[str, str]) -> dict[str, str]:
    """The text of ``view`` (a stream) in each column of the streams table, by header: each the first line of it."""
    last = view["history"][-1]
    texts = {"id": short[view["id"]], "name": view["name"] or "", "owner": view["owner"], "state": view["state"].value,
             "run": f"{view['experiment']}/{view['run']}" if view["experiment"] else "",
             "since": _since(last["at"]), "reason": last["reason"]}
    return {column: _first_line(text) for column, text in texts.items()}


def _first_line(text: str) -> str:
    return next(iter(text.splitlines()), "")


def _since(at: float) -> str:
    """The time of day of ``at`` (seconds since the epoch) if it is today, else its day."""
    import time

    day = "%Y-%m-%d"
    when = time.localtime(at)
    return time.strftime("%H:%M:%S" if time.strftime(day, when) == time.strftime(day) else day, when)


@streams_app.command("show")
def streams_show(
    stream_id: StreamID,
    service_url: ServiceURL = None,
    cert: CertFile = None,
    key: KeyFile = None,
    ca: CAFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the stream as JSON on standard output")] = False,
) -> None:
    """One stream: its state, the history of its state changes, where to read it, its verdict."""
    from rich.console import Console
    from rich.table import Table

    with connect(service_url, cert, key, ca) as service:
        view = service.find(stream_id).view
    if as_json:
        print(json.dumps(view, indent=2))
        return
    out = Console(highlight=False)
    run = f", experiment {view['experiment']} run {view['run']}" if view["experiment"] else ""
    out.print(f"stream {view['id']} ({view['name'] or 'no name'}) of {view['owner']}{run}: "
              f"[bold]{view['state'].value}[/]")
    history = Table(title="history")
    for column in ("#", "at", "state", "reason"):
        history.add_column(column)
    for index, change in enumerate(view["history"]):
        history.add_row(str(index), _clock(change["at"]), change["state"].value, change["reason"])
    out.print(history)
    for role, endpoint in (view["endpoints"] or {}).items():
        out.print(f"{role}: {endpoint}")
    if view["verdict"]:
        out.print(f"verdict: {'complete' if view['verdict']['complete'] else 'INCOMPLETE'}\n"
                  f"{view['verdict']['summary']}")


@streams_app.command("cancel")
def streams_cancel(
    stream_id: StreamID,
    service_url: ServiceURL = None,
    cert: CertFile = None,
    key: KeyFile = None,
    ca: CAFile = None,
) -> None:
    """Cancel a stream that has not ended (its jobs are stopped); exit 1 if it has."""
    with connect(service_url, cert, key, ca) as service:
        stream = service.find(stream_id).cancel()
    console.print(f"stream {stream.id} {stream.state.value}: {stream.view['history'][-1]['reason']}", highlight=False)


@streams_app.command("watch")
def streams_watch(
    stream_id: StreamID,
    service_url: ServiceURL = None,
    cert: CertFile = None,
    key: KeyFile = None,
    ca: CAFile = None,
) -> None:
    """Print each state change of a stream as the service pushes it, until it ends; exit 0 if it completed.

    Each change is a line (time, state, reason), from the stream's first (queued) on, so that the history comes
    before the news. The command exits 1, with the reason, if the stream failed or was cancelled. Ctrl-C stops
    watching (exit 130); the stream goes on."""
    with connect(service_url, cert, key, ca) as service:
        stream = service.find(stream_id)
        last = run_interruptible(lambda: show_changes(stream), lambda: left_running(stream), 0.0)
    if last.state is not State.COMPLETED:
        fail(f"stream {stream.id} {last.state.value}: {_first_line(last.reason)}")


@streams_app.command("logs")
def streams_logs(
    stream_id: StreamID,
    service_url: ServiceURL = None,
    cert: CertFile = None,
    key: KeyFile = None,
    ca: CAFile = None,
    tail: Annotated[Optional[int], typer.Option(
        min=1, metavar="N", help="the last N lines of each job's output (default: the whole lines of its last "
                                 "64 KiB)")] = None,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="then print what the jobs write, as they write it, until the stream has ended")] = False,
) -> None:
    """The output of the stream's jobs (buffer first) on standard output; with --follow, as they write it.

    Each file is headed "==> ROLE (FILE) <==". With --follow, the command goes on printing each line the jobs write
    until the stream has ended and their output has been printed to its end. Ctrl-C stops it (exit 130); the stream
    goes on."""
    with connect(service_url, cert, key, ca) as service:
        stream = service.find(stream_id)
        if not follow:
            print(stream.logs(lines=tail), end="")
            return
        run_interruptible(lambda: _print_lines(stream.follow_logs(lines=tail)), lambda: left_running(stream), 0.0)


def _print_lines(lines: Iterable[str]) -> None:
    for line in lines:
        print(line, flush=True)  # flushed: Ctrl-C ends the process without Python's shutdown (_exit_now)


def left_running(stream: Stream) -> str:
    """What to say when Ctrl-C stops watching ``stream``, which goes on."""
    return f"interrupted; stream {stream.id} goes on (`beamstream streams cancel {stream.id}` cancels it)"


@streams_app.command("credentials")
def streams_credentials(
    stream_id: StreamID,
    service_url: ServiceURL = None,
    cert: CertFile = None,
    key: KeyFile = None,
    ca: CAFile = None,
    as_json: Annotated[bool, typer.Option("--json", help='print {"stream": ID, "key": KEY} on standard output')]
    = False,
) -> None:
    """The stream's key, on standard output (for its owner only; keep it secret, e.g. in a file of mode 0600)."""
    with connect(service_url, cert, key, ca) as service:
        credentials = service.find(stream_id).credentials()
    print(json.dumps(credentials) if as_json else credentials["key"])


runs_app = typer.Typer(help="The runs of an experiment that a request service's catalogue finds.",
                       no_args_is_help=True)


@runs_app.command("list")
def runs_list(
    experiment: Annotated[str, typer.Argument(metavar="EXPERIMENT", help="the experiment, as in xpptut15")],
    service_url: ServiceURL = None,
    cert: CertFile = None,
    key: KeyFile = None,
    ca: CAFile = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help='print the runs as JSON on standard output ([{"run", "source", "files"}, ...])')] = False,
) -> None:
    """The runs of EXPERIMENT that the service finds (`beamstream request --experiment E --run R` streams one), in
    run order, one line each, no wider than the terminal: the run, the source type that reads it, its number of
    files and the folder they are in. Exit 1 if the service knows none, or you may not read the experiment."""
    from rich.console import Console

    with connect(service_url, cert, key, ca) as service:
        runs = service.runs(experiment)
    if as_json:
        print(json.dumps(runs, indent=2))
        return
    out = Console()
    out.print(runs_table(service.url, experiment, runs, out.width))


def runs_table(url: str, experiment: str, runs: Sequence[dict[str, Any]], width: int) -> Table:
    """The ``runs`` of ``experiment`` (as :meth:`~beamstream.service_client.ServiceClient.runs` gives them) as a
    table at most ``width`` cells wide (:func:`~beamstream.display.fitted_table`): run, source, files (how many),
    folder (the one they are all in, cut to fit)."""
    import os

    columns = [Column("run"), Column("source"), Column("files"), Column("folder", 12)]
    rows = [[str(run["run"]), run["source"], str(len(run["files"])),
             os.path.commonpath([os.path.dirname(file) for file in run["files"]]) if run["files"] else ""]
            for run in runs]
    return fitted_table(columns, rows, width, title=f"runs of {experiment} at {url}")
