"""The affine quantization arithmetic: hand-computed reference and torch agree bit for bit."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.numerics.quant import (
    choose_qparams,
    dequantize,
    fake_quantize,
    quant_range,
    quantize,
    sqnr_db,
)


@st.composite
def schemes(draw):
    """Every scheme the config allows: bits 2..8 and 16, (a)symmetric, signed or not, narrow."""
    bits = draw(st.sampled_from([2, 3, 4, 5, 6, 7, 8, 16]))
    signed = draw(st.booleans())
    symmetric = signed and draw(st.booleans())
    narrow_range = signed and draw(st.booleans())
    return dict(bits=bits, signed=signed, symmetric=symmetric, narrow_range=narrow_range)


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


def reference_fake_quant(value: float, scale: float, zero_point: int, qmin: int, qmax: int):
    """One element by hand: float32 product with the float32 reciprocal, Python's round
    (half to even), clamp, then (q - zp) * scale in float32."""
    inverse = np.float32(1.0) / np.float32(scale)
    product = float(np.float32(value) * inverse)
    q = min(max(round(product) + zero_point, qmin), qmax)
    return np.float32(np.float32(q - zero_point) * np.float32(scale))


@settings(max_examples=200, deadline=None)
@given(scheme=schemes(), lo=finite, width=st.floats(0, 1e3, width=32),
       values=st.lists(finite, min_size=1, max_size=20))
def test_per_tensor_fake_quant_matches_hand_reference_and_torch(scheme, lo, width, values):
    hi = lo + width
    scale, zero_point = choose_qparams(lo, hi, **scheme)
    qmin, qmax = quant_range(scheme["bits"], scheme["signed"], scheme["narrow_range"])
    x = np.array(values, np.float32)
    ours = fake_quantize(x, scale, zero_point, qmin, qmax)
    by_hand = np.array([reference_fake_quant(v, scale[0], int(zero_point[0]), qmin, qmax)
                        for v in x], np.float32)
    by_torch = torch.fake_quantize_per_tensor_affine(
        torch.from_numpy(x), torch.from_numpy(scale), torch.from_numpy(zero_point), qmin, qmax)
    np.testing.assert_array_equal(ours, by_hand)
    np.testing.assert_array_equal(ours, by_torch.numpy())


@settings(max_examples=100, deadline=None)
@given(scheme=schemes(), seed=st.integers(0, 2**31 - 1), axis=st.integers(0, 2))
def test_per_channel_fake_quant_matches_torch(scheme, seed, axis):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 4, 5)) * rng.uniform(0.01, 10)).astype(np.float32)
    channels = x.shape[axis]
    lo = np.minimum(rng.standard_normal(channels), 0) * 2
    hi = np.maximum(rng.standard_normal(channels), 0) * 2
    scale, zero_point = choose_qparams(lo, hi, **scheme)
    qmin, qmax = quant_range(scheme["bits"], scheme["signed"], scheme["narrow_range"])
    ours = fake_quantize(x, scale, zero_point, qmin, qmax, axis=axis)
    by_torch = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x), torch.from_numpy(scale), torch.from_numpy(zero_point), axis, qmin, qmax)
    np.testing.assert_array_equal(ours, by_torch.numpy())
    moved = np.moveaxis(x, axis, 0)
    for c in range(channels):  # per channel == per tensor with that channel's parameters
        np.testing.assert_array_equal(
            np.moveaxis(ours, axis, 0)[c],
            fake_quantize(moved[c], scale[c], zero_point[c], qmin, qmax))


@settings(max_examples=200, deadline=None)
@given(scheme=schemes(), lo=st.floats(-100, 0, width=32), hi=st.floats(0, 100, width=32),
       fractions=st.lists(st.floats(0, 1), min_size=1, max_size=10))
def test_values_inside_the_range_move_by_at_most_half_a_step_and_zero_is_exact(
        scheme, lo, hi, fractions):
    scale, zero_point = choose_qparams(lo, hi, **scheme)
    qmin, qmax = quant_range(scheme["bits"], scheme["signed"], scheme["narrow_range"])
    assert qmin <= zero_point[0] <= qmax
    assert fake_quantize(np.zeros(1), scale, zero_point, qmin, qmax)[0] == 0.0
    if scheme["symmetric"]:
        assert zero_point[0] == 0
    # The representable interval covers [lo, hi] up to the rounding of the zero point.
    low = (qmin - int(zero_point[0])) * float(scale[0])
    high = (qmax - int(zero_point[0])) * float(scale[0])
    assert low <= lo + 0.5 * scale[0] * (1 + 1e-5) and high >= hi - 0.5 * scale[0] * (1 + 1e-5)
    x = np.array([low + f * (high - low) for f in fractions], np.float32)
    error = np.abs(fake_quantize(x, scale, zero_point, qmin, qmax) - x)
    # Half a step, plus float32 rounding of the product and of the reconstruction.
    assert (error <= 0.5 * scale[0] + 1e-6 * np.abs(x) + 1e-12).all()


def test_integer_ranges():
    assert quant_range(8, True) == (-128, 127)
    assert quant_range(8, True, narrow_range=True) == (-127, 127)
    assert quant_range(8, False) == (0, 255)
    assert quant_range(4, True, narrow_range=True) == (-7, 7)
    assert quant_range(2, False) == (0, 3)
    assert quant_range(16, True) == (-32768, 32767)
    with pytest.raises(ValueError, match="bits must be in 2..16, got 1"):
        quant_range(1, True)
    with pytest.raises(ValueError, match="narrow_range .* no meaning for unsigned"):
        quant_range(8, False, narrow_range=True)


def test_known_scales_and_zero_points():
    scale, zero_point = choose_qparams(-1.0, 3.0, bits=8, signed=False)
    assert scale[0] == np.float32(4.0 / 255) and zero_point[0] == 64  # 1 / (4/255) = 63.75 -> 64
    scale, zero_point = choose_qparams(-0.5, 2.0, bits=8, symmetric=True, narrow_range=True)
    assert scale[0] == np.float32(2.0 / 127) and zero_point[0] == 0
    # The range is widened to contain 0: [2, 5] quantizes like [0, 5].
    assert choose_qparams(2.0, 5.0, signed=False) == choose_qparams(0.0, 5.0, signed=False)
    # An all-zero channel gets scale 1, not a tiny scale that would overflow an int32 bias.
    scale, zero_point = choose_qparams([0.0, -1.0], [0.0, 1.0], symmetric=True)
    assert scale.tolist() == [1.0, np.float32(1 / 127)] and zero_point.tolist() == [0, 0]


def test_quantize_rounds_ties_to_even_and_clamps():
    scale, zero_point = np.float32([1.0]), np.int32([0])
    q = quantize(np.float32([0.5, 1.5, 2.5, -0.5, -1.5, 1000, -1000]), scale, zero_point, -128, 127)
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]
    assert dequantize(q, scale, zero_point).dtype == np.float32


def test_bad_ranges_and_schemes_are_refused():
    with pytest.raises(ValueError, match="lo must be <= hi"):
        choose_qparams(1.0, -1.0)
    with pytest.raises(ValueError, match="not finite"):
        choose_qparams(float("nan"), 1.0)
    with pytest.raises(ValueError, match="symmetric quantization .* needs a signed integer type"):
        choose_qparams(-1.0, 1.0, symmetric=True, signed=False)
    with pytest.raises(ValueError, match="per-tensor quantization takes one scale, got 2"):
        quantize(np.zeros(3), np.ones(2), np.zeros(2), -128, 127)


def test_sqnr():
    x = np.array([1.0, -2.0, 3.0])
    assert sqnr_db(x, x) == float("inf")
    assert sqnr_db(x, x * 1.1) == pytest.approx(20.0)  # noise is 1/10 of the signal amplitude
    # 8-bit uniform quantization of a uniform full-range signal: about 6.02 * 8 dB.
    uniform = np.random.default_rng(0).uniform(-1, 1, 100_000).astype(np.float32)
    scale, zero_point = choose_qparams(-1, 1, bits=8, symmetric=True)
    assert 47 < sqnr_db(uniform, fake_quantize(uniform, scale, zero_point, -128, 127)) < 50
