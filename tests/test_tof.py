"""The cfd step against ground truth, psana's own CFD and scipy; the tof app across a consumer group."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from beamstream.apps.tof import SnapshotWriter, TofSnapshot
from beamstream.batch import Batch
from beamstream.errors import StepError
from beamstream.sources.simulated import WaveformDetector
from beamstream.steps.select import SelectStep
from beamstream.steps.tof import CfdStep, hit_fields

DELAY, FRACTION, WIDTH, THRESHOLD = 3, 0.5, 2.0, 10.0
WALK = DELAY / 2 + WIDTH**2 * np.log(FRACTION) / DELAY
"""Where the CFD of a Gaussian pulse of width WIDTH crosses, relative to the pulse's centre."""


def simulated(events: int, samples: int = 8192, hits: int = 5, seed: int = 0,
              amplitude: float = 100.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """``events`` waveforms of the simulated source and their true hit times."""
    detector = WaveformDetector(samples=samples, hits=hits, hit_width=WIDTH, hit_amplitude=amplitude)
    draws = [detector.draw(np.random.default_rng([seed, index])) for index in range(events)]
    return np.stack([draw["waveform"] for draw in draws]), [draw["waveform_hits"] for draw in draws]


def cfd(waveforms: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray]:
    """Times and counts the cfd step gives for ``waveforms``."""
    spec = CfdStep(field="w", threshold=THRESHOLD, delay=DELAY, fraction=FRACTION, **options)
    batch = spec.build().apply(Batch(np.arange(len(waveforms)), np.zeros(len(waveforms)), {"w": waveforms}))
    times, count = hit_fields("w")
    return batch.data[times], batch.data[count]


def found(times: np.ndarray, count: np.ndarray, event: int) -> np.ndarray:
    return times[event, : count[event]].astype(np.float64)


def test_cfd_finds_the_simulated_hits_at_sub_sample_precision():
    waveforms, truth = simulated(400)
    times, count = cfd(waveforms)
    matched, errors, total_found, total_true = 0, [], 0, 0
    for event, true in enumerate(truth):
        hits = found(times, count, event) - WALK
        distance = np.abs(hits[:, None] - true[None, :])
        nearest = distance.argmin(axis=1)
        good = distance[np.arange(len(hits)), nearest] < 1.0
        matched += len(set(nearest[good]))
        errors += list(hits[good] - true[nearest[good]])
        total_found, total_true = total_found + len(hits), total_true + len(true)
    recall, precision, errors = matched / total_true, matched / total_found, np.abs(errors)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    assert np.median(errors) < 0.05 and np.quantile(errors, 0.95) < 0.1, "hit times within a tenth of a sample"
    assert np.all(np.diff(times, axis=1)[~np.isnan(np.diff(times, axis=1))] > 0), "times increase within an event"


@pytest.mark.parametrize("amplitude", [25.0, 1000.0])
def test_times_do_not_walk_with_the_pulse_height(amplitude):
    """The point of a constant fraction: small and large pulses at one place get one time (no walk in the median;
    the small pulses' times jitter more, by noise over slope)."""
    waveforms, truth = simulated(100, samples=2048, hits=2, amplitude=amplitude)
    times, count = cfd(waveforms)
    isolated = [event for event, true in enumerate(truth) if np.diff(true).min() > 20 and count[event] == 2]
    errors = np.concatenate([found(times, count, event) - WALK - truth[event] for event in isolated])
    assert len(isolated) >= 80 and np.abs(np.median(errors)) < 0.03 and np.quantile(np.abs(errors), 0.95) < 0.3


def test_negative_pulses_on_an_integer_baseline_give_the_same_hits():
    waveforms, _ = simulated(50)
    times, count = cfd(waveforms)
    inverted = np.rint(1000.0 - waveforms).astype(np.uint16)
    times_neg, count_neg = cfd(inverted, polarity="negative")
    assert np.array_equal(count, count_neg)
    np.testing.assert_allclose(times_neg, times, atol=0.05, equal_nan=True)  # the rounding to integers moves them


@pytest.mark.parametrize("dtype", ["int16", "uint8", "int32"])
@pytest.mark.parametrize("threshold", [10.0, 10.5])
def test_integer_waveforms_give_the_hits_of_the_same_values_as_floats(dtype, threshold):
    """Integer samples are compared in their own type, with the integer next to the level: the same samples pass.
    Pulses about as high as the threshold put many crossings next to the level. Negative pulses as well."""
    waveforms, _ = simulated(100, samples=2048, amplitude=13.0)
    integers = np.rint(waveforms + 40.0).astype(dtype)
    inverted = (np.iinfo(dtype).max - integers).astype(dtype)
    for polarity, values in (("positive", integers), ("negative", inverted)):
        step = CfdStep(field="waveform", threshold=threshold, polarity=polarity)
        times, count = cfd_counts(values, step)
        float_times, float_count = cfd_counts(values.astype(np.float64), step)
        assert np.array_equal(count, float_count) and count.sum() > 100
        np.testing.assert_array_equal(times, float_times)
    saturated = np.full((2, 256), np.iinfo(dtype).max - 5, dtype)  # the level lies beyond the type's range
    saturated[:, 100:104] = np.iinfo(dtype).max
    assert cfd_counts(saturated, CfdStep(field="waveform", threshold=threshold))[1].tolist() == [0, 0]


def test_count_is_hits_found_and_times_keep_the_first_max_hits():
    waveforms, truth = simulated(20, hits=12)
    times, count = cfd(waveforms, max_hits=4)
    all_times, all_count = cfd(waveforms, max_hits=64)
    assert np.array_equal(count, all_count) and count.max() > 4
    np.testing.assert_array_equal(times, all_times[:, :4])
    assert times.dtype == np.float32 and count.dtype == np.int32


def psana_crossings(cfd_function, signal: np.ndarray) -> list[int]:
    """Every crossing sample psana's CFD takes in ``signal``, found with psana alone: it returns a value (not a time,
    in psana 4.3) only when a crossing lies in what it is given, so bisect on where the waveform is cut, then
    start again after that crossing."""
    crossings, start = [], 0

    def crosses(stop: int) -> bool:
        return cfd_function(1.0, 0.0, 1.0, 0.0, signal[start:stop], DELAY, 0.0, THRESHOLD, FRACTION) != 0.0

    while crosses(len(signal)):
        low, high = DELAY + 4, len(signal) - start  # psana looks at i < len - 2: the first crossing is at stop - 3
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if crosses(start + middle) else (middle + 1, high)
        crossing = start + low - 3
        crossings.append(crossing)
        start = crossing - DELAY  # psana's first sample looked at is start + DELAY + 1: the one after the crossing
    return crossings


def test_crossings_are_psanas_own():
    """psana's CFD takes the same crossing samples; each time lies between that sample and the next."""
    psana_cfd = pytest.importorskip("psana.constFracDiscrim").cfd
    waveforms, _ = simulated(30, samples=4096)
    times, count = cfd(waveforms)
    checked = 0
    for event, waveform in enumerate(waveforms):
        signal = waveform.astype(np.float64) - np.median(waveform[:64])
        crossings = psana_crossings(psana_cfd, signal)
        hits = found(times, count, event)
        assert np.floor(hits).astype(int).tolist() == crossings
        checked += len(crossings)
    assert checked >= 100


def test_hits_agree_with_scipy_peaks():
    from scipy.signal import find_peaks

    waveforms, _ = simulated(100)
    times, count = cfd(waveforms)
    for event, waveform in enumerate(waveforms):
        peaks, _ = find_peaks(waveform - np.median(waveform[:64]), height=THRESHOLD, distance=2 * DELAY)
        peaks = peaks[(peaks > 2 * DELAY) & (peaks < len(waveform) - 3)]  # the CFD needs samples before and after
        hits = found(times, count, event)
        assert len(hits) == len(peaks), event
        assert np.all(np.abs(hits - WALK - peaks) < 1.0), "each hit within a sample of scipy's peak (highest sample)"


def test_cfd_refuses_events_it_cannot_read():
    step = CfdStep(field="w", threshold=1.0).build()
    with pytest.raises(StepError, match=r"event shape \(2, 100\); cfd takes one waveform per event"):
        step.apply(Batch(np.arange(3), np.zeros(3), {"w": np.zeros((3, 2, 100), np.float32)}))
    with pytest.raises(StepError, match="waveforms of 32 samples are too short for baseline \\[0, 64\\]"):
        step.apply(Batch(np.arange(3), np.zeros(3), {"w": np.zeros((3, 32), np.float32)}))
    with pytest.raises(ValueError, match="0 <= start < stop"):
        CfdStep(field="w", threshold=1.0, baseline=(10, 5))


def test_group_members_histograms_sum_to_the_streams_hits(tmp_path):
    """Three ``beamstream tof`` processes share a buffer's group; the merged snapshot holds every hit once."""
    from beamstream.buffer.local import LocalBuffer
    from beamstream.producer import new_stream_id, run_worker
    from beamstream.spec import parse_spec
    from conftest import start_cli, wait_until

    events, samples = 600, 2048
    source = {"type": "simulated", "n_events": events, "events_per_read": 10, "bank_size": 64, "rate_hz": 400,
              "detectors": [{"kind": "waveform", "samples": samples, "hits": 8}]}
    spec = parse_spec({"source": source, "sinks": [{"type": "stream", "endpoint": f"ipc://{tmp_path / 'in'}"}]})
    step = CfdStep(field="waveform", threshold=THRESHOLD, max_hits=6)
    hits_only = SelectStep(fields=list(hit_fields("waveform")))  # the waveforms stay in the producers
    spec = spec.model_copy(update={"steps": [step, hits_only]})  # built in code: no entry point needed
    bank = spec.source.open().bank()["waveform"]
    _, expected = cfd_counts(bank, step)
    expected = expected[np.arange(events) % 64]
    out = tmp_path / "tof.h5"
    buffer = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=64 << 20).start()
    try:
        members = [start_cli("tof", f"ipc://{tmp_path / 'out'}", "--group", "tof", "--out", str(out), "--every", "0")
                   for _ in range(3)]
        wait_until(lambda: members_joined(buffer) == 3, "three members to join", timeout=60)
        stream = new_stream_id()
        workers = [threading.Thread(target=run_worker, args=(spec, rank, 2, stream)) for rank in range(2)]
        for worker in workers:
            worker.start()
        wait_until(out.exists, "the first merged snapshot", timeout=60)
        during = []
        while workers[0].join(timeout=0.05) or workers[0].is_alive():  # read the snapshot while the stream runs
            snapshot = TofSnapshot.read(out)
            during.append(snapshot.totals)
            assert snapshot.counts.sum() + snapshot.hits_outside == during[-1]["hits_kept"]
        for worker in workers:
            worker.join(timeout=120)
        outputs = [member.communicate(timeout=120) for member in members]
    finally:
        buffer.close()
    assert [member.returncode for member in members] == [0, 0, 0], outputs
    merged = TofSnapshot.read(out)
    totals = merged.totals
    assert merged.members >= 2 and merged.stream == stream
    assert np.array_equal(merged.seq[0], np.arange(events)), "every event once, in seq order"
    assert np.array_equal(merged.count[0], expected)
    assert totals["hits_found"] == expected.sum() and totals["hits_kept"] == np.minimum(expected, 6).sum()
    assert merged.counts.sum() == totals["hits_kept"] and totals["hits_outside"] == 0
    assert merged.edges[-1] == samples, "the range is the waveforms' length, though they were not sent"
    assert expected.max() > 6, "some events had more hits than were kept"
    assert any(0 < seen["events"] < events for seen in during), "snapshots were readable while the stream ran"


