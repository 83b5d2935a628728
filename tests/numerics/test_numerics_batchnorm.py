"""The BN-folding arithmetic checked against torch's own layers: a layer with the
folded weights must compute what the layer followed by torch's BatchNorm computes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.numerics.batchnorm import batchnorm_scale_shift, fold_batchnorm_into_weights


def random_bn_stats(generator: np.random.Generator, channels: int):
    return (generator.uniform(0.5, 1.5, channels).astype(np.float32),   # gamma
            generator.normal(0, 0.5, channels).astype(np.float32),      # beta
            generator.normal(0, 0.5, channels).astype(np.float32),      # running mean
            generator.uniform(0.1, 2.0, channels).astype(np.float32))   # running var


def torch_batchnorm(y, gamma, beta, mean, var, eps):
    t = torch.from_numpy
    return F.batch_norm(y, t(mean), t(var), None if gamma is None else t(gamma),
                        None if beta is None else t(beta), False, 0.0, eps)


def test_scale_shift_matches_torch_batchnorm():
    generator = np.random.default_rng(0)
    gamma, beta, mean, var = random_bn_stats(generator, 6)
    y = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0))
    scale, shift = batchnorm_scale_shift(gamma, beta, mean, var, 1e-3)
    ours = y.double() * torch.from_numpy(scale)[:, None] + torch.from_numpy(shift)[:, None]
    expected = torch_batchnorm(y, gamma, beta, mean, var, 1e-3)
    torch.testing.assert_close(ours.float(), expected, rtol=1e-5, atol=1e-6)


def test_missing_affine_parameters_mean_identity_affine():
    _, _, mean, var = random_bn_stats(np.random.default_rng(1), 4)
    scale, shift = batchnorm_scale_shift(None, None, mean, var, 1e-5)
    np.testing.assert_allclose(scale, 1 / np.sqrt(var.astype(np.float64) + 1e-5))
    np.testing.assert_allclose(shift, -mean * scale)


def test_nonpositive_variance_is_rejected():
    with pytest.raises(ValueError, match=r"running_var \+ eps must be positive"):
        batchnorm_scale_shift(None, None, np.zeros(2), np.array([1.0, -1.0]), 1e-5)


def test_channel_count_mismatch_is_rejected():
    scale, shift = batchnorm_scale_shift(None, None, np.zeros(3), np.ones(3), 1e-5)
    with pytest.raises(ValueError, match="batch norm has 3 channels but the layer has 4 output"):
        fold_batchnorm_into_weights(np.ones((4, 2, 3, 3), np.float32), None, scale, shift)


def test_inputs_are_not_modified():
    generator = np.random.default_rng(2)
    weight = generator.normal(size=(4, 2, 3, 3)).astype(np.float32)
    bias = generator.normal(size=4).astype(np.float32)
    weight_before, bias_before = weight.copy(), bias.copy()
    scale, shift = batchnorm_scale_shift(*random_bn_stats(generator, 4), 1e-5)
    new_weight, new_bias = fold_batchnorm_into_weights(weight, bias, scale, shift)
    np.testing.assert_array_equal(weight, weight_before)
    np.testing.assert_array_equal(bias, bias_before)
    assert new_weight.dtype == np.float32 and new_bias.dtype == np.float32


def check_fold(layer, weight, bias, x, transposed=False, groups=1, eps=1e-5, seed=0):
    channels = weight.shape[1] * groups if transposed else weight.shape[0]
    gamma, beta, mean, var = random_bn_stats(np.random.default_rng(seed), channels)
    t = torch.from_numpy
    expected = torch_batchnorm(layer(x, t(weight), None if bias is None else t(bias)),
                               gamma, beta, mean, var, eps)
    scale, shift = batchnorm_scale_shift(gamma, beta, mean, var, eps)
    new_weight, new_bias = fold_batchnorm_into_weights(weight, bias, scale, shift,
                                                       transposed=transposed, groups=groups)
    torch.testing.assert_close(layer(x, t(new_weight), t(new_bias)), expected,
                               rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(1, 3), in_per_group=st.integers(1, 3), out_per_group=st.integers(1, 3),
       kernel=st.integers(1, 3), has_bias=st.booleans(), eps=st.sampled_from([1e-5, 1e-3]),
       seed=st.integers(0, 2**16))
def test_conv2d_fold_matches_torch(groups, in_per_group, out_per_group, kernel, has_bias, eps,
                                   seed):
    generator = np.random.default_rng(seed)
    weight = generator.normal(size=(groups * out_per_group, in_per_group, kernel, kernel))
    bias = generator.normal(size=groups * out_per_group).astype(np.float32) if has_bias else None
    x = torch.from_numpy(generator.normal(size=(2, groups * in_per_group, 5, 5)).astype(np.float32))
    layer = lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=groups)
    check_fold(layer, weight.astype(np.float32), bias, x, groups=groups, eps=eps, seed=seed)


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(1, 3), in_per_group=st.integers(1, 3), out_per_group=st.integers(1, 3),
       kernel=st.integers(1, 3), stride=st.integers(1, 2), has_bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_conv_transpose2d_fold_matches_torch(groups, in_per_group, out_per_group, kernel, stride,
                                             has_bias, seed):
    generator = np.random.default_rng(seed)
    weight = generator.normal(size=(groups * in_per_group, out_per_group, kernel, kernel))
    bias = generator.normal(size=groups * out_per_group).astype(np.float32) if has_bias else None
    x = torch.from_numpy(generator.normal(size=(2, groups * in_per_group, 4, 4)).astype(np.float32))
    layer = lambda x, w, b: F.conv_transpose2d(x, w, b, stride=stride, groups=groups)
    check_fold(layer, weight.astype(np.float32), bias, x, transposed=True, groups=groups, seed=seed)


@settings(max_examples=25, deadline=None)
@given(groups=st.integers(1, 3), channels_per_group=st.integers(1, 4), has_bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_conv1d_fold_matches_torch(groups, channels_per_group, has_bias, seed):
    generator = np.random.default_rng(seed)
    channels = groups * channels_per_group
    weight = generator.normal(size=(channels, channels_per_group, 3)).astype(np.float32)
    bias = generator.normal(size=channels).astype(np.float32) if has_bias else None
    x = torch.from_numpy(generator.normal(size=(2, channels, 9)).astype(np.float32))
    layer = lambda x, w, b: F.conv1d(x, w, b, padding=2, dilation=2, groups=groups)
    check_fold(layer, weight, bias, x, groups=groups, seed=seed)


@settings(max_examples=25, deadline=None)
@given(features_in=st.integers(1, 8), features_out=st.integers(1, 8), has_bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_linear_fold_matches_torch(features_in, features_out, has_bias, seed):
    generator = np.random.default_rng(seed)
    weight = generator.normal(size=(features_out, features_in)).astype(np.float32)
    bias = generator.normal(size=features_out).astype(np.float32) if has_bias else None
    x = torch.from_numpy(generator.normal(size=(5, features_in)).astype(np.float32))
    check_fold(F.linear, weight, bias, x, seed=seed)
