"""Progress and summaries for the terminal: a live rich table on a TTY, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from beamstream.client import Client
    from beamstream.saving import MessageSaver

console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as an error and end the command with exit code ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def workers_table(workers: Sequence[Any], title: str) -> Table:
    """One row per worker (events, messages, MB, events/s, MB/s, status) and a total."""
    table = Table(title=title)
    for column in ("worker", "events", "messages", "MB", "events/s", "MB/s", "status"):
        table.add_column(column, justify="right")
    now = time.time()
    for worker in workers:
        seconds = (worker.finished or now) - worker.started
        table.add_row(str(worker.rank), f"{worker.events:,}", f"{worker.messages:,}", f"{worker.bytes / 1e6:,.1f}",
                      f"{rate(worker.events, seconds):,.0f}", f"{rate(worker.bytes / 1e6, seconds):,.1f}", worker.status)
    return table


class ProducerProgress:
    """Shows worker totals while a run goes on: live table on a terminal, a log line every ``every`` s elsewhere."""

    def __init__(self, every: float = 5.0) -> None:
        self.live = Live(console=console, refresh_per_second=4, transient=True) if sys.stderr.isatty() else None
        self.every = every
        self.last_line = time.monotonic()

    def __enter__(self) -> ProducerProgress:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def update(self, workers: Sequence[Any]) -> None:
        if self.live:
            self.live.update(workers_table(workers, "producing"))
        elif time.monotonic() - self.last_line >= self.every:
            self.last_line = time.monotonic()
            events = sum(worker.events for worker in workers)
            megabytes = sum(worker.bytes for worker in workers) / 1e6
            seconds = time.time() - min(worker.started for worker in workers)
            console.log(f"{events:,} events, {megabytes:,.1f} MB, {rate(events, seconds):,.0f} events/s, "
                        f"{rate(megabytes, seconds):,.1f} MB/s")


class ConsumerProgress:
    """A status line (events, MB, rates) updated as messages arrive."""

    def __init__(self) -> None:
        self.started = time.time()
        self.status = console.status("waiting for the first message…") if sys.stderr.isatty() else None
        self.last_line = time.monotonic()

    def __enter__(self) -> ConsumerProgress:
        if self.status:
            self.status.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.status:
            self.status.__exit__(*exc)

    def update(self, report: Any) -> None:
        seconds = time.time() - self.started
        text = (f"{report.events:,} events, {report.messages:,} messages, {report.bytes / 1e6:,.1f} MB, "
                f"{rate(report.events, seconds):,.0f} events/s, {rate(report.bytes / 1e6, seconds):,.1f} MB/s")
        if self.status:
            self.status.update(text)
        elif time.monotonic() - self.last_line >= 5.0:
            self.last_line = time.monotonic()
            console.log(text)


def read_to_the_end(client: Client, saver: MessageSaver | None = None, max_events: int | None = None) -> bool:
    """Read ``client``'s stream to its end (or ``max_events``) with a progress line, saving each message with
    ``saver``, then print its report; False if it was incomplete. On Ctrl-C the report so far is printed and
    KeyboardInterrupt raised again."""
    from beamstream.errors import StreamIncomplete

    try:
        with ConsumerProgress() as progress:
            for message in client.messages():
                if saver:
                    saver.save(message.header)
                progress.update(client.report)
                if max_events is not None and client.report.events >= max_events:
                    console.print(f"stopped after {client.report.events:,} events (--max-events {max_events})")
                    return True
    except KeyboardInterrupt:
        console.print(client.report.summary(), highlight=False)
        raise
    except StreamIncomplete as exc:
        console.print(exc.report.summary(), highlight=False)
        return False
    console.print(client.report.summary(), highlight=False)
    return True
