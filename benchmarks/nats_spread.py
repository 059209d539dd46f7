"""One run spread over N JetStream streams, against nats-py's own ceiling measured in the same run.

    .venv/bin/python benchmarks/nats_spread.py [--quick] [--repeat N] [--streams 1,2,4]

For each N, each run pairs two measurements, one right after the other, on the NATS server at 127.0.0.1:4222
(skipped, saying so, when none listens there):

  ceiling    nats-py alone: a spawned process publishes the run's bytes as 8 MiB messages cut into parts of
             max_payload − 1 KiB (as beamstream stores them), spread over N JetStream streams by message
             number, with WINDOW PubAcks in flight; this process reads them with one pull consumer per stream,
             fetching batches of a whole message's parts. GB/s from the first part read to the last.
  beamstream producer process(es) (--workers, default 1) → `beamstream buffer --backend
             nats://127.0.0.1:4222/NAME?streams=N` (its own process)
             → one Client(group=…) in this process (timing.py: first message to last), every message checked:
             each (producer, index) once, indexes in order per producer, the verdict complete.

Rows print the median GB/s of each, the median of the per-run ratios beamstream / ceiling (target ≥ 0.9), and
`uptime`'s load before and after the rows. Every stream made is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from buffer import BEAMSTREAM, NATS, delete_nats_stream  # noqa: E402
from throughput import IMAGE_SHAPE, image_spec  # noqa: E402
from timing import timed_run  # noqa: E402

from beamstream.jetstream.urls import listening  # noqa: E402
from beamstream.wire import nats as layout  # noqa: E402

MESSAGE = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * 2  # bytes of one simulated image (8 MiB)
WINDOW = 16  # PubAcks the ceiling's publisher keeps in flight
TARGET = 0.9


async def _publish(names: list[str], messages: int, window: int) -> None:
    import nats

    nc = await nats.connect(NATS)
    js = nc.jetstream(timeout=30)
    part = nc.max_payload - layout.HEADER_ROOM
    body = bytes(MESSAGE)
    pieces = [body[start:start + part] for start in range(0, MESSAGE, part)]
    slots = asyncio.Semaphore(window)
    pending: list[asyncio.Task] = []

    async def one(subject: str, piece: bytes) -> None:
        try:
            await js.publish(subject, piece)
        finally:
            slots.release()

    for number in range(messages):
        for piece in pieces:
            await slots.acquire()
            pending.append(asyncio.ensure_future(one(f"ceiling.{names[number % len(names)]}", piece)))
    await asyncio.gather(*pending)
    await nc.close()


def publisher(names: list[str], messages: int, window: int) -> None:
    """The ceiling's publishing process."""
    asyncio.run(_publish(names, messages, window))


