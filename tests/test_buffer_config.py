"""A buffer started from a stream spec's ``buffer:`` section, from Python and as `beamstream buffer --spec`."""

from __future__ import annotations

import signal

import pytest

from beamstream.client import Client
from beamstream.errors import SpecError
from beamstream.producer import run_local
from beamstream.spec import load_spec, parse_spec
from conftest import banner, run_cli, start_cli


def buffered_spec(tmp_path, **buffer) -> dict:
    producers = f"ipc://{tmp_path / 'in'}"
    return {
        "source": {"type": "simulated", "n_events": 40, "events_per_read": 5,
                   "detectors": [{"kind": "waveform", "samples": 512}]},
        "sinks": [{"type": "stream", "endpoint": producers}],
        "buffer": {"producer_endpoint": producers, "consumer_endpoint": f"ipc://{tmp_path / 'out'}", **buffer},
    }


def test_spec_buffer_opens_the_buffer_it_describes(tmp_path):
    spec = parse_spec(buffered_spec(tmp_path, max_memory="64MiB", spill_dir=str(tmp_path / "spill")))
    assert spec.buffer.max_memory == 64 << 20
    service = spec.buffer.open().start()
    try:
        with Client(spec.buffer.consumer_endpoint, group="g", timeout=60) as client:
            result = run_local(spec, workers=2)
            assert sorted(event.seq for event in client.events()) == list(range(40))
        assert result.ok and client.report.complete
        assert service.message_log.max_bytes == 64 << 20 and service.message_log.spilled_bytes > 0
    finally:
        service.close()


def test_buffer_command_takes_its_settings_from_the_spec_and_options_override_them(tmp_path, write_spec):
    path = write_spec(buffered_spec(tmp_path, max_memory="lots of it"))
    with pytest.raises(SpecError, match=r"buffer\.max_memory: not a size: 'lots of it'"):
        load_spec(path)
    path = write_spec(buffered_spec(tmp_path, max_memory="1GiB"))
    service = start_cli("buffer", "--spec", str(path), "--max-memory", "64MiB")
    try:
        with Client(f"ipc://{tmp_path / 'out'}", group="g", timeout=60) as client:
            produced = run_cli("produce", str(path), "--workers", "1")
            assert len(list(client.events())) == 40 and produced.returncode == 0, produced.stderr
    finally:
        service.send_signal(signal.SIGINT)
        out, err = service.communicate(timeout=30)
    assert "memory ≤ 0.0625 GiB" in out + err, "--max-memory overrides the spec's 1GiB"
    assert "complete: 40 events" in out + err


def test_the_endpoints_old_names_still_work_for_a_release_with_a_warning(tmp_path, caplog):
    """``producers``/``consumers`` (an endpoint here, a count elsewhere) are read as their new names, warning."""
    from beamstream.buffer.config import BufferConfig

    old = {"producers": f"ipc://{tmp_path / 'in'}", "consumers": f"ipc://{tmp_path / 'out'}"}
    with caplog.at_level("WARNING", logger="beamstream.buffer.config"):
        config = BufferConfig.model_validate(old)
    assert (config.producer_endpoint, config.consumer_endpoint) == tuple(old.values())
    assert "'producers' is now called 'producer_endpoint'" in caplog.text
    assert "'consumers' is now called 'consumer_endpoint'" in caplog.text
    with pytest.raises(ValueError, match="give only producer_endpoint"):
        BufferConfig.model_validate({**old, "producer_endpoint": old["producers"]})
    service = start_cli("buffer", "--producers", old["producers"], "--consumers", old["consumers"])
    before = []
    while "buffer: producers" not in (line := service.stderr.readline()) and line:
        before.append(line)
    service.send_signal(signal.SIGINT)
    service.communicate(timeout=30)
    assert f"buffer: producers → {old['producers']}, consumers → {old['consumers']}" in line
    assert "'producers' is now called 'producer_endpoint'" in " ".join("".join(before).split())


def test_buffer_command_says_when_the_spec_has_no_buffer(tmp_path, write_spec):
    spec = buffered_spec(tmp_path)
    del spec["buffer"]
    result = run_cli("buffer", "--spec", str(write_spec(spec)))
    assert result.returncode == 2 and "has no buffer: section" in result.stdout + result.stderr


def test_open_serves_metrics_when_the_settings_say_so(tmp_path):
    """BufferConfig.open() goes through open_buffer: every setting counts, metrics_port included."""
    from beamstream.buffer.config import BufferConfig
    from beamstream.buffer.status import fetch_status

    config = BufferConfig(producer_endpoint=f"ipc://{tmp_path / 'in'}", consumer_endpoint=f"ipc://{tmp_path / 'out'}",
                          metrics_port=0)
    buffer = config.open()
    try:
        assert buffer.metrics_server is not None and buffer.consumer_address == config.consumer_endpoint
        status = fetch_status(buffer.metrics_server.url)
        assert status.totals["messages_in_total"] == 0 and status.totals["max_bytes"] == 2 << 30
        assert status == buffer.status()
    finally:
        buffer.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_buffer_command_cleanly_with_its_account(tmp_path, signum):
    service = start_cli("buffer", "--producer-endpoint", f"ipc://{tmp_path / 'in'}", "--consumer-endpoint", f"ipc://{tmp_path / 'out'}")
    assert "buffer: producers" in banner(service)
    service.send_signal(signum)
    out, err = service.communicate(timeout=30)
    assert service.returncode == 0 and "Traceback" not in err
    assert f"nothing arrived from ipc://{tmp_path / 'in'}" in err
