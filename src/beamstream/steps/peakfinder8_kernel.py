"""peakfinder8 compiled with numba, the ``peakfinder8`` step's default engine (``beamstream[crystallography]``).

The algorithm is Cheetah's peakfinder8 as OnDA and psana ship it (``peakfinder8.cc``), step for step and in float32
like the C, so that on the same frame it finds the same peaks with the same values:

1. background: per radius bin (``rint`` of each pixel's radius), the mean and standard deviation of the good
   pixels, five times over, each time counting only the pixels strictly between the last pass's thresholds:
   *bright* above ``max(mean + min_snr * sigma, adc_threshold)``, *dim* below ``mean - min_snr * sigma``;
2. peaks: ASIC by ASIC, each bright pixel not yet in a peak (ASIC edges excepted) seeds one that grows through
   bright neighbours (8-connected, within the ASIC); one of ``min_pixels`` to ``max_pixels`` pixels is kept when
   its background-subtracted total stands ``min_snr`` sigmas above the local background (the good pixels below
   the bright threshold and in no peak within ``2 * local_bg_radius`` of its centre), its brightest pixel above
   that background's brightest, and its centre of mass (of raw values) inside its ASIC.

The C's quirks are kept, as they change which peaks are found: a bin left empty by a pass gets thresholds
``FLT_MAX`` and ``FLT_MIN`` (the smallest positive float, not the most negative); a negative variance is kept as
the sigma; the growth of a peak also looks around the pixel an earlier peak of the frame left in its scratch list.

Speed: what depends only on the layout (radius bins, each bin's good pixels, the local background's offsets) and
the scratch arrays are made once per event shape (:class:`FrameSearch`), not per frame, and a batch is one call.
The background sums each bin's pixels in frame order (the C's float32 additions in the C's order), four bins side by
side, and drops a bin from the passes that follow once a pass leaves its thresholds as they were (the next would sum
the same pixels to the same values); the seed scan skips, with one comparison, pixels below every bin's threshold.

Compiled code is cached on disk (numba's ``cache=True``): in ``$NUMBA_CACHE_DIR`` when set, else in the
``__pycache__`` folder beside this file, else in the user's cache folder (``~/.cache/numba``); where none is
writable (a read-only install and home) each process compiles it anew, a few seconds per frame dtype
(``benchmarks/peakfinding.py`` prints the first call's time).
"""

from __future__ import annotations

import numba
import numpy as np

ITERATIONS = 5  # background passes, as Cheetah's
_NEIGHBOURS_FS = (0, -1, 0, 1, -1, 1, -1, 0, 1)  # the growth's search pattern, in Cheetah's order
_NEIGHBOURS_SS = (0, -1, -1, -1, 0, 0, 1, 1, 1)
_FLT_MAX = np.float32(np.finfo(np.float32).max)  # C's FLT_MAX and FLT_MIN: an empty radius bin's thresholds
_FLT_MIN = np.float32(np.finfo(np.float32).tiny)


