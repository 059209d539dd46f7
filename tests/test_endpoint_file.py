"""The file through which the service tells producers started with their buffer where it listens."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from beamstream.client import Client
from beamstream.endpoint_file import MAX_BYTES, wait_for_endpoint, write_endpoint
from beamstream.errors import OptionError
from conftest import BEAMSTREAM


def test_a_waiting_reader_gets_the_endpoint_written_after_it_began_to_wait(tmp_path):
    path = tmp_path / "buffer.endpoint"
    written = threading.Timer(0.3, write_endpoint, (path, "tcp://node7:40123"))
    started = time.monotonic()
    written.start()
    assert wait_for_endpoint(path, timeout=30) == "tcp://node7:40123"
    assert time.monotonic() - started >= 0.3
    written.join()
    assert path.read_bytes() == b"tcp://node7:40123\n" and not list(tmp_path.glob("*.part*"))


def test_a_file_that_never_appears_is_a_timeout_naming_it(tmp_path):
    with pytest.raises(TimeoutError, match="buffer.endpoint did not appear within 0.1 s"):
        wait_for_endpoint(tmp_path / "buffer.endpoint", timeout=0.1)


@pytest.mark.parametrize("content", [b"", b"\n", b"tcp://a:1 tcp://b:2\n", b"tcp://a:1\ntcp://b:2\n",
                                     b"tcp://a:\x001\n", "tcp://\u00e9:1".encode(), b"tcp://a:1" * MAX_BYTES])
def test_a_file_that_holds_no_one_endpoint_is_refused_saying_what_it_should_hold(tmp_path, content):
    path = tmp_path / "buffer.endpoint"
    path.write_bytes(content)
    with pytest.raises(OptionError, match="should hold one endpoint"):
        wait_for_endpoint(path, timeout=1)


def test_produce_opens_its_source_then_sends_to_the_endpoint_once_the_file_names_it(tmp_path, write_spec):
    """The producers the service starts with a remote buffer: the spec's stream sink is a stand-in until the file
    says where the buffer listens; a missing source fails at once, without waiting for the file."""
    spec = write_spec({"source": {"type": "simulated", "n_events": 12,
                                  "detectors": [{"kind": "waveform", "samples": 32}]},
                       "sinks": [{"type": "stream", "endpoint": "tcp://buffer:1"}]})
    endpoint_file = tmp_path / "buffer.endpoint"
    command = [*BEAMSTREAM, "produce", str(spec), "--stream-id", "s1", "--rank", "0", "--producers", "1",
               "--endpoint-from", str(endpoint_file)]
    endpoint = f"ipc://{tmp_path / 'stream'}"
    with Client(endpoint, bind=True, timeout=60) as client:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        write_endpoint(endpoint_file, endpoint)
        events = list(client.events())
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert [event.seq for event in events] == list(range(12)) and client.report.complete

    missing = write_spec({"source": {"type": "hdf5", "files": [str(tmp_path / "no.h5")]},
                          "sinks": [{"type": "stream", "endpoint": "tcp://buffer:1"}]}, name="missing.yaml")
    result = subprocess.run([*BEAMSTREAM, "produce", str(missing), "--endpoint-from", str(tmp_path / "never")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no.h5" in result.stderr and "Traceback" not in result.stderr
