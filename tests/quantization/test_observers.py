"""Range observers on synthetic data with known answers."""

import math

import numpy as np
import pytest

from qcompiler.numerics.quant import choose_qparams, fake_quantize, quant_range
from qcompiler.quantization.observers import (
    KLObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    StreamingHistogram,
    make_observer,
)


def batches(data: np.ndarray, count: int):
    return np.array_split(data, count)


def quantization_mse(data, lo, hi, bits, symmetric, signed):
    scale, zero_point = choose_qparams(lo, hi, bits=bits, symmetric=symmetric, signed=signed)
    qmin, qmax = quant_range(bits, signed)
    return float(np.mean((fake_quantize(data, scale, zero_point, qmin, qmax) - data) ** 2))


def test_minmax_per_tensor_and_per_channel():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((6, 3, 4))
    per_tensor, per_channel = MinMaxObserver(), MinMaxObserver(axis=1)
    for batch in batches(data, 3):
        per_tensor.update(batch)
        per_channel.update(batch)
    assert per_tensor.range() == (data.min(), data.max())
    lo, hi = per_channel.range()
    np.testing.assert_array_equal(lo, data.min(axis=(0, 2)))
    np.testing.assert_array_equal(hi, data.max(axis=(0, 2)))


def test_moving_average_follows_the_exponential_average():
    observer = MovingAverageMinMaxObserver(averaging_constant=0.5)
    observer.update(np.array([-2.0, 2.0]))
    observer.update(np.array([-4.0, 10.0]))  # one odd batch moves the range only halfway
    assert observer.range() == (-3.0, 6.0)


def test_streaming_histogram_quantiles_match_numpy_after_the_range_grows():
    rng = np.random.default_rng(1)
    data = rng.standard_normal(200_000)
    histogram = StreamingHistogram(2048)
    # Sorted batches: every batch extends the range, so the counts are re-spread each time.
    for batch in batches(np.sort(data)[::-1], 20):
        histogram.add(batch)
    assert histogram.counts.shape == (2048,) and histogram.counts.sum() == pytest.approx(len(data))
    for fraction in (0.001, 0.1, 0.5, 0.9, 0.999):
        assert histogram.quantile(fraction) == pytest.approx(np.quantile(data, fraction), abs=0.02)


def test_percentile_of_known_distributions():
    rng = np.random.default_rng(2)
    uniform = PercentileObserver(percentile=99.0)
    for batch in batches(rng.uniform(0, 1, 100_000), 10):
        uniform.update(batch)
    lo, hi = uniform.range()
    assert lo == pytest.approx(0.01, abs=0.003) and hi == pytest.approx(0.99, abs=0.003)
    normal = PercentileObserver(percentile=99.865)  # Phi(3) = 0.99865
    for batch in batches(rng.standard_normal(400_000), 10):
        normal.update(batch)
    lo, hi = normal.range()
    assert lo == pytest.approx(-3.0, abs=0.06) and hi == pytest.approx(3.0, abs=0.06)


# Measured ratios (MSE-chosen / min-max error) are about 0.17 at 4 bits and 0.73 at 8 bits.
@pytest.mark.parametrize(("bits", "symmetric", "bound"),
                         [(4, True, 0.3), (8, True, 0.85), (4, False, 0.3), (8, False, 0.9)])
def test_mse_clipping_beats_minmax_on_heavy_tails(bits, symmetric, bound):
    rng = np.random.default_rng(3)
    data = rng.standard_t(df=3, size=100_000)  # heavy tails: a few large outliers
    mse, minmax = MSEObserver(bits=bits, symmetric=symmetric, signed=True), MinMaxObserver()
    for batch in batches(data, 5):
        mse.update(batch)
        minmax.update(batch)
    lo, hi = mse.range()
    assert data.min() < lo < 0 < hi < data.max()
    if symmetric:
        assert lo == -hi
    clipped = quantization_mse(data, lo, hi, bits, symmetric, True)
    full = quantization_mse(data, *minmax.range(), bits, symmetric, True)
    assert clipped < bound * full
    # Close to the best symmetric clip found by brute force on the raw data.
    if symmetric:
        brute = min(quantization_mse(data, -t, t, bits, True, True)
                    for t in np.geomspace(0.5, np.abs(data).max(), 200))
        assert clipped < 1.02 * brute


def test_mse_keeps_the_full_range_of_uniform_data_and_zero_floor_of_relu_data():
    rng = np.random.default_rng(4)
    observer = MSEObserver(bits=8, signed=False)
    observer.update(rng.uniform(0, 1, 100_000))
    lo, hi = observer.range()
    assert lo == 0.0 and hi > 0.97  # clipping a uniform distribution only adds error
    data = np.maximum(rng.laplace(size=100_000), 0)
    asymmetric = MSEObserver(bits=4, signed=False)
    asymmetric.update(data)
    lo, hi = asymmetric.range()
    assert lo == 0.0 and hi < data.max()
    assert quantization_mse(data, lo, hi, 4, False, False) < quantization_mse(
        data, 0, data.max(), 4, False, False)


