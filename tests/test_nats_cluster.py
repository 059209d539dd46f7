"""A stream kept with replicas: 3 on a three-server NATS cluster (scripts/nats-cluster.sh) through failovers.

A real ``beamstream buffer --backend nats://…?replicas=3`` process, a ``beamstream produce`` process with two
workers, a group member and a reader without a group (Clients) go on while one server is killed with SIGKILL
mid-stream: the stream's leader, or a follower. Every event reaches each reader once, bit-exact, the verdict is
complete, and the stream holds each message once. The killed follower, started again, catches up with the others.
The cluster runs on free loopback ports beside the machine's own server, in the test's own folder. Beside them,
the cluster URL (``nats://H1:P1,H2:P2,…/NAME?replicas=N``) and its refusals.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Literal

import httpx
import pytest
import yaml

NATS_SERVER = Path("/usr/sbin/nats-server")
pytest.importorskip("nats", reason="the NATS backend needs nats-py: pip install 'beamstream[nats]'")

from beamstream.client import Client  # noqa: E402
from beamstream.jetstream.connection import NatsConnection  # noqa: E402
from beamstream.jetstream.urls import servers, split_url  # noqa: E402
from beamstream.wire import nats as layout  # noqa: E402
from conftest import BEAMSTREAM, digest, free_tcp_ports, run_cli, wait_for_line, wait_until  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "nats-cluster.sh"
EVENTS, PER_MESSAGE, WORKERS = 1500, 5, 2  # about 6 s of producing at RATE_HZ, if nothing is killed
RATE_HZ = 250.0
MESSAGES = EVENTS // PER_MESSAGE
SOURCE = {"type": "simulated", "n_events": EVENTS, "events_per_read": PER_MESSAGE, "rate_hz": RATE_HZ, "seed": 3,
          "detectors": [{"kind": "waveform", "samples": 256, "dtype": "int16"}]}
STEPS = [{"type": "batch", "size": PER_MESSAGE}]


class Cluster:
    """Three nats-server processes run by scripts/nats-cluster.sh in ``folder``: server N (1-3) is ``nN``, with
    clients on port ``client_port + N - 1`` and monitoring on ``http_port + N - 1``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        first = free_tcp_ports(9)
        self.client_port, self.route_port, self.http_port = first, first + 3, first + 6

    def script(self, *args: str) -> str:
        """Run ``nats-cluster.sh ARGS FOLDER``; its output (AssertionError with its messages if it fails)."""
        env = {**os.environ, "NATS_CLUSTER_CLIENT_PORT": str(self.client_port),
               "NATS_CLUSTER_ROUTE_PORT": str(self.route_port), "NATS_CLUSTER_HTTP_PORT": str(self.http_port)}
        done = subprocess.run(["bash", str(SCRIPT), *args, str(self.folder)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, f"nats-cluster.sh {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
        return done.stdout

    def url(self, name: str, replicas: int = 3) -> str:
        hosts = ",".join(f"127.0.0.1:{self.client_port + n}" for n in range(3))
        return f"nats://{hosts}/{name}?replicas={replicas}"

    def stream_state(self, server: int, stream: str) -> dict | None:
        """The state (messages, last_seq, …) of ``stream`` as server ``server`` holds it (its /jsz), or None if it
        holds no such stream (yet)."""
        answer = httpx.get(f"http://127.0.0.1:{self.http_port + server - 1}/jsz", params={"streams": "true"},
                           timeout=5)
        report = answer.raise_for_status().json()
        for account in report.get("account_details", []):
            for detail in account.get("stream_detail", []):
                if detail["name"] == stream:
                    return detail["state"]
        return None


@pytest.fixture
def cluster(tmp_path):
    """A three-server cluster with JetStream on free ports; torn down (killed, its folder removed) afterwards."""
    if not NATS_SERVER.exists():
        pytest.skip(f"the NATS cluster tests run {NATS_SERVER} (Debian package nats-server), which is not installed")
    cluster = Cluster(tmp_path / "cluster")
    try:
        urls = cluster.script("up")
        assert urls.strip() == ",".join(f"nats://127.0.0.1:{cluster.client_port + n}" for n in range(3))
        yield cluster
    finally:
        cluster.script("down")
    assert not cluster.folder.exists()


def expected_digests() -> dict[int, str]:
    """Each event of SOURCE as its producers make it, read here from the source itself."""
    from beamstream.sources.simulated import SimulatedSource

    reader = SimulatedSource.model_validate({**SOURCE, "rate_hz": None}).open()
    found = {}
    for batch in reader.read(reader.partition(0, 1)):
        for index, seq in enumerate(batch.seq):
            found[int(seq)] = digest({name: array[index] for name, array in batch.data.items()})
    return found


def read(url: str, group: str | None, got: dict) -> threading.Thread:
    """A reader of ``url`` (a member of ``group``, or with no group the whole stream alone) on a thread:
    ``got["events"]`` lists (seq, digest) as they come, ``got["report"]`` is its report at the end (``got["error"]``
    what it raised, if anything)."""
    got["events"] = []

    def run() -> None:
        try:
            with Client(url, group=group, timeout=60) as client:
                for event in client.events():
                    got["events"].append((event.seq, digest(event.data)))
            got["report"] = client.report
        except Exception as exc:  # the test names it
            got["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def stream_through_a_kill(cluster: Cluster, tmp_path: Path, victim: Literal["leader", "follower"]) -> tuple[int, str]:
    """Stream EVENTS events from a producer process (WORKERS workers) through a ``beamstream buffer`` process into a
    stream with 3 replicas while a group member and a reader without a group read it; once a quarter of the messages
    are stored, kill -9 the stream's leader (or a follower). Checks that both readers' consumers have 3 replicas, that the
    stream completes, that every event reaches each reader once and bit-exact, and that the stream holds each message
    once; returns (the killed server's number, the JetStream stream's name)."""
    name = "failover"
    url, stream = cluster.url(name), layout.stream_name(name)
    producers = f"ipc://{tmp_path / 'in'}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"source": SOURCE, "steps": STEPS,
                                    "sinks": [{"type": "stream", "endpoint": producers}]}))
    logs = {role: tmp_path / f"{role}.log" for role in ("buffer", "producer")}
    admin = NatsConnection(split_url(url).server, timeout=5.0)

    def info():
        return admin.call_retried(lambda: admin.js.stream_info(stream, subjects_filter=layout.subject(name, ">")))

    with open(logs["buffer"], "w") as out:
        buffer = subprocess.Popen([*BEAMSTREAM, "buffer", "--producer-endpoint", producers, "--backend", url,
                                   "--producer-timeout", "30"], stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT)
    with open(logs["producer"], "w") as out:  # started at once: its workers connect once the buffer binds
        producer = subprocess.Popen([*BEAMSTREAM, "produce", str(spec), "--workers", str(WORKERS)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_line(logs["buffer"], "buffer: producers", buffer, timeout=30)
        got: dict[str, dict] = {"analysis": {}, "alone": {}}
        readers = [read(url, "analysis", got["analysis"]), read(url, None, got["alone"])]

        def a_quarter_stored() -> bool:
            for process, role in ((buffer, "buffer"), (producer, "producer")):
                assert process.poll() is None, f"the {role} ended early:\n{logs[role].read_text()}"
            return info().state.messages >= MESSAGES // 4

        wait_until(a_quarter_stored, "a quarter of the messages stored", timeout=30)
        consumers = admin.call_retried(lambda: admin.js.consumers_info(stream))
        assert len(consumers) == 2 and all(len(consumer.cluster.replicas) == 2 for consumer in consumers), \
            "each reader's consumer is kept on 3 servers"
        before = info()
        leader = int(before.cluster.leader.removeprefix("n"))
        killed = leader if victim == "leader" else next(n for n in (1, 2, 3) if n != leader)
        cluster.script("kill", str(killed))
        killed_at = time.monotonic()
        assert producer.poll() is None and before.state.messages < MESSAGES, "killed mid-stream"
        assert producer.wait(timeout=90) == 0, logs["producer"].read_text()
        resumed = time.monotonic() - killed_at
        for reader, (who, result) in zip(readers, got.items()):
            reader.join(timeout=90)
            assert not reader.is_alive() and "error" not in result, (who, result.get("error"),
                                                                     logs["buffer"].read_text())
        after = info()
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
        buffer.send_signal(signal.SIGINT)
        try:
            buffer.wait(timeout=30)
        finally:
            if buffer.poll() is None:
                buffer.kill()
                buffer.wait()
            admin.close()

    expected = expected_digests()
    for who, result in got.items():
        report = result["report"]
        assert report.complete and f"complete: {EVENTS} events" in report.summary(), (who, report.summary())
        assert sorted(seq for seq, _ in result["events"]) == list(range(EVENTS)), f"{who}: every event once"
        assert dict(result["events"]) == expected, f"{who}: bit-exact"
    stored = after.state.subjects
    assert stored[layout.subject(name, "data")] == MESSAGES and stored[layout.subject(name, "end")] == WORKERS, \
        f"each message stored once: {stored}"
    if victim == "leader":
        assert after.cluster.leader != f"n{killed}", "another server leads the stream"
    print(f"\nkilled the stream's {victim} n{killed} with {before.state.messages} of {after.state.messages} records "
          f"stored; the producers finished {resumed:.1f} s later; the stream is led by {after.cluster.leader}")
    return killed, stream


def test_killing_the_streams_leader_mid_stream_loses_nothing(cluster, tmp_path):
    stream_through_a_kill(cluster, tmp_path, "leader")


def test_killing_a_follower_mid_stream_loses_nothing_and_restarted_it_catches_up(cluster, tmp_path):
    killed, stream = stream_through_a_kill(cluster, tmp_path, "follower")

    def held(server: int) -> tuple[int, int] | None:
        state = cluster.stream_state(server, stream)
        return None if state is None else (state["messages"], state["last_seq"])

    others = [n for n in (1, 2, 3) if n != killed]
    wait_until(lambda: held(others[0]) == held(others[1]) is not None, "the servers left to agree", timeout=10)
    final = held(others[0])
    started = time.monotonic()
    cluster.script("start", str(killed))
    wait_until(lambda: held(killed) == final, f"n{killed} to hold the stream's messages and last sequence {final}",
               timeout=30, every=0.1)
    print(f"n{killed} caught up {time.monotonic() - started:.1f} s after starting again")


def test_a_cluster_url_names_its_servers_and_replicas():
    assert split_url("nats://h1:4222,h2:4223,h3:4224/run42?replicas=3") == (
        "nats://h1:4222,nats://h2:4223,nats://h3:4224", "run42", 3)
    assert split_url("nats://127.0.0.1:4222/run42") == ("nats://127.0.0.1:4222", "run42", None)
    assert servers(split_url("nats://h1:4222,h2:4223/x").server) == ["nats://h1:4222", "nats://h2:4223"]
    for url, says in [("nats://h1:4222/x?replicas=0", "replicas must be a whole number from 1 to 5, not '0'"),
                      ("nats://h1:4222/x?replicas=three", "replicas must be a whole number from 1 to 5, not 'three'"),
                      ("nats://h1:4222/x?retention=60", "the only setting a nats:// URL takes is ?replicas=N, not "
                                                        "retention"),
                      ("nats://h1:4222,h2:port/x", "'h2:port' is not HOST:PORT; e.g. nats://127.0.0.1:4222/run42, "
                                                   "or for a cluster nats://h1:4222,h2:4222,h3:4222/run42?replicas=3"),
                      ("nats://h1:4222,/x", "'' is not HOST:PORT")]:
        with pytest.raises(ValueError, match=re.escape(says)):
            split_url(url)


def test_buffer_command_refuses_replicas_a_stream_cannot_have():
    refused = run_cli("buffer", "--backend", "nats://127.0.0.1:4222,127.0.0.1:4223/x?replicas=7")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "replicas must be a whole number from 1 to 5, not '7'" in refused.stdout + refused.stderr