async def _read(names: list[str], total: int) -> tuple[float, int]:
    """Seconds from the first part read to the last, and the bytes after the first, reading every stream."""
    import nats

    nc = await nats.connect(NATS)
    js = nc.jetstream(timeout=30)
    from nats.js.api import AckPolicy, ConsumerConfig

    subs = [await js.pull_subscribe(f"ceiling.{name}", stream=name, config=ConsumerConfig(ack_policy=AckPolicy.ALL))
            for name in names]
    per_message = -(-MESSAGE // (nc.max_payload - layout.HEADER_ROOM))
    clock: dict[str, float] = {}
    counted = [0, 0]  # bytes seen, bytes after the first part

    async def drain(sub) -> None:
        while counted[0] < total:
            try:
                batch = await sub.fetch(per_message, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            if not batch:  # nats-py answers a pull that timed out on the server's side with no messages
                continue
            await batch[-1].ack()  # AckPolicy.ALL: one acknowledgement per batch (a message's parts)
            now = time.perf_counter()
            for msg in batch:
                if "first" not in clock:
                    clock["first"] = now
                else:
                    counted[1] += len(msg.data)
                counted[0] += len(msg.data)
            clock["last"] = now

    await asyncio.wait_for(asyncio.gather(*(drain(sub) for sub in subs)), timeout=300)
    await nc.close()
    return clock["last"] - clock["first"], counted[1]


def ceiling(streams: int, messages: int) -> float:
    """nats-py's GB/s for ``messages`` 8 MiB messages over ``streams`` JetStream streams (see the module doc)."""
    names = [f"CEILING_{uuid.uuid4().hex[:8]}_{number}" for number in range(streams)]

    async def make(delete: bool) -> None:
        import nats
        from nats.js.api import StorageType, StreamConfig

        nc = await nats.connect(NATS)
        js = nc.jetstream(timeout=30)
        for name in names:
            if delete:
                await js.delete_stream(name)
            else:
                await js.add_stream(StreamConfig(name=name, subjects=[f"ceiling.{name}"], storage=StorageType.FILE))
        await nc.close()

    asyncio.run(make(delete=False))
    try:
        process = multiprocessing.get_context("spawn").Process(target=publisher, args=(names, messages, WINDOW))
        process.start()
        seconds, nbytes = asyncio.run(_read(names, messages * MESSAGE))
        process.join(60)
        return nbytes / seconds / 1e9
    finally:
        asyncio.run(make(delete=True))


def through_nats(streams: int, messages: int, workers: int) -> float:
    """GB/s of ``messages`` 8 MiB images from ``workers`` producer processes through a `beamstream buffer` process
    whose stream is spread over ``streams`` JetStream streams, read by one group member here; RuntimeError if a
    message is missing, comes twice, or comes out of its producer's order."""
    from beamstream.client import Client

    with tempfile.TemporaryDirectory(prefix="beamstream-nats-spread-") as folder:
        producers, url = f"ipc://{folder}/in", f"{NATS}/spread-{uuid.uuid4().hex[:8]}?streams={streams}"
        buffer = subprocess.Popen([*BEAMSTREAM, "buffer", "--producer-endpoint", producers, "--backend", url],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen: dict[int, list[int]] = {}
        try:
            with Client(url, group="bench", timeout=120) as client:
                rate = timed_run(client, image_spec({"type": "arrays"}, messages)(producers), workers,
                                 each=lambda message: seen.setdefault(message.header.rank, []).append(
                                     message.header.index), name=f"over {streams} JetStream streams").gb_per_s
        finally:
            buffer.terminate()
            buffer.wait(30)
            delete_nats_stream(url)
    got = sorted((rank, index) for rank, indexes in seen.items() for index in indexes)
    if len(got) != messages or len(set(got)) != messages:
        raise RuntimeError(f"over {streams} streams: {len(got)} messages, {len(set(got))} distinct, not {messages}")
    if any(indexes != sorted(indexes) for indexes in seen.values()):
        raise RuntimeError(f"over {streams} streams: a producer's messages came out of order")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="80 messages a run, one run per row")
    parser.add_argument("--repeat", type=int, default=None, help="runs per row (default 3, 1 with --quick)")
    parser.add_argument("--streams", default="1,2,4", help="comma-separated numbers of JetStream streams")
    parser.add_argument("--workers", type=int, default=1, help="producer processes (default 1)")
    args = parser.parse_args()
    if not listening(NATS):
        print(f"no NATS server listens at {NATS}: nothing to measure")
        return
    messages = 80 if args.quick else 240
    repeat = args.repeat or (1 if args.quick else 3)
    print(f"{messages} × 8 MiB per run, {repeat} run(s) per row, {args.workers} producer(s), ceiling window {WINDOW}")
    print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    for streams in (int(number) for number in args.streams.split(",")):
        rates, ceilings = [], []
        for _ in range(repeat):
            ceilings.append(ceiling(streams, messages))
            rates.append(through_nats(streams, messages, args.workers))
        ratio = statistics.median(rate / base for rate, base in zip(rates, ceilings))
        label = f"NATS over {streams} JetStream stream{'s' * (streams > 1)}"
        print(f"{label:<34} {statistics.median(rates):6.2f} GB/s  ceiling {statistics.median(ceilings):5.2f} GB/s  "
              f"{ratio:5.2f}×  ratio ≥ {TARGET} {'PASS' if ratio >= TARGET else 'FAIL'}  (runs "
              f"{', '.join(f'{r:.2f}' for r in rates)}; ceilings {', '.join(f'{c:.2f}' for c in ceilings)}; "
              "nothing lost, none twice, in order)")
    print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
