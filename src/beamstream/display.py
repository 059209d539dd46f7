"""Progress and summaries for the terminal: a live rich table on a TTY, plain log lines otherwise; tables
fitted to the terminal's width (:func:`fitted_table`), and ids shortened as git shortens them (:func:`short_ids`)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from beamstream.client import Client
    from beamstream.saving import MessageSaver

console = Console(stderr=True, soft_wrap=True)


def labelled(label: str, style: str, message: str) -> Text:
    """``label`` in ``style``, then ``message`` as it is: never read as rich markup, in which a path, a reason or an
    install hint would lose its brackets (``pip install 'beamstream[service]'`` shown as ``'beamstream'``)."""
    return Text.assemble((label, style), " ", message)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` (plain text, no markup) as an error and end the command with exit code ``code``."""
    console.print(labelled("error:", "bold red", message), highlight=False)
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


SHORT_ID = 8  # the fewest characters of a shortened id
GAP = 2  # cells between two columns of a fitted table: the padding on either side of each


def short_ids(ids: Sequence[str], least: int = SHORT_ID) -> dict[str, str]:
    """Each of ``ids`` shortened as git shortens object names: to its shortest prefix, of at least ``least``
    characters, that starts no other of ``ids`` (the whole id where there is none)."""
    ordered = sorted(set(ids))
    shared = [0] * len(ordered)  # the most characters each shares with another: with a neighbour, once sorted
    for number in range(1, len(ordered)):
        common = len(os.path.commonprefix(ordered[number - 1:number + 1]))
        shared[number - 1] = max(shared[number - 1], common)
        shared[number] = common
    return {name: name[:max(least, common + 1)] for name, common in zip(ordered, shared)}


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a :func:`fitted_table`: its ``header``, and ``least``, the fewest cells its texts may be cut to
    (a cut text ends with "…"), or None for one whose texts are always shown whole."""

    header: str
    least: int | None = None


def fitted_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int,
                 title: str | None = None) -> Table:
    """A table of ``rows`` (a text for each of ``columns``, shown as it is, markup included), one line each,
    at most ``width`` cells wide where its columns that may not be cut allow it (:func:`column_widths`)."""
    widths = column_widths(columns, rows, width)
    table = Table(title=title, box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    for number, cells in widths.items():
        table.add_column(columns[number].header, width=cells, no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*(Text(row[number]) for number in widths))
    return table


def column_widths(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> dict[int, int]:
    """The columns to show, by position, each with its width in cells: that of its widest text (header included);
    then, while the columns and the :data:`GAP` between each two are wider than ``width``, the widest column that
    may be cut one cell narrower, down to its ``least``; if that is not enough, the rightmost column that may be
    cut is left out and the others are fitted again. Columns that may not be cut are always shown whole."""
    widest = [max(cell_len(text) for text in (column.header, *(row[number] for row in rows)))
              for number, column in enumerate(columns)]
    shown = list(range(len(columns)))
    while True:
        widths = _cut({number: widest[number] for number in shown}, columns, width)
        cuttable = [number for number in shown if columns[number].least is not None]
        if _table_width(widths) <= width or not cuttable:
            return widths
        shown.remove(cuttable[-1])


def _cut(widths: dict[int, int], columns: Sequence[Column], width: int) -> dict[int, int]:
    """``widths`` with the widest column that may be cut one cell narrower, again and again, until the table is
    ``width`` cells wide or no column may be cut any more."""
    for _ in range(_table_width(widths) - width):
        cuttable = [number for number in widths if columns[number].least is not None
                    and widths[number] > columns[number].least]
        if not cuttable:
            break
        widths[max(cuttable, key=widths.__getitem__)] -= 1
    return widths


def _table_width(widths: dict[int, int]) -> int:
    return sum(widths.values()) + GAP * (len(widths) - 1)


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
                    saver.save(message.header, client.metadata)
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
