"""``beamstream`` command line: check specs, produce, consume, demo; ``request`` comes from
:mod:`beamstream.remote_cli`, ``streams`` and ``runs`` from :mod:`beamstream.streams_cli`, ``buffer`` from
:mod:`beamstream.buffer_cli`, ``service`` from :mod:`beamstream.service.cli`, ``ca`` from
:mod:`beamstream.security.cli`.

Library code raises typed errors; the command modules alone turn them into messages and exit
codes (0 success, 1 failure or incomplete stream, 2 bad usage).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from beamstream.apps.crystallography_cli import crystallography
from beamstream.apps.tof_cli import tof
from beamstream.bridge_cli import bridge_app
from beamstream.buffer_cli import buffer_app
from beamstream.cli_help import readable_help_types
from beamstream.display import console, fail, labelled, read_to_the_end
from beamstream.reading_cli import KeyFile, RedeliverAfter, Start, Subscribe, open_client, stream_key
from beamstream.errors import BeamstreamError
from beamstream.interrupts import deliver_lost_interrupts
from beamstream.remote_cli import request
from beamstream.streams_cli import runs_app, streams_app
from beamstream.security.cli import ca_app
from beamstream.service.cli import service_app
from beamstream.viewer.cli import view

readable_help_types()  # --help says INTEGER, PATH, SECONDS; nothing for flags (typer 0.2x: <int range>, <bool>)
app = typer.Typer(help="Stream X-ray facility data from sources to consumers.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
spec_app = typer.Typer(help="Check stream specs and show their schema.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(ca_app, name="ca")


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"beamstream {version('beamstream')}")
        raise typer.Exit()


@app.callback()
def configure(
    log_level: Annotated[LogLevel, typer.Option(
        help="show log lines of this level and above, on standard error", case_sensitive=False)] = LogLevel.info,
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                          help="print beamstream's version and exit")] = False,
) -> None:
    """Stream X-ray facility data from sources to consumers."""
    configure_logging(log_level.value)


def configure_logging(level: str) -> None:
    """Send beamstream's log lines (library code only logs) to standard error through rich, at ``level``."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
    logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s", datefmt="[%X]", handlers=[handler],
                        force=True)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin it loads
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request to a service
    logging.getLogger("stamina").setLevel(logging.ERROR)  # a bare line per retry; what retries says what failed


@spec_app.command("check")
def spec_check(
    files: Annotated[list[Path], typer.Argument(help="spec files (YAML or JSON)", metavar="SPEC")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON result per file on standard output")] = False,
    for_service: Annotated[bool, typer.Option(
        "--for-service", help="check specs to send to a request service (beamstream request), as it does: their "
                              "sinks may be left out, as it replaces their stream sinks with one to the stream's "
                              "buffer")] = False,
) -> None:
    """Validate spec files; print every problem with its location. Without --for-service, also what can be checked
    in the source's files that are on this machine (a psana2 source's exp/run labels and fields)."""
    from beamstream.spec import load_spec

    results = []
    for path in files:
        try:
            spec = load_spec(path, for_service=for_service)
            if not for_service:
                spec.source.check_here()
        except BeamstreamError as exc:
            problems = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
            results.append({"file": str(path), "ok": False, "problems": problems})
            if not as_json:
                console.print(labelled("✗", "red", problems), highlight=False)
            continue
        stages = {"source": spec.source.type, "steps": [step.type for step in spec.steps],
                  "serializer": spec.serializer.type, "sinks": [sink.type for sink in spec.sinks]}
        results.append({"file": str(path), "ok": True, **stages})
        if not as_json:
            steps = " → ".join(stages["steps"]) or "(no steps)"
            console.print(labelled("✓", "green", f"{path}: {stages['source']} → {steps} → {stages['serializer']} → "
                                                 f"{', '.join(stages['sinks'])}"), highlight=False)
    if as_json:
        print(json.dumps(results, indent=2))
    if not all(result["ok"] for result in results):
        raise typer.Exit(1)


@spec_app.command("schema")
def spec_schema() -> None:
    """Print the JSON Schema of stream specs (for the installed plugins)."""
    from beamstream.spec import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))


