"""Helpers for tests that run the request service as a real process (``beamstream service``)."""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil

from beamstream.service.principal import IDENTITY_KEY
from conftest import start_cli, wait_until


class AsUser:
    """Test-only ASGI middleware (standing in for the mTLS layer): the ``X-Test-User`` header's identity, put in
    the scope under IDENTITY_KEY."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            user = dict(scope["headers"]).get(b"x-test-user")
            if user is not None:
                scope = {**scope, IDENTITY_KEY: user.decode()}
        await self.app(scope, receive, send)


def start_service(database_url: str, state_dir: Path, env: dict[str, str] | None = None,
                  **settings: str) -> tuple[subprocess.Popen, str]:
    """``beamstream service`` on a free port (``settings`` as environment, and ``env``): the process and its URL,
    once it listens. From then on its stderr goes on being read into ``process.log`` (its lines), so that a service
    that logs a lot never blocks on a full pipe."""
    environment = {**(env or {}), **{f"BEAMSTREAM_SERVICE_{name.upper()}": value for name, value in settings.items()}}
    process = start_cli("service", "--port", "0", "--database-url", database_url, "--state-dir", str(state_dir),
                        env_extra=environment)
    lines = []
    while (line := process.stderr.readline()):
        lines.append(line)
        if (found := re.search(r"service: (https?://\S+)", line)):
            process.log, process.state_dir = lines, state_dir
            threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True).start()
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, found.group(1)
    process.kill()
    raise AssertionError("the service did not start:\n" + "".join(lines))


def stop_service(process: subprocess.Popen, url: str) -> None:
    """Cancel every stream still active (their jobs outlive the service by design), wait while the service still
    runs until its dispatcher has ended their jobs (a job left after 30 s fails the test), then stop the service."""
    for state in ("queued", "starting", "running"):
        for stream in httpx.get(f"{url}/v1/streams", params={"state": state}, timeout=30).json()["items"]:
            httpx.delete(f"{url}/v1/streams/{stream['id']}", timeout=30)
    try:
        wait_until(lambda: [job.pid for job in jobs_under(process.state_dir)] in ([], [process.pid]),
                   "the cancelled streams' jobs to end", timeout=30, every=0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def jobs_under(folder: Path) -> list[psutil.Process]:
    """The processes whose command line names ``folder`` (a service's jobs name files in its state folder; so does the
    service itself)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(folder) in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def end_jobs_under(folder: Path) -> None:
    """Stop every process whose command line names ``folder`` (jobs a test's services left), and wait for them."""
    processes = jobs_under(folder)
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


def make_pki(root: Path) -> SimpleNamespace:
    """A CA in ``root/ca`` with a service certificate (localhost, 127.0.0.1), one for the service's jobs, alice's,
    an expired one; and another CA (``root/other``) with its own 'alice'."""
    from beamstream.security import ca

    ca_dir = root / "ca"
    ca.init_ca(ca_dir, name="test facility CA")
    now = datetime.now(timezone.utc)
    other = root / "other"
    ca.init_ca(other, name="another CA")
    return SimpleNamespace(
        dir=ca_dir, ca=ca_dir / "ca.crt", crl=ca_dir / "crl.pem",
        service=ca.issue(ca_dir, service=["localhost", "127.0.0.1"]),
        jobs=ca.issue(ca_dir, user="beamstream-jobs"),
        alice=ca.issue(ca_dir, user="alice"),
        expired=ca.issue(ca_dir, user="old", not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)),
        stranger=ca.issue(other, user="alice"))


def tls_settings(pki: SimpleNamespace) -> dict[str, str]:
    """The service's TLS settings for ``pki`` (:func:`make_pki`)."""
    return {"tls_cert": str(pki.service.certificate), "tls_key": str(pki.service.key), "tls_ca": str(pki.ca),
            "tls_crl": str(pki.crl), "tls_jobs_cert": str(pki.jobs.certificate), "tls_jobs_key": str(pki.jobs.key)}


@contextmanager
def tls_service(folder: Path, pki: SimpleNamespace, **settings: str) -> Iterator[str]:
    """A service with mutual TLS on ``pki``'s certificates, its state in ``folder``: its URL
    (https://127.0.0.1:PORT); stopped and its jobs ended afterwards."""
    process, url = run_service(folder, **{**tls_settings(pki), **settings})
    try:
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        end_jobs_under(folder)


def https_client(url: str, pki, who=None, token: str | None = None) -> httpx.Client:
    """An HTTPS client of ``url`` trusting ``pki``'s CA, presenting ``who``'s certificate (None: none) and
    ``token`` (None: none)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if who is not None:
        context.load_cert_chain(who.certificate, who.key)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(base_url=url, verify=context, headers=headers, timeout=30)
