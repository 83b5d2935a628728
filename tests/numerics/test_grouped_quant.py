"""Group-wise int4 weight math: RTN on the symmetric and the asymmetric grid against hand
references (hypothesis), and AWQ / GPTQ lowering the layer's output error below
round-to-nearest (the property that justifies them), with and without act-order."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.numerics import grouped_quant as gq


def hand_reference(weight, bits, group_size):
    """Row by row, group by group, with Python scalars."""
    limit = 2 ** (bits - 1) - 1
    out = np.zeros_like(weight, dtype=np.float32)
    for o in range(weight.shape[0]):
        for start in range(0, weight.shape[1], group_size):
            group = [float(v) for v in weight[o, start:start + group_size]]
            peak = max(abs(v) for v in group)
            scale = np.float32(peak / limit) if peak else np.float32(1.0)
            inverse = np.float32(1.0) / scale
            for j, v in enumerate(group):
                code = min(max(float(np.rint(np.float32(v) * inverse)), -limit), limit)
                out[o, start + j] = np.float32(code) * scale
    return out


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), groups=st.integers(1, 4), group_size=st.sampled_from([1, 2, 8, 32]),
       bits=st.sampled_from([3, 4, 8]), seed=st.integers(0, 2**16), zero_group=st.booleans())
def test_round_to_nearest_matches_the_hand_reference(rows, groups, group_size, bits, seed, zero_group):
    weight = np.random.default_rng(seed).normal(size=(rows, groups * group_size)).astype(np.float32)
    if zero_group:
        weight[0, :group_size] = 0
    codes, scales, zeros = gq.round_to_nearest(weight, bits, group_size)
    assert scales.shape == (rows, groups) and codes.dtype == np.int8 and zeros is None
    assert np.abs(codes).max() <= 2 ** (bits - 1) - 1
    np.testing.assert_array_equal(gq.dequantize_grouped(codes, scales, group_size),
                                  hand_reference(weight, bits, group_size))


def asymmetric_hand_reference(weight, bits, group_size):
    """Row by row, group by group, with Python scalars: the range widened to hold 0, 2^b - 1
    steps, an integer zero point, codes clamped to [0, 2^b - 1]."""
    top = 2 ** bits - 1
    out = np.zeros_like(weight, dtype=np.float32)
    for o in range(weight.shape[0]):
        for start in range(0, weight.shape[1], group_size):
            group = [float(v) for v in weight[o, start:start + group_size]]
            low, high = min(min(group), 0.0), max(max(group), 0.0)
            scale = np.float32((high - low) / top) if high > low else np.float32(1.0)
            zero = min(max(round(-low / float(scale)), 0), top)
            inverse = np.float32(1.0) / scale
            for j, v in enumerate(group):
                code = min(max(float(np.rint(np.float32(v) * inverse)) + zero, 0), top)
                out[o, start + j] = np.float32(code - zero) * scale
    return out


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), groups=st.integers(1, 4), group_size=st.sampled_from([1, 2, 8, 32]),
       bits=st.sampled_from([3, 4, 8]), seed=st.integers(0, 2**16), zero_group=st.booleans(),
       shift=st.sampled_from([0.0, 1.5, -3.0]))
def test_asymmetric_round_to_nearest_matches_the_hand_reference(rows, groups, group_size, bits, seed,
                                                                zero_group, shift):
    weight = (np.random.default_rng(seed).normal(size=(rows, groups * group_size)) + shift).astype(np.float32)
    if zero_group:
        weight[0, :group_size] = 0
    codes, scales, zeros = gq.round_to_nearest(weight, bits, group_size, asymmetric=True)
    assert codes.dtype == np.uint8 and zeros.dtype == np.uint8 and zeros.shape == scales.shape
    assert codes.max() <= 2 ** bits - 1 and zeros.max() <= 2 ** bits - 1
    np.testing.assert_array_equal(gq.dequantize_grouped(codes, scales, group_size, zeros),
                                  asymmetric_hand_reference(weight, bits, group_size))


def test_the_asymmetric_grid_fits_one_sided_groups_better():
    """Its reason to be: on weights that lean to one side it spends no levels on the side
    that is empty, so its error is lower than the symmetric grid's."""
    weight = np.abs(np.random.default_rng(1).normal(size=(16, 128))).astype(np.float32)
    errors = {}
    for asymmetric in (False, True):
        codes, scales, zeros = gq.round_to_nearest(weight, 4, 32, asymmetric=asymmetric)
        errors[asymmetric] = np.sum((gq.dequantize_grouped(codes, scales, 32, zeros) - weight) ** 2)
    assert errors[True] < 0.5 * errors[False]


def test_group_size_must_divide_the_input_features():
    with pytest.raises(ValueError, match=r"group_size 100 does not divide the 384 input features; "
                                         r"choose a divisor \(e.g. 32, 64, 128\)"):
        gq.group_scales(np.zeros((2, 384)), 4, 100)
    with pytest.raises(ValueError, match="positive int"):
        gq.check_group_size(64, 0)


def correlated_layer(seed, rows=48, columns=128, tokens=512):
    """A weight and inputs with a few large, correlated channels, as transformer inputs have."""
    generator = np.random.default_rng(seed)
    mixing = generator.normal(size=(columns, columns)) / np.sqrt(columns)
    x = generator.normal(size=(tokens, columns)) @ (np.eye(columns) + mixing)
    x[:, :4] *= 20.0
    weight = generator.normal(size=(rows, columns)) * np.exp(generator.normal(size=columns) * 0.5)
    return weight, x


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_awq_and_gptq_beat_round_to_nearest_on_random_layers(seed, group_size, asymmetric):
    weight, x = correlated_layer(seed)
    gram = x.T @ x

    def error(codes, scales, zeros, channel=1.0):
        return gq.output_error(weight, gq.dequantize_grouped(codes, scales, group_size, zeros) / channel,
                               gram)

    rtn = error(*gq.round_to_nearest(weight, 4, group_size, asymmetric))
    channel, awq, alpha = gq.awq_search(weight, gram, np.abs(x).mean(0), 4, group_size,
                                        asymmetric=asymmetric)
    assert error(*awq, channel) < rtn and alpha > 0
    gptq = gq.gptq(weight, gram, 4, group_size, asymmetric=asymmetric)
    assert error(*gptq) < 0.8 * rtn
    ordered = gq.gptq(weight, gram, 4, group_size, asymmetric=asymmetric, act_order=True)
    assert error(*ordered) < 0.8 * rtn
    for codes, _, zeros in (gptq, ordered):
        assert (codes.max() <= 15 and zeros.max() <= 15) if asymmetric else np.abs(codes).max() <= 7


def test_gptq_on_uncorrelated_inputs_is_round_to_nearest():
    """With G = identity there is no error to feed back usefully: each column's error
    feedback term vanishes, so GPTQ reduces to RTN (an oracle for the update's indexing)."""
    weight, _ = correlated_layer(3, columns=64)
    for asymmetric in (False, True):
        for act_order in (False, True):
            got = gq.gptq(weight, np.eye(64), 4, 32, damping=0.0, asymmetric=asymmetric,
                          act_order=act_order)
            for have, want in zip(got, gq.round_to_nearest(weight, 4, 32, asymmetric), strict=True):
                np.testing.assert_array_equal(have, want)


def test_packed_bytes():
    assert gq.packed_bytes(384, 1536, 4, 128) == 384 * 1536 // 2 + 4 * 384 * 12
    assert gq.packed_bytes(384, 1536, 4, 128, asymmetric=True) == 384 * 1536 // 2 + 4 * 384 * 12 + 384 * 6
