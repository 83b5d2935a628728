"""The weight-only int4 linear's integer arithmetic (spec section 14): int4 packing round
trips, the numpy kernel and the torch semantics both equal a Python-integer reference
element for element (hypothesis), and the fixed point keeps |p| inside int64 while the
multipliers carry 30-31 bits where the bound allows."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.backends import interpreter_ops
from qcompiler.ir import integer_ops
from qcompiler.numerics import grouped_integer as gi


@given(seed=st.integers(0, 2**16), rows=st.integers(1, 4), half=st.integers(1, 8))
def test_int4_packing_round_trips(seed, rows, half):
    codes = np.random.default_rng(seed).integers(0, 16, size=(rows, 2 * half)).astype(np.uint8)
    packed = gi.pack_int4(codes)
    assert packed.shape == (rows, half)
    assert packed[0, 0] == codes[0, 0] | (codes[0, 1] << 4)
    np.testing.assert_array_equal(gi.unpack_int4(packed), codes)


def test_packing_refuses_wide_codes():
    with pytest.raises(ValueError, match=r"codes \[rows, even columns\] in \[0, 15\]"):
        gi.pack_int4(np.full((1, 2), 16, np.uint8))


def random_layer(seed, rows, groups, group_size, wide_input):
    generator = np.random.default_rng(seed)
    columns = groups * group_size
    codes = generator.integers(0, 16, size=(rows, columns)).astype(np.uint8)
    zeros = generator.integers(0, 16, size=(rows, groups)).astype(np.uint8)
    scales = (generator.uniform(0.2, 2.0, size=(rows, groups)) * 1e-2).astype(np.float32)
    bias = generator.normal(size=rows).astype(np.float32)
    if wide_input:
        x_q, z_x, offset = generator.integers(-32768, 32768, size=(3, columns)), 5, 32773
    else:
        x_q, z_x, offset = generator.integers(0, 256, size=(3, columns)), 128, 128
    code_offsets = np.abs(codes.astype(np.int64) - np.repeat(zeros, group_size, axis=1)).reshape(
        rows, groups, group_size).max(axis=2)
    x_scale = 1e-4 if wide_input else 2e-2
    k, b, shift, _ = gi.group_multipliers(x_scale, scales, 0.05, bias, input_offset=offset,
                                          code_offsets=code_offsets, group_size=group_size)
    return x_q, z_x, codes, zeros, k, b, shift


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 4), groups=st.integers(1, 3),
       group_size=st.sampled_from([2, 8, 32]), wide_input=st.booleans())
def test_kernel_and_torch_semantics_equal_the_python_integer_reference(seed, rows, groups, group_size,
                                                                       wide_input):
    x_q, z_x, codes, zeros, k, b, shift = random_layer(seed, rows, groups, group_size, wide_input)
    dtype = "i16" if wide_input else "u8"
    low, high = (-32768, 32767) if wide_input else (0, 255)
    output = {"output_zero_point": 3, "output_min": low, "output_max": high, "output_dtype": dtype}
    want = gi.reference_output(x_q, z_x, codes, zeros, k, b, shift, group_size, 3, low, high)
    x = x_q.astype(np.int16 if wide_input else np.uint8)
    packed = gi.pack_int4(codes)
    got = interpreter_ops.qlinear_grouped(x, packed, zeros, k, b, shift, group_size=group_size,
                                          input_zero_point=z_x, **output)
    np.testing.assert_array_equal(got.astype(np.int64), want)
    semantics = integer_ops.qlinear_grouped(*(torch.from_numpy(np.ascontiguousarray(a))
                                              for a in (x, packed, zeros, k, b, shift)),
                                            group_size=group_size, input_zero_point=z_x, **output)
    np.testing.assert_array_equal(semantics.numpy().astype(np.int64), want)


def test_multipliers_are_the_real_ratios_on_one_fixed_point():
    scales = np.array([[0.01, 0.02, 0.005]], np.float32)
    k, b, shift, lowered = gi.group_multipliers(0.1, scales, 0.5, np.array([1.0], np.float32),
                                                input_offset=128, code_offsets=np.full((1, 3), 15),
                                                group_size=128)
    t = 31 + int(shift[0])
    assert lowered == 0 and 2**30 <= k.max() < 2**31
    real = np.float64(np.float32(0.1)) * scales.astype(np.float64) / np.float64(np.float32(0.5))
    np.testing.assert_allclose(k / 2.0**t, real, rtol=2**-30)
    assert b[0] == round(float(np.float32(1.0)) / float(np.float32(0.5)) * 2**t)


def test_a_large_bound_lowers_the_fixed_point_to_fit_int64():
    """16-bit inputs, 64 groups of 128, a large real multiplier: the precise choice would let
    |p| reach 2**62, so t drops until the worst case fits; the result still computes."""
    scales = np.full((2, 64), 10.0, np.float32)
    k, _, shift, lowered = gi.group_multipliers(1.0, scales, 1e-3, None, input_offset=65535,
                                                code_offsets=np.full((2, 64), 15), group_size=128)
    worst = (k.astype(np.float64) * 65535 * 15 * 128).sum(axis=1)
    assert lowered == 2 and (worst < 2**62).all()
