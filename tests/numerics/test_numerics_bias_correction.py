"""Bias-correction arithmetic: the clipped-normal mean against Monte Carlo sampling,
the analytical output error against torch's conv on the mean input, and the
corrected bias removing the mean error of a quantized layer."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qcompiler.numerics.bias_correction import (
    clipped_normal_mean,
    corrected_bias,
    expected_output_error,
    mean_output_error,
)


@pytest.mark.parametrize("low, high", [(0.0, None), (0.0, 6.0), (None, None), (-1.0, 2.0)])
def test_clipped_normal_mean_matches_sampling(low, high):
    generator = np.random.default_rng(0)
    mean = np.array([-2.0, -0.3, 0.0, 1.0, 4.0, 7.0])
    std = np.array([1.0, 0.5, 2.0, 1.5, 3.0, 0.7])
    samples = generator.normal(mean, std, size=(400_000, mean.size))
    clipped = np.clip(samples, -np.inf if low is None else low, np.inf if high is None else high)
    # Monte Carlo standard error is std / sqrt(n) < 0.005; 0.02 is four of those.
    np.testing.assert_allclose(clipped_normal_mean(mean, std, low, high), clipped.mean(axis=0), atol=0.02)


def test_relu_mean_closed_form_and_degenerate_channels():
    # ReLU of N(0, 1): 1 / sqrt(2 pi). A zero std is the clipped constant.
    np.testing.assert_allclose(clipped_normal_mean(np.array([0.0]), np.array([1.0])),
                               [1 / np.sqrt(2 * np.pi)], rtol=1e-12)
    np.testing.assert_allclose(clipped_normal_mean(np.array([-1.0, 3.0, 9.0]), np.zeros(3), 0.0, 6.0),
                               [0.0, 3.0, 6.0])
    # A negative gamma gives the same spread as a positive one.
    np.testing.assert_allclose(clipped_normal_mean(np.array([0.5]), np.array([-2.0])),
                               clipped_normal_mean(np.array([0.5]), np.array([2.0])))


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_expected_output_error_is_the_conv_of_the_mean_input_away_from_padding(groups):
    generator = np.random.default_rng(1)
    weight_error = generator.normal(size=(6, 6 // groups, 3, 3))
    input_mean = generator.uniform(0, 2, 6)
    image = torch.from_numpy(np.broadcast_to(input_mean[None, :, None, None], (1, 6, 5, 5)).copy())
    conv = F.conv2d(image, torch.from_numpy(weight_error), padding=1, groups=groups)
    np.testing.assert_allclose(expected_output_error(weight_error, input_mean, groups),
                               conv[0, :, 2, 2].numpy(), rtol=1e-12)


def test_mean_output_error_weights_every_position_once():
    first = np.ones((2, 3, 4, 4))
    second = np.full((1, 3, 4, 4), 4.0)
    # 32 positions of 1 and 16 of 4 per channel: mean 2.
    np.testing.assert_allclose(mean_output_error([first, second], channel_axis=1), [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="at least one non-empty batch"):
        mean_output_error([], channel_axis=1)


def test_corrected_bias_removes_the_mean_error_of_a_quantized_linear_layer():
    generator = np.random.default_rng(2)
    weight = generator.normal(size=(4, 8))
    # A crude 2-bit-like rounding makes a visible, biased error on positive inputs.
    quantized = np.round(weight * 1.5) / 1.5
    bias = generator.normal(size=4)
    x = np.abs(generator.normal(1.0, 1.0, size=(5000, 8)))
    error = mean_output_error([x @ (quantized - weight).T], channel_axis=1)
    new_bias = corrected_bias(bias, error, np.float64)
    before = (x @ quantized.T + bias) - (x @ weight.T + bias)
    after = (x @ quantized.T + new_bias) - (x @ weight.T + bias)
    np.testing.assert_allclose(after.mean(axis=0), 0.0, atol=1e-12)
    assert np.abs(before.mean(axis=0)).max() > 0.05
    # The analytical value from E[x] agrees for a linear layer (no borders).
    np.testing.assert_allclose(expected_output_error(quantized - weight, x.mean(axis=0)), error, rtol=1e-10)
    assert corrected_bias(None, error).dtype == np.float32
