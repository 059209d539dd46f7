"""``simulated``: detector images with Bragg-like peaks and digitizer waveforms with hits.

Deterministic from ``seed``: event ``seq`` shows frame ``seq % bank_size`` of a bank that
each worker draws once from the seed, so any number of workers yields the same data for the
same sequence numbers. Ground truth travels with each event: for an image detector ``NAME``
the field ``NAME_peaks`` holds the peak centres (one row per peak, one column per image
axis); for a waveform detector ``NAME_hits`` holds the hit times in samples.
With ``rate_hz`` events come out in real time, like a live facility.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from beamstream.batch import Batch, Share, little_endian
from beamstream.limits import MAX_EVENT_BYTES, Axis, BatchSize, EventCount, Rate, Shape, check_memory
from beamstream.stages import SourceSpec, SpecModel
from beamstream.wire.metadata import FieldMetadata, RunMetadata


def _check_dtype(value: str) -> str:
    try:
        kind = np.dtype(value).kind
    except TypeError:
        raise ValueError(f"not a numpy dtype: {value!r} (e.g. uint16, float32)") from None
    if kind not in "biuf":
        raise ValueError(f"not a numeric dtype: {value!r} (e.g. uint16, float32)")
    return value


class ImageDetector(SpecModel):
    """An area detector (single or multi-panel).

    Attributes:
        kind: ``image``.
        name: output field name (truth goes to ``NAME_peaks``); default ``image``.
        shape: event shape; the last two axes are pixels, any leading axes are panels.
        dtype: pixel type; default uint16.
        background: mean of the Gaussian noise; noise: its standard deviation.
        peaks: Bragg-like peaks per frame; peak_sigma their width in pixels; peak_amplitude their height.
        hit_fraction: the share of frames that show peaks (hits), drawn per frame; the others show
            background only and their ``NAME_peaks`` rows are NaN. Default 1 (every frame a hit).
    """

    kind: Literal["image"] = "image"
    name: str = "image"
    shape: Shape = Field(default_factory=lambda: [1024, 1024], min_length=2)
    dtype: str = "uint16"
    background: float = 10.0
    noise: float = 3.0
    peaks: int = Field(10, ge=0, le=100_000)
    peak_sigma: float = Field(1.5, gt=0)
    peak_amplitude: float = 500.0
    hit_fraction: float = Field(1.0, ge=0, le=1)

    _dtype = field_validator("dtype")(_check_dtype)

    def event_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * np.dtype(self.dtype).itemsize

    def truth_metadata(self) -> dict[str, FieldMetadata]:
        return {f"{self.name}_peaks": FieldMetadata(
            detector=self.name, units="pixels",
            source="ground truth: peak centres, one row per peak: panel indices, then row and column of the "
                   "centre (pixel centres at integer coordinates)")}

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        frame = rng.normal(self.background, self.noise, self.shape)
        rows, cols = self.shape[-2:]
        margin = min(rows, cols) * 0.05
        panels = rng.integers(0, np.prod(self.shape[:-2], dtype=int), self.peaks)
        centres = np.column_stack(
            [rng.uniform(margin, rows - margin, self.peaks), rng.uniform(margin, cols - margin, self.peaks)]
        )
        planes = frame.reshape(-1, rows, cols)
        for panel, (row, col) in zip(panels, centres, strict=True):
            self._add_peak(planes[panel], row, col)
        panel_index = np.column_stack(np.unravel_index(panels, self.shape[:-2])) if len(self.shape) > 2 else np.empty((self.peaks, 0))
        truth = np.column_stack([panel_index, centres]).astype(np.float32)
        if self.hit_fraction < 1 and rng.random() >= self.hit_fraction:
            frame = rng.normal(self.background, self.noise, self.shape)
            truth[:] = np.nan
        return {self.name: _cast(frame, self.dtype), f"{self.name}_peaks": truth}

    def _add_peak(self, plane: np.ndarray, row: float, col: float) -> None:
        radius = int(np.ceil(4 * self.peak_sigma))
        r0, r1 = max(0, int(row) - radius), min(plane.shape[0], int(row) + radius + 1)
        c0, c1 = max(0, int(col) - radius), min(plane.shape[1], int(col) + radius + 1)
        rr, cc = np.ogrid[r0:r1, c0:c1]
        plane[r0:r1, c0:c1] += self.peak_amplitude * np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * self.peak_sigma**2))


class WaveformDetector(SpecModel):
    """A digitizer recording time-of-flight waveforms.

    Attributes:
        kind: ``waveform``.
        name: output field name (truth goes to ``NAME_hits``); default ``waveform``.
        samples: samples per waveform (4096 float32 = 16 kB); dtype: sample type, default float32.
        hits: hits per waveform, at uniformly drawn times; hit_width (samples, Gaussian sigma) and hit_amplitude.
        baseline, noise: mean and standard deviation of the Gaussian noise.
    """

    kind: Literal["waveform"] = "waveform"
    name: str = "waveform"
    samples: Axis = 4096
    dtype: str = "float32"
    hits: int = Field(5, ge=0, le=100_000)
    hit_width: float = Field(2.0, gt=0)
    hit_amplitude: float = 100.0
    baseline: float = 0.0
    noise: float = 1.0

    _dtype = field_validator("dtype")(_check_dtype)

    def event_bytes(self) -> int:
        return self.samples * np.dtype(self.dtype).itemsize

    def truth_metadata(self) -> dict[str, FieldMetadata]:
        return {f"{self.name}_hits": FieldMetadata(detector=self.name, units="samples",
                                                   source="ground truth: hit times (sample index of each hit's centre)")}

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        times = np.sort(rng.uniform(0, self.samples, self.hits))
        samples = np.arange(self.samples)
        trace = rng.normal(self.baseline, self.noise, self.samples)
        for hit in times:
            trace += self.hit_amplitude * np.exp(-((samples - hit) ** 2) / (2 * self.hit_width**2))
        return {self.name: _cast(trace, self.dtype), f"{self.name}_hits": times.astype(np.float32)}


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    target = np.dtype(dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(target)


Detector = Annotated[ImageDetector | WaveformDetector, Field(discriminator="kind")]


class SimulatedSource(SourceSpec):
    """Simulated detectors with known ground truth.

    Attributes:
        n_events: events in the run; None streams until stopped. Default 100.
        seed: seed of every random draw. Default 0.
        rate_hz: events per second over all workers; None runs as fast as possible.
        bank_size: distinct frames drawn per detector; events cycle through them. Default 16.
        events_per_read: events generated together, and the block size of the worker partition. Default 16.
        detectors: what to simulate; default one 1024×1024 uint16 image detector.
    """

    type: Literal["simulated"] = "simulated"
    n_events: EventCount | None = 100
    seed: int = Field(0, ge=0, le=2**63 - 1)
    rate_hz: Rate | None = None
    bank_size: int = Field(16, ge=1, le=1 << 16)
    events_per_read: BatchSize = 16
    detectors: list[Detector] = Field(default_factory=lambda: [ImageDetector()], min_length=1)

    @field_validator("detectors")
    @classmethod
    def _unique_names(cls, detectors: list[ImageDetector | WaveformDetector]) -> list[ImageDetector | WaveformDetector]:
        names = [detector.name for detector in detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"detector names must be unique, got {names}")
        return detectors

    @model_validator(mode="after")
    def _events_fit(self) -> SimulatedSource:
        for detector in self.detectors:
            if detector.event_bytes() > MAX_EVENT_BYTES:
                raise ValueError(f"detector {detector.name}: {detector.event_bytes():,} bytes per event; "
                                 f"at most {MAX_EVENT_BYTES:,}")
        return self

    def field_names(self) -> set[str]:
        suffix = {"image": "_peaks", "waveform": "_hits"}
        return {name for detector in self.detectors for name in (detector.name, detector.name + suffix[detector.kind])}

    def described(self) -> RunMetadata:
        return SimulatedReader(self).metadata()

    def memory_estimate(self) -> int:
        """Bytes a worker holds: its bank of frames, plus one read of events."""
        return (self.bank_size + self.events_per_read) * sum(detector.event_bytes() for detector in self.detectors)

    def open(self) -> SimulatedReader:
        """The reader; SourceError if its bank would not fit in the memory available now."""
        check_memory(self.memory_estimate(), "the simulated source's bank", "lower bank_size, the shapes or samples")
        return SimulatedReader(self)


class SimulatedReader:
    """Runtime side of :class:`SimulatedSource`; draws its bank on first read."""

    def __init__(self, spec: SimulatedSource) -> None:
        self.spec = spec

    def partition(self, rank: int, producers: int) -> Share:
        return Share(rank=rank, producers=producers, start=0, stop=self.spec.n_events, block=self.spec.events_per_read)

    def metadata(self) -> RunMetadata:
        """Facility ``simulated``; each detector's field (with its shape, dtype and unit: the values are counts) and
        its ground truth, with what they hold."""
        fields = {}
        for detector in self.spec.detectors:
            shape = list(detector.shape) if detector.kind == "image" else [detector.samples]
            fields[detector.name] = FieldMetadata(detector=detector.name, source=f"simulated {detector.kind}",
                                                  shape=shape, dtype=little_endian(np.dtype(detector.dtype)).str,
                                                  units="counts")
            fields.update(detector.truth_metadata())
        return RunMetadata(facility="simulated", fields=fields)

    def bank(self) -> dict[str, np.ndarray]:
        """Every field for each of the ``bank_size`` frames, stacked and read-only."""
        frames: list[dict[str, np.ndarray]] = []
        for index in range(self.spec.bank_size):
            frame: dict[str, np.ndarray] = {}
            for number, detector in enumerate(self.spec.detectors):
                frame |= detector.draw(np.random.default_rng([self.spec.seed, number, index]))
            frames.append(frame)
        stacked = {name: np.stack([frame[name] for frame in frames]) for name in frames[0]}
        for array in stacked.values():
            array.setflags(write=False)
        return stacked

    def read(self, share: Share) -> Iterator[Batch]:
        bank = self.bank()
        pace = _Pacer(self.spec.rate_hz)
        for block in share.blocks():
            first, stop = share.block_range(block)
            if first >= stop:
                return
            if pace.active:
                for seq in range(first, stop):
                    pace.wait_for(seq)
                    yield _from_bank(bank, seq, seq + 1, self.spec.bank_size)
            else:
                yield _from_bank(bank, first, stop, self.spec.bank_size)


def _from_bank(bank: dict[str, np.ndarray], first: int, stop: int, bank_size: int) -> Batch:
    """Events ``first..stop-1``: views into the bank where they are contiguous in it, else copies."""
    offset = first % bank_size
    if offset + (stop - first) <= bank_size:
        data = {name: frames[offset : offset + stop - first] for name, frames in bank.items()}
    else:
        index = np.arange(first, stop) % bank_size
        data = {name: frames[index] for name, frames in bank.items()}
    now = time.time()
    return Batch(np.arange(first, stop, dtype=np.int64), np.full(stop - first, now), data)


class _Pacer:
    """Holds event ``seq`` back until ``seq / rate_hz`` seconds after the first event."""

    def __init__(self, rate_hz: float | None) -> None:
        self.rate_hz = rate_hz
        self.active = rate_hz is not None
        self.origin: float | None = None

    def wait_for(self, seq: int) -> None:
        now = time.monotonic()
        if self.origin is None:
            self.origin = now - seq / self.rate_hz
        delay = self.origin + seq / self.rate_hz - now
        if delay > 0:
            time.sleep(delay)
