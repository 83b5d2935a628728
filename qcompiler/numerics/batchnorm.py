"""Batch-norm folding arithmetic (Ioffe & Szegedy 2015; folding as in Jacob et al. 2018, sec. 3.2).

An inference-mode batch norm is a per-channel affine map

    bn(y)[c] = gamma[c] * (y[c] - mean[c]) / sqrt(var[c] + eps) + beta[c]
             = scale[c] * y[c] + shift[c],
    scale = gamma / sqrt(var + eps),   shift = beta - mean * scale.

When `y = W * x + b` is a convolution or linear layer whose output channel `c`
is computed by one slice of `W`, the map folds into the layer:

    W'[c] = scale[c] * W[c],   b'[c] = scale[c] * b[c] + shift[c].

The arithmetic runs in float64 and is rounded once to the weight's dtype, so
the folded layer differs from conv-then-BN only by the float32 rounding of the
layer itself.
"""

from __future__ import annotations

import numpy as np


def batchnorm_scale_shift(
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel (scale, shift) of an inference-mode batch norm, in float64.

    `gamma` None means 1 and `beta` None means 0 (a BN without affine parameters).
    """
    mean = np.asarray(mean, np.float64)
    var = np.asarray(var, np.float64)
    if np.any(var + eps <= 0):
        raise ValueError("running_var + eps must be positive in every channel")
    gamma = np.ones_like(mean) if gamma is None else np.asarray(gamma, np.float64)
    beta = np.zeros_like(mean) if beta is None else np.asarray(beta, np.float64)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def output_channel_scale_shape(weight_shape: tuple[int, ...], transposed: bool,
                               groups: int) -> tuple[int, ...]:
    """The shape to which a per-output-channel vector is reshaped to scale a weight.

    Convolution and linear weights hold output channels on axis 0:
    conv `[out, in/groups, *kernel]`, linear `[out, in]`. A transposed
    convolution's weight is `[in, out/groups, *kernel]`: output channel
    `g * (out/groups) + j` is made by slice `[g*(in/groups):(g+1)*(in/groups), j]`,
    so the weight is viewed as `[groups, in/groups, out/groups, *kernel]` and the
    scale as `[groups, 1, out/groups, 1, ...]`.
    """
    kernel_dims = len(weight_shape) - 2
    if not transposed:
        return (weight_shape[0],) + (1,) * (len(weight_shape) - 1)
    if weight_shape[0] % groups:
        raise ValueError(f"transposed weight with {weight_shape[0]} input channels "
                         f"cannot be split into {groups} groups")
    return (groups, 1, weight_shape[1]) + (1,) * kernel_dims


def fold_batchnorm_into_weights(
    weight: np.ndarray,
    bias: np.ndarray | None,
    scale: np.ndarray,
    shift: np.ndarray,
    *,
    transposed: bool = False,
    groups: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """New (weight, bias) of a layer whose outputs are then multiplied by `scale` and
    shifted by `shift` per output channel (see `batchnorm_scale_shift`).

    `bias` None means a zero bias; the returned bias always exists. Results have
    the weight's dtype; the inputs are not modified.
    """
    weight64 = np.asarray(weight, np.float64)
    out_channels = weight.shape[1] * groups if transposed else weight.shape[0]
    if scale.shape != (out_channels,) or shift.shape != (out_channels,):
        raise ValueError(f"batch norm has {scale.shape[0]} channels but the layer has "
                         f"{out_channels} output channels")
    scale_shape = output_channel_scale_shape(weight.shape, transposed, groups)
    if transposed:
        grouped = weight64.reshape((groups, weight.shape[0] // groups) + weight.shape[1:])
        new_weight = (grouped * scale.reshape(scale_shape)).reshape(weight.shape)
    else:
        new_weight = weight64 * scale.reshape(scale_shape)
    bias64 = np.zeros(out_channels) if bias is None else np.asarray(bias, np.float64)
    new_bias = bias64 * scale + shift
    return new_weight.astype(weight.dtype), new_bias.astype(weight.dtype)
