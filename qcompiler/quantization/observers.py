"""Range observers: stream activation (or weight) tensors, then say which real range to quantize.

Every observer has `update(array)` (any shape; called once per batch) and
`range() -> (lo, hi)`: floats for a per-tensor observer, arrays of one entry per
channel when constructed with `axis`. None stores the data it sees: min/max
observers keep two numbers a channel, the others a fixed-size histogram a channel.

- `minmax`: the exact min and max seen.
- `moving_average`: min and max of each batch, smoothed with an exponential moving
  average (torch's MovingAverageMinMaxObserver; robust to one odd batch).
- `percentile`: the p-th and (100 - p)-th percentiles (e.g. 99.99), read off the histogram.
- `mse`: the clipping range that minimises the expected squared error of quantizing
  the observed distribution: clipping error (x - clip(x))^2 of the values outside
  plus step^2 / 12 rounding noise for each value inside (the uniform-noise model of
  Banner et al. 2019, "Post training 4-bit quantization", sec. 3). Needs the scheme.
- `kl`: TensorRT's entropy calibration (Migacz 2017, "8-bit Inference with TensorRT"):
  the threshold T whose quantized histogram has the smallest KL divergence from the
  histogram clipped at T. Signed data uses the histogram of |x| and a symmetric
  threshold, non-negative data a one-sided one. Needs the scheme.

The streaming histogram covers [min seen, max seen] with a fixed number of bins;
when a batch falls outside, the range grows and the old counts are re-spread over
the new bins assuming a uniform density inside each old bin.
"""

from __future__ import annotations

import numpy as np

from qcompiler.numerics.quant import choose_qparams, quant_range


class _ChannelObserver:
    """Shared plumbing: split each update into per-channel flat float64 arrays."""

    def __init__(self, axis: int | None = None):
        self.axis = axis
        self._channels: list | None = None

    def _split(self, array) -> list[np.ndarray]:
        array = np.asarray(array, dtype=np.float64)
        if array.size == 0:
            raise ValueError("cannot observe an empty array")
        if self.axis is None:
            return [array.reshape(-1)]
        moved = np.moveaxis(array, self.axis, 0)
        parts = list(moved.reshape(moved.shape[0], -1))
        if self._channels is not None and len(parts) != len(self._channels):
            raise ValueError(f"observer has {len(self._channels)} channels on axis {self.axis}, "
                             f"got an array with {len(parts)}")
        return parts

    def _seen(self) -> list:
        if self._channels is None:
            raise ValueError(f"{type(self).__name__} has seen no data; call update() first")
        return self._channels

    def _result(self, ranges: list[tuple[float, float]]):
        if self.axis is None:
            lo, hi = ranges[0]
            return float(lo), float(hi)
        return (np.array([r[0] for r in ranges]), np.array([r[1] for r in ranges]))


class MinMaxObserver(_ChannelObserver):
    def update(self, array) -> None:
        parts = [(p.min(), p.max()) for p in self._split(array)]
        if self._channels is None:
            self._channels = parts
        else:
            self._channels = [(min(a, c), max(b, d)) for (a, b), (c, d) in zip(self._channels, parts,
                                                                                 strict=True)]

    def range(self):
        return self._result(self._seen())


class MovingAverageMinMaxObserver(_ChannelObserver):
    def __init__(self, averaging_constant: float = 0.01, axis: int | None = None):
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        super().__init__(axis)
        self.averaging_constant = averaging_constant

    def update(self, array) -> None:
        parts = [(p.min(), p.max()) for p in self._split(array)]
        if self._channels is None:
            self._channels = parts
            return
        c = self.averaging_constant
        self._channels = [(lo + c * (a - lo), hi + c * (b - hi))
                          for (lo, hi), (a, b) in zip(self._channels, parts, strict=True)]

    def range(self):
        return self._result(self._seen())


