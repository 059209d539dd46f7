"""The live viewer's frame rate on this machine: frames a browser draws per second against the stream's events/s.

    python benchmarks/viewer_rate.py                 # 3 rows, 100 events/s for 12 s each
    python benchmarks/viewer_rate.py --quick         # 1 row (1 Mpix, linear), 6 s
    python benchmarks/viewer_rate.py --rate 0        # producers as fast as they go

Each row is the real path, every part in its own process: one producer process (``run_local``, simulated
images and a 4096-sample waveform, ``arrays``, one event per message) → ``beamstream buffer`` (ipc://) →
``beamstream view`` (its default: group ``viewer``, lossy) → Debian's headless chromium (through playwright, as
tests/browserkit.py launches it) drawing the page in a 1700 × 1300 window, where the image is shown 1040
pixels wide: a 1024 × 1024 image is sent whole, a larger picture reduced to 1040 pixels across (what the page
asks for). The page counts the frames it drew
(``window.beamstreamViewer.drawn``); this script reads the count every 0.25 s while the stream is live, and
reports drawn/s over the live time less its first second, beside the stream's events/s (the producer's events
over its seconds), the messages the viewer's group skipped, and the milliseconds the page spends decoding and
drawing a frame (smoothed); then the CPU time the viewer's process and the browser's processes spent per frame
drawn over the stream (what bounds the rate on a busy machine). The target: >= 10 frames/s for 1 Mpix images.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from throughput import machine_facts  # noqa: E402

BEAMSTREAM = [sys.executable, "-m", "beamstream.cli"]
TARGET = 10.0
ROWS = {  # name: (image shape, dtype, scale the page asks for)
    "1 Mpix uint16, linear": ([1024, 1024], "uint16", "linear"),
    "1 Mpix uint16, log": ([1024, 1024], "uint16", "log"),
    "16 panels 352×384 float32 (2.2 Mpix), linear": ([16, 352, 384], "float32", "linear"),
}
VIEWPORT = {"width": 1700, "height": 1300}  # the page's image is then 1040 pixels wide: 1024 × 1024 sent whole
SAMPLE_S = 0.25
WARM_S = 1.0


def spec(endpoint: str, shape: list[int], dtype: str, events: int, rate_hz: float | None) -> object:
    from beamstream.spec import parse_spec

    return parse_spec({
        "name": "viewer-benchmark",
        "source": {"type": "simulated", "n_events": events, "rate_hz": rate_hz, "bank_size": 8, "events_per_read": 1,
                   "detectors": [{"kind": "image", "shape": shape, "dtype": dtype, "peaks": 30},
                                 {"kind": "waveform", "samples": 4096}]},
        "serializer": {"type": "arrays"},
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    }, origin="benchmark")


def started(args: list[str], pattern: str) -> tuple[subprocess.Popen, re.Match]:
    """``beamstream ARGS`` in the background, once it wrote a line matching ``pattern`` on standard error."""
    process = subprocess.Popen([*BEAMSTREAM, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    while line := process.stderr.readline():
        if found := re.search(pattern, line):
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep its pipe drained
            return process, found
    raise RuntimeError(f"beamstream {' '.join(args)} exited with {process.wait()} before saying {pattern!r}")


def run_row(browser, shape: list[int], dtype: str, scale: str, rate_hz: float | None, seconds: float) -> dict:
    from beamstream.producer import run_local

    events = int(rate_hz * seconds) if rate_hz else int(40 * seconds)
    with tempfile.TemporaryDirectory(prefix="beamstream-viewer-bench-") as folder:
        producers, consumers = f"ipc://{folder}/in", f"ipc://{folder}/out"
        buffer, _ = started(["buffer", "--producers", producers, "--consumers", consumers, "--max-memory", "512MiB"],
                            "buffer: producers")
        viewer, found = started(["view", consumers, "--port", "0"], r"viewer: (http://\S+/)")
        page = browser.new_page(viewport=VIEWPORT)
        try:
            page.goto(found.group(1))
            page.select_option("#scale", scale)
            outcome: dict = {}
            thread = threading.Thread(target=lambda: outcome.setdefault(
                "run", run_local(spec(producers, shape, dtype, events, rate_hz), workers=1)))
            cpu_before, drawn_before = cpu_seconds(viewer.pid), page.evaluate("window.beamstreamViewer.drawn")
            thread.start()
            samples = []
            while thread.is_alive():
                counts = page.evaluate("window.beamstreamViewer")
                samples.append((time.monotonic(), counts["drawn"], counts["state"]))
                time.sleep(SAMPLE_S)
            thread.join()
            cpu_after, drawn_after = cpu_seconds(viewer.pid), page.evaluate("window.beamstreamViewer.drawn")
            skipped = int(page.locator("#skipped").text_content().replace(",", ""))
            draw_ms = page.evaluate("window.beamstreamViewer.drawMs")
            shown = page.evaluate("window.beamstreamViewer.imageSize")
        finally:
            page.close()
            for process in (viewer, buffer):
                process.terminate()
                process.wait(timeout=30)
    live = [(at, drawn) for at, drawn, state in samples if state == "live"]
    live = [(at, drawn) for at, drawn in live if at - live[0][0] >= WARM_S] if live else []
    drawn_rate = (live[-1][1] - live[0][1]) / (live[-1][0] - live[0][0]) if len(live) > 1 else 0.0
    result = outcome["run"]
    frames = max(drawn_after - drawn_before, 1)
    return {"drawn": drawn_rate, "events": result.events / result.seconds, "skipped": skipped, "ok": result.ok,
            "draw_ms": draw_ms, "shown": shown, "viewer_ms": 1000 * (cpu_after[0] - cpu_before[0]) / frames,
            "browser_ms": 1000 * (cpu_after[1] - cpu_before[1]) / frames}


def cpu_seconds(viewer: int) -> tuple[float, float]:
    """CPU seconds (user and system) used so far by the ``viewer`` process, and by the browser's processes (this
    process's descendants named chrome or chromium)."""
    import psutil

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    browser = [child for child in psutil.Process().children(recursive=True) if "chrom" in child.name()]
    return used(psutil.Process(viewer)), sum(used(process) for process in browser)


