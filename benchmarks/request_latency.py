"""A request service's latency to the first event, and its relay's throughput against the direct path.

    .venv/bin/python benchmarks/request_latency.py [--repeat N] [--images N] [--only latency,relay]

Both parts run a real ``beamstream service`` (SQLite store, stream folders in a temporary folder)
whose jobs are real processes on this machine, or real Slurm jobs.

latency   Seconds from ``POST /v1/streams`` to the first event a consumer holds, for the local
          executor and for Slurm (skipped, with the reason, when ``sinfo`` does not answer), each
          read two ways in alternation: ``direct`` waits as ``ServiceClient`` does
          (``Stream.wait_until_running``: the stream's changes, server-sent), then joins a group at
          ``endpoints.consumers`` (``Stream.client``); ``relay`` opens
          ``Client("http://SERVICE/v1/streams/ID", group=...)`` right after the POST (the relay
          waits for the stream to run). Each stream is cancelled once its first event is in. Also
          printed: the median time to ``starting`` (buffer job submitted) and ``running`` (buffer
          listening), from the stream's history. Targets: median < 1 s local, < 3 s Slurm. The
          local rows come after a baseline: seconds from submitting ``beamstream --version`` as a
          local job to its end, forked by the warm job starter as the service's jobs are, and
          started cold (a fresh interpreter), in alternation, and their ratio.
relay     One stream of ``--images`` simulated 1024×1024 uint16 images (2 MiB, one per message),
          all held in its buffer, read whole by one group after another (every member joins
          first, so the service keeps the buffer until the last has read): a warm-up group
          (so every message is in the buffer), then ``--repeat`` pairs of a direct member
          (``endpoints.consumers``, tcp) and a relay member (the WebSocket), the order alternating
          from pair to pair. Each rate counts payload bytes from the first message received to
          the last; each pair prints both rates and the relay's ratio to its own direct run, and
          each run's CPU time per message of the reader (this process), the service and the
          buffer: on a machine whose cores are all busy the ratio follows the ratio of those sums.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from servicekit import jobs_under, run_service, shown, slurm_answers, stop_service  # noqa: E402

from beamstream.client import Client  # noqa: E402
from beamstream.service_client import ServiceClient  # noqa: E402
from beamstream.service.executors import JobRequest, JobState, LocalExecutor  # noqa: E402

POLL_S = 0.02
TARGETS = {"local": 1.0, "slurm": 3.0}
FIRST_EVENT_SPEC = {"source": {"type": "simulated", "n_events": 50, "events_per_read": 1,
                               "detectors": [{"kind": "waveform", "samples": 1024}]}}


def request(url: str, spec: dict, executor: str = "local") -> tuple[str, str]:
    """The id of a stream requested of the service at ``url``, and its key (streams are sealed: a reader needs it)."""
    response = httpx.post(f"{url}/v1/streams", json={"spec": spec, "resources": {"executor": executor}}, timeout=30)
    response.raise_for_status()
    return response.json()["id"], response.json()["credentials"]["key"]


def first_event_s(url: str, executor: str, way: str) -> tuple[float, list[float]]:
    """Seconds from the request of a small stream to its first event read ``way`` (direct or relay), and the
    phases: seconds from the request to ``starting`` (buffer job submitted), to ``running`` (buffer listening)."""
    started, requested = time.perf_counter(), time.time()
    stream_id, key = request(url, FIRST_EVENT_SPEC, executor)
    try:
        if way == "relay":
            endpoint = f"{url}/v1/streams/{stream_id}"
            reader = Client(endpoint, group="first", timeout=120, key=key)
        else:  # as a user's program waits: told by the service's stream of changes, not polling it
            with ServiceClient(url) as service:
                reader = service.stream(stream_id).wait_until_running(timeout=120).client(
                    group="first", timeout=120, key=key)
        with reader as client:
            next(client.events())
            seconds = time.perf_counter() - started
        changes = {change["state"]: change["at"] - requested for change in shown(url, stream_id)["history"]}
        return seconds, [changes["starting"], changes["running"]]
    finally:
        httpx.delete(f"{url}/v1/streams/{stream_id}", timeout=30)


def job_start_s(executor: LocalExecutor, folder: Path) -> float:
    """Seconds from submitting ``beamstream --version`` to ``executor`` to the job's end (polled every ms)."""
    job = JobRequest("buffer", [sys.executable, "-m", "beamstream.cli", "--version"], folder)
    started = time.perf_counter()
    native_id = executor.submit(job)
    while (status := executor.status(native_id, job)).state is JobState.RUNNING:
        time.sleep(0.001)
    assert status.state is JobState.SUCCEEDED, f"{job.argv} ended {status}: {job.output.read_text()}"
    return time.perf_counter() - started