class StreamingHistogram:
    """Counts over `bins` equal bins spanning the (growing) range of the data seen.

    With `skip_zeros`, exact zeros are kept out of the bins (the data range still
    includes them); `lo` stays None while only zeros have come."""

    def __init__(self, bins: int, skip_zeros: bool = False):
        self.bins = bins
        self.skip_zeros = skip_zeros
        self.lo = self.hi = None
        self.counts = np.zeros(bins)
        self.data_min = self.data_max = None

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def add(self, values: np.ndarray) -> None:
        vmin, vmax = float(values.min()), float(values.max())
        self.data_min = vmin if self.data_min is None else min(self.data_min, vmin)
        self.data_max = vmax if self.data_max is None else max(self.data_max, vmax)
        if self.skip_zeros:
            nonzero = values[values != 0]
            if nonzero.size == 0:
                return
            values, vmin, vmax = nonzero, float(nonzero.min()), float(nonzero.max())
        if self.lo is None:
            self.lo, self.hi = vmin, vmax if vmax > vmin else vmin + max(abs(vmin), 1.0) * 1e-6
        else:
            if vmin < self.lo or vmax > self.hi:
                self.counts = self.resample(min(self.lo, vmin), max(self.hi, vmax), self.bins)
                self.lo, self.hi = min(self.lo, vmin), max(self.hi, vmax)
        self.counts += np.histogram(values, self.bins, (self.lo, self.hi))[0]

    def cumulative(self, points: np.ndarray) -> np.ndarray:
        """How many values are <= each point, interpolating linearly inside bins."""
        cdf = np.concatenate([[0.0], np.cumsum(self.counts)])
        return np.interp(points, self.edges, cdf, left=0.0, right=cdf[-1])

    def resample(self, lo: float, hi: float, bins: int) -> np.ndarray:
        """The counts re-spread over `bins` equal bins on [lo, hi]."""
        return np.diff(self.cumulative(np.linspace(lo, hi, bins + 1)))

    def quantile(self, fraction: float) -> float:
        cdf = np.concatenate([[0.0], np.cumsum(self.counts)])
        target = fraction * cdf[-1]
        index = int(np.clip(np.searchsorted(cdf, target, side="left"), 1, self.bins))
        inside = self.counts[index - 1]
        offset = 0.0 if inside == 0 else (target - cdf[index - 1]) / inside
        edges = self.edges
        value = edges[index - 1] + offset * (edges[index] - edges[index - 1])
        return float(np.clip(value, self.data_min, self.data_max))


class _HistogramObserver(_ChannelObserver):
    SKIP_ZEROS = False  # whether the histograms leave exact zeros out of their bins

    def __init__(self, bins: int = 2048, axis: int | None = None):
        if bins < 16:
            raise ValueError(f"bins must be >= 16, got {bins}")
        super().__init__(axis)
        self.bins = bins

    def update(self, array) -> None:
        parts = self._split(array)
        if self._channels is None:
            self._channels = [StreamingHistogram(self.bins, self.SKIP_ZEROS) for _ in parts]
        for histogram, values in zip(self._channels, parts, strict=True):
            histogram.add(values)

    def range(self):
        return self._result([self._choose(h) for h in self._seen()])

    def _choose(self, histogram: StreamingHistogram) -> tuple[float, float]:
        raise NotImplementedError


class PercentileObserver(_HistogramObserver):
    def __init__(self, percentile: float = 99.99, bins: int = 2048, axis: int | None = None):
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(bins, axis)
        self.percentile = percentile

    def _choose(self, histogram):
        return (histogram.quantile(1 - self.percentile / 100), histogram.quantile(self.percentile / 100))


class _SchemeObserver(_HistogramObserver):
    """A histogram observer whose choice depends on the integer grid it quantizes to."""

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False,
                 narrow_range: bool = False, bins: int = 2048, axis: int | None = None):
        super().__init__(bins, axis)
        if symmetric and not signed:
            raise ValueError("symmetric quantization needs a signed integer type")
        self.qmin, self.qmax = quant_range(bits, signed, narrow_range)
        self.scheme = dict(bits=bits, symmetric=symmetric, signed=signed, narrow_range=narrow_range)
        self.symmetric = symmetric


class MSEObserver(_SchemeObserver):
    # The clipping fractions (of the full range) searched: a geometric grid over
    # [MIN_FRACTION, 1], then a second grid of the same size between the neighbours of
    # the best point (per side; two-sided asymmetric ranges search a 2-D grid). 2 x 20
    # evaluations reach a 4% step, as fine as 128 evaluations of one grid.
    GRID, MIN_FRACTION = 20, 1e-3

    def _choose(self, histogram):
        lo, hi = min(histogram.data_min, 0.0), max(histogram.data_max, 0.0)
        if lo == hi:
            return lo, hi
        edges = histogram.edges
        occupied = histogram.counts > 0
        centers = (0.5 * (edges[:-1] + edges[1:]))[occupied]
        counts = histogram.counts[occupied]
        width = edges[1] - edges[0]
        if self.symmetric:
            ends = [(-max(-lo, hi), max(-lo, hi))]  # one fraction scales both ends
        elif lo < 0 < hi:
            ends = [(lo, 0.0), (0.0, hi)]  # one fraction per end
        else:  # one-signed data: only the far end moves (the near end is 0)
            ends = [(lo, hi)]
        grids = [np.geomspace(self.MIN_FRACTION, 1.0, self.GRID)] * len(ends)
        for stage in range(2):
            mesh = [a.reshape(-1) for a in np.meshgrid(*grids, indexing="ij")]
            lows = sum(f * end[0] for f, end in zip(mesh, ends, strict=True))
            highs = sum(f * end[1] for f, end in zip(mesh, ends, strict=True))
            best = int(np.argmin(self._expected_errors(centers, counts, width, lows, highs)))
            if stage == 0:
                position = np.unravel_index(best, [self.GRID] * len(ends))
                grids = [np.geomspace(grid[max(i - 1, 0)], grid[min(i + 1, self.GRID - 1)], self.GRID)
                         for grid, i in zip(grids, position, strict=True)]
        return float(lows[best]), float(highs[best])

    def _expected_errors(self, centers, counts, width, lows, highs) -> np.ndarray:
        """Expected squared error of quantizing the histogram with each candidate range.

        Bins narrower than the step: the error at the bin centre (rounding or clipping)
        plus width^2 / 12 for the spread inside the bin. Bins wider than the step: the
        uniform rounding-noise model step^2 / 12 plus the clipping error at the centre."""
        scale, zero_point = choose_qparams(lows, highs, **self.scheme)
        scale, zero_point = scale.astype(np.float64)[:, None], zero_point[:, None]
        q = np.clip(np.rint(centers / scale) + zero_point, self.qmin, self.qmax)
        low, high = (self.qmin - zero_point) * scale, (self.qmax - zero_point) * scale
        fine = (centers - (q - zero_point) * scale) ** 2 + width ** 2 / 12
        coarse = (centers - np.clip(centers, low, high)) ** 2 + scale ** 2 / 12
        return (np.where(width < scale, fine, coarse) * counts).sum(axis=1)