def _compiled(function):
    """``function`` compiled by numba at its first call, with the result cached on disk when a cache folder is
    writable (numba raises RuntimeError "no locator available" at decoration when none is: then it is not cached)."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:
        return numba.njit(nogil=True)(function)


class FrameSearch:
    """peakfinder8 with fixed options over frames of one layout; one search at a time (it keeps scratch arrays).

    ``radius`` (float, finite, >= 0) and ``good`` (nonzero: a good pixel) are frame-shaped, ``asic`` an ASIC's
    ``(rows, cols)``, dividing the frame's; the options are the ``peakfinder8`` step's."""

    def __init__(self, radius: np.ndarray, good: np.ndarray, asic: tuple[int, int], *, adc_threshold: float,
                 min_snr: float, min_pixels: int, max_pixels: int, local_bg_radius: int, max_peaks: int) -> None:
        self.frame = radius.shape
        self.max_peaks = max_peaks
        self._bins = np.rint(radius).astype(np.int32).ravel()  # Cheetah's radius bins
        self._good = np.ascontiguousarray(good != 0, dtype=np.int8).ravel()
        nbins = int(self._bins.max()) + 1
        kept = self._good != 0
        self._order = np.flatnonzero(kept)[np.argsort(self._bins[kept], kind="stable")].astype(np.int32)
        self._starts = np.concatenate([[0], np.cumsum(np.bincount(self._bins[kept], minlength=nbins))])
        width = 2 * local_bg_radius  # the local background: offsets (rows, cols) within width, in the C's order
        ss, fs = np.mgrid[-width:width, -width:width]
        inside = ss**2 + fs**2 <= width**2
        self._ring = np.column_stack([ss[inside], fs[inside]]).astype(np.int32)
        self._asic = (int(asic[0]), int(asic[1]))
        self._options = (np.float32(adc_threshold), np.float32(min_snr), min_pixels, max_pixels)
        self._stats = np.empty((4, nbins), np.float32)  # mean, sigma, bright above, dim below
        self._todo = np.empty(nbins, np.int64)  # bins still to sum
        self._in_peak = np.zeros(self._bins.size, np.int8)
        self._grown = np.zeros((2, self._bins.size + 1), np.int32)  # zero between frames, as the C's calloc
        self._pixels = np.zeros(max_pixels, np.int32)

    def find(self, frames: np.ndarray, npeaks: np.ndarray, table: np.ndarray) -> None:
        """Search each frame of ``frames`` (``(n, *frame)``, any real dtype, searched as float32): write its peak
        count, at most ``max_peaks``, into ``npeaks[i]`` and its peaks into ``table[:, i, :count]`` (float32
        ``(4, n, max_peaks)``, rows x, y, intensity, snr); the rest of ``table`` is left as it is."""
        if frames.shape[1:] != self.frame or table.shape != (4, len(frames), self.max_peaks):
            raise ValueError(f"frames {frames.shape[1:]} and table {table.shape} do not fit {self.frame}")
        _find_peaks(np.ascontiguousarray(frames), self._bins, self._good, self._order, self._starts, self._ring,
                    self._asic, *self._options, self._stats, self._todo, self._in_peak, self._grown, self._pixels,
                    npeaks, table)


@_compiled
def _background(data, order, starts, adc_threshold, min_snr, stats, todo):
    """``stats`` of each radius bin of one flat frame: mean, sigma, bright above, dim below (``order`` lists each
    bin's good pixels in frame order, bin ``r``'s from ``starts[r]`` to ``starts[r + 1]``; ``todo`` is scratch).

    Bins are summed four side by side, so that four chains of float32 additions are in flight, not one."""
    stats[2] = 1e9
    stats[3] = -1e9
    pending = todo.size  # the bins still to sum, listed in todo
    for r in range(pending):
        todo[r] = r
    for _ in range(ITERATIONS):
        kept = 0
        for group in range(0, pending, 4):
            r0 = todo[group]
            r1 = todo[group + 1] if group + 1 < pending else -1
            r2 = todo[group + 2] if group + 2 < pending else -1
            r3 = todo[group + 3] if group + 3 < pending else -1
            a0, n0, b0, d0 = _lane(starts, stats, r0)
            a1, n1, b1, d1 = _lane(starts, stats, r1)
            a2, n2, b2, d2 = _lane(starts, stats, r2)
            a3, n3, b3, d3 = _lane(starts, stats, r3)
            t0 = s0 = c0 = t1 = s1 = c1 = t2 = s2 = c2 = t3 = s3 = c3 = np.float32(0)
            for step in range(max(n0, n1, n2, n3)):
                if step < n0:
                    t0, s0, c0 = _add(data[order[a0 + step]], b0, d0, t0, s0, c0)
                if step < n1:
                    t1, s1, c1 = _add(data[order[a1 + step]], b1, d1, t1, s1, c1)
                if step < n2:
                    t2, s2, c2 = _add(data[order[a2 + step]], b2, d2, t2, s2, c2)
                if step < n3:
                    t3, s3, c3 = _add(data[order[a3 + step]], b3, d3, t3, s3, c3)
            for r, total, squares, count in ((r0, t0, s0, c0), (r1, t1, s1, c1), (r2, t2, s2, c2), (r3, t3, s3, c3)):
                if r >= 0 and _bin_stats(stats, r, total, squares, count, adc_threshold, min_snr):
                    todo[kept] = r
                    kept += 1
        pending = kept


@numba.njit(inline="always")
def _lane(starts, stats, r):
    """(first, count, bright above, dim below) of bin ``r``'s pixels; none for ``r`` -1."""
    if r < 0:
        return 0, 0, np.float32(0), np.float32(0)
    return starts[r], starts[r + 1] - starts[r], stats[2, r], stats[3, r]


