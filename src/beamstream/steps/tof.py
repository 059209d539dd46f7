"""``cfd``: find time-of-flight hits in digitizer waveforms by constant-fraction discrimination.

For a waveform ``w`` with baseline ``b`` (the median of its pre-trigger window) and polarity sign
``p`` (+1 for positive pulses, -1 for negative), the signal is ``x[k] = p * (w[k] - b)`` and the
constant-fraction signal ``s[k] = x[k - delay] - fraction * x[k]``. A hit is where ``s`` rises
through zero between samples ``i`` and ``i + 1`` while ``x[i] > threshold``, for
``delay + 1 <= i < samples - 2`` (the conditions of the facility's CFD, psana's
``constFracDiscrim``, which returns only the first such hit). Its time is the zero of the cubic
through ``s[i-1] .. s[i+2]`` inside ``[i, i + 1]``, in samples from the waveform's first sample.
For a pulse of fixed shape the time sits at a fixed offset from the pulse's centre whatever its
height (for a Gaussian of width sigma: ``delay / 2 + sigma**2 * ln(fraction) / delay``).

Speed: one pass over the batch compares every sample with its waveform's level
(``b + p * threshold``; for integer samples, the integer next to it, in their own type) in cache-sized
row blocks and keeps the indices of samples above it
(``numpy.flatnonzero``); the CFD signal is evaluated only at those few samples, all waveforms at
once, with no Python loop per waveform or per hit.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from beamstream.batch import Batch
from beamstream.errors import StepError
from beamstream.stages import StepSpec
from beamstream.steps import BatchwiseStep, require_field
from beamstream.wire.metadata import FieldMetadata, Quantity, RunMetadata

BLOCK_SAMPLES = 1 << 20
"""Samples compared per block: the block's mask (1 MiB) stays in cache while its indices are taken."""
NEWTON_STEPS = 4


def hit_fields(field: str) -> tuple[str, str]:
    """The fields the cfd step adds for waveform field ``field``: hit times and hit counts."""
    return f"{field}_cfd", f"{field}_cfd_count"


def length_constant(field: str) -> str:
    """The run constant in which the cfd step records the length (samples) of the waveforms of ``field``: the
    range of its hit times, still known to consumers when a later step drops the waveforms."""
    return f"{field}_cfd_samples"


class CfdStep(StepSpec):
    """Find hits in the waveforms of ``field`` (one waveform per event, samples on its last axis).

    Adds two fields: ``FIELD_cfd``, float32 ``(max_hits,)`` per event, the hit times in samples
    in increasing order, NaN after the last hit; ``FIELD_cfd_count``, int32, the number of hits
    found, which may exceed ``max_hits`` (then only the first ``max_hits`` times are kept). Records
    the waveforms' length in the description: the run constant ``FIELD_cfd_samples``.

    Attributes:
        field: the waveform field (required); shape ``(samples,)`` per event, any numeric dtype.
        threshold: height above the baseline (in the waveform's units, > 0) the pulse must exceed
            at the crossing (required).
        delay: samples between the signal and its delayed copy (default 3, >= 1).
        fraction: the constant fraction, in (0, 1] (default 0.5).
        polarity: ``positive`` or ``negative`` pulses (default positive).
        baseline: ``[start, stop]``, the pre-trigger samples whose median is the baseline
            (default ``[0, 64]``).
        max_hits: hit times kept per event (default 16, 1..4096).
    """

    type: Literal["cfd"] = "cfd"
    field: str = Field(min_length=1, description="the waveform field")
    threshold: float = Field(gt=0, description="pulse height above the baseline needed at the crossing")
    delay: int = Field(3, ge=1, le=1 << 16, description="samples between the signal and its delayed copy")
    fraction: float = Field(0.5, gt=0, le=1, description="the constant fraction")
    polarity: Literal["positive", "negative"] = Field("positive", description="sign of the pulses")
    baseline: tuple[int, int] = Field((0, 64), description="pre-trigger samples [start, stop] giving the baseline")
    max_hits: int = Field(16, ge=1, le=4096, description="hit times kept per event")

    @model_validator(mode="after")
    def _check_baseline(self) -> CfdStep:
        start, stop = self.baseline
        if not 0 <= start < stop:
            raise ValueError(f"baseline {list(self.baseline)} must be [start, stop] with 0 <= start < stop")
        return self

    def fields_after(self, names: set[str]) -> set[str]:
        return names | set(hit_fields(self.field))

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The two hit fields, described (times in samples), and the waveforms' length as the run constant
        :func:`length_constant` (when the description gives their shape)."""
        times, count = hit_fields(self.field)
        waveform = metadata.fields.get(self.field, FieldMetadata())
        detector = waveform.detector
        if waveform.shape:
            length = {length_constant(self.field): Quantity(waveform.shape[-1], "samples")}
            metadata = metadata.merged(RunMetadata(constants=length))
        metadata = metadata.with_field(times, detector=detector, units="samples", shape=[self.max_hits],
                                       source=f"cfd hit times of {self.field!r}, NaN after the last hit")
        return metadata.with_field(count, detector=detector, shape=[],
                                   source=f"cfd hits found in {self.field!r} (times kept: at most {self.max_hits})")

    def build(self) -> CfdFinder:
        return CfdFinder(self)


class CfdFinder(BatchwiseStep):
    """Applies constant-fraction discrimination to every waveform of a batch."""

    def __init__(self, spec: CfdStep) -> None:
        self.spec = spec
        self.sign = 1.0 if spec.polarity == "positive" else -1.0

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with the hit times and counts of its waveforms added."""
        waveforms = require_field(batch, self.spec.field, "cfd")
        self._check_shape(waveforms.shape)
        times, count = find_hits(np.ascontiguousarray(waveforms), self.spec, self.sign)
        names = hit_fields(self.spec.field)
        return batch.replace({**batch.data, names[0]: times, names[1]: count})

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        """StepError unless the events are 1-D waveforms long enough for the baseline window and the delay."""
        if len(shape) != 2:
            raise StepError(f"cfd: field {self.spec.field!r} has event shape {shape[1:]}; cfd takes one waveform "
                            "per event, shape (samples,): crop or select a single channel first")
        samples = shape[1]
        if self.spec.baseline[1] > samples or samples < self.spec.delay + 4:
            raise StepError(f"cfd: waveforms of {samples} samples are too short for baseline "
                            f"{list(self.spec.baseline)} and delay {self.spec.delay}; the baseline window must end "
                            f"by sample {samples} and delay be at most {samples - 4}")


