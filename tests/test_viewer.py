"""The live viewer (beamstream.viewer): ``beamstream view`` and ``beamstream demo --view`` as real processes, their
page in a real headless chromium (tests/browserkit.py), fed by a real buffer and real producers; and the frames it
draws, made from arrays."""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from beamstream.buffer.local import LocalBuffer
from beamstream.spec import parse_spec
from beamstream.viewer.frames import GAP, Look, encode, kinds, picture_of, to_bytes, trace
from beamstream.viewer.latest import Latest
from browserkit import Visit, browser  # noqa: F401 (browser: a fixture)
from conftest import run_cli, start_cli

COUNTS = "window.beamstreamViewer"


def decode(message: bytes) -> tuple[dict, bytes]:
    """A viewer message's header and payload."""
    (length,) = struct.unpack_from("<I", message)
    return json.loads(message[4:4 + length]), message[4 + length:]


def test_panels_are_laid_out_in_a_grid_and_a_large_picture_keeps_its_peaks():
    panels = np.ones((5, 20, 30), np.uint16)
    panels[4, 3, 7] = 900
    picture, grid, full = picture_of(panels, 1024)
    assert grid == (2, 3) and picture.shape == (2 * 20 + GAP, 3 * 30 + 2 * GAP) and full == (3 * 30 + 2 * GAP, 42)
    assert picture[20 + GAP + 3, 30 + GAP + 7] == 900  # panel 4: second row, second column
    assert (picture[20:20 + GAP] == 1).all() and (picture[:, 30:30 + GAP] == 1).all()  # the gaps: the lowest value
    big = np.zeros((3000, 2000), np.float32)
    big[1234, 567] = 5.0
    small, grid, full = picture_of(big, 1024)
    assert small.shape == (1024, 682) and small.max() == 5.0 and small[421, 193] == 5.0  # 1234 / 2.93, 567 / 2.93
    assert (grid, full) == ((1, 1), (2000, 3000))
    assert np.shares_memory(picture_of(big, 4000)[0], big)  # small enough: itself, not a copy


def test_panels_are_reduced_each_so_that_the_gaps_between_them_stay():
    panels = np.full((16, 352, 384), 7.0, np.float32)
    panels[5] = 1.0  # the lowest value: the gaps'
    picture, grid, _ = picture_of(panels, 800)
    assert grid == (4, 4) and max(picture.shape) <= 800
    height, width = (picture.shape[0] - 3 * GAP) // 4, (picture.shape[1] - 3 * GAP) // 4
    for k in range(1, 4):  # every gap, whole, though the panels shrank by more than 2
        assert (picture[k * (height + GAP) - GAP:k * (height + GAP)] == 1.0).all()
        assert (picture[:, k * (width + GAP) - GAP:k * (width + GAP)] == 1.0).all()


def test_values_map_to_bytes_between_min_and_max_in_either_scale():
    picture = np.array([[0, 10], [100, 1000]], np.uint16)
    linear, lo, hi = to_bytes(picture, Look())
    assert (lo, hi) == (0.0, 1000.0) and linear.tolist() == [[0, 2], [25, 255]]
    log, _, _ = to_bytes(picture, Look(scale="log"))
    assert log[0, 0] == 0 and log[1, 1] == 255 and log[0, 1] > 80  # log lifts the faint pixels
    assert np.array_equal(log, to_bytes(picture.astype(np.float64), Look(scale="log"))[0])  # table = direct
    clipped, _, _ = to_bytes(picture, Look(lo=10, hi=100))
    assert clipped.tolist() == [[0, 0], [255, 255]]


def test_a_long_waveform_is_reduced_without_losing_a_narrow_hit():
    values = np.zeros(100_000, np.float32)
    values[54_321] = 7.0
    values[99] = -3.0
    points = trace(values)
    assert len(points) <= 2048 and points.max() == 7.0 and points.min() == -3.0


def test_a_message_carries_the_figures_the_image_and_the_waveforms():
    event = {"image": np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), "image_peaks": np.zeros((10, 2)),
             "tof": np.linspace(0, 1, 500, dtype=np.float32), "tof_hits": np.zeros(5, np.float32)}
    assert kinds(event) == (["image"], ["tof"])
    header, payload = decode(encode(event, Look(), {"state": "live", "version": 3}))
    assert header["state"] == "live" and header["images"] == ["image"]
    image = header["image"]
    pixels = np.frombuffer(payload, np.uint8, image["width"] * image["height"], image["offset"])
    assert (image["width"], image["height"], pixels[0], pixels[-1]) == (64, 64, 0, 255)
    (wave,) = header["waveforms"]
    tof = np.frombuffer(payload, "<f4", wave["length"], wave["offset"])
    assert wave["name"] == "tof" and np.array_equal(tof, event["tof"])
    header, payload = decode(encode(None, Look(), {"state": "waiting", "version": 0}))
    assert "image" not in header and header["waveforms"] == [] and payload == b""


def test_a_page_waits_for_a_newer_event_then_gets_the_figures_alone():
    latest = Latest()
    data, status = latest.newer(-1, 0.0)
    assert data is None and status["state"] == "waiting"
    started = threading.Timer(0.2, latest.finish, ("ended", "stopped"))
    started.start()
    data, status = latest.newer(status["version"], 5.0)
    assert status["state"] == "ended" and status["detail"] == "stopped"
    data, again = latest.newer(status["version"], 0.05)
    assert data is None and again["version"] == status["version"]


def test_view_refuses_an_option_that_does_not_apply():
    result = run_cli("view", "tcp://127.0.0.1:1", "--redeliver-after", "5")
    assert result.returncode == 2 and "--redeliver-after applies only" in result.stderr  # in the command line's words
    result = run_cli("view", "tcp://127.0.0.1:1", "--start", "soon")
    assert result.returncode == 2 and "--start must be 'earliest' or 'now'" in result.stderr


