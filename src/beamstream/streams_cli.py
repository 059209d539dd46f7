"""``beamstream streams`` (list, show, watch, cancel a request service's streams; read their jobs' logs; fetch
their credentials) and ``beamstream runs`` (the runs of an experiment its catalogue finds); docs/requests.md.

They find the service as ``beamstream request`` does (:func:`beamstream.remote_cli.connect`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.text import Text

from beamstream.display import Column, console, fail, fitted_table, short_ids
from beamstream.protocol.states import State
from beamstream.remote_cli import (CAFile, CertFile, KeyFile, ServiceURL, StreamID, clock_time, connect,
                                   run_interruptible, show_changes)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from rich.table import Table

    from beamstream.protocol.models import RunView
    from beamstream.service_client import Stream


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
    out = Console(markup=False)  # names and reasons are shown as they are, brackets and all
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
    out = Console(highlight=False, markup=False)  # names, reasons and summaries are shown as they are
    run = f", experiment {view['experiment']} run {view['run']}" if view["experiment"] else ""
    out.print(Text.assemble(f"stream {view['id']} ({view['name'] or 'no name'}) of {view['owner']}{run}: ",
                            (view["state"].value, "bold")))
    history = Table(title="history")
    for column in ("#", "at", "state", "reason"):
        history.add_column(column)
    for index, change in enumerate(view["history"]):
        history.add_row(str(index), clock_time(change["at"]), change["state"].value, change["reason"])
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
    console.print(Text(f"stream {stream.id} {stream.state.value}: {stream.view['history'][-1]['reason']}"),
                  highlight=False)


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
    print(credentials.model_dump_json() if as_json else credentials.key)


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
        print(json.dumps([run.model_dump() for run in runs], indent=2))
        return
    out = Console(markup=False)
    out.print(runs_table(service.url, experiment, runs, out.width))


def runs_table(url: str, experiment: str, runs: Sequence[RunView], width: int) -> Table:
    """The ``runs`` of ``experiment`` (as :meth:`~beamstream.service_client.ServiceClient.runs` gives them) as a
    table at most ``width`` cells wide (:func:`~beamstream.display.fitted_table`): run, source, files (how many),
    folder (the one they are all in, cut to fit)."""
    import os

    columns = [Column("run"), Column("source"), Column("files"), Column("folder", 12)]
    rows = [[str(run.run), run.source, str(len(run.files)),
             os.path.commonpath([os.path.dirname(file) for file in run.files]) if run.files else ""]
            for run in runs]
    return fitted_table(columns, rows, width, title=f"runs of {experiment} at {url}")