def test_kl_chooses_a_range_inside_minmax_for_heavy_tails_and_keeps_uniform_data():
    rng = np.random.default_rng(5)
    heavy = rng.laplace(size=200_000)
    observer = KLObserver(bits=8, symmetric=True, signed=True)
    observer.update(heavy)
    lo, hi = observer.range()
    assert heavy.min() < lo < 0 < hi < heavy.max() and hi == -lo
    relu = np.maximum(heavy, 0)
    one_sided = KLObserver(bits=8, signed=False)
    one_sided.update(relu)
    lo, hi = one_sided.range()
    assert lo == 0.0 and 0 < hi < relu.max()
    uniform = KLObserver(bits=8, signed=False)
    uniform.update(rng.uniform(0, 1, 100_000))
    assert uniform.range()[1] > 0.95


@pytest.mark.parametrize("zeros", [0, 10_000, 100_000, 1_000_000])
def test_kl_threshold_ignores_exact_zeros(zeros):
    """A ReLU's spike at 0 is exact on every grid: however many zeros come, in whichever
    batch, the threshold is the one the nonzero values give (before, a large spike pulled
    it down to the smallest candidate, 1/8 of the range)."""
    positive = np.abs(np.random.default_rng(8).laplace(size=100_000))
    alone = KLObserver(bits=8, signed=False)
    alone.update(positive)
    observer = KLObserver(bits=8, signed=False)
    if zeros:
        observer.update(np.zeros(zeros))  # a batch of zeros first: the histogram starts later
    observer.update(np.concatenate([positive[:50_000], np.zeros(zeros), positive[50_000:]]))
    lo, hi = observer.range()
    assert lo == (0.0 if zeros else positive.min())
    assert hi == alone.range()[1]
    assert positive.max() / 4 < hi < positive.max()


def test_kl_of_only_zeros_is_the_zero_range():
    observer = KLObserver(bits=8, signed=False)
    observer.update(np.zeros(100))
    assert observer.range() == (0.0, 0.0)


def test_kl_keeps_the_full_range_when_bins_cannot_resolve_16_bit_levels():
    observer = KLObserver(bits=16, signed=True, symmetric=True)
    data = np.random.default_rng(6).laplace(size=10_000)
    observer.update(data)
    assert observer.range() == (data.min(), data.max())


def test_per_channel_histogram_observers():
    rng = np.random.default_rng(7)
    data = rng.standard_normal((4, 1000)) * np.array([[1.0], [2.0], [4.0], [8.0]])
    observer = PercentileObserver(percentile=99.865, axis=0)
    observer.update(data)
    lo, hi = observer.range()
    assert lo.shape == hi.shape == (4,)
    # Each channel's own percentiles, computed independently: between the two order
    # statistics np.quantile interpolates between, to within one histogram bin.
    ordered = np.sort(data, axis=1)
    bin_width = (ordered[:, -1] - ordered[:, 0]) / 2048
    for value, fraction in ((lo, 0.00135), (hi, 0.99865)):
        position = fraction * (data.shape[1] - 1)
        below, above = ordered[:, math.floor(position)], ordered[:, math.ceil(position)]
        assert ((value >= below - bin_width) & (value <= above + bin_width)).all()
    # And the population's: 99.865% of a normal lies below 3 sigma. With 1000 samples the
    # sample percentile's standard error is sqrt(p (1 - p) / n) / pdf(3) = 0.26 sigma, 8.7%
    # of 3 sigma, so 25% is three standard errors (23.7% is the worst of seeds 7-29).
    np.testing.assert_allclose(hi, 3 * np.array([1.0, 2.0, 4.0, 8.0]), rtol=0.25)


def test_make_observer_passes_the_scheme_to_those_that_need_it():
    class Scheme:
        bits, symmetric, signed, narrow_range = 4, True, True, True

    observer = make_observer("mse", Scheme(), axis=0)
    assert (observer.qmin, observer.qmax, observer.symmetric, observer.axis) == (-7, 7, True, 0)
    assert isinstance(make_observer("percentile", Scheme(), percentile=99.9), PercentileObserver)


def test_observer_errors():
    with pytest.raises(ValueError, match="MinMaxObserver has seen no data; call update"):
        MinMaxObserver().range()
    with pytest.raises(ValueError, match="cannot observe an empty array"):
        MinMaxObserver().update(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"percentile must be in \(50, 100\], got 40"):
        PercentileObserver(percentile=40)
    with pytest.raises(ValueError, match=r"averaging_constant must be in \(0, 1\], got 0"):
        MovingAverageMinMaxObserver(averaging_constant=0)
    with pytest.raises(ValueError, match="unknown observer 'histogram'; valid observers: minmax, "
                                         "moving_average, percentile, mse, kl"):
        make_observer("histogram")
    observer = MinMaxObserver(axis=0)
    observer.update(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="observer has 3 channels on axis 0, got an array with 4"):
        observer.update(np.zeros((4, 2)))