def find_hits(waveforms: np.ndarray, spec: CfdStep, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """Hit times ``(n, max_hits)`` float32 (NaN-padded) and hit counts ``(n,)`` int32 of C-ordered ``(n, samples)``."""
    events, samples = waveforms.shape
    start, stop = spec.baseline
    baseline = np.median(waveforms[:, start:stop], axis=1).astype(np.float64)
    above = _samples_above(waveforms, baseline + sign * spec.threshold, sign)
    row, col = np.divmod(above, samples)
    inside = (col >= spec.delay + 1) & (col < samples - 2)
    row, col = row[inside], col[inside]
    flat = waveforms.reshape(-1)

    def cfd_signal(offset: int) -> np.ndarray:
        """``s[col + offset]`` of each candidate's waveform, float64."""
        at = row * samples + col + offset
        prompt = sign * (flat[at].astype(np.float64) - baseline[row])
        delayed = sign * (flat[at - spec.delay].astype(np.float64) - baseline[row])
        return delayed - spec.fraction * prompt

    here, after = cfd_signal(0), cfd_signal(1)
    rising = (here <= 0) & (after > 0)
    row, col, here, after = row[rising], col[rising], here[rising], after[rising]
    times = col + _cubic_zero(cfd_signal(-1), here, after, cfd_signal(2))
    return _per_event(row, times, events, spec.max_hits)


def _samples_above(waveforms: np.ndarray, level: np.ndarray, sign: float) -> np.ndarray:
    """Flat indices, increasing, of the samples beyond ``level`` (above for sign +1, below for -1) of their row."""
    events, samples = waveforms.shape
    rows = max(1, BLOCK_SAMPLES // samples)
    mask = np.empty((min(rows, events), samples), dtype=bool)
    compare = np.greater if sign > 0 else np.less
    level = _level_for(waveforms.dtype, level, sign)[:, None]
    found = []
    for first in range(0, events, rows):
        block = waveforms[first:first + rows]
        out = mask[: len(block)]
        compare(block, level[first:first + rows], out=out)
        found.append(np.flatnonzero(out) + first * samples)
    return np.concatenate(found) if found else np.empty(0, dtype=np.intp)


def _level_for(dtype: np.dtype, level: np.ndarray, sign: float) -> np.ndarray:
    """``level`` (float64) in a type ``dtype`` compares with directly, the same samples beyond it: integers of up to
    32 bits compare with the integer below it (above it, for sign -1), clipped to the type's range, several times
    faster than with a float64 level; other integers with float64; floats in their own type."""
    if dtype.kind in "iu" and dtype.itemsize <= 4:
        info = np.iinfo(dtype)
        return np.clip(np.floor(level) if sign > 0 else np.ceil(level), info.min, info.max).astype(dtype)
    return level.astype(dtype if dtype.kind == "f" else np.float64)


def _cubic_zero(before: np.ndarray, here: np.ndarray, after: np.ndarray, next_: np.ndarray) -> np.ndarray:
    """The zero in ``[0, 1]`` of the cubic through ``(-1, before), (0, here), (1, after), (2, next_)``,
    where ``here <= 0 < after``: Newton's method from the linear interpolation, kept inside the interval."""
    a3 = (next_ - before + 3 * (here - after)) / 6
    a2 = (before + after) / 2 - here
    a1 = after - here - a2 - a3
    u = here / (here - after)
    for _ in range(NEWTON_STEPS):
        value = ((a3 * u + a2) * u + a1) * u + here
        slope = (3 * a3 * u + 2 * a2) * u + a1
        u = np.clip(u - value / np.where(slope > 0, slope, np.inf), 0.0, 1.0)
    return u


def _per_event(row: np.ndarray, times: np.ndarray, events: int, max_hits: int) -> tuple[np.ndarray, np.ndarray]:
    """Hits given by event ``row`` (non-decreasing) and ``times`` as NaN-padded ``(events, max_hits)`` and counts."""
    count = np.bincount(row, minlength=events).astype(np.int32)
    rank = np.arange(len(row)) - (np.cumsum(count) - count)[row]
    kept = rank < max_hits
    table = np.full((events, max_hits), np.nan, dtype=np.float32)
    table[row[kept], rank[kept]] = times[kept]
    return table, count
