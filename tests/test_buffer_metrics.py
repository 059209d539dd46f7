"""Buffer metrics over real HTTP: a running buffer, real producers and consumers, the status command."""

from __future__ import annotations

import re
import signal
import socket
import threading
import urllib.request

import pytest
from conftest import banner, run_cli, start_cli
from prometheus_client.parser import text_string_to_metric_families

from beamstream.buffer.status import fetch_status, metrics_url
from beamstream.buffer.local import LocalBuffer
from beamstream.client import Client
from beamstream.producer import run_local
from conftest import waveform_spec

GROUPS = {"alpha": 2, "beta": 1}  # group → members




def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``url``: (name, sorted labels) → value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def group_value(samples: dict, name: str, group: str) -> float:
    return samples[(f"beamstream_buffer_{name}", (("group", group),))]


@pytest.fixture
def served(tmp_path):
    """A running buffer and its metrics URL."""
    service = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=64 << 20).start()
    yield service, service.serve_metrics(0)
    service.close()


def consume_until_scraped(endpoint: str, group: str, seqs: list,
                          scraped: threading.Event) -> tuple[threading.Thread, threading.Event]:
    """Read the whole stream as a member of ``group`` on a thread, then stay connected until ``scraped`` is set.

    Returns the thread and an event set once this member has had its end (its group acknowledged everything).
    """
    finished = threading.Event()

    def consume() -> None:
        with Client(endpoint, group=group, timeout=60) as client:
            seqs.extend(event.seq for event in client.events())
            finished.set()
            scraped.wait(60)

    thread = threading.Thread(target=consume)
    thread.start()
    return thread, finished


def test_metrics_and_status_after_a_stream_through_two_groups(served, tmp_path):
    service, url = served
    scraped = threading.Event()
    seqs: dict[str, list] = {group: [] for group in GROUPS}
    members = [consume_until_scraped(f"ipc://{tmp_path / 'out'}", group, seqs[group], scraped)
               for group, count in GROUPS.items() for _ in range(count)]
    try:
        result = run_local(waveform_spec(f"ipc://{tmp_path / 'in'}"), workers=2)
        assert result.ok, result.errors
        assert all(finished.wait(60) for _, finished in members)
        samples = scrape(url)
        joined = {identity.hex() for identity in service.members}  # while they wait: they leave once scraped is set
        status = run_cli("buffer", "status", url.removeprefix("http://").removesuffix("/metrics"), timeout=30)
    finally:
        scraped.set()
        for thread, _ in members:
            thread.join(timeout=60)

    messages = sum(worker.messages for worker in result.workers)
    assert {group: sorted(got) for group, got in seqs.items()} == {group: list(range(60)) for group in GROUPS}
    total = {name.removeprefix("beamstream_buffer_"): value for (name, labels), value in samples.items() if not labels}
    assert total["messages_in_total"] == messages
    assert total["bytes_in_total"] == result.bytes
    assert total["messages_out_total"] == len(GROUPS) * messages
    assert total["bytes_out_total"] == len(GROUPS) * result.bytes
    assert total["rejected_messages_total"] == 0
    assert total["log_next_offset"] == messages
    assert total["max_bytes"] == 64 << 20 and total["spilled_bytes"] == 0
    assert total["producers_ended"] == 2 and total["producers_connected"] == 0
    for group, members in GROUPS.items():
        assert group_value(samples, "group_delivered_total", group) == messages
        assert group_value(samples, "group_skipped_total", group) == 0
        assert group_value(samples, "group_lag", group) == 0
        assert group_value(samples, "group_depth", group) == 0
        assert group_value(samples, "group_unacknowledged", group) == 0
        assert group_value(samples, "group_members", group) == members
    consumers = {dict(labels)["consumer"]: value for (name, labels), value in samples.items()
                 if name == "beamstream_buffer_consumer_unacknowledged"}
    assert len(consumers) == 3 and set(consumers.values()) == {0}
    assert {dict(labels)["consumer"] for (name, labels) in samples if name == "beamstream_buffer_consumer_credit"} \
        == set(consumers) == joined

    assert status.returncode == 0, status.stderr
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in status.stdout.splitlines() if line.count("│") == 8}  # the groups table
    assert rows == {group: ["0", "0", str(messages), "0", str(members), "0"] for group, members in GROUPS.items()}
    assert all(consumer in status.stdout for consumer in consumers)
    assert f"{messages:,}" in status.stdout and "2 ended" in status.stdout


def test_status_of_a_port_nobody_serves_is_one_clear_line(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status = run_cli("buffer", "status", f"127.0.0.1:{port}", timeout=30)
    assert status.returncode == 1
    assert f"http://127.0.0.1:{port}/metrics" in status.stderr
    assert "Traceback" not in status.stderr + status.stdout


def test_buffer_command_serves_metrics_on_request(tmp_path):
    """``beamstream buffer --metrics-port 0`` says where its metrics are and serves them until interrupted."""
    service = start_cli("buffer", "--producer-endpoint", f"ipc://{tmp_path / 'in'}", "--consumer-endpoint",
                        f"ipc://{tmp_path / 'out'}", "--max-memory", "64MiB", "--metrics-port", "0")
    try:
        line = banner(service)
        url = re.search(r"metrics → (\S+)", line).group(1)
        result = run_local(waveform_spec(f"ipc://{tmp_path / 'in'}", n_events=20), workers=2)
        status = fetch_status(url)
    finally:
        service.send_signal(signal.SIGINT)
        service.communicate(timeout=30)
    assert result.ok and service.returncode == 0
    assert status.totals["messages_in_total"] == sum(worker.messages for worker in result.workers)
    assert status.totals["producers_ended"] == 2 and status.groups == {}


@pytest.mark.parametrize(("target", "url"), [
    ("127.0.0.1:9100", "http://127.0.0.1:9100/metrics"),
    ("http://host:9100", "http://host:9100/metrics"),
    ("http://host:9100/", "http://host:9100/metrics"),
    ("https://host/buffer/metrics", "https://host/buffer/metrics"),
])
def test_metrics_url_adds_scheme_and_path_where_missing(target, url):
    assert metrics_url(target) == url
