"""Shared fixtures: spec files, endpoints, and running the CLI as a real process."""

from __future__ import annotations

import os
import stat
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from beamstream.errors import MissingDependency
from beamstream.sources.psana2 import import_psana

BEAMSTREAM = [sys.executable, "-m", "beamstream.cli"]


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


def start_cli(*args: str) -> subprocess.Popen:
    """Start ``beamstream ARGS`` in the background."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen([*BEAMSTREAM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def psana():
    """The psana module, imported as the source imports it; tests using it are skipped without it."""
    try:
        return import_psana()
    except MissingDependency:
        pytest.skip("psana is not installed (pip install 'beamstream[psana]')")


@pytest.fixture(scope="module")
def xtc(psana, tmp_path_factory) -> str:
    """A 10-event XTC2 file (events 0-9) written by the psana wheel's ``bin/xtcwriter``."""
    writer = Path(psana.__file__).parent.parent / "bin" / "xtcwriter"
    if not os.access(writer, os.X_OK):
        writer.chmod(writer.stat().st_mode | stat.S_IXUSR)
    path = tmp_path_factory.mktemp("xtc") / "data.xtc2"
    subprocess.run([str(writer), "-f", str(path), "-n", "10"], check=True, capture_output=True)
    return str(path)
