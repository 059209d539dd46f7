"""Following a stream from the command line: `beamstream streams watch`, `streams logs --tail N` (lines) and
`--follow`, `runs list`, against a real service process with an HDF5 catalogue; and the service's reading of its
jobs' output (beamstream.service.job_logs) on files made here."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from beamstream import ServiceClient
from beamstream.errors import ServiceError
from beamstream.protocol.states import State
from beamstream.streams_cli import runs_app
from beamstream.service import job_logs
from beamstream.service.job_logs import LogFollower, tail_start
from beamstream.service.store import JobStore
from conftest import BEAMSTREAM, run_cli, start_cli, wait_until
from servicekit import end_jobs_under, run_service, stop_service
from test_remote import ENDLESS, WAVEFORMS

EXPERIMENT = "xfollow1"
RUN_FILES = {3: ["frames0.h5"], 4: ["frames0.h5", "frames1.h5"]}  # the catalogue's runs, by number


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A service (local jobs; an undrained buffer stopped after 5 s) whose HDF5 catalogue has the runs of
    RUN_FILES; its URL, folder and the files of each run."""
    folder = tmp_path_factory.mktemp("follow")
    files = {}
    for run, names in RUN_FILES.items():
        run_folder = folder / "hdf5" / EXPERIMENT / f"r{run:04d}"
        run_folder.mkdir(parents=True)
        files[run] = [run_folder / name for name in names]
        for path in files[run]:
            path.touch()  # the catalogue finds files; it does not read them
    process, url = run_service(folder, drain_grace_s="5",
                               hdf5_pattern=str(folder / "hdf5" / "{experiment}" / "r{run:04d}" / "*.h5"))
    yield SimpleNamespace(url=url, folder=folder, files=files)
    stop_service(process, url)
    end_jobs_under(folder)


@pytest.fixture(scope="module")
def store(site):
    """The service's job store, read directly (for its jobs' output files)."""
    store = JobStore.open(f"sqlite:///{site.folder / 'service.db'}")
    yield store
    store.close()


@pytest.fixture
def service(site):
    with ServiceClient(site.url) as service:
        yield service


def states(said: str) -> list[str]:
    """The states of the changes printed (``DAY TIME STATE REASON`` lines)."""
    return [line.split()[2] for line in said.splitlines() if line[:4].isdigit()]


def outputs_of(store: JobStore, stream_id: str) -> dict[str, Path]:
    """The stream's jobs' output files that exist, by the header the logs give each."""
    found = {}
    for job in store.jobs(stream_id).values():
        for suffix in (".log", ".err"):
            path = Path(job.directory) / f"{job.role}{suffix}"
            if path.is_file():
                found[f"==> {job.role} ({path.name}) <=="] = path
    return found


def sections(text: str) -> dict[str, str]:
    """The text under each ``==> ROLE (FILE) <==`` header of ``text`` (the text of a header met again added to
    its first), without the empty line that separates one file's from the next header."""
    found: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("==> ") and line.endswith(" <=="):
            if lines and not lines[-1]:
                lines.pop()
            lines = found.setdefault(line, [])
        else:
            lines.append(line)
    return {header: "".join(f"{line}\n" for line in lines) for header, lines in found.items()}


def test_streams_watch_prints_each_change_as_it_comes_and_exits_0_once_completed(service):
    stream = service.request(WAVEFORMS)
    watch = start_cli("streams", "watch", stream.id[:12], env_extra={"BEAMSTREAM_SERVICE": service.url})
    assert sorted(event.seq for event in stream) == list(range(60))
    _, said = watch.communicate(timeout=60)
    assert watch.returncode == 0, said
    assert states(said) == ["queued", "starting", "running", "completed"], said
    assert "queued    requested" in said and f"stream {stream.id}: complete: 60 events" in said


def test_streams_watch_of_a_stream_that_did_not_complete_exits_1_with_the_reason(service):
    stream = service.request(ENDLESS).cancel()
    watched = run_cli("streams", "watch", stream.id, "--service", service.url)
    assert watched.returncode == 1
    assert states(watched.stderr)[0] == "queued" and states(watched.stderr)[-1] == "cancelled", watched.stderr
    assert f"error: stream {stream.id} cancelled: cancelled by local" in watched.stderr


