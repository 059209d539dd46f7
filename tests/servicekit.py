"""Helpers for tests that run the request service as a real process (``beamstream service``)."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx
import psutil

from conftest import start_cli


def start_service(database_url: str, state_dir: Path, env: dict[str, str] | None = None,
                  **settings: str) -> tuple[subprocess.Popen, str]:
    """``beamstream service`` on a free port (``settings`` as environment, and ``env``): the process and its URL,
    once it listens."""
    environment = {**(env or {}), **{f"BEAMSTREAM_SERVICE_{name.upper()}": value for name, value in settings.items()}}
    process = start_cli("service", "--port", "0", "--database-url", database_url, "--state-dir", str(state_dir),
                        env_extra=environment)
    lines = []
    while (line := process.stderr.readline()):
        lines.append(line)
        if (found := re.search(r"service: (https?://\S+)", line)):
            return process, found.group(1)
    process.kill()
    raise AssertionError("the service did not start:\n" + "".join(lines))


def stop_service(process: subprocess.Popen, url: str) -> None:
    """Cancel every stream still active (their jobs outlive the service by design), then stop the service."""
    for state in ("queued", "starting", "running"):
        for stream in httpx.get(f"{url}/v1/streams", params={"state": state}, timeout=30).json()["items"]:
            httpx.delete(f"{url}/v1/streams/{stream['id']}", timeout=30)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def end_jobs_under(folder: Path) -> None:
    """Stop every process whose command line names ``folder`` (jobs a test's services left), and wait for them."""
    processes = [process for process in psutil.process_iter(["cmdline"])
                 if any(str(folder) in part for part in process.info["cmdline"] or [])]
    for process in processes:
        process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=10)
    for process in alive:
        process.kill()


def run_service(tmp_path, **settings: str) -> tuple[subprocess.Popen, str]:
    """A service with its job store and stream folders in ``tmp_path``."""
    return start_service(f"sqlite:///{tmp_path / 'service.db'}", tmp_path / "state", **settings)


def shown(url: str, stream_id: str) -> dict:
    return httpx.get(f"{url}/v1/streams/{stream_id}", timeout=30).json()


def slurm_answers() -> bool:
    try:
        return subprocess.run(["sinfo"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
