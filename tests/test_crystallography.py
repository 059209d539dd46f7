"""The peakfinder8 step (peaks against the simulated ground truth, the hit veto's accounting) and ``beamstream
crystallography`` members writing hits as CXI files for CrystFEL; its engines against psana's and OnDA's finders are
in tests/test_peakfinder8.py."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beamstream.buffer.local import LocalBuffer
from beamstream.producer import run_local
from beamstream.sources.simulated import SimulatedSource
from beamstream.spec import parse_spec
from conftest import start_cli, stream_into_client, wait_until

pytest.importorskip("numba", reason="the peakfinder8 step needs numba (pip install 'beamstream[crystallography]')")

from beamstream.steps.peakfinder import Peakfinder8Step  # noqa: E402  (after the skip: it needs numba)

MATCH_PX = 1.5  # a found peak within this many pixels of a true centre finds it
SMALL = {"kind": "image", "shape": [256, 256], "peaks": 10, "hit_fraction": 0.5}


def recall_precision(found: list[np.ndarray], truth: list[np.ndarray]) -> tuple[float, float]:
    """Recall (true centres found) and precision (found peaks near a true centre) over frames: ``found`` and
    ``truth`` hold (row, col) rows per frame; each true centre is matched once at most."""
    hits = false = missed = 0
    for peaks, centres in zip(found, truth, strict=True):
        centres = centres[~np.isnan(centres).any(axis=1)]
        unmatched = list(range(len(centres)))
        for peak in peaks:
            near = [i for i in unmatched if np.hypot(*(centres[i] - peak)) < MATCH_PX]
            if near:
                unmatched.remove(near[0])
                hits += 1
            else:
                false += 1
        missed += len(unmatched)
    return hits / max(1, hits + missed), hits / max(1, hits + false)


def found_peaks(tables: dict[str, np.ndarray], prefix: str = "image") -> list[np.ndarray]:
    """(row, col) of each event's peaks from the step's fields."""
    return [np.column_stack([tables[f"{prefix}_peak_y"][i, :n], tables[f"{prefix}_peak_x"][i, :n]])
            for i, n in enumerate(tables[f"{prefix}_npeaks"])]


def test_peakfinder8_finds_the_simulated_peaks_at_default_settings():
    bank = SimulatedSource(bank_size=16).open().bank()  # 1024x1024 uint16, 10 peaks a frame
    tables = Peakfinder8Step().finder().find(bank["image"])
    recall, precision = recall_precision(found_peaks(tables), list(bank["image_peaks"]))
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    assert tables["image_peak_intensity"][tables["image_peak_x"] > 0].min() > 0
    assert tables["image_peak_x"].shape == (16, 2048) and tables["image_npeaks"].dtype == np.int32


def test_panels_are_searched_stacked_and_masked_pixels_never_peak(tmp_path):
    detector = {"kind": "image", "shape": [4, 128, 128], "peaks": 12, "peak_amplitude": 800.0}
    bank = SimulatedSource(bank_size=8, detectors=[detector]).open().bank()
    rows, cols = np.ogrid[:512, :128]
    beamstop = np.hypot(rows - 255.5, cols - 63.5) < 32  # too few pixels per radius there for the statistics
    mask = (~beamstop).astype(np.int8).reshape(4, 128, 128)
    mask[3] = 0
    np.save(tmp_path / "mask.npy", mask)
    step = Peakfinder8Step(asics=(2, 1), mask={"file": str(tmp_path / "mask.npy")})
    tables = step.finder().find(bank["image"])
    truth = [np.column_stack([t[:, 0] * 128 + t[:, 1], t[:, 2]]) for t in bank["image_peaks"]]  # stacked row, col
    found = found_peaks(tables)
    assert all((peaks[:, 0] < 3 * 128).all() for peaks in found), "a peak on the masked panel"
    # a true centre on an ASIC edge (rows 63/64 of a panel) may be split or missed: leave those out
    seen = [(c[:, 0] < 3 * 128) & (np.hypot(c[:, 0] - 255.5, c[:, 1] - 63.5) > 36) & (abs(c[:, 0] % 128 - 63.5) > 4)
            for c in truth]
    recall, _ = recall_precision(found, [c[keep] for c, keep in zip(truth, seen, strict=True)])
    assert recall >= 0.95, recall
    assert sum(map(len, found)) >= sum(keep.sum() for keep in seen) > 40


def test_options_that_do_not_fit_are_refused_saying_what_to_change():
    with pytest.raises(ValueError, match="min_pixels 9 is above max_pixels 3"):
        Peakfinder8Step(min_pixels=9, max_pixels=3)
    with pytest.raises(Exception, match=r"asics \[3, 1\] do not divide the panels of 256 rows"):
        Peakfinder8Step(asics=(3, 1)).finder().find(np.zeros((1, 256, 256), np.float32))


def test_without_the_engines_package_the_step_says_what_to_install(monkeypatch):
    from beamstream.errors import MissingDependency

    monkeypatch.setitem(sys.modules, "psana.peakfinder8", None)  # as if psana were not installed
    with pytest.raises(MissingDependency, match=r"the peakfinder8 step needs psana: pip install 'beamstream\[psana\]'"):
        Peakfinder8Step(engine="psana").build()
    monkeypatch.setitem(sys.modules, "numba", None)  # as if numba were not installed
    monkeypatch.delitem(sys.modules, "beamstream.steps.peakfinder8_kernel", raising=False)
    with pytest.raises(MissingDependency,
                       match=r"the peakfinder8 step needs numba: pip install 'beamstream\[crystallography\]'"):
        Peakfinder8Step().build()


def test_hit_veto_sends_only_hits_and_the_stream_completes_with_the_rest_omitted(ipc_endpoint):
    spec = parse_spec({
        "source": {"type": "simulated", "n_events": 96, "events_per_read": 8, "bank_size": 16, "detectors": [SMALL]},
        "steps": [{"type": "peakfinder8", "min_peaks": 5}, {"type": "batch", "size": 4}],
        "sinks": [{"type": "stream", "endpoint": ipc_endpoint}],
    })
    truth = SimulatedSource(n_events=96, bank_size=16, detectors=[SMALL]).open().bank()["image_peaks"]
    is_hit = ~np.isnan(truth[:, 0, 0])
    assert 0 < is_hit.sum() < 16, "the bank mixes hits and blanks"
    expected = [seq for seq in range(96) if is_hit[seq % 16]]
    messages, client = stream_into_client(spec, ipc_endpoint, workers=2)
    received = sorted(int(seq) for message in messages for seq in message.seq)
    assert received == expected
    assert all((message.arrays["image_npeaks"] >= 5).all() for message in messages)
    assert client.report.complete and client.report.omitted == 96 - len(expected)
    assert f"{96 - len(expected)} events left out on purpose" in client.report.summary()


@pytest.fixture
def buffer(tmp_path):
    service = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=256 << 20).start()
    yield service
    service.close()


def members(tmp_path: Path, count: int, *options: str) -> list[subprocess.Popen]:
    return [start_cli("crystallography", f"ipc://{tmp_path / 'out'}", "--group", "cryst", "--out",
                      str(tmp_path / "hits"), "--member", f"m{n}", "--min-peaks", "5", "--hits-per-file", "7",
                      "--timeout", "60", *options) for n in range(count)]


def read_hit_files(directory: Path) -> tuple[list[str], dict[int, dict]]:
    """The lines of files.lst and, per hit seq, its peaks (rows of y, x) and intensities from the listed files."""
    import h5py

    listed = (directory / "files.lst").read_text().splitlines()
    hits: dict[int, dict] = {}
    for line in listed:
        with h5py.File(line, "r") as h5:
            result = h5["entry_1/result_1"]
            assert h5["entry_1/data_1/data"].shape[1:] == (256, 256)
            assert h5["entry_1/instrument_1/detector_1/data"].shape == h5["entry_1/data_1/data"].shape
            for i, seq in enumerate(h5["entry_1/_beamstream/seq"][()]):
                n = result["nPeaks"][i]
                assert seq not in hits, f"hit {seq} written twice"
                hits[int(seq)] = {"peaks": np.column_stack([result["peakYPosRaw"][i, :n], result["peakXPosRaw"][i, :n]]),
                                  "intensity": result["peakTotalIntensity"][i, :n]}
    return listed, hits


@pytest.mark.parametrize("peaks_in_stream", [True, False], ids=["peaks-from-stream", "peaks-found-by-members"])
def test_three_members_write_every_hit_once_as_cxi_crystfel_reads(buffer, tmp_path, peaks_in_stream):
    steps = [{"type": "peakfinder8", "min_peaks": 5}] if peaks_in_stream else []
    spec = parse_spec({
        "source": {"type": "simulated", "n_events": 80, "events_per_read": 4, "bank_size": 16, "detectors": [SMALL]},
        "steps": [*steps, {"type": "batch", "size": 2}],
        "sinks": [{"type": "stream", "endpoint": f"ipc://{tmp_path / 'in'}"}],
    })
    bank = SimulatedSource(n_events=80, bank_size=16, detectors=[SMALL]).open().bank()
    expected = [seq for seq in range(80) if not np.isnan(bank["image_peaks"][seq % 16, 0, 0])]
    group = members(tmp_path, 3)
    result = run_local(spec, workers=2)
    assert result.ok, result.errors
    outputs = [process.communicate(timeout=120) for process in group]
    assert [process.returncode for process in group] == [0, 0, 0], outputs
    listed, hits = read_hit_files(tmp_path / "hits")
    assert sorted(hits) == expected
    assert len(set(listed)) == len(listed) and not list((tmp_path / "hits").glob("*.part"))
    assert sorted(Path(line).name for line in listed) == sorted(p.name for p in (tmp_path / "hits").glob("*.cxi"))
    recall, precision = recall_precision([hits[seq]["peaks"] for seq in expected],
                                         [bank["image_peaks"][seq % 16] for seq in expected])
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    geometry = (tmp_path / "hits" / "detector.geom").read_text()
    for line in ("data = /entry_1/data_1/data", "peak_list = /entry_1/result_1", "peak_list_type = cxi",
                 "p0/max_fs = 255", "p0/max_ss = 255", "p0/corner_x = -127.5"):
        assert line in geometry.splitlines(), line


def test_ctrl_c_ends_a_member_with_its_files_complete_and_listed(buffer, tmp_path):
    spec = parse_spec({
        "source": {"type": "simulated", "n_events": 100_000, "rate_hz": 40, "events_per_read": 4,
                   "bank_size": 16, "detectors": [SMALL]},
        "sinks": [{"type": "stream", "endpoint": f"ipc://{tmp_path / 'in'}"}],
    })
    (member,) = members(tmp_path, 1, "--hits-per-file", "2")
    producer = start_cli("produce", str(write_json(tmp_path / "spec.json", spec)))
    try:
        wait_until(lambda: len(read_lines(tmp_path / "hits" / "files.lst")) >= 2, "two complete hit files",
                   timeout=120)
        member.send_signal(signal.SIGINT)
        _, err = member.communicate(timeout=60)
    finally:
        producer.send_signal(signal.SIGINT)
        producer.communicate(timeout=60)
    assert member.returncode == 130, err
    listed, hits = read_hit_files(tmp_path / "hits")
    assert len(listed) >= 2 and len(hits) >= 4
    assert not list((tmp_path / "hits").glob("*.part"))


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def write_json(path: Path, spec) -> Path:
    from beamstream.spec import spec_to_json

    path.write_text(spec_to_json(spec))
    return path


def test_geometry_takes_pixel_size_distance_and_energy_from_the_description_and_says_what_it_lacks():
    from beamstream.apps.crystallography import geometry_text
    from beamstream.wire.metadata import FieldMetadata, Quantity, RunMetadata

    described = geometry_text((2, 4, 6), FieldMetadata(pixel_size=[75e-6, 75e-6], distance=0.1),
                              RunMetadata(constants={"photon_energy": Quantity(value=9.5, unit="keV")})).splitlines()
    for line in ("photon_energy = 9500", "clen = 0.1", "res = 13333.3", "p1/min_ss = 4", "p1/max_ss = 7",
                 "p1/corner_y = 0.5", "p0/corner_x = -2.5"):
        assert line in described, line
    bare = geometry_text((4, 6), FieldMetadata(), RunMetadata())
    assert "; photon_energy = ?  (eV; the stream does not say: set it)" in bare.splitlines()
    assert "; clen = ?" in bare and "; res = ?" in bare and "p1/" not in bare


def test_a_ctrl_c_while_a_full_hit_file_is_finished_waits_until_it_is_listed(tmp_path, monkeypatch):
    """A Ctrl-C that comes just before a full file is renamed is raised once the file has its final name and its line
    in files.lst, not there, which left it .part and unlisted (its hits, acknowledged, in no listed file)."""
    import os

    import h5py

    from beamstream.apps import crystallography
    from beamstream.wire.metadata import RunMetadata

    real_commit = crystallography.commit

    def commit_after_a_ctrl_c(path):
        os.kill(os.getpid(), signal.SIGINT)  # Python runs its handler before the next line
        real_commit(path)

    monkeypatch.setattr(crystallography, "commit", commit_after_a_ctrl_c)
    files = crystallography.HitFiles(tmp_path, "m0", hits_per_file=2)
    n = 2
    hits = crystallography.Hits(np.arange(n), np.zeros(n), np.ones((n, 4, 4), np.uint16),
                                {name: np.zeros((n, 3), np.float32) if name != "nPeaks" else np.full(n, 3, np.int32)
                                 for name in crystallography.PEAK_DATASETS})
    with pytest.raises(KeyboardInterrupt):
        files.add(hits, "s1", RunMetadata(), "image")  # full at 2 hits: finished at once
    (listed,) = (tmp_path / "files.lst").read_text().splitlines()
    assert listed.endswith("hits-s1-m0-0000.cxi") and not list(tmp_path.glob("*.part"))
    with h5py.File(listed, "r") as h5:
        assert h5["entry_1/_beamstream/seq"][()].tolist() == [0, 1]