@pytest.fixture
def buffer(tmp_path):
    """A buffer with 64 MiB of memory, in this process: producers push to ``.producers``, the viewer reads
    ``.consumers``."""
    where = SimpleNamespace(producers=f"ipc://{tmp_path / 'in'}", consumers=f"ipc://{tmp_path / 'out'}")
    buffer = LocalBuffer(where.producers, where.consumers, max_bytes=64 << 20).start()
    yield where
    buffer.close()


def said(process: subprocess.Popen, pattern: str) -> re.Match:
    """The first line ``process`` writes on standard error that matches ``pattern``, read up to it."""
    lines = []
    while line := process.stderr.readline():
        if found := re.search(pattern, line):
            return found
        lines.append(line)
    raise AssertionError(f"no line matching {pattern!r} (exit code {process.wait()}): {''.join(lines)}")


def served(process: subprocess.Popen) -> str:
    """The URL a ``beamstream view`` or ``demo --view`` process says its page is at."""
    return said(process, r"viewer: (http://\S+/)").group(1)


@pytest.fixture
def view(buffer):
    """``beamstream view`` reading ``buffer`` (its default group, lossy) on a free port: its URL. Ctrl-C stops it
    with exit code 130."""
    process = start_cli("view", buffer.consumers, "--port", "0")
    try:
        yield served(process)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130, process.stderr.read()


def produce(spec: dict) -> tuple[threading.Thread, dict]:
    """``spec`` run by one producer on a thread; the thread, and where its RunResult lands (``"run"``)."""
    from beamstream.producer import run_local

    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("run", run_local(parse_spec(spec), workers=1)))
    thread.start()
    return thread, outcome


def simulated(endpoint: str, events: int, image: list[int], rate_hz: float | None = None) -> dict:
    return {"source": {"type": "simulated", "n_events": events, "rate_hz": rate_hz, "bank_size": 4,
                       "detectors": [{"kind": "image", "shape": image, "peaks": 20},
                                     {"kind": "waveform", "samples": 3000}]},
            "sinks": [{"type": "stream", "endpoint": endpoint}]}


def test_the_page_follows_a_multipanel_stream_live_then_shows_its_verdict(buffer, view, browser):
    with Visit(browser) as visit:
        page = visit.page
        page.goto(view)
        thread, outcome = produce(simulated(buffer.producers, 150, [4, 128, 128], rate_hz=30))
        try:
            page.wait_for_function(f"() => {COUNTS}.images >= 2 && {COUNTS}.state === 'live'", timeout=30_000)
            first = page.evaluate(COUNTS)
            page.wait_for_function(f"() => {COUNTS}.seq > {first['seq']} && {COUNTS}.imageSum !== {first['imageSum']}",
                                   timeout=10_000)
            page.wait_for_function("() => document.getElementById('rate').textContent !== '–'", timeout=10_000)
            assert page.locator("#image-info").text_content() == "image: 258×258 (2×2 panels), linear"
            assert page.locator("figure[data-name='waveform'] figcaption").text_content().startswith(
                "waveform: 3,000 samples")
            assert page.evaluate(COUNTS)["waveforms"] >= 2
            page.select_option("#scale", "log")
            page.wait_for_function("() => document.getElementById('image-info').textContent.endsWith(', log')")
        finally:
            thread.join(timeout=60)
        assert outcome["run"].ok, outcome["run"].errors
        page.wait_for_function(f"() => {COUNTS}.state === 'complete'", timeout=30_000)
        assert page.locator("#state").text_content() == "complete"
        assert visit.errors == [] and visit.left == []


def test_a_lossy_viewer_does_not_hold_the_stream_back(buffer, view, browser):
    """300 images of 2 MiB (600 MiB) through a buffer of 64 MiB whose only reader is the viewer: it skips what it
    cannot draw, and the stream completes at the producer's pace."""
    with Visit(browser) as visit:
        page = visit.page
        page.goto(view)
        page.wait_for_function(f"() => {COUNTS}.version >= 0")
        thread, outcome = produce(simulated(buffer.producers, 300, [1024, 1024]))
        thread.join(timeout=120)
        assert outcome["run"].ok, outcome["run"].errors
        page.wait_for_function(f"() => {COUNTS}.state === 'complete'", timeout=30_000)
        counts = page.evaluate(COUNTS)
        skipped = int(page.locator("#skipped").text_content().replace(",", ""))
        shown = page.evaluate("document.getElementById('image').clientWidth")  # the page gets no more pixels
        assert counts["images"] >= 1 and counts["imageSize"] == [shown, shown] and shown < 1024
        assert page.locator("#image-info").text_content().startswith(f"image: 1024×1024, shown as {shown}×{shown}")
        assert skipped > 0 and counts["images"] < 300
        assert visit.errors == []


def test_demo_view_shows_the_demo_stream_until_ctrl_c(browser):
    process = start_cli("demo", "--view", "--events", "100", "--shape", "256", "256")
    try:
        url = served(process)
        with Visit(browser) as visit:
            visit.page.goto(url)
            visit.page.wait_for_function(f"() => {COUNTS}.state === 'complete' && {COUNTS}.images >= 1", timeout=60_000)
            assert visit.page.evaluate(COUNTS)["imageSize"] == [256, 256]
            assert visit.errors == [] and visit.left == []
        summary = said(process, r"events of 256×256 uint16 .* events/s")
        said(process, "keeps showing the stream's last event at .*: Ctrl-C to stop")
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    assert code == 0 and summary, process.stderr.read()  # the stream completed; Ctrl-C only ended the viewer
