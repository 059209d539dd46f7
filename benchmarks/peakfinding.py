"""Peak finding speed: images per second per core of the ``peakfinder8`` step on 1024×1024 frames with each engine
(numba's kernel, the default, and psana's compiled C where psana is installed), and OnDA's peakfinder8
(``ondamonitor``) on the same frames where a venv with it exists; the ratios between them; the kernel's first call.

    python benchmarks/peakfinding.py                   # 5 rounds of runs of 64 images: about a minute on 2 cores
    python benchmarks/peakfinding.py --repeat 3 --images 32
    python benchmarks/peakfinding.py --onda-python /tmp/beamstream-ondamonitor-venv/bin/python

All search the same simulated frames (uint16, 10 peaks each, the ``simulated`` source's defaults) with the step's
default settings, one frame a call, in one process each; a rate is images per CPU second of that process
(``time.process_time``), so it is per core and less sensitive to other load than wall time, and excludes the first
call. Each round runs every finder once, the order rotating from round to round; a ratio is the median over the
rounds of the ratio of the two rates in a round. OnDA's needs numpy<2 and so runs in its own venv (make one with
``python -m venv V && V/bin/pip install ondamonitor 'numpy<2'``; tests/test_peakfinder8.py makes
``/tmp/beamstream-ondamonitor-venv``); without it, or without psana, those rates are left out. The kernel's first
call is timed in two fresh processes sharing an empty ``NUMBA_CACHE_DIR``: compiling, then loading the cached code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from beamstream.sources.simulated import SimulatedSource
from beamstream.steps.peakfinder import Peakfinder8Step

TARGET = 50.0  # images/s per core, of the step with its default engine
DEFAULT_ONDA = Path(tempfile.gettempdir()) / "beamstream-ondamonitor-venv" / "bin" / "python"
ONDA_RUN = """
import json, sys, time
import numpy as np
from om.algorithms.crystallography import Peakfinder8PeakDetection
frames, count = np.load(sys.argv[1]), int(sys.argv[2])
rows, cols = frames.shape[1:]
rr, cc = np.ogrid[:rows, :cols]
finder = Peakfinder8PeakDetection(
    radius_pixel_map=np.hypot(rr - (rows - 1) / 2, cc - (cols - 1) / 2).astype(np.float32),
    layout_info={"asic_nx": cols, "asic_ny": rows, "nasics_x": 1, "nasics_y": 1},
    crystallography_parameters={"max_num_peaks": 2048, "adc_threshold": 100.0, "minimum_snr": 6.0,
                                "min_pixel_count": 2, "max_pixel_count": 200, "local_bg_radius": 3, "min_res": 0,
                                "max_res": 10**6, "bad_pixel_map_filename": None, "bad_pixel_map_hdf5_path": None})
finder.find_peaks(data=frames[0])
start = time.process_time()
found = sum(len(finder.find_peaks(data=frames[i % len(frames)])["fs"]) for i in range(count))
print(json.dumps({"rate": count / (time.process_time() - start), "peaks": found}))
"""
FIRST_CALL = """
import time
from beamstream.sources.simulated import SimulatedSource
from beamstream.steps.peakfinder import Peakfinder8Step
frame = SimulatedSource(bank_size=1).open().bank()["image"]
finder = Peakfinder8Step().finder()
start = time.perf_counter()
finder.find(frame)
print(time.perf_counter() - start)
"""


def step_rate(engine: str, frames: np.ndarray, count: int) -> tuple[float, int]:
    """(images per CPU second, peaks found) of the step's finder with ``engine`` over ``count`` images cycling
    through ``frames``, one a call."""
    finder = Peakfinder8Step(engine=engine).finder()
    finder.find(frames[:1])
    start = time.process_time()
    found = sum(int(finder.find(frames[i % len(frames)][None])["image_npeaks"][0]) for i in range(count))
    return count / (time.process_time() - start), found


def onda_rate(python: Path, frames_file: Path, count: int) -> tuple[float, int]:
    """The same for OnDA's finder, run by ``python`` (a venv with ondamonitor)."""
    run = subprocess.run([str(python), "-c", ONDA_RUN, str(frames_file), str(count)], capture_output=True, text=True,
                         check=True, timeout=600)
    result = json.loads(run.stdout)
    return result["rate"], result["peaks"]


def first_calls() -> tuple[float, float]:
    """Seconds of the numba engine's first call in a fresh process: with an empty cache, then with the cached code."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        compiling, loading = (float(subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True, text=True,
                                                   check=True, env=env, timeout=600).stdout) for _ in range(2))
    return compiling, loading


def has_psana() -> bool:
    try:
        Peakfinder8Step(engine="psana").finder()
    except ImportError:  # MissingDependency is one
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds of runs")
    parser.add_argument("--images", type=int, default=64, help="images per run")
    parser.add_argument("--onda-python", type=Path, default=DEFAULT_ONDA, help="python of a venv with ondamonitor")
    args = parser.parse_args()
    frames = SimulatedSource(bank_size=16).open().bank()["image"]
    finders = ["numba", *(["psana"] if has_psana() else []), *(["OnDA"] if args.onda_python.exists() else [])]
    rates: dict[str, list[float]] = {who: [] for who in finders}
    with tempfile.TemporaryDirectory() as folder:
        frames_file = Path(folder) / "frames.npy"
        np.save(frames_file, frames)
        for round_ in range(args.repeat):
            for who in finders[round_ % len(finders):] + finders[: round_ % len(finders)]:
                if who == "OnDA":
                    rate, peaks = onda_rate(args.onda_python, frames_file, args.images)
                else:
                    rate, peaks = step_rate(who, frames, args.images)
                rates[who].append(rate)
                print(f"round {round_ + 1}: {who:<6} {rate:6.1f} images/s per core ({peaks / args.images:.1f} peaks "
                      "an image)")
    compiling, loading = first_calls()
    print(f"frames   : {len(frames)} simulated 1024x1024 uint16 frames, 10 peaks each, {args.images} images a run")
    names = {"numba": "peakfinder8 step (numba)", "psana": "peakfinder8 step (psana)", "OnDA": "OnDA peakfinder8"}
    for who, runs in rates.items():
        verdict = f"  target >= {TARGET:g}  {'PASS' if statistics.median(runs) >= TARGET else 'FAIL'}" \
            if who == "numba" else ""
        print(f"{names[who]:<26} {statistics.median(runs):6.1f} images/s per core{verdict}  "
              f"(runs {', '.join(f'{r:.1f}' for r in runs)})")
    for a, b in combinations(finders, 2):
        ratios = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        print(f"ratio {a}/{b:<18} {statistics.median(ratios):6.2f}x  (runs {', '.join(f'{r:.2f}' for r in ratios)})")
    for who, where in (("psana", "no psana (pip install 'beamstream[psana]')"),
                       ("OnDA", f"no python with ondamonitor at {args.onda_python}")):
        if who not in finders:
            print(f"{names[who]:<26} not run: {where}")
    print(f"numba's first call         {compiling:.1f} s compiling (empty cache), {loading:.2f} s loading the cache")


if __name__ == "__main__":
    main()
