"""The cfd step's speed on one core: waveforms/s for 8k-sample waveforms, against psana's CFD and scipy.

    .venv/bin/python benchmarks/tof.py                 # 4096 waveforms of 8192 float32 samples, 5 runs
    .venv/bin/python benchmarks/tof.py --events 1024 --repeat 3
    .venv/bin/python benchmarks/tof.py --dtype int16       # a digitizer's own samples

The waveforms are the simulated source's (5 Gaussian hits of width 2 samples, height 100, noise 1).
Each figure is the median of ``--repeat`` runs of the whole set, in this process, one thread
(``OMP_NUM_THREADS=1`` is set before numpy loads), counted per CPU second of this process
(``time.process_time``). Rows: the step (``CfdFinder.apply`` on one batch of
all the waveforms: baseline, threshold scan, CFD at the candidates, hit table); psana's
``constFracDiscrim.cfd`` called once per waveform (it returns the first crossing only, so finding every
hit would cost it more calls); ``scipy.signal.find_peaks`` once per waveform (peaks only, no CFD
timing). Ratios are the step's rate over the other's, on the same waveforms in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from beamstream.batch import Batch  # noqa: E402
from beamstream.sources.simulated import WaveformDetector  # noqa: E402
from beamstream.steps.tof import CfdStep  # noqa: E402

SAMPLES = 8192
OPTIONS = {"threshold": 10.0, "delay": 3, "fraction": 0.5}


def waveforms(events: int, dtype: str = "float32") -> np.ndarray:
    """``events`` simulated waveforms of SAMPLES samples of type ``dtype``."""
    detector = WaveformDetector(samples=SAMPLES, hits=5, dtype=dtype)
    bank = [detector.draw(np.random.default_rng([0, index]))["waveform"] for index in range(min(events, 256))]
    return np.stack([bank[index % len(bank)] for index in range(events)])


def rate(run, events: int, repeat: int) -> tuple[float, list[float]]:
    """Median waveforms/s of ``repeat`` timed calls of ``run()`` (after one untimed call), and every run's."""
    run()
    rates = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        rates.append(events / (time.process_time() - start))
    return statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=4096, help="waveforms per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per row")
    parser.add_argument("--dtype", default="float32", help="sample type (the simulated source's dtype)")
    args = parser.parse_args()
    data = waveforms(args.events, args.dtype)
    batch = Batch(np.arange(len(data)), np.zeros(len(data)), {"waveform": data})
    step = CfdStep(field="waveform", **OPTIONS).build()
    rows = {"cfd step": rate(lambda: step.apply(batch), len(data), args.repeat)}
    try:
        from psana.constFracDiscrim import cfd

        few = data[: max(1, args.events // 16)]  # psana is slow: time a sixteenth of the waveforms
        rows["psana cfd (first hit)"] = rate(lambda: [cfd(1.0, 0.0, 1.0, 0.0, w, 3, 0.0, 10.0, 0.5) for w in few],
                                             len(few), args.repeat)
    except ImportError:
        print("psana is not installed: its row is left out")
    try:
        from scipy.signal import find_peaks

        rows["scipy find_peaks"] = rate(lambda: [find_peaks(w, height=10.0, distance=6) for w in data],
                                        len(data), args.repeat)
    except ImportError:
        print("scipy is not installed: its row is left out")
    ours = rows["cfd step"][0]
    print(f"{args.events} waveforms of {SAMPLES} {args.dtype} samples, one core, median of {args.repeat} runs")
    print(f"{'row':<24}{'waveforms/s':>14}{'Msamples/s':>12}{'step ×':>10}  runs")
    for name, (median, runs) in rows.items():
        ratio = "" if name == "cfd step" else f"{ours / median:.0f}×"
        print(f"{name:<24}{median:>14,.0f}{median * SAMPLES / 1e6:>12,.0f}{ratio:>10}  "
              f"[{', '.join(f'{value:,.0f}' for value in runs)}]")
    print(f"target >= 50,000 waveforms/s: {'PASS' if ours >= 50_000 else 'FAIL'}")


if __name__ == "__main__":
    main()
