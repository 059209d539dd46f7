"""The peakfinder8 step's engines: numba's kernel finds the peaks psana's compiled C finds, with the same values, on
the simulated source's frames and on frames made to be hard (peaks across ASIC edges and touching, hot pixels, a
blob too big to be a peak, negative values, bad pixels, an off-centre beam); and its compiled code is cached on disk,
or, where no cache folder is writable, compiled in each process; and both engines find the peaks OnDA's
peakfinder8 finds (in a venv of its own: it needs numpy<2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from beamstream.sources.simulated import SimulatedSource

pytest.importorskip("numba", reason="the peakfinder8 step needs numba (pip install 'beamstream[crystallography]')")

from beamstream.steps import peakfinder8_kernel  # noqa: E402  (after the skip: it needs numba)
from beamstream.steps.peakfinder import COLUMNS, Peakfinder8Step  # noqa: E402

TOLERANCE = {"x": {"atol": 1e-3}, "y": {"atol": 1e-3}, "intensity": {"rtol": 1e-4, "atol": 1e-2},
             "snr": {"rtol": 1e-4, "atol": 1e-3}}  # the engines agree to the bit here; the C may round otherwise elsewhere


def hard_frames(dtype: type) -> np.ndarray:
    """6 events of 4 panels of 128x128: Poisson background, 40 peaks an event of 0.4 to 2 pixels' width (a third
    across the rows 63/64 where 2x2 ASICs meet), 20 hot pixels, a 16x20 blob, a strip 200 below the background."""
    rng = np.random.default_rng(7)
    frames = rng.poisson(30, (6, 4, 128, 128)).astype(np.float64)
    rows, cols = np.mgrid[:128, :128]
    for event in frames:
        for _ in range(40):
            row = 63.5 + rng.uniform(-1.5, 1.5) if rng.random() < 0.3 else rng.uniform(0, 128)
            col, width, height = rng.uniform(0, 128), rng.uniform(0.4, 2.0), rng.uniform(100, 3000)
            event[rng.integers(4)] += height * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * width**2))
        event[rng.integers(4), rng.integers(128, size=20), rng.integers(128, size=20)] = 5000
        event[1, 20:36, 90:110] += 400
        event[2, 100:104] -= 200
    return np.rint(frames if dtype is np.float32 else frames.clip(0)).astype(dtype)


def search_with_both(frames: np.ndarray, **options) -> tuple[dict, dict]:
    pytest.importorskip("psana.peakfinder8", reason="psana's engine needs psana (pip install 'beamstream[psana]')")
    return tuple(Peakfinder8Step(**options, engine=engine).finder().find(frames) for engine in ("numba", "psana"))


def assert_same_peaks(ours: dict, reference: dict) -> None:
    """The same peak counts and, in the same order, the same peaks (to TOLERANCE), in the columns ``reference`` has."""
    np.testing.assert_array_equal(ours["image_npeaks"], reference["image_npeaks"])
    for column in (c for c in COLUMNS if f"image_peak_{c}" in reference):
        name = f"image_peak_{column}"
        assert ours[name].shape == reference[name].shape and ours[name].dtype == np.float32
        for event, count in enumerate(reference["image_npeaks"]):
            np.testing.assert_allclose(ours[name][event, :count], reference[name][event, :count], **TOLERANCE[column],
                                       err_msg=f"{column} of event {event}")
            assert not ours[name][event, count:].any()


def test_numba_finds_psanas_peaks_on_the_simulated_frames():
    bank = SimulatedSource(bank_size=8).open().bank()  # 1024x1024 uint16, 10 peaks a frame: the benchmark's
    ours, reference = search_with_both(bank["image"])
    assert_same_peaks(ours, reference)
    assert reference["image_npeaks"].sum() >= 75


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_numba_finds_psanas_peaks_on_hard_frames_at_default_settings(dtype):
    ours, reference = search_with_both(hard_frames(dtype))
    assert_same_peaks(ours, reference)
    assert reference["image_npeaks"].min() >= 20


def test_numba_finds_psanas_peaks_with_asics_a_mask_and_other_options(tmp_path):
    mask = np.random.default_rng(3).random((4, 128, 128)) > 0.02
    mask[3, :, :40] = False
    np.save(tmp_path / "mask.npy", mask.astype(np.int8))
    options = {"asics": (2, 2), "mask": {"file": str(tmp_path / "mask.npy")}, "local_bg_radius": 2, "min_pixels": 1,
               "max_pixels": 50, "adc_threshold": 60.0, "min_snr": 4.0}
    ours, reference = search_with_both(hard_frames(np.float32), **options)
    assert_same_peaks(ours, reference)
    y = np.concatenate([reference["image_peak_y"][e, :n] for e, n in enumerate(reference["image_npeaks"])])
    assert reference["image_npeaks"].sum() >= 150 and (abs(y % 128 - 63.5) < 1).any(), "peaks by the ASIC edges"


def test_numba_keeps_psanas_first_peaks_when_there_are_more_than_max_peaks():
    options = {"centre": (300.0, -40.0), "local_bg_radius": 5, "max_peaks": 7, "min_snr": 5.0}
    ours, reference = search_with_both(hard_frames(np.uint16), **options)
    assert_same_peaks(ours, reference)
    assert (reference["image_npeaks"] == 7).all()


KERNEL_RUN = """
import json
from beamstream.sources.simulated import SimulatedSource
from beamstream.steps import peakfinder8_kernel
from beamstream.steps.peakfinder import Peakfinder8Step
frames = SimulatedSource(bank_size=2).open().bank()["image"]
found = Peakfinder8Step().finder().find(frames)["image_npeaks"].tolist()
stats = peakfinder8_kernel._find_peaks.stats
print(json.dumps({"npeaks": found, "module": peakfinder8_kernel.__file__, "cache": stats.cache_path,
                  "hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


def run_kernel(env: dict) -> dict:
    run = subprocess.run([sys.executable, "-c", KERNEL_RUN], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_the_kernel_is_compiled_once_into_the_numba_cache_dir(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    first, second = run_kernel(env), run_kernel(env)
    assert first["npeaks"] == second["npeaks"] == [10, 10]
    assert (first["hits"], second["misses"]) == (0, 0) and first["misses"] >= 1 and second["hits"] >= 1
    assert first["cache"].startswith(str(tmp_path)) and list(tmp_path.rglob("peakfinder8_kernel._find_peaks-*.nbi"))


def test_without_a_writable_cache_folder_the_kernel_compiles_in_each_process(tmp_path):
    # An install and a home numba cannot cache in (their cache folders cannot be made: files stand in their way;
    # permissions would not stop root): a copy of beamstream whose steps/__pycache__ is a file, XDG_CACHE_HOME a file.
    package = Path(peakfinder8_kernel.__file__).parents[1]
    shutil.copytree(package, tmp_path / "src" / "beamstream", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "src" / "beamstream" / "steps" / "__pycache__").write_text("")
    (tmp_path / "cache").write_text("")
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(tmp_path / "src"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = run_kernel(env)
    assert result["module"].startswith(str(tmp_path)) and result["npeaks"] == [10, 10]
    assert result["cache"] is None and result["hits"] == 0


ONDA_VENV = Path(tempfile.gettempdir()) / "beamstream-ondamonitor-venv"
ONDA_SCRIPT = """
import json, sys
import numpy as np
from om.algorithms.crystallography import Peakfinder8PeakDetection
frames = np.load(sys.argv[1])
rows, cols = frames.shape[1:]
rr, cc = np.ogrid[:rows, :cols]
radius = np.hypot(rr - (rows - 1) / 2, cc - (cols - 1) / 2).astype(np.float32)
finder = Peakfinder8PeakDetection(
    radius_pixel_map=radius, layout_info={"asic_nx": cols, "asic_ny": rows, "nasics_x": 1, "nasics_y": 1},
    crystallography_parameters={"max_num_peaks": 2048, "adc_threshold": 100.0, "minimum_snr": 6.0,
                                "min_pixel_count": 2, "max_pixel_count": 200, "local_bg_radius": 3,
                                "min_res": 0, "max_res": 10**6, "bad_pixel_map_filename": None,
                                "bad_pixel_map_hdf5_path": None})
print(json.dumps([{k: list(map(float, p[k])) for k in ("fs", "ss", "intensity")}
                  for p in map(lambda f: finder.find_peaks(data=f), frames)]))
"""


@pytest.fixture(scope="module")
def ondamonitor() -> Path:
    """The python of a scratch venv with OnDA's ondamonitor (numpy<2), made once per machine; skipped when pip
    cannot install it within a few minutes."""
    python = ONDA_VENV / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(ONDA_VENV)], check=True, capture_output=True, timeout=60)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "ondamonitor", "numpy<2"], check=True,
                           capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"no scratch venv with ondamonitor (pip install ondamonitor 'numpy<2'): {exc}")
    return python


@pytest.mark.parametrize("engine", ["numba", "psana"])
@pytest.mark.parametrize("frames", ["simulated", "hard"])
def test_the_engines_find_ondas_peaks(ondamonitor, tmp_path, engine, frames):
    if engine == "psana":
        pytest.importorskip("psana.peakfinder8", reason="psana's engine needs psana (pip install 'beamstream[psana]')")
    # one ASIC a frame, as the script gives OnDA: the hard frames' panels as one 512x128 frame
    images = (SimulatedSource(bank_size=4).open().bank()["image"] if frames == "simulated"
              else hard_frames(np.float32).reshape(6, 512, 128))
    np.save(tmp_path / "frames.npy", images)
    run = subprocess.run([str(ondamonitor), "-c", ONDA_SCRIPT, str(tmp_path / "frames.npy")], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    reference = {"image_npeaks": np.array([len(peaks["fs"]) for peaks in found], np.int32)}
    for column, key in (("x", "fs"), ("y", "ss"), ("intensity", "intensity")):
        reference[f"image_peak_{column}"] = np.zeros((len(images), 2048), np.float32)
        for event, peaks in enumerate(found):
            reference[f"image_peak_{column}"][event, : len(peaks[key])] = peaks[key]
    assert_same_peaks(Peakfinder8Step(engine=engine).finder().find(images), reference)  # OnDA's gives no SNR
    assert reference["image_npeaks"].min() >= (9 if frames == "simulated" else 20)