@app.command()
def plugins(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List the installed sources, steps, serializers and sinks (on standard output)."""
    from beamstream.plugins import installed_plugins

    if as_json:
        print(json.dumps(installed_plugins(), indent=2))
        return
    for kind, names in installed_plugins().items():
        print(f"{kind}: {', '.join(names)}")


def _mpi_launched() -> bool:
    return any(name in os.environ for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"))


@app.command()
def produce(
    spec_file: Annotated[Path, typer.Argument(help="stream spec (YAML or JSON)", metavar="SPEC")],
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="local worker processes")] = 1,
    stream_id: Annotated[Optional[str], typer.Option(metavar="ID", help="stream id (default: random)")] = None,
    rank: Annotated[Optional[int], typer.Option(min=0, help="run only the producer of this rank (with --producers and --stream-id)")] = None,
    producers: Annotated[Optional[int], typer.Option(min=1, help="how many producers share the run (with --rank)")] = None,
    rank_from_env: Annotated[bool, typer.Option(
        "--rank-from-env", help="run as one rank of a launcher (srun, mpirun; with --stream-id): --rank and "
                                "--producers from SLURM_PROCID/SLURM_NTASKS, PMI_RANK/PMI_SIZE or "
                                "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE")] = False,
    key_file: Annotated[Optional[Path], typer.Option(
        "--key-file", metavar="FILE", help="seal every message with the stream key in FILE (readable by its owner "
                                           "only); consumers then need the same key")] = None,
    endpoint_from: Annotated[Optional[Path], typer.Option(
        "--endpoint-from", metavar="FILE", help="send the stream to the endpoint in FILE, waiting until it exists "
                                                "(the request service writes it once the stream's buffer listens)")]
    = None,
) -> None:
    """Run a stream spec with N local workers, one worker per rank under mpirun, or one given rank.

    Ctrl-C stops the local workers (each ends its share with an aborted end message) and exits 130.
    """
    from beamstream.display import ProducerProgress, workers_table
    from beamstream.errors import OptionError
    from beamstream.launchers import launcher_rank
    from beamstream.producer import run_local, run_mpi, run_worker
    from beamstream.worker_signals import abort_on_signals
    from beamstream.spec import load_spec

    if rank_from_env:
        if rank is not None or producers is not None:
            fail("--rank-from-env takes the rank from the launcher: give no --rank or --producers", code=2)
        try:
            rank, producers = launcher_rank(os.environ)
        except OptionError as exc:
            fail(str(exc), code=2)
    key = stream_key(key_file)
    spec = load_spec(spec_file)
    spec.source.open()  # fail fast on a missing file or detector, before any worker starts
    if endpoint_from is not None:  # started with the buffer: wait for it to listen, ready to send at once
        from beamstream.endpoint_file import wait_for_endpoint
        from beamstream.spec import with_buffer_endpoint

        spec = with_buffer_endpoint(spec, wait_for_endpoint(endpoint_from))
    _say_bound_endpoints(spec, workers if rank is None else producers or 1)
    if rank is not None or producers is not None:
        if rank is None or producers is None or stream_id is None or rank >= producers:
            fail("--rank R needs --producers N (R < N) and --stream-id ID, the same for every rank", code=2)
        abort_on_signals()
        stats = run_worker(spec, rank, producers, stream_id, key=key)
        console.print(workers_table([stats], f"stream {stream_id}, rank {rank} of {producers}"))
        if stats.status != "ok":
            fail(f"rank {rank} {stats.status}: {stats.reason}")
        return
    if _mpi_launched():
        result = run_mpi(spec, stream_id, key=key)
        if result is None:  # not rank 0: rank 0 prints the summary
            return
    else:
        with ProducerProgress() as progress:
            result = run_local(spec, workers, stream_id, on_progress=progress.update, key=key)
    console.print(workers_table(result.workers, f"stream {result.stream_id}"))
    seconds = result.seconds
    console.print(f"{result.events:,} events, {result.bytes / 1e9:.3f} GB in {seconds:.2f} s: "
                  f"{result.events / seconds:,.0f} events/s, {result.bytes / 1e9 / seconds:.3f} GB/s", highlight=False)
    if result.stopped_by is signal.SIGINT:  # Ctrl-C: every worker was told to stop; each says how it ended
        for rank, reason in sorted(result.errors.items()):
            console.print(f"worker {rank}: {reason}", highlight=False)
        console.print("interrupted", highlight=False)
        raise typer.Exit(130)
    for rank, reason in sorted(result.errors.items()):
        console.print(labelled(f"worker {rank} failed:", "red", reason), highlight=False)
    if result.errors:
        raise typer.Exit(1)


def _say_bound_endpoints(spec: object, producers: int) -> None:
    """When producers bind their own endpoints, print them (consumers must reach every one)."""
    from beamstream.transport import rank_endpoint

    for sink in spec.sinks:
        if getattr(sink, "bind", False) and producers > 1:
            where = ", ".join(rank_endpoint(sink.endpoint, rank) for rank in range(producers))
            console.print(f"producers bind {where}: read them with `beamstream consume {sink.endpoint} "
                          f"--producers {producers}`", highlight=False)


@app.command()
def consume(
    endpoints: Annotated[list[str], typer.Argument(help="endpoints to read, e.g. tcp://127.0.0.1:5555",
                                                   metavar="ENDPOINT")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="directory for .h5 files, or FILE.tar")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite output files that exist")] = False,
    max_events: Annotated[Optional[int], typer.Option("--max-events", "-n", min=1,
                                                      help="stop after this many events")] = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="seconds of silence before giving up")] = 30.0,
    bind: Annotated[bool, typer.Option(help="bind the endpoints (producers connect)")] = False,
    producers: Annotated[Optional[int], typer.Option(
        min=1, help="the endpoint is the first of this many producers that each bind their own "
                    "(tcp PORT+r, ipc PATH-r): read them all")] = None,
    subscribe: Subscribe = False,
    group: Annotated[Optional[str], typer.Option(help="read from a buffer as a member of this consumer group")] = None,
    lossy: Annotated[bool, typer.Option(
        help="with --group or nats://: always take the newest message, skipping older ones")] = False,
    start: Start = None,
    redeliver_after: RedeliverAfter = None,
    key_file: KeyFile = None,
) -> None:
    """Read a stream, optionally saving each message as an .h5 file; exit 1 if it is incomplete."""
    from beamstream.saving import MessageSaver

    if producers is not None:
        from beamstream.transport import rank_endpoint

        if len(endpoints) != 1 or bind:
            fail("--producers N takes one endpoint, the first producer's, and connects (no --bind)", code=2)
        endpoints = [rank_endpoint(endpoints[0], rank) for rank in range(producers)]
    client = open_client(endpoints, start=start, key_file=key_file, timeout=timeout, bind=bind,
                         pattern="sub" if subscribe else "pull", group=group, lossy=lossy,
                         redeliver_after=redeliver_after)
    try:
        saver = MessageSaver.open(out, overwrite=force) if out else None
    except BeamstreamError:
        client.close()
        raise
    try:
        with client:
            complete = read_to_the_end(client, saver, max_events)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        if saver:
            saver.close()
    if not complete:
        raise typer.Exit(1)


app.command()(request)
app.add_typer(streams_app, name="streams")
app.add_typer(runs_app, name="runs")

app.add_typer(buffer_app, name="buffer")
app.add_typer(service_app, name="service")
app.command()(view)
app.add_typer(bridge_app, name="bridge")
app.command()(tof)
app.command()(crystallography)


@app.command()
def demo(
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="producer processes")] = 2,
    events: Annotated[Optional[int], typer.Option("--events", "-n", min=1, help="events to stream (default: 2000; "
                                                                               "with --service 300)")] = None,
    shape: Annotated[Optional[tuple[int, int]], typer.Option(metavar="Y X", help="image shape (default: 1024 1024; "
                                                                                 "with --service 64 64)")] = None,
    serializer: Annotated[str, typer.Option(metavar="arrays|hdf5", help="how messages are encoded")] = "arrays",
    batch: Annotated[int, typer.Option(min=1, help="events per message")] = 1,
    service: Annotated[bool, typer.Option("--service", help="ask a request service, started for the demo and "
                                                            "stopped after it, for the stream; read it through "
                                                            "the Python API (beamstream.Service)")] = False,
    tls: Annotated[bool, typer.Option(help="with --service: mutual TLS, on a CA and certificates the demo makes "
                                           "for itself (--no-tls: plain HTTP)")] = True,
    view: Annotated[bool, typer.Option("--view", help="show the stream live in a web page (as beamstream view "
                                                      "does; its URL is printed), and its last event after it "
                                                      "ended, until Ctrl-C")] = False,
) -> None:
    """Stream simulated detector images end to end on this machine and print the rates; exit 1 unless complete.

    Ctrl-C stops what the demo started (producers; with --service its stream, the service and its jobs) and exits 130.
    """
    from beamstream.demo import beside_a_viewer, run_demo, run_service_demo

    try:
        with beside_a_viewer(view) as viewer:
            latest = viewer.latest if viewer else None
            if service:
                outcome, completed = run_service_demo(workers=workers, events=events or 300, shape=shape or (64, 64),
                                                      serializer=serializer, batch=batch, tls=tls, latest=latest)
            else:
                outcome, completed = run_demo(workers=workers, events=events or 2000, shape=shape or (1024, 1024),
                                              serializer=serializer, batch=batch, latest=latest), True
            console.print(outcome, highlight=False)
            if viewer:
                viewer.linger(lambda line: console.print(line, highlight=False))
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        raise typer.Exit(130) from None
    if not completed:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: run the CLI, turning beamstream errors into one clear line and exit code 1, Ctrl-C into
    "interrupted" and exit code 130 (a Ctrl-C raised inside a finaliser included: :func:`deliver_lost_interrupts`)."""
    deliver_lost_interrupts()
    try:
        app(prog_name="beamstream")
    except BeamstreamError as exc:
        console.print(labelled("error:", "bold red", str(exc)), highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
