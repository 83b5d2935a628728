"""Binary, ternary and power-of-two quantizers against hand-written references (loops over
channels and entries, brute-force nearest level)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcompiler.errors import OptionError
from qcompiler.numerics import low_bit

weights = hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 12)),
                     elements=st.floats(-8, 8, width=32))


@settings(max_examples=80)
@given(weights)
def test_binary_is_sign_times_mean_absolute_value_per_channel(weight):
    quantized, alpha = low_bit.binarize(weight)
    for c in range(weight.shape[0]):
        a = sum(abs(float(v)) for v in weight[c]) / weight.shape[1]
        assert alpha[c] == pytest.approx(a, rel=1e-9, abs=1e-12)
        for v, q in zip(weight[c], quantized[c], strict=True):
            assert q == np.float32(a if v >= 0 else -a)


@settings(max_examples=80)
@given(weights)
def test_ternary_follows_the_twn_threshold(weight):
    quantized, alpha = low_bit.ternarize(weight)
    for c in range(weight.shape[0]):
        row = [float(v) for v in weight[c]]
        delta = 0.7 * sum(abs(v) for v in row) / len(row)
        kept = [abs(v) for v in row if abs(v) > delta]
        a = sum(kept) / len(kept) if kept else 0.0
        expected = [np.float32(a if v > delta else -a if v < -delta else 0.0) for v in row]
        np.testing.assert_allclose(quantized[c], expected, rtol=1e-6)
        assert len(set(quantized[c].tolist()) - {0.0}) <= 2


@settings(max_examples=80)
@given(weights, st.integers(2, 6))
def test_power_of_two_is_the_nearest_inq_level(weight, bits):
    quantized, _ = low_bit.power_of_two(weight, bits)
    for c in range(weight.shape[0]):
        largest = max(abs(float(v)) for v in weight[c])
        if largest == 0:
            assert not quantized[c].any()
            continue
        n1 = int(np.floor(np.log2(4 * largest / 3)))
        n2 = n1 + 1 - 2 ** (bits - 1) // 2
        levels = [0.0] + [s * 2.0 ** n for n in range(n2, n1 + 1) for s in (1, -1)]
        for v, q in zip(weight[c], quantized[c], strict=True):
            best = min(abs(float(v) - level) for level in levels)
            assert abs(float(v) - float(q)) == pytest.approx(best, abs=1e-6)
            assert float(q) in levels
        # INQ: 2^(bits-1) / 2 magnitudes, each with both signs, and zero
        assert len({abs(float(q)) for q in quantized[c]} - {0.0}) <= 2 ** (bits - 1) // 2


@pytest.mark.parametrize("bits", [1, 9, 2.0])
def test_power_of_two_bits_out_of_range(bits):
    with pytest.raises(OptionError, match=r"bits must be an int in \[2, 8\]"):
        low_bit.power_of_two(np.ones((2, 2), np.float32), bits)


def test_unknown_scheme():
    with pytest.raises(OptionError, match="unknown low-bit scheme 'quaternary'"):
        low_bit.quantize(np.ones((2, 2), np.float32), "quaternary")
