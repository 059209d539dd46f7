"""The output of a stream's jobs, as ``GET /v1/streams/{id}/logs`` answers it: the end of each job's output file
(:func:`logs_text`), or that and then whatever the jobs write next, until the stream has ended and its jobs'
output has been read to its end (:func:`follow_logs`).

The files are each job's ``ROLE.log`` then ``ROLE.err`` (where the executor keeps standard error apart), the buffer
job's first; each file's text is headed ``==> ROLE (FILE) <==``. Where an answer starts in each file
(:func:`tail_start`): the last ``lines`` lines, never mid-line, within its last ``tail`` bytes; with ``tail`` alone,
exactly its last ``tail`` bytes (which may start mid-line); with neither, the first whole line in its last
:data:`DEFAULT_TAIL` bytes.

Every read is bounded, so that a huge (or hostile) output cannot exhaust the service's memory: at most
:data:`MAX_LOG_BYTES` of each file in one answer, looked through backwards in chunks of :data:`CHUNK` bytes;
followed, at most :data:`FOLLOW_READ` bytes of each file a poll, whole lines only, a line longer than that cut.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from beamstream.service.store import Job, JobStore

MAX_LOG_BYTES = 16 << 20  # of each job's output, in one answer
MAX_LOG_LINES = 100_000  # the most lines of each asked for
DEFAULT_TAIL = 65536  # bytes of each job's output, unless the request says otherwise
CHUNK = 1 << 16  # bytes read at once when looking backwards for the start of the last lines
FOLLOW_READ = 1 << 20  # the most bytes of each file read a poll when following, and the longest line shown whole
POLL_S = 0.5  # between two looks at the files when following
SETTLE_S = 10.0  # how long a follow waits, once the stream has ended, for its jobs to be seen to end


@dataclass(frozen=True, slots=True)
class Output:
    """One output file of a job: the job's role and the file's path."""

    role: str
    path: Path

    @property
    def header(self) -> str:
        return f"==> {self.role} ({self.path.name}) <=="


def outputs(jobs: Iterable[Job]) -> list[Output]:
    """The output files of ``jobs`` that exist, in the jobs' order, each job's ``.log`` before its ``.err``."""
    found = (Output(job.role, Path(job.directory) / f"{job.role}{suffix}")
             for job in jobs for suffix in (".log", ".err"))
    return [output for output in found if output.path.is_file()]


def tail_start(file: BinaryIO, size: int, tail: int | None, lines: int | None) -> int:
    """Where the answer starts in ``file`` (``size`` bytes long): see the module's docstring. A last line without
    its line ending counts as a line; a line longer than the bytes looked at is shown from where they start."""
    if lines is None and tail is not None:
        return max(0, size - tail)
    floor = max(0, size - (tail or (MAX_LOG_BYTES if lines is not None else DEFAULT_TAIL)))
    if lines is None:
        return floor if floor == 0 else _after_first_newline(file, floor - 1, size - 1, floor)
    return _after_last_newlines(file, lines, max(0, floor - 1), size - 1, floor)


def _after_first_newline(file: BinaryIO, start: int, end: int, otherwise: int) -> int:
    """Just after the first line ending in bytes ``start`` to ``end`` (excluded) of ``file``; ``otherwise`` if none."""
    file.seek(start)
    while start < end:
        chunk = file.read(min(CHUNK, end - start))
        if not chunk:
            break
        found = chunk.find(b"\n")
        if found >= 0:
            return start + found + 1
        start += len(chunk)
    return otherwise


def _after_last_newlines(file: BinaryIO, count: int, start: int, end: int, floor: int) -> int:
    """Just after the ``count``-th line ending from the end of bytes ``start`` to ``end`` (excluded) of ``file``,
    looked for backwards a chunk at a time; if there are fewer: 0 where ``floor`` is 0 (the file's start), else just
    after the first of them, else ``floor``."""
    earliest, seen = None, 0
    while end > start:
        begin = max(start, end - CHUNK)
        file.seek(begin)
        chunk = file.read(end - begin)
        found = len(chunk)
        while (found := chunk.rfind(b"\n", 0, found)) >= 0:
            seen, earliest = seen + 1, begin + found
            if seen == count:
                return earliest + 1
        end = begin
    if floor == 0:
        return 0
    return floor if earliest is None else earliest + 1


def logs_text(jobs: Iterable[Job], tail: int | None = None, lines: int | None = None) -> str:
    """The end of each of the jobs' output files (:func:`tail_start`), each headed, the empty ones left out."""
    parts = []
    for output in outputs(jobs):
        with open(output.path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size:
                file.seek(start := tail_start(file, size, tail, lines))
                parts.append(f"{output.header}\n{file.read(size - start).decode(errors='replace')}")
    return "\n".join(parts)


class LogFollower:
    """Follows the output files of a stream's jobs: each :meth:`step` reads what they wrote since the last, in
    whole lines (from where :func:`tail_start` says in the files there at the first step, from their start in files
    made since), until the stream has ended, its jobs have been seen to end (or :data:`SETTLE_S` seconds have passed
    since it ended), and a step found nothing new: then the unended last line of each file too."""

    def __init__(self, store: JobStore, stream_id: str, tail: int | None, lines: int | None) -> None:
        self.store = store
        self.stream_id = stream_id
        self.tail, self.lines = tail, lines
        self.offsets: dict[Path, int] | None = None  # where each file is read next; None before the first step
        self.shown: Path | None = None  # the file whose text was sent last
        self.ended_at: float | None = None  # when the stream was first seen ended (monotonic)

    def step(self) -> tuple[list[str], bool]:
        """The texts to send (the new whole lines of each file, headed when the file changes), and whether the
        follow is over. The stream's state is read first, so that nothing written before it ended is missed."""
        ended = self.store.get(self.stream_id).state.final
        jobs = self.store.jobs(self.stream_id).values()
        if ended and self.ended_at is None:
            self.ended_at = time.monotonic()
        settled = ended and (all(job.ended is not None for job in jobs) or time.monotonic() - self.ended_at > SETTLE_S)
        first, self.offsets = self.offsets is None, self.offsets or {}
        texts = [text for output in outputs(jobs) if (text := self._read(output, first, whole=True))]
        if texts or not settled:
            return texts, False
        return [text for output in outputs(jobs) if (text := self._read(output, first, whole=False))], True

    def _read(self, output: Output, first: bool, whole: bool) -> str:
        """What ``output`` has that was not sent: its whole lines (at most :data:`FOLLOW_READ` bytes, a longer line
        cut), or with ``whole`` False all of it that is left, a line ending added; headed if another file was sent
        last. Its offset moves past what is returned."""
        with open(output.path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            offset = self.offsets.get(output.path)
            if offset is None:
                offset = tail_start(file, size, self.tail, self.lines) if first else 0
            if offset > size:
                offset = 0  # the file was made anew
            file.seek(offset)
            data = file.read(min(size - offset, FOLLOW_READ))
        if whole and (b"\n" in data or len(data) < FOLLOW_READ):  # but FOLLOW_READ bytes with no line ending: cut
            data = data[:data.rfind(b"\n") + 1]
        self.offsets[output.path] = offset + len(data)
        if not data:
            return ""
        text = data.decode(errors="replace") + ("" if data.endswith(b"\n") else "\n")
        if output.path != self.shown:
            text = ("" if self.shown is None else "\n") + f"{output.header}\n{text}"
            self.shown = output.path
        return text


async def follow_logs(store: JobStore, stream_id: str, tail: int | None, lines: int | None) -> AsyncIterator[str]:
    """The jobs' output as :class:`LogFollower` reads it, every :data:`POLL_S` seconds, until it is over."""
    follower = LogFollower(store, stream_id, tail, lines)
    while True:
        texts, over = await asyncio.to_thread(follower.step)
        for text in texts:
            yield text
        if over:
            return
        await asyncio.sleep(POLL_S)
