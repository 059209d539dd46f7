"""Runs never mix: a buffer serves one stream and refuses another, a direct consumer follows one and refuses others."""

from __future__ import annotations

import threading

from beamstream.buffer.local import LocalBuffer
from beamstream.client import Client
from beamstream.producer import run_local
from conftest import waveform_spec


def test_a_second_run_into_a_buffer_is_refused_and_the_first_loses_nothing(tmp_path):
    producers, consumers = f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}"
    buffer = LocalBuffer(producers, consumers).start()
    try:
        with Client(consumers, group="g", timeout=60) as client:
            first = run_local(waveform_spec(producers, n_events=60), workers=2, stream_id="run-a")
            seqs = sorted(event.seq for event in client.events())
        second = run_local(waveform_spec(producers, n_events=30), workers=1, stream_id="run-b")
    finally:
        buffer.close()
    assert first.ok and seqs == list(range(60)) and client.report.complete
    assert not second.ok
    assert "this buffer serves stream 'run-a'; stream 'run-b' needs a buffer of its own" in second.errors[0]
    assert buffer.report.stream == "run-a" and buffer.report.events == 60 and buffer.counters["rejected"] >= 1


def test_a_direct_consumer_follows_one_run_and_refuses_the_other(tmp_path):
    """run-a streams for about 3 s; run-b starts once the consumer has run-a's first event, and is refused."""
    endpoint = f"ipc://{tmp_path / 'stream'}"
    results: dict = {}

    def run(name: str, rate_hz: float) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.setdefault(name, run_local(
            waveform_spec(endpoint, n_events=60, rate_hz=rate_hz), workers=1, stream_id=name)))
        thread.start()
        return thread

    with Client(endpoint, bind=True, timeout=60) as client:
        runs = [run("run-a", rate_hz=20)]
        seqs = []
        for event in client.events():
            seqs.append(event.seq)
            if len(runs) == 1:
                runs.append(run("run-b", rate_hz=400))
        seqs.sort()
        for thread in runs:
            thread.join(timeout=120)
    followed, other = client.report.stream, ({"run-a", "run-b"} - {client.report.stream}).pop()
    assert seqs == list(range(60)) and client.report.complete and client.report.foreign >= 1
    assert results[followed].ok
    assert f"this consumer reads stream {followed!r}, not {other!r}" in results[other].errors[0]
