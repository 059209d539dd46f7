"""Sealed against plain streams on this machine: what encrypting and authenticating every message costs.

    python benchmarks/sealed_throughput.py              # 5 pairs of runs, 160 messages of 8 MiB each
    python benchmarks/sealed_throughput.py --quick      # 1 pair, 60 messages
    python benchmarks/sealed_throughput.py --workers 2 --messages 320 --repeat 3

Both rows take the real path over ZeroMQ tcp on loopback: producer processes spawned by
``beamstream.producer.run_local`` (simulated 2048×2048 uint16 images, 8 MiB, ``arrays``
serializer, one event per message, beamstream's ``stream`` sink) → a ``Client`` bound in this
process. The plain row is what runs today (xxh3 checksum sent and verified); the sealed row gives
both sides the same :class:`~beamstream.security.streamkey.StreamKey`: every payload frame is
encrypted with AES-256-GCM by the producer and opened by the client (docs/wire-format.md,
"Sealed messages"). Each sealed run follows a plain run of its own, and the table shows the median
rates and the median of the per-pair ratios sealed/plain (target >= 0.8), every run in brackets.
Rates count payload bytes from the first message received to the last (start-up left out).

Before the rows, one core's AES-256-GCM speed on an 8 MiB frame (encrypt and decrypt, the
``cryptography`` package's OpenSSL) is printed: the ceiling of one producer or one client.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from throughput import FRAME_BYTES, IMAGE_BANK, IMAGE_SHAPE, SINK_HWM, CLIENT_HWM, machine_facts  # noqa: E402
from timing import timed_run  # noqa: E402

TARGET = 0.8


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def image_spec(endpoint: str, messages: int) -> object:
    from beamstream.spec import parse_spec

    return parse_spec({
        "name": "sealed-benchmark",
        "source": {"type": "simulated", "n_events": messages, "bank_size": IMAGE_BANK, "events_per_read": 1,
                   "detectors": [{"kind": "image", "shape": list(IMAGE_SHAPE), "dtype": "uint16"}]},
        "serializer": {"type": "arrays"},
        "sinks": [{"type": "stream", "endpoint": endpoint, "hwm": SINK_HWM}],
    }, origin="benchmark")


def run_stream(messages: int, workers: int, key: object | None) -> float:
    """GB/s of one run: ``workers`` producer processes → tcp loopback → a Client here (sealed with ``key``)."""
    from beamstream.client import Client

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    spec = image_spec(endpoint, messages)
    with Client(endpoint, bind=True, timeout=120.0, hwm=CLIENT_HWM, key=key) as client:
        received = timed_run(client, spec, workers, key=key)
    return received.gb_per_s


def one_core_gcm(repeat: int = 20) -> tuple[float, float]:
    """(encrypt GB/s, decrypt GB/s) of AES-256-GCM on one 8 MiB frame, best of ``repeat``, in this process."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher, nonce = AESGCM(os.urandom(32)), os.urandom(12)
    frame = np.random.default_rng(0).integers(0, 4096, IMAGE_SHAPE, dtype=np.uint16).tobytes()
    sealed = cipher.encrypt(nonce, frame, b"header")
    best_encrypt = best_decrypt = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        cipher.encrypt(nonce, frame, b"header")
        middle = time.perf_counter()
        cipher.decrypt(nonce, sealed, b"header")
        best_encrypt, best_decrypt = min(best_encrypt, middle - start), min(best_decrypt, time.perf_counter() - middle)
    return FRAME_BYTES / best_encrypt / 1e9, FRAME_BYTES / best_decrypt / 1e9


def main() -> int:
    import cryptography

    from beamstream.security.streamkey import StreamKey

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=160, help="8 MiB messages per run (default 160)")
    parser.add_argument("--workers", type=int, default=1, help="producer processes (default 1)")
    parser.add_argument("--repeat", type=int, default=5, help="pairs of runs (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 pair of 60 messages")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.repeat = 60, 1
    print(machine_facts().replace("ipc:// in a temporary folder (every row)", "tcp://127.0.0.1 (loopback)"))
    print(f"crypto   : cryptography {cryptography.__version__}; one core, AES-256-GCM on an 8 MiB frame: "
          "encrypt {:.2f} GB/s, decrypt {:.2f} GB/s".format(*one_core_gcm()))
    print(f"runs     : {args.repeat} pairs (plain, then sealed) of {args.messages} messages of "
          f"{FRAME_BYTES / 2**20:.0f} MiB, {args.workers} producer worker(s) → one Client, tcp loopback", flush=True)
    key = StreamKey.generate()
    plain, sealed, ratios = [], [], []
    for _ in range(args.repeat):
        plain.append(run_stream(args.messages, args.workers, None))
        sealed.append(run_stream(args.messages, args.workers, key))
        ratios.append(sealed[-1] / plain[-1])
        print(f"  pair {len(ratios)}: plain {plain[-1]:.2f} GB/s, sealed {sealed[-1]:.2f} GB/s, "
              f"ratio {ratios[-1]:.2f}", flush=True)
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio >= TARGET else "FAIL"

    def runs(rates: list[float]) -> str:
        return ", ".join(f"{rate:.2f}" for rate in rates)

    print(f"plain  (checksum verified)  {statistics.median(plain):6.2f} GB/s  (runs {runs(plain)})")
    print(f"sealed (AES-256-GCM)        {statistics.median(sealed):6.2f} GB/s  (runs {runs(sealed)})")
    print(f"ratio sealed/plain          {ratio:6.2f}x      target >= {TARGET}  {verdict}  (runs {runs(ratios)})")
    return 0  # a target missed is a measurement, not a failure of the script (benchmarks/all.py)


if __name__ == "__main__":
    sys.exit(main())