def main() -> int:
    from browserkit import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="events/s the producer sends (0: as fast as it "
                                                                  "goes; default 100)")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds each row streams (default 12)")
    parser.add_argument("--quick", action="store_true", help="the first row only, 6 s")
    args = parser.parse_args()
    rows = dict(list(ROWS.items())[:1]) if args.quick else ROWS
    seconds = 6.0 if args.quick else args.seconds
    print(machine_facts())
    print(f"runs     : {len(rows)} row(s) of {seconds:.0f} s at {args.rate or 'full'} events/s; one producer → "
          "beamstream buffer → beamstream view (lossy group) → headless chromium", flush=True)
    failed = False
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            for name, (shape, dtype, scale) in rows.items():
                row = run_row(browser, shape, dtype, scale, args.rate or None, seconds)
                verdict = "PASS" if row["drawn"] >= TARGET and row["ok"] else "FAIL"
                failed |= verdict == "FAIL"
                print(f"{name:46s} drawn {row['drawn']:5.1f}/s  stream {row['events']:6.1f} events/s  "
                      f"skipped {row['skipped']:4d} messages  page {row['draw_ms']:4.1f} ms/frame  "
                      f"target >= {TARGET:.0f}/s  {verdict}", flush=True)
                print(f"{'':46s} sent {row['shown'][0]}×{row['shown'][1]}; CPU per frame drawn: viewer "
                      f"{row['viewer_ms']:5.1f} ms, browser {row['browser_ms']:5.1f} ms", flush=True)
        finally:
            browser.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