def test_ctrl_c_stops_watching_and_the_stream_goes_on(service):
    stream = service.request(ENDLESS).wait_until_running(timeout=60)
    watch = subprocess.Popen(  # SIGINT as a terminal sends it, whatever this test's own disposition of it
        [*BEAMSTREAM, "streams", "watch", stream.id, "--service", service.url], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    said = [watch.stderr.readline()]
    while " running " not in said[-1]:
        said.append(watch.stderr.readline())
        assert said[-1], f"the watch ended before the stream ran: {''.join(said)}"
    watch.send_signal(signal.SIGINT)
    _, rest = watch.communicate(timeout=30)
    assert watch.returncode == 130, "".join(said) + rest
    assert f"interrupted; stream {stream.id} goes on" in rest
    assert service.stream(stream.id).state is State.RUNNING
    stream.cancel()


def test_streams_logs_tail_prints_the_last_whole_lines_of_each_jobs_output(service, store):
    stream = service.request(WAVEFORMS)
    assert sorted(event.seq for event in stream) == list(range(60))
    wait_until(lambda: service.stream(stream.id).state.final
               and all(job.ended for job in store.jobs(stream.id).values()), "the stream's jobs to end", timeout=60)
    logs = run_cli("streams", "logs", stream.id[:12], "--tail", "3", "--service", service.url)
    assert logs.returncode == 0, logs.stderr
    files = {header: path.read_text() for header, path in outputs_of(store, stream.id).items()}
    assert {"==> buffer (buffer.log) <==", "==> producers (producers.log) <=="} <= set(files)
    assert max(len(text.splitlines()) for text in files.values()) > 3, files  # some output is cut
    assert sections(logs.stdout) == {header: "".join(f"{line}\n" for line in text.splitlines()[-3:])
                                     for header, text in files.items() if text}


def test_streams_logs_follow_prints_what_the_jobs_write_until_the_stream_ended(service, store):
    stream = service.request(ENDLESS).wait_until_running(timeout=60)
    wait_until(lambda: "producers" in store.jobs(stream.id), "the producers to start", timeout=60)
    follow = start_cli("streams", "logs", stream.id, "--follow", env_extra={"BEAMSTREAM_SERVICE": service.url})
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(iter(follow.stdout.readline, "")), daemon=True)
    reader.start()
    wait_until(lambda: "==> buffer (buffer.log) <==\n" in printed, "the follow to print the buffer's output",
               timeout=60, every=0.1)
    sizes = {header: path.stat().st_size for header, path in outputs_of(store, stream.id).items()}
    assert follow.poll() is None, "the follow ended while the stream runs"
    stream.cancel()  # the jobs say how they ended: written after the follow started
    assert follow.wait(timeout=60) == 0, follow.stderr.read()
    reader.join(timeout=10)
    assert service.stream(stream.id).state is State.CANCELLED
    followed = sections("".join(printed))
    written = {header: path.read_bytes()[sizes.get(header, 0):].decode(errors="replace")
               for header, path in outputs_of(store, stream.id).items()}
    assert any(text.strip() for text in written.values()), "the jobs wrote nothing after the follow started"
    for header, text in written.items():
        assert followed.get(header, "").endswith(text if text.endswith("\n") or not text else f"{text}\n"), header


def test_runs_list_shows_the_catalogues_runs_fitted_to_the_terminal(site):
    runner, app = CliRunner(), typer.Typer()
    app.add_typer(runs_app, name="runs")  # as beamstream.cli does
    listed = runner.invoke(app, ["runs", "list", EXPERIMENT, "--service", site.url], env={"COLUMNS": "50"})
    assert listed.exit_code == 0, listed.output
    title, header, *rows = listed.output.rstrip("\n").splitlines()
    assert title.strip() == f"runs of {EXPERIMENT} at {site.url}"
    assert header.split() == ["run", "source", "files", "folder"]
    assert [row.split()[:3] for row in rows] == [["3", "hdf5", "1"], ["4", "hdf5", "2"]]
    assert max(len(line) for line in listed.output.splitlines()) <= 50 and "…" in rows[0], listed.output
    as_json = runner.invoke(app, ["runs", "list", EXPERIMENT, "--json", "--service", site.url])
    assert json.loads(as_json.output) == [{"run": run, "source": "hdf5", "files": [str(path) for path in paths]}
                                          for run, paths in site.files.items()]
    unknown = runner.invoke(app, ["runs", "list", "xnone1", "--service", site.url])
    assert isinstance(unknown.exception, ServiceError) and unknown.exception.status == 404


