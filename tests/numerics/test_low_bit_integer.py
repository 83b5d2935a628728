"""Recognising low-bit weights, their exact integer grids, shift codes, sign-bit packing, the
quantization-aware pruning angle, and the straight-through sign."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.ir.low_bit_ops import sign
from qcompiler.numerics import importance, low_bit
from qcompiler.numerics.quant import fake_quantize


def test_scheme_of_recognises_each_quantizer_up_to_a_channel_scale():
    weight = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    channel_scale = np.array([1.0, 0.3, 7.0, 0.01], np.float32).reshape(4, 1, 1, 1)
    for scheme in low_bit.SCHEMES:
        quantized = low_bit.quantize(weight, scheme, 4)
        assert low_bit.scheme_of(quantized) == scheme
        assert low_bit.scheme_of(quantized * channel_scale) == scheme  # a folded batch norm
    assert low_bit.scheme_of(weight) is None
    assert low_bit.scheme_of(np.zeros((2, 3))) is None


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(low_bit.SCHEMES), st.integers(3, 4))
def test_integer_grid_puts_low_bit_weights_on_exact_powers_of_two(seed, scheme, bits):
    weight = np.random.default_rng(seed).normal(size=(3, 10)).astype(np.float32)
    quantized = low_bit.quantize(weight, scheme, bits)
    scale = low_bit.integer_grid(quantized, 127)
    assert scale is not None
    q = np.round(quantized / scale[:, None]).astype(np.int64)
    codes = low_bit.shift_codes(q)
    assert codes is not None  # every integer is 0 or +-2^k
    np.testing.assert_array_equal(low_bit.decode_shift_codes(codes), q)
    assert np.abs(q).max() == 64  # the largest power of two <= 127
    # Fake quantization on that grid changes nothing: simulation keeps the low-bit values.
    np.testing.assert_array_equal(fake_quantize(quantized, scale, np.zeros(3, np.int32), -127, 127, 0),
                                  quantized)


def test_integer_grid_refuses_a_weight_spanning_more_powers_than_the_range_holds():
    weight = np.array([[1.0, 2.0 ** -8, 0.5, 0.25]], np.float32)  # 2^-8: below 2^-6 of the top
    assert low_bit.scheme_of(weight) == "power_of_two"
    assert low_bit.integer_grid(weight, 127) is None
    assert low_bit.integer_grid(np.ones((1, 3)) * 0.3 + np.arange(3), 127) is None  # float weight


def test_shift_codes_by_hand():
    np.testing.assert_array_equal(low_bit.shift_codes(np.array([0, 1, -1, 8, -64])), [0, 1, -1, 4, -7])
    assert low_bit.shift_codes(np.array([3])) is None


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(1, 21))
def test_sign_bits_round_trip(seed, channels, per_channel):
    weight = np.random.default_rng(seed).choice([-1, 1], (channels, per_channel))
    bits = low_bit.pack_signs(weight)
    assert bits.shape == (channels, math.ceil(per_channel / 8)) and bits.dtype == np.uint8
    np.testing.assert_array_equal(low_bit.unpack_signs(bits, weight.shape), weight)


def test_low_bit_angle_is_the_hand_computed_binary_angle():
    rows = np.array([[1.0, -1.0, 1.0, -1.0], [3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    angles = importance.low_bit_angles(rows, "binary")
    # arccos(|w|_1 / (sqrt(n) |w|_2)): equal magnitudes lose nothing of the direction.
    assert angles[0] == pytest.approx(0.0, abs=1e-7)
    assert angles[1] == pytest.approx(math.acos(4 / (2 * math.sqrt(10))))
    assert angles[2] == 0.0
    # TWN's threshold 0.7 * mean|w| = 0.7 keeps 3 and 1: the ternary kernel is alpha (1, 1, 0, 0).
    assert importance.low_bit_angles(rows[1:2], "ternary")[0] == pytest.approx(
        math.acos(4 / (math.sqrt(10) * math.sqrt(2))))
    assert importance.low_bit_angles(np.array([[3.0, 0.1, 0.0, 0.0]]), "ternary")[0] == pytest.approx(
        math.acos(3 / math.sqrt(9.01)))  # 0.1 < 0.7 * 0.775: only the 3 survives


def test_sign_is_plus_minus_one_with_a_straight_through_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = sign(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.backward(torch.arange(1.0, 6.0))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]  # hard tanh's derivative: |x| <= 1