def job_starts(folder: Path, repeat: int) -> None:
    """Print the baseline of the local rows: a job forked warm against one started cold."""
    cold, warm = LocalExecutor(), LocalExecutor()
    warm.warm_up()
    try:
        runs: dict[str, list[float]] = {"warm": [], "cold": []}
        for number in range(repeat):
            for way in ("warm", "cold") if number % 2 == 0 else ("cold", "warm"):
                runs[way].append(job_start_s(warm if way == "warm" else cold, folder / f"{way}-{number}"))
    finally:
        warm.close()
    medians = {way: statistics.median(seconds) for way, seconds in runs.items()}
    print(f"latency, local job start (beamstream --version, submitted to ended): warm median {medians['warm']:.2f} s "
          f"[{', '.join(f'{s:.2f}' for s in runs['warm'])}], cold median {medians['cold']:.2f} s "
          f"[{', '.join(f'{s:.2f}' for s in runs['cold'])}]; warm/cold {medians['warm'] / medians['cold']:.2f}",
          flush=True)


def latency(folder: Path, repeat: int) -> None:
    executors = ["local"]
    if slurm_answers():
        executors.append("slurm")
    else:
        print("latency, slurm: skipped: sinfo does not answer here (bash scripts/slurm.sh up starts a cluster)")
    (folder / "latency").mkdir()
    job_starts(folder / "job-starts", repeat)
    process, url = run_service(folder / "latency", executors=json.dumps(executors), drain_grace_s="5")
    try:
        for executor in executors:
            runs: dict[str, list[float]] = {"direct": [], "relay": []}
            phases: list[list[float]] = []
            for number in range(repeat):
                ways = ("direct", "relay") if number % 2 == 0 else ("relay", "direct")
                for way in ways:
                    seconds, phase = first_event_s(url, executor, way)
                    runs[way].append(seconds)
                    phases.append(phase)
            starting, running = (statistics.median(phase[index] for phase in phases) for index in (0, 1))
            print(f"latency, {executor:<5} phases (median of all its streams): starting after {starting:.2f} s, "
                  f"running after {running:.2f} s", flush=True)
            for way, seconds in runs.items():
                median = statistics.median(seconds)
                verdict = "PASS" if median < TARGETS[executor] else "FAIL"
                print(f"latency, {executor:<5} {way:<6}: median {median:.2f} s [{', '.join(f'{s:.2f}' for s in seconds)}]"
                      f"  target < {TARGETS[executor]:g} s  {verdict}", flush=True)
    finally:
        stop_service(process, url)


def read_rate(client: Client) -> tuple[float, int]:
    """GB/s of reading the whole stream with ``client`` (a member of a group of its own), and the events read."""
    first = last = None
    received = events = 0
    with client:
        for message in client.messages():
            last = time.perf_counter()
            events += len(message.seq)
            if first is None:
                first = last
            else:
                received += message.header.nbytes
        assert client.report.complete, client.report.summary()
    return received / (last - first) / 1e9, events


