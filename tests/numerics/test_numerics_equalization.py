"""The equalization and high-bias absorption arithmetic, checked against torch's own
layers: rescaled layers must compute what the original ones compute, and the ranges
must end up as the paper's criterion says (Nagel et al. 2019, sec. 4)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.numerics.equalization import (
    ChainLayer,
    absorbed_biases,
    equalization_scales,
    equalize_chain,
    equalize_pair,
    high_bias_shift,
    input_channel_ranges,
    input_channel_sum,
    output_channel_ranges,
    scale_input_channels,
)


def uneven_weight(generator, shape):
    """Weights whose output channels have ranges spread over two orders of magnitude,
    the situation equalization is for."""
    spread = np.exp(generator.uniform(-2.5, 2.5, (shape[0],) + (1,) * (len(shape) - 1)))
    return generator.normal(size=shape) * spread


def conv(x, weight, bias, groups):
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float64))
    return F.conv2d(x, t(weight), t(bias), padding=weight.shape[-1] // 2, groups=groups)


def run_chain(x, layers):
    """conv -> relu -> conv -> relu -> ... -> conv in float64."""
    for index, layer in enumerate(layers):
        x = conv(x, layer.weight, layer.bias, layer.groups)
        if index < len(layers) - 1:
            x = torch.relu(x)
    return x


def test_ranges_of_grouped_weights_by_hand():
    # Two groups, 2 output and 2 input channels per group: input channel 3 is
    # position 1 of group 1, read by output channels 2 and 3.
    weight = np.zeros((4, 2, 1, 1))
    weight[2, 1] = -5.0
    weight[3, 1] = 2.0
    weight[0, 0] = 1.0
    assert input_channel_ranges(weight, groups=2).tolist() == [1.0, 0.0, 0.0, 5.0]
    assert input_channel_ranges(weight, groups=1).tolist() == [1.0, 5.0]
    assert output_channel_ranges(weight).tolist() == [1.0, 0.0, 5.0, 2.0]


def test_scales_follow_equation_11_and_leave_dead_channels_alone():
    scales = equalization_scales(np.array([4.0, 1.0, 0.0, 2.0]), np.array([1.0, 4.0, 3.0, 0.0]))
    # s = sqrt(r1 r2) / r2: 4 and 1 -> 2; 1 and 4 -> 1/2; a zero range keeps s = 1.
    np.testing.assert_allclose(scales, [2.0, 0.5, 1.0, 1.0])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), groups_choice=st.sampled_from(["dense", "depthwise", "two"]))
def test_equalized_pair_computes_the_same_and_has_equal_channel_ranges(seed, groups_choice):
    generator = np.random.default_rng(seed)
    channels = 8
    groups = {"dense": 1, "depthwise": channels, "two": 2}[groups_choice]
    w1 = uneven_weight(generator, (channels, 3, 3, 3))
    b1 = generator.normal(size=channels)
    w2 = uneven_weight(generator, (6 if groups != channels else channels, channels // groups, 3, 3))
    new_w1, new_b1, new_w2, scales = equalize_pair(w1, b1, w2, groups)

    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    before = run_chain(x, [ChainLayer(w1, b1), ChainLayer(w2, None, groups)])
    after = run_chain(x, [ChainLayer(new_w1, new_b1), ChainLayer(new_w2, None, groups)])
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)
    # The paper's criterion: r1_i / s_i == r2_i s_i == sqrt(r1_i r2_i).
    np.testing.assert_allclose(output_channel_ranges(new_w1), input_channel_ranges(new_w2, groups),
                               rtol=1e-12)
    assert (scales > 0).all()


def test_depthwise_triple_converges_to_equal_ranges_in_all_three_layers():
    # conv -> dw conv -> conv: the dw filter i is both the input and the output of
    # channel i, so the fixed point has r1_i = r_dw,i = r3_i (each the geometric
    # mean of the three original ranges, their product being invariant).
    generator = np.random.default_rng(1)
    layers = [ChainLayer(uneven_weight(generator, (8, 4, 1, 1)), generator.normal(size=8)),
              ChainLayer(uneven_weight(generator, (8, 1, 3, 3)), generator.normal(size=8), 8),
              ChainLayer(uneven_weight(generator, (5, 8, 1, 1)), None)]
    result = equalize_chain(layers, iterations=200, tolerance=1e-9)
    assert result.converged and 1 < result.sweeps < 200
    new = result.layers
    r1 = output_channel_ranges(new[0].weight)
    r_dw = output_channel_ranges(new[1].weight)
    r3 = input_channel_ranges(new[2].weight)
    np.testing.assert_allclose(r1, r_dw, rtol=1e-6)
    np.testing.assert_allclose(r_dw, r3, rtol=1e-6)
    product = (output_channel_ranges(layers[0].weight) * output_channel_ranges(layers[1].weight)
               * input_channel_ranges(layers[2].weight))
    np.testing.assert_allclose(r1, np.cbrt(product), rtol=1e-6)

    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run_chain(x, new), run_chain(x, layers), rtol=1e-9, atol=1e-9)


def test_chain_keeps_dtypes_and_reports_non_convergence():
    generator = np.random.default_rng(2)
    layers = [ChainLayer(uneven_weight(generator, (6, 3, 3, 3)).astype(np.float32), None),
              ChainLayer(uneven_weight(generator, (6, 6, 3, 3)).astype(np.float32),
                         np.ones(6, np.float32)),
              ChainLayer(uneven_weight(generator, (4, 6, 3, 3)).astype(np.float32), None)]
    result = equalize_chain(layers, iterations=1, tolerance=1e-12)
    assert result.sweeps == 1 and not result.converged
    assert all(layer.weight.dtype == np.float32 for layer in result.layers)
    assert result.layers[1].bias.dtype == np.float32 and result.layers[0].bias is None
    with pytest.raises(ValueError, match="at least two layers"):
        equalize_chain(layers[:1])


def test_scale_input_channels_of_a_linear_weight():
    weight = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(scale_input_channels(weight, np.array([1.0, 2.0, 3.0])),
                                  weight * [1.0, 2.0, 3.0])


def test_high_bias_shift_uses_three_sigma_and_the_spread_of_negative_gammas():
    shift = high_bias_shift(np.array([5.0, 1.0, 4.0, -1.0]), np.array([1.0, 1.0, -1.0, 0.1]))
    np.testing.assert_allclose(shift, [2.0, 0.0, 1.0, 0.0])


def test_input_channel_sum_equals_the_layer_applied_to_a_constant_input():
    # Away from the zero padding, a conv of the constant image c is W2 c.
    generator = np.random.default_rng(3)
    for groups, shape in ((1, (5, 6, 3, 3)), (3, (6, 2, 3, 3)), (6, (6, 1, 3, 3))):
        weight = generator.normal(size=shape)
        shift = generator.uniform(0, 2, 6)
        image = torch.from_numpy(np.broadcast_to(shift[None, :, None, None], (1, 6, 5, 5)).copy())
        output = F.conv2d(image, torch.from_numpy(weight), groups=groups)  # no padding: 3x3
        np.testing.assert_allclose(output[0, :, 1, 1].numpy(), input_channel_sum(weight, shift, groups),
                                   rtol=1e-12)


def test_absorbing_a_shift_preserves_the_function_where_inputs_exceed_it():
    generator = np.random.default_rng(4)
    b1 = generator.normal(3.0, 1.0, 6).astype(np.float32)
    w2 = generator.normal(size=(4, 6)).astype(np.float32)
    b2 = generator.normal(size=4).astype(np.float32)
    shift = np.full(6, 0.5)
    # Pre-activations (before adding b1) chosen so that pre + b1 >= shift everywhere.
    pre = np.abs(generator.normal(size=(10, 6))).astype(np.float32) + np.maximum(0, 0.5 - b1)
    new_b1, new_b2 = absorbed_biases(b1, w2, b2, shift)
    assert new_b1.dtype == np.float32 and new_b2.dtype == np.float32
    before = np.maximum(pre + b1, 0) @ w2.T + b2
    after = np.maximum(pre + new_b1, 0) @ w2.T + new_b2
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # Without a layer-2 bias one is created.
    _, created = absorbed_biases(b1, w2, None, shift)
    np.testing.assert_allclose(created, w2 @ shift, rtol=1e-6)
