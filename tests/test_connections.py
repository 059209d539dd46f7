"""A buffer keeps at most max_connections connections per socket, and survives running out of descriptors."""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import time

from beamstream.buffer.local import LocalBuffer
from beamstream.producer import run_local
from conftest import BEAMSTREAM, banner, free_tcp_ports, read_in_thread, waveform_spec, wait_until

HOSTILE = 20


def closed_by_peer(connection: socket.socket, timeout: float) -> bool:
    """True if the peer closes ``connection`` within ``timeout`` seconds (what it sends first is read and skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([connection], [], [], left)[0]:
            return False
        try:
            if not connection.recv(4096):
                return True
        except ConnectionResetError:
            return True
    return False


def stream_through(producers: str, consumers: str) -> None:
    """A real stream of 60 events from two workers through the buffer to a group: complete, exactly once."""
    results: dict = {}
    reader = read_in_thread(consumers, results, "group", group="g")
    result = run_local(waveform_spec(producers), workers=2)
    reader.join(timeout=120)
    assert result.ok and sorted(results["group"]) == list(range(60))
    assert results["group.report"].complete


def test_connections_over_the_limit_are_shut_down_and_the_stream_still_runs(tmp_path):
    producers, consumers = f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}"
    buffer = LocalBuffer(producers, consumers, max_bytes=64 << 20, max_connections=6).start()
    try:
        hostile = []
        for path in (tmp_path / "in", tmp_path / "out"):
            for _ in range(HOSTILE):
                connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                connection.connect(str(path))
                hostile.append(connection)
        wait_until(lambda: [limit.refused for limit in buffer.connection_limits] == [HOSTILE - 6] * 2,
                   "every connection beyond six per socket to be refused")
        closed = [closed_by_peer(connection, timeout=0.2) for connection in hostile]
        assert sum(closed) == 2 * (HOSTILE - 6), "every refused connection is shut down, and only those"
        for connection in hostile:
            connection.close()
        wait_until(lambda: all(limit.open == 0 for limit in buffer.connection_limits), "the hostile connections to go")
        stream_through(producers, consumers)
    finally:
        buffer.close()


def test_buffer_survives_running_out_of_file_descriptors(tmp_path):
    """A buffer whose open-file limit is nearly used up (150 of its 200 descriptors are taken by files it
    inherited) gets 100 connections on each port: it runs out of descriptors, logs it, serves on, and a
    real stream runs through it once the connections go; no traceback."""
    first = free_tcp_ports(2)
    ports = first, first + 1
    producers, consumers = (f"tcp://127.0.0.1:{port}" for port in ports)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    with open(os.devnull) as null:
        taken = [os.dup(null.fileno()) for _ in range(150)]
        try:
            service = subprocess.Popen([*BEAMSTREAM, "buffer", "--producer-endpoint", producers, "--consumer-endpoint", consumers],
                                       stderr=subprocess.PIPE, text=True, preexec_fn=low_limit, pass_fds=taken)
        finally:
            for descriptor in taken:
                os.close(descriptor)
    try:
        assert "buffer: producers" in banner(service)
        hostile = [socket.create_connection(("127.0.0.1", port)) for _ in range(100) for port in ports]
        wait_until(lambda: len(os.listdir(f"/proc/{service.pid}/fd")) >= 199, "the buffer to run out of descriptors")
        assert not closed_by_peer(hostile[-1], timeout=0.5)  # it waits in the kernel's queue
        assert service.poll() is None
        for connection in hostile:
            connection.close()
        stream_through(producers, consumers)
    finally:
        service.send_signal(signal.SIGINT)
        _, err = service.communicate(timeout=30)
    assert service.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "Too many open files" in err and "complete: 60 events" in err