class KLObserver(_SchemeObserver):
    # Exact zeros (the spike a ReLU or clamp leaves: 15% of one MobileNetV2 ReLU6 output) are exact
    # on every grid, but merged into a threshold's first level they count as spread mass,
    # and more so the wider the range: kept in, they pull every threshold down to the
    # smallest candidate (on MobileNetV2's ReLU6 outputs, 1/8 of the range; mean KL of the
    # model's output 2.6 instead of 0.14 with the percentile observer). So they are left
    # out, as the clipping cannot change them.
    SKIP_ZEROS = True

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False,
                 narrow_range: bool = False, bins: int = 2048, axis: int | None = None,
                 stride: int = 8):
        super().__init__(bits, symmetric, signed, narrow_range, bins, axis)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        # Thresholds tried: every `stride`-th bin edge (TensorRT tries every one).
        self.stride = stride

    def _choose(self, histogram):
        if histogram.lo is None:  # only zeros seen
            return 0.0, 0.0
        one_sided = histogram.data_min >= 0
        top = max(abs(histogram.data_min), abs(histogram.data_max))
        levels = self.qmax - self.qmin + 1 if one_sided else (self.qmax - self.qmin + 1) // 2
        if top == 0 or levels >= self.bins:
            # Too few bins to tell thresholds apart (16-bit): keep the full range.
            return histogram.data_min, histogram.data_max
        edges = np.linspace(0.0, top, self.bins + 1)
        if one_sided:
            magnitudes = histogram.cumulative(edges)
        else:  # counts of |x| <= t are cdf(t) - cdf(-t)
            magnitudes = histogram.cumulative(edges) - histogram.cumulative(-edges)
            magnitudes[0] = 0.0
        counts = np.maximum(np.diff(magnitudes), 0.0)
        candidates = list(range(levels, self.bins + 1, self.stride))
        if candidates[-1] != self.bins:
            candidates.append(self.bins)
        divergences = [_clipping_divergence(counts, i, levels) for i in candidates]
        threshold = edges[candidates[int(np.argmin(divergences))]]
        if one_sided:
            return histogram.data_min, min(threshold, histogram.data_max)
        return max(-threshold, histogram.data_min), min(threshold, histogram.data_max)


def _clipping_divergence(counts: np.ndarray, i: int, levels: int) -> float:
    """KL(P || Q) for threshold bin i: P is counts[:i] with the tail folded into the last bin;
    Q spreads each of `levels` merged chunks of counts[:i] evenly over its nonzero bins."""
    reference = counts[:i].copy()
    reference[-1] += counts[i:].sum()
    chunk = (np.arange(i) * levels) // i
    nonzero = reference > 0
    chunk_totals = np.bincount(chunk, weights=counts[:i], minlength=levels)
    chunk_nonzero = np.bincount(chunk, weights=nonzero.astype(float), minlength=levels)
    spread = np.where(nonzero, chunk_totals[chunk] / np.maximum(chunk_nonzero[chunk], 1), 0.0)
    p = reference / reference.sum()
    if spread.sum() == 0:
        return float("inf")
    q = spread / spread.sum()
    # A bin P has and Q lacks would make the divergence infinite; smooth it as TensorRT does.
    q = np.where(nonzero & (q == 0), 1e-10, q)
    return float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))


OBSERVERS = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "kl": KLObserver,
}
# Observers whose choice depends on the quantization grid (they take the scheme).
SCHEME_OBSERVERS = {"mse", "kl"}


def make_observer(name: str, scheme=None, axis: int | None = None, **options):
    """Construct observer `name`; `scheme` (bits, symmetric, signed, narrow_range attributes,
    e.g. a QScheme) is passed to those that need it."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; valid observers: {', '.join(OBSERVERS)}")
    if name in SCHEME_OBSERVERS and scheme is not None:
        options = dict(bits=scheme.bits, symmetric=scheme.symmetric, signed=scheme.signed,
                       narrow_range=scheme.narrow_range, **options)
    return OBSERVERS[name](axis=axis, **options)