@numba.njit(inline="always")
def _add(raw, bright, dim, total, squares, count):
    """The sums with ``raw`` added when it lies between the thresholds."""
    value = np.float32(raw)
    if value < bright and value > dim:
        return total + value, squares + value * value, count + np.float32(1)  # count exact below 2**24, as the C's
    return total, squares, count


@numba.njit(inline="always")
def _bin_stats(stats, r, total, squares, count, adc_threshold, min_snr):
    """Set bin ``r``'s stats from its sums; whether its thresholds changed (else the next pass would sum the same
    pixels to the same values: the bin is done)."""
    if count == 0:
        mean = sigma = np.float32(0)
        bright, dim = _FLT_MAX, _FLT_MIN
    else:
        mean = total / count
        sigma = squares / count - mean * mean
        if sigma >= 0:  # Cheetah keeps a negative variance as it is
            sigma = np.sqrt(sigma)
        bright = mean + min_snr * sigma
        if bright < adc_threshold:
            bright = adc_threshold
        dim = mean - min_snr * sigma
    changed = not (bright == stats[2, r] and dim == stats[3, r])
    stats[0, r], stats[1, r], stats[2, r], stats[3, r] = mean, sigma, bright, dim
    return changed


@_compiled
def _local_background(data, bins, good, in_peak, rthreshold, cols, asic, origin, centre, ring):
    """(mean, sigma, brightest, pixels) of the local background of a peak centred at ``centre`` (row, column
    within its ASIC, whose first pixel is ``origin``): the pixels at ``ring`` offsets, within the ASIC, good, in
    no peak and not bright; without any, the mean is for the caller to take (sigma 0.01, brightest 0, as the C)."""
    total = np.float32(0)
    squares = np.float32(0)
    brightest = np.float32(0)
    count = 0
    for k in range(ring.shape[0]):
        ss = centre[0] + ring[k, 0]
        fs = centre[1] + ring[k, 1]
        if fs < 0 or fs >= asic[1] or ss < 0 or ss >= asic[0]:
            continue
        pixel = (origin[0] + ss) * cols + origin[1] + fs
        value = np.float32(data[pixel])
        if value < rthreshold[bins[pixel]] and in_peak[pixel] == 0 and good[pixel] != 0:
            count += 1
            total += value
            squares += value * value
            if value > brightest:
                brightest = value
    if count == 0:
        return np.float32(0), np.float32(0.01), brightest, 0
    mean = total / np.float32(count)
    variance = squares / np.float32(count) - mean * mean
    return mean, np.sqrt(variance) if variance >= 0 else np.float32(0.01), brightest, count


@_compiled
def _grow(data, bins, good, in_peak, rthreshold, roffset, cols, asic, origin, infs, inss, pixels, max_pixels):
    """Grow the peak seeded at ``infs[0], inss[0]`` (ASIC coordinates) through bright neighbours, marking its pixels
    1 in ``in_peak`` and listing the first ``max_pixels`` in ``pixels``; (pixel count, intensity above the radial
    background, its first moments in frame columns and rows).

    As Cheetah's, each pass looks around pixels 0 to n *inclusive*, n being the count so far: pixel n's coordinates
    are those an earlier peak of this frame left there (0, 0 at first), so ``infs`` and ``inss`` are zeroed per
    frame and kept across peaks, as the C does."""
    count = 0
    total = np.float32(0)
    moment_fs = np.float32(0)
    moment_ss = np.float32(0)
    while True:
        before = count
        p = 0
        while p <= count:
            for k in range(9):
                fs = infs[p] + _NEIGHBOURS_FS[k]
                ss = inss[p] + _NEIGHBOURS_SS[k]
                if fs < 0 or fs >= asic[1] or ss < 0 or ss >= asic[0]:
                    continue
                frame_fs = origin[1] + fs
                frame_ss = origin[0] + ss
                pixel = frame_ss * cols + frame_fs
                r = bins[pixel]
                value = np.float32(data[pixel])
                if value > rthreshold[r] and in_peak[pixel] == 0 and good[pixel] != 0:
                    above = value - roffset[r]
                    total += above
                    moment_fs += above * np.float32(frame_fs)
                    moment_ss += above * np.float32(frame_ss)
                    inss[count] = ss
                    infs[count] = fs
                    in_peak[pixel] = 1
                    if count < max_pixels:
                        pixels[count] = pixel
                    count += 1
            p += 1
        if count == before:
            return count, total, moment_fs, moment_ss


