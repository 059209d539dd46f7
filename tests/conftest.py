"""Shared fixtures: spec files, endpoints, and running the CLI as a real process."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from beamstream.client import Client
from beamstream.errors import MissingDependency, StreamIncomplete
from beamstream.sources.psana2 import import_psana
from beamstream.spec import parse_spec

BEAMSTREAM = [sys.executable, "-m", "beamstream.cli"]
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"  # the machine's PostgreSQL server


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a spec dict as YAML into tmp_path and return its path."""

    def write(spec: dict, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def ipc_endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path / 'stream'}"


def free_tcp_ports(count: int) -> int:
    """A first port of ``count`` consecutive ports that are free right now on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count >= 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                sockets.append(sock)
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free consecutive ports")


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``beamstream ARGS`` in a subprocess and capture its output."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*BEAMSTREAM, *args], capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def run_or_show_stacks(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` and capture its output; if it runs past ``timeout`` s, fail with the Python stacks of every
    process it started (each has the fault handler on, and the session gets SIGABRT), so a hang says where."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
        pytest.fail(f"{' '.join(command)} ran past {timeout} s; its output, then its processes' stacks:\n{out}\n"
                    f"{err[-30000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def banner(process: subprocess.Popen) -> str:
    """The line a ``beamstream buffer`` process prints once it serves (log lines before it are skipped)."""
    lines = []
    while (line := process.stderr.readline()):
        if "buffer: producers" in line:
            return line
        lines.append(line)
    raise AssertionError(f"the buffer exited (code {process.wait()}) without serving: {''.join(lines)}")


def start_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``beamstream ARGS`` in the background (with ``env_extra`` added to the environment)."""
    env = {**os.environ, "COLUMNS": "200", **(env_extra or {})}
    return subprocess.Popen([*BEAMSTREAM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def psana():
    """The psana module, imported as the source imports it; tests using it are skipped without it."""
    try:
        return import_psana()
    except MissingDependency:
        pytest.skip("psana is not installed (pip install 'beamstream[psana]')")


def psana_program(psana, name: str) -> str:
    """The path of a program the psana wheel ships in ``site-packages/bin`` (``xtcwriter``, ``smdwriter``), its run
    bit set."""
    program = Path(psana.__file__).parent.parent / "bin" / name
    if not os.access(program, os.X_OK):
        program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return str(program)


@pytest.fixture(scope="module")
def xtc(psana, tmp_path_factory) -> str:
    """A 10-event XTC2 file (events 0-9) written by the psana wheel's ``bin/xtcwriter``."""
    path = tmp_path_factory.mktemp("xtc") / "data.xtc2"
    subprocess.run([psana_program(psana, "xtcwriter"), "-f", str(path), "-n", "10"], check=True, capture_output=True)
    return str(path)


def waveform_spec(endpoint: str, n_events: int = 60, rate_hz: float | None = None, samples: int = 1024):
    """A simulated stream of ``n_events`` waveforms, one per message, to the stream sink at ``endpoint``."""
    return parse_spec({
        "source": {"type": "simulated", "n_events": n_events, "events_per_read": 5, "rate_hz": rate_hz,
                   "detectors": [{"kind": "waveform", "samples": samples}]},
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    })


def read_in_thread(endpoint: str, results: dict, key: str, **options) -> threading.Thread:
    """Read ``endpoint`` with a Client on a thread: ``results[key]`` gets the event seqs (or the
    StreamIncomplete raised), ``results[key + ".report"]`` the client's report."""

    def read() -> None:
        with Client(endpoint, timeout=60, **options) as client:
            try:
                results[key] = [event.seq for event in client.events()]
            except StreamIncomplete as exc:
                results[key] = exc
            results[key + ".report"] = client.report

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def read_shared_and_broadcast(endpoint: str, producers: str) -> dict:
    """Stream 60 waveforms from 2 workers to ``producers`` while group ``crystallography`` (3 members,
    ``shared0``-``shared2``) and group ``training`` read ``endpoint``; the readers' results (see read_in_thread)."""
    from beamstream.producer import run_local

    results: dict = {}
    threads = [read_in_thread(endpoint, results, f"shared{n}", group="crystallography") for n in range(3)]
    threads.append(read_in_thread(endpoint, results, "training", group="training"))
    result = run_local(waveform_spec(producers), workers=2)
    for thread in threads:
        thread.join(timeout=120)
    assert result.ok, result.errors
    return results


def wait_until(condition, what: str = "the condition", timeout: float = 30.0, every: float = 0.01) -> None:
    """Poll ``condition`` every ``every`` seconds until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(every)


SESSION_MARK = "BEAMSTREAM_TEST_SESSION"
LEFT_BEHIND_GRACE_S = 30.0


def digest(data: dict) -> str:
    """One event's arrays, each name with its dtype, shape and bytes, as a SHA-256 (what bit-exact compares)."""
    sha = hashlib.sha256()
    for name in sorted(data):
        array = data[name]
        sha.update(f"{name} {array.dtype.str} {array.shape}".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def wait_for_line(path: Path, text: str, process: subprocess.Popen, timeout: float) -> str:
    """The first line of the log ``path`` holding ``text``, once there; AssertionError with the log if ``process``
    ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        for line in path.read_text(errors="replace").splitlines():
            if text in line:
                return line
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in {path} (process exit code {process.poll()}):\n{path.read_text()}")
        time.sleep(0.05)


def processes_of_this_session(session: str) -> list:
    """Every live process (but this one) whose environment carries ``session``'s mark: whatever the suite started,
    however far down (jobs of a service, ranks of a Slurm job) and whoever is its parent now."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if (process.pid != os.getpid() and process.status() != psutil.STATUS_ZOMBIE
                    and process.environ().get(SESSION_MARK) == session):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """The suite fails if its tests leave a process running: every process they start inherits a mark in its
    environment; once every test has ended, any process (this one's resource tracker aside) still carrying it
    after LEFT_BEHIND_GRACE_S is listed and the suite fails."""
    import uuid

    session = uuid.uuid4().hex
    os.environ[SESSION_MARK] = session
    yield

    def left() -> list:
        return [process for process in processes_of_this_session(session)
                if "multiprocessing.resource_tracker" not in " ".join(process.cmdline())]

    deadline = time.monotonic() + LEFT_BEHIND_GRACE_S
    while (remaining := left()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if remaining:
        listed = "\n".join(f"  {process.pid}: {' '.join(process.cmdline())[:300]}" for process in remaining)
        for process in remaining:
            process.kill()
        pytest.fail(f"{len(remaining)} process(es) left behind by the tests (killed now):\n{listed}", pytrace=False)


def stream_into_client(spec, endpoint: str, workers: int = 1, timeout: float = 120) -> tuple[list, Client]:
    """Run ``spec`` (its stream sink pushing to ``endpoint``) in ``workers`` producer processes while a Client
    bound at ``endpoint`` reads it; the producers must succeed. Returns (messages, client)."""
    from beamstream.producer import run_local

    outcome: dict = {}
    with Client(endpoint, bind=True, timeout=timeout) as client:
        producers = threading.Thread(target=lambda: outcome.setdefault("result", run_local(spec, workers=workers)))
        producers.start()
        messages = list(client.messages())
        producers.join()
    assert outcome["result"].ok, outcome["result"].errors
    return messages, client


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A new, empty database: a SQLite file, or a database created for this test on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.db'}"
        return
    name = f"beamstream_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