def cpu_seconds(service: psutil.Process, buffer: psutil.Process) -> tuple[float, float, float]:
    """CPU seconds so far of this process (the readers), the service and its stream's buffer."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return (used.ru_utime + used.ru_stime, *(sum(process.cpu_times()[:2]) for process in (service, buffer)))


def read_measured(client: Client, service: psutil.Process, buffer: psutil.Process) -> tuple[float, list[float]]:
    """:func:`read_rate` of ``client``, and the CPU milliseconds per message of the reader, service and buffer."""
    before = cpu_seconds(service, buffer)
    rate, events = read_rate(client)
    return rate, [(after - start) / events * 1e3 for start, after in zip(before, cpu_seconds(service, buffer))]


def relay_throughput(folder: Path, repeat: int, images: int) -> None:
    (folder / "relay").mkdir()
    process, url = run_service(folder / "relay", drain_grace_s="600")
    spec = {"source": {"type": "simulated", "n_events": images, "events_per_read": 1, "bank_size": 4,
                       "detectors": [{"kind": "image", "shape": [1024, 1024], "dtype": "uint16"}]}}
    try:
        stream_id, key = request(url, spec)
        while shown(url, stream_id)["state"] != "running":
            time.sleep(POLL_S)
        endpoints = {"direct": shown(url, stream_id)["endpoints"]["consumers"],
                     "relay": f"{url}/v1/streams/{stream_id}"}
        service = psutil.Process(process.pid)
        buffer = next(job for job in jobs_under(folder / "relay")  # the buffer job's process, not its wrapper
                      if "buffer" in job.cmdline() and job.pid != process.pid and not job.children())
        # every member joins now: the service stops a buffer once its producers ended and every group read all
        warm_up = Client(endpoints["direct"], group="warm-up", timeout=120, key=key)
        orders = [("direct", "relay") if number % 2 == 0 else ("relay", "direct") for number in range(repeat)]
        members = [{way: Client(endpoints[way], group=f"{way}-{number}", timeout=120, key=key) for way in order}
                   for number, order in enumerate(orders)]
        rate, events = read_rate(warm_up)
        print(f"relay: stream of {events} images, {events * 2 * 2**20 / 1e6:.0f} MB; warm-up group (direct, while "
              f"produced) {rate:.2f} GB/s", flush=True)
        ratios, rates, cpu = [], {"direct": [], "relay": []}, {"direct": [], "relay": []}
        for number, (order, pair) in enumerate(zip(orders, members)):
            measured = {way: read_measured(pair[way], service, buffer) for way in order}
            for way in order:
                rates[way].append(measured[way][0])
                cpu[way].append(measured[way][1])
            ratios.append(measured["relay"][0] / measured["direct"][0])
            print(f"relay: pair {number + 1} ({' then '.join(order)}): "
                  + ", ".join(f"{way} {measured[way][0]:.2f} GB/s ({_cpu(measured[way][1])})" for way in rates)
                  + f", ratio {ratios[-1]:.2f}", flush=True)
        medians = {way: [statistics.median(column) for column in zip(*cpu[way])] for way in cpu}
        print(f"relay: median direct {statistics.median(rates['direct']):.2f} GB/s ({_cpu(medians['direct'])}), "
              f"relay {statistics.median(rates['relay']):.2f} GB/s ({_cpu(medians['relay'])}); median ratio "
              f"{statistics.median(ratios):.2f} [{', '.join(f'{ratio:.2f}' for ratio in ratios)}]; CPU per message "
              f"direct/relay {sum(medians['direct']) / sum(medians['relay']):.2f}")
    finally:
        stop_service(process, url)


def _cpu(per_message: list[float]) -> str:
    reader, service, buffer = per_message
    return f"CPU ms/message: reader {reader:.2f}, service {service:.2f}, buffer {buffer:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per latency row, pairs in the relay part")
    parser.add_argument("--images", type=int, default=300, help="2 MiB images in the relay part's stream")
    parser.add_argument("--only", default="latency,relay", help="parts to run: latency, relay")
    options = parser.parse_args()
    parts = options.only.split(",")
    with tempfile.TemporaryDirectory(prefix="beamstream-bench-") as folder:
        if "latency" in parts:
            latency(Path(folder), options.repeat)
        if "relay" in parts:
            relay_throughput(Path(folder), options.repeat, options.images)


if __name__ == "__main__":
    main()
