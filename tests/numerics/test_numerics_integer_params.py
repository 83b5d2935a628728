"""Compile-time integer parameters: each helper against exact rational arithmetic or a hand
computation (docs/integer-spec.md sections 1, 3-7, 9)."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.numerics.integer_params import (
    add_multipliers,
    average_multipliers,
    bias_scales,
    fake_quantize_bias,
    fused_clamp,
    largest_offset,
    lookup_table,
    quantize_bias,
    weighted_multipliers,
    worst_case_accumulator,
)

scales = st.floats(1e-4, 1.0).map(lambda s: float(np.float32(s)))


def represented(m0: int, shift: int) -> Fraction:
    return Fraction(m0, 1 << (31 + shift))


@settings(max_examples=100, deadline=None)
@given(scales, st.lists(scales, min_size=1, max_size=4), scales)
def test_weighted_multipliers_represent_the_scale_ratio(s_in, s_w, s_out):
    m0, shift = weighted_multipliers(s_in, np.array(s_w, np.float32), s_out)
    assert m0.dtype == np.int32 and shift.dtype == np.int32
    for m, t, w in zip(m0, shift, s_w, strict=True):
        exact = Fraction(s_in) * Fraction(w) / Fraction(s_out)
        assert (1 << 30) <= m < (1 << 31)
        assert abs(represented(int(m), int(t)) - exact) <= exact * Fraction(1, 1 << 30)


def test_bias_is_rounded_half_to_even_at_scale_s_in_times_s_w():
    s_in, s_w = 0.5, np.array([0.25, 1.0], np.float32)
    # b / (s_in * s_w): 0.3125 / 0.125 = 2.5 -> 2 (even);  1.5 / 0.5 = 3.0 -> 3
    bias_q, saturated = quantize_bias(np.array([0.3125, 1.5], np.float32), s_in, s_w, 2)
    assert bias_q.tolist() == [2, 3] and bias_q.dtype == np.int32 and saturated == 0


def test_bias_saturates_to_int32_and_counts_it():
    bias_q, saturated = quantize_bias(np.array([1e6, -1e6, 1.0], np.float32), 1e-4, np.full(3, 1e-4), 3)
    assert bias_q.tolist() == [2**31 - 1, -(2**31), 10**8] and saturated == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-10.0, 10.0, width=32), min_size=1, max_size=6), scales,
       st.lists(scales, min_size=1, max_size=6), st.booleans())
def test_simulated_bias_is_the_int32_bias_times_its_step(bias, s_in, s_w, per_channel):
    """What simulation adds (fake_quantize_bias) is exactly what the integer kernel adds
    (quantize_bias), expressed in real units: dividing it by the step gives back the integers,
    and it lies within half a step of the float bias (one rounding, half to even)."""
    bias = np.array(bias, np.float32)
    weight_scales = np.resize(np.array(s_w, np.float32), len(bias) if per_channel else 1)
    step = bias_scales(s_in, weight_scales, len(bias))
    integers, saturated = quantize_bias(bias, s_in, weight_scales, len(bias))
    simulated = fake_quantize_bias(bias, s_in, weight_scales)
    assert simulated.dtype == np.float32 and simulated.shape == bias.shape and saturated == 0
    np.testing.assert_array_equal(np.rint(simulated.astype(np.float64) / step), integers)
    error = np.abs(simulated.astype(np.float64) - bias)
    assert (error <= step / 2 * (1 + 1e-6) + np.abs(bias) * 2**-23).all()
    # Rounding a simulated bias again changes nothing: the grid is a fixed point.
    np.testing.assert_array_equal(quantize_bias(simulated, s_in, weight_scales, len(bias))[0], integers)


def test_bias_step_is_formed_in_float64_per_channel():
    s_in, s_w = np.float32(0.1), np.array([0.3, 0.7], np.float32)
    step = bias_scales(np.array([s_in]), s_w, 2)
    assert step.dtype == np.float64
    assert step.tolist() == [float(s_in) * float(s_w[0]), float(s_in) * float(s_w[1])]
    assert bias_scales(s_in, np.array([0.5], np.float32), 3).tolist() == [float(s_in) * 0.5] * 3


def test_absent_bias_is_zero():
    bias_q, saturated = quantize_bias(None, 0.1, np.array([0.2]), 4)
    assert bias_q.tolist() == [0, 0, 0, 0] and saturated == 0


@settings(max_examples=100, deadline=None)
@given(scales, scales, scales, st.booleans())
def test_add_multipliers_share_one_shift(s_a, s_b, s_out, subtract):
    ka, kb, shift = add_multipliers(s_a, s_b, s_out, subtract)
    t = 31 + shift
    assert (1 << 30) <= max(abs(ka), abs(kb)) < (1 << 31)
    for k, s, sign in ((ka, s_a, 1), (kb, s_b, -1 if subtract else 1)):
        exact = sign * Fraction(s) / Fraction(s_out)
        # One rounding of M * 2**t to an integer: within half a unit of the last place.
        tolerance = Fraction(1, 1 << (t + 1)) + abs(exact) * Fraction(1, 1 << 31)
        assert abs(Fraction(k, 1 << t) - exact) <= tolerance


def test_average_multipliers_are_indexed_by_count_minus_one():
    m0, shift = average_multipliers(0.5, 0.25, 9)
    assert len(m0) == len(shift) == 9
    for count in range(1, 10):
        exact = Fraction(1, 2) / (Fraction(1, 4) * count)
        assert abs(represented(m0[count - 1], shift[count - 1]) - exact) <= exact * Fraction(1, 1 << 30)


def test_fused_relu_and_relu6_clamp_the_output():
    # scale 0.05, zero point 10: real 0 is q = 10, real 6 is q = 10 + 120 = 130.
    assert fused_clamp(0, 255, 0.05, 10, []) == (0, 255)
    assert fused_clamp(0, 255, 0.05, 10, [(0.0, None)]) == (10, 255)
    assert fused_clamp(0, 255, 0.05, 10, [(0.0, 6.0)]) == (10, 130)
    # Bounds past the integer range stay at the range; consecutive clamps intersect.
    assert fused_clamp(-128, 127, 0.05, 0, [(-100.0, 100.0), (None, 1.0)]) == (-128, 20)


def test_clamps_with_no_common_range_are_refused():
    with pytest.raises(ValueError, match="empty output range"):
        fused_clamp(0, 255, 0.1, 0, [(5.0, None), (None, 1.0)])


def test_lookup_table_is_the_simulated_function_per_integer():
    """table[q - qmin] = clamp(round(f(s_in (q - z_in)) / s_out) + z_out), rounding as the graph
    boundary does; here f = tanh, by Python floats one entry at a time."""
    s_in, z_in, s_out, z_out = 0.03, 128, 1 / 127, 0
    table = lookup_table(np.tanh, s_in, z_in, (0, 255), s_out, z_out, (-128, 127))
    inverse = np.float32(1) / np.float32(s_out)
    for q in range(256):
        real = np.float32(np.float32(q - z_in) * np.float32(s_in))
        expected = min(max(round(float(np.float32(np.tanh(real) * inverse))) + z_out, -128), 127)
        assert table[q] == expected


def test_identity_table_with_equal_parameters_maps_each_integer_to_itself():
    table = lookup_table(lambda x: x, 0.1, 5, (-128, 127), 0.1, 5, (-128, 127))
    assert table.tolist() == list(range(-128, 128))


def test_worst_case_accumulator_by_hand():
    weight = np.array([[1, -2, 3], [127, 127, -127]], np.int8)
    bias = np.array([-10, 5], np.int32)
    offset = largest_offset(0, 255, 100)  # max(|0 - 100|, |255 - 100|) = 155
    assert offset == 155
    assert worst_case_accumulator(weight, bias, offset).tolist() == [10 + 6 * 155, 5 + 381 * 155]
    assert worst_case_accumulator(weight, None, 1).tolist() == [6, 381]