def hit_lists(first: int, events: int, hits: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seq, counts and NaN-padded times of ``events`` events from ``first``, each with ``hits`` hits."""
    times = np.random.default_rng(first).uniform(0, 100, (events, hits)).astype(np.float32)
    return np.arange(first, first + events), np.full(events, hits, np.int32), times


def test_snapshots_are_written_in_the_background_as_they_were_when_due(tmp_path):
    out = tmp_path / "tof.h5"
    writer = SnapshotWriter(out, member="m", every=0.0)
    snapshot = TofSnapshot(np.linspace(0, 100, 101), stream="s")
    snapshot.add(*hit_lists(0, 10))
    assert writer.write_when_due(snapshot)
    snapshot.add(*hit_lists(10, 10))  # while that snapshot is written
    writer.writing.result()
    assert TofSnapshot.read(out).totals == {"events": 10, "hits_found": 160, "hits_kept": 160, "hits_outside": 0}
    writer.close(snapshot)
    final = TofSnapshot.read(out)
    assert np.array_equal(final.seq[0], np.arange(20)) and final.counts.sum() == 320


def test_a_member_writes_snapshots_at_most_a_tenth_of_the_time(tmp_path, monkeypatch):
    """However short ``every``: the writes grow with the run, and must not take over the machine."""
    starts, durations = [], []
    write = SnapshotWriter.write

    def timed(self, snapshot):
        starts.append(time.monotonic())
        write(self, snapshot)
        durations.append(time.monotonic() - starts[-1])

    monkeypatch.setattr(SnapshotWriter, "write", timed)
    snapshot = TofSnapshot(np.linspace(0, 100, 101), stream="s")
    snapshot.add(*hit_lists(0, 50_000))
    writer = SnapshotWriter(tmp_path / "tof.h5", member="m", every=0.0)
    started = time.monotonic()
    while len(starts) < 5:
        assert time.monotonic() - started < 60, f"five snapshots within a minute: {durations}"
        writer.write_when_due(snapshot)
        time.sleep(0.005)  # the member reading its messages
    writer.close(None)
    assert sum(durations[:4]) / (starts[4] - starts[0]) < 0.15, (starts, durations)


def test_tof_says_which_step_the_stream_lacks(tmp_path):
    from beamstream.buffer.local import LocalBuffer
    from beamstream.producer import run_local
    from conftest import start_cli, wait_until, waveform_spec

    buffer = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=64 << 20).start()
    try:
        member = start_cli("tof", f"ipc://{tmp_path / 'out'}", "--group", "tof", "--out", str(tmp_path / "tof.h5"))
        wait_until(lambda: members_joined(buffer) == 1, "the member to join", timeout=60)
        assert run_local(waveform_spec(f"ipc://{tmp_path / 'in'}", n_events=10), workers=1).ok
        _, err = member.communicate(timeout=120)
    finally:
        buffer.close()
    assert member.returncode == 1
    assert "the stream has no fields 'waveform_cfd' and 'waveform_cfd_count': add a step {type: cfd, field: " \
           "waveform, threshold: ...}" in " ".join(err.split())


def cfd_counts(waveforms: np.ndarray, step: CfdStep) -> tuple[np.ndarray, np.ndarray]:
    batch = step.build().apply(Batch(np.arange(len(waveforms)), np.zeros(len(waveforms)), {"waveform": waveforms}))
    times, count = hit_fields("waveform")
    return batch.data[times], batch.data[count]


def members_joined(buffer) -> int:
    """How many members of group ``tof`` the buffer knows now."""
    group = buffer.message_log.groups.get("tof")
    return 0 if group is None else len(group.members)
