"""Fixed-point requantization: the vectorised int64 rule equals the Python-integer oracle,
and the represented multiplier is within 2**-31 relative error of the real one."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.numerics.fixed_point import (
    quantize_multiplier,
    quantize_multipliers,
    requantize,
    requantize_reference,
)

multipliers = st.floats(min_value=2.0**-30, max_value=2.0**29, allow_nan=False, allow_infinity=False)


@given(multipliers)
def test_multiplier_is_normalised_and_accurate(m):
    m0, shift = quantize_multiplier(m)
    assert (1 << 30) <= m0 < (1 << 31)
    represented = Fraction(m0, 1 << (31 + shift))
    assert abs(represented - Fraction(m)) <= Fraction(m) * Fraction(1, 1 << 31)


@pytest.mark.parametrize("bad", [0.0, -0.5, math.inf, math.nan])
def test_multiplier_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match="must be finite and > 0"):
        quantize_multiplier(bad)


@pytest.mark.parametrize("bad", [2.0**31, 2.0**-40])
def test_multiplier_out_of_int64_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"outside \[2\*\*-31, 2\*\*30\)"):
        quantize_multiplier(bad)


def test_mantissa_that_rounds_up_to_one_renormalises():
    m0, shift = quantize_multiplier(1.0 - 2.0**-40)
    assert (m0, shift) == (1 << 30, -1)


@settings(max_examples=200)
@given(
    acc=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=16),
    m=st.floats(min_value=2.0**-20, max_value=4.0),
    zero_point=st.integers(-128, 255),
    signed=st.booleans(),
)
def test_requantize_matches_python_integer_oracle(acc, m, zero_point, signed):
    qmin, qmax = (-128, 127) if signed else (0, 255)
    m0, shift = quantize_multiplier(m)
    got = requantize(np.array(acc, np.int32), m0, shift, zero_point, qmin, qmax)
    expected = [requantize_reference(a, m0, shift, zero_point, qmin, qmax) for a in acc]
    assert got.tolist() == expected


@given(acc=st.integers(-(2**20), 2**20), m=st.floats(min_value=2.0**-12, max_value=1.0))
def test_requantize_rounds_to_nearest_with_ties_up(acc, m):
    m0, shift = quantize_multiplier(m)
    exact = Fraction(acc) * Fraction(m0, 1 << (31 + shift))
    got = int(requantize(np.array([acc], np.int32), m0, shift, 0, -(2**31), 2**31 - 1)[0])
    assert math.floor(exact + Fraction(1, 2)) == got


def test_ties_round_toward_positive_infinity():
    m0, shift = quantize_multiplier(0.5)
    got = requantize(np.array([-3, -1, 1, 3], np.int32), m0, shift, 0, -128, 127)
    assert got.tolist() == [-1, 0, 1, 2]


def test_per_channel_requantize_along_axis():
    acc = np.arange(-12, 12, dtype=np.int32).reshape(1, 3, 2, 4)
    m0, shift = quantize_multipliers(np.array([0.5, 0.25, 1.0]))
    got = requantize(acc, m0, shift, np.array([0, 1, -1]), -128, 127, axis=1)
    for c in range(3):
        expected = requantize(acc[:, c], int(m0[c]), int(shift[c]), [0, 1, -1][c], -128, 127)
        np.testing.assert_array_equal(got[:, c], expected)


def test_saturation_clamps_to_range():
    m0, shift = quantize_multiplier(1.0)
    got = requantize(np.array([-1000, 1000], np.int32), m0, shift, 0, -128, 127)
    assert got.tolist() == [-128, 127]


def test_requantize_refuses_non_int32_accumulators():
    with pytest.raises(TypeError, match="int32 accumulators"):
        requantize(np.array([1], np.int64), 1 << 30, 0, 0, -128, 127)