@_compiled
def _find_peaks(frames, bins, good, order, starts, ring, asic, adc_threshold, min_snr, min_pixels, max_pixels,
                stats, todo, in_peak, grown, pixels, npeaks, table):
    """FrameSearch.find in compiled code: ``frames`` is C-contiguous; the arrays from ``stats`` on are scratch."""
    count, rows, cols = frames.shape
    flat = frames.reshape(count, rows * cols)
    max_peaks = table.shape[2]
    offsets, bright = stats[0], stats[2]
    for event in range(count):
        data = flat[event]
        _background(data, order, starts, adc_threshold, min_snr, stats, todo)
        floor = _FLT_MAX  # below every bin's bright threshold (a NaN threshold, for which nothing is bright, aside)
        for r in range(bright.size):
            if bright[r] < floor:
                floor = bright[r]
        in_peak[:] = 0
        used = 0  # entries of grown written in this frame
        found = 0
        for aiss in range(rows // asic[0]):
            for aifs in range(cols // asic[1]):
                origin = (aiss * asic[0], aifs * asic[1])
                for pxss in range(1, asic[0] - 1):
                    start = (origin[0] + pxss) * cols + origin[1]
                    for pxfs in range(1, asic[1] - 1):
                        seed = start + pxfs
                        value = np.float32(data[seed])
                        if not (value > floor and value > bright[bins[seed]] and in_peak[seed] == 0
                                and good[seed] != 0):
                            continue
                        grown[0, 0] = pxfs
                        grown[1, 0] = pxss
                        pixels[0] = seed
                        size, total, moment_fs, moment_ss = _grow(data, bins, good, in_peak, bright, offsets, cols,
                                                                  asic, origin, grown[0], grown[1], pixels, max_pixels)
                        used = max(used, size + 1)
                        if size < min_pixels or size > max_pixels or abs(total) < 1e-10:
                            continue
                        centre_fs = int(np.rint(moment_fs / abs(total)))
                        centre_ss = int(np.rint(moment_ss / abs(total)))
                        offset, sigma, brightest, counted = _local_background(
                            data, bins, good, in_peak, bright, cols, asic, origin,
                            (centre_ss - origin[0], centre_fs - origin[1]), ring)
                        if counted == 0:  # the radial background at the centre (kept inside the frame)
                            offset = offsets[bins[min(max(centre_fs + centre_ss * cols, 0), rows * cols - 1)]]
                        intensity = raw_total = peak_max = moment_fs = moment_ss = np.float32(0)
                        for j in range(size):
                            raw = np.float32(data[pixels[j]])
                            intensity += raw - offset
                            raw_total += raw
                            moment_fs += raw * np.float32(pixels[j] % cols)
                            moment_ss += raw * np.float32(pixels[j] // cols)
                            if raw - offset > peak_max:
                                peak_max = raw - offset
                        if abs(raw_total) < 1e-10:
                            continue
                        x = moment_fs / abs(raw_total)
                        y = moment_ss / abs(raw_total)
                        snr = intensity / sigma if abs(sigma) > 1e-10 else np.float32(0)
                        if snr < min_snr or peak_max < brightest - offset:
                            continue
                        if (x < origin[1] or x > origin[1] + asic[1] - 1
                                or y < origin[0] or y > origin[0] + asic[0] - 1):
                            continue
                        for j in range(size):
                            in_peak[pixels[j]] = 2
                        if found < max_peaks:
                            table[0, event, found] = x
                            table[1, event, found] = y
                            table[2, event, found] = intensity
                            table[3, event, found] = snr
                        found += 1
        npeaks[event] = min(found, max_peaks)
        grown[:, :used] = 0