def reference_start(data: bytes, window: int, lines: int | None) -> int:
    """Where an answer of the last ``lines`` whole lines (None: the first whole line) in the last ``window`` bytes
    of ``data`` starts, found the plain way."""
    floor = max(0, len(data) - window)
    starts = [start for start in [0, *(at + 1 for at, byte in enumerate(data[:-1]) if byte == ord("\n"))]
              if start >= floor]
    if not starts:
        return floor
    return starts[0] if lines is None else starts[-min(lines, len(starts))]


@pytest.mark.parametrize("chunk", [1, 3, 1 << 16])
def test_the_tail_of_a_jobs_output_starts_at_a_whole_line_within_its_window(monkeypatch, chunk):
    monkeypatch.setattr(job_logs, "CHUNK", chunk)
    monkeypatch.setattr(job_logs, "DEFAULT_TAIL", 24)
    pick = random.Random(chunk)
    for _ in range(300):
        data = b"".join(b"x" * pick.choice([0, 1, 5, 30]) + b"\n" for _ in range(pick.randrange(8)))
        data += b"y" * pick.choice([0, 0, 3])  # a last line without its line ending, sometimes
        window, lines = pick.choice([None, 1, 7, 24, 100]), pick.choice([None, 1, 2, 5, 50])
        start = tail_start(BytesIO(data), len(data), window, lines)
        if lines is None and window is not None:
            assert start == max(0, len(data) - window), (data, window)  # bytes alone, as asked
        else:
            default = job_logs.MAX_LOG_BYTES if lines is not None else 24
            assert start == reference_start(data, window or default, lines), (data, window, lines)
    assert tail_start(BytesIO(b"a\nbb\nccc\n"), 9, None, 2) == 2  # "bb", "ccc"
    assert tail_start(BytesIO(b"a\nbb\nccc"), 8, None, 1) == 5  # "ccc", unended


def test_a_follower_sends_whole_lines_headed_by_file_then_the_rest_once_the_stream_ended(tmp_path, monkeypatch):
    monkeypatch.setattr(job_logs, "FOLLOW_READ", 8)
    stream = SimpleNamespace(state=State.RUNNING)
    jobs = {"buffer": SimpleNamespace(role="buffer", directory=str(tmp_path), ended=None)}
    fake_store = SimpleNamespace(get=lambda _: stream, jobs=lambda _: jobs)
    buffer, producers = tmp_path / "buffer.log", tmp_path / "producers.log"
    buffer.write_bytes(b"old1\nold2\npart")
    follower = LogFollower(fake_store, "s", tail=None, lines=2)
    assert follower.step() == (["==> buffer (buffer.log) <==\nold2\n"], False)  # the last 2 lines; "part" unended
    with buffer.open("ab") as file:
        file.write(b"ial\n0123456789\n")
    assert follower.step() == (["partial\n"], False)
    assert follower.step() == (["01234567\n"], False)  # a line longer than FOLLOW_READ: cut
    jobs["producers"] = SimpleNamespace(role="producers", directory=str(tmp_path), ended=None)
    producers.write_bytes(b"p1\n")  # made after the follow started: from its start
    assert follower.step() == (["89\n", "\n==> producers (producers.log) <==\np1\n"], False)
    with buffer.open("ab") as file:
        file.write(b"last")
    stream.state = State.COMPLETED
    assert follower.step() == ([], False), "over before its jobs were seen to end"
    for job in jobs.values():
        job.ended = 1.0
    assert follower.step() == (["\n==> buffer (buffer.log) <==\nlast\n"], True)
