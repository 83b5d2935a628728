"""Cross-layer equalization and high-bias absorption arithmetic (pure numpy).

Nagel, van Baalen, Blankevoort and Welling 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction" (ICCV), section 4.

Cross-layer equalization (section 4.1). Two layers y = f(W1 x + b1), z = W2 y + b2
with a positively homogeneous f (f(x / s) = f(x) / s for s > 0: ReLU, identity,
max/avg pooling) compute the same function after

    W1' = S^-1 W1,  b1' = S^-1 b1,  W2' = W2 S,      S = diag(s)

(scale output channel i of layer 1 down by s_i and input channel i of layer 2 up
by s_i). With r1_i the range (max |w|) of output channel i of W1 and r2_i the
range of input channel i of W2, the choice that makes both per-channel ranges
equal, and by the paper's argument maximises the total per-tensor quantization
precision, is

    s_i = (1 / r2_i) * sqrt(r1_i * r2_i) = sqrt(r1_i / r2_i)          (eq. 9-11)

after which r1_i' = r2_i' = sqrt(r1_i r2_i). Longer chains (conv -> dw conv ->
conv in MobileNetV2) are equalized pair by pair and the sweep repeated until the
scales stop changing. A depthwise layer in the middle is handled by the same
formulas: its input channel i and output channel i are the same filter, so
scaling the input channel by s_i also scales the output channel; the iteration
balances the three tied ranges.

High-bias absorption (section 4.2). If the pre-activation of channel i is
(approximately) N(beta_i, gamma_i^2), which is what a batch norm with shift beta
and scale gamma produces, then with c_i = max(0, beta_i - 3 |gamma_i|) almost all
values satisfy x_i >= c_i, where ReLU(x - c) = ReLU(x) - c, so

    b1' = b1 - c,     b2' = b2 + W2 c                                  (eq. 13-14)

computes the same function while shrinking the activation range by c. The
statistics must be read from the batch norm *before* it is folded into the
weights (or estimated from data): a folded graph no longer holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def output_channel_ranges(weight: np.ndarray) -> np.ndarray:
    """max |w| over each output channel (axis 0) of a conv or linear weight."""
    return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)


def _grouped_view(weight: np.ndarray, groups: int) -> np.ndarray:
    """The weight as [groups, out per group, in per group, kernel taps]."""
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    if out_channels % groups:
        raise ValueError(f"{out_channels} output channels do not split into {groups} groups")
    return weight.reshape(groups, out_channels // groups, in_per_group, -1)


def input_channel_ranges(weight: np.ndarray, groups: int = 1) -> np.ndarray:
    """max |w| over the weights that read each input channel.

    A conv weight is [out, in / groups, *kernel] and input channel
    g * (in / groups) + j is read by position j of the filters of group g; a
    linear weight [out, in] is the groups == 1 case.
    """
    view = np.abs(_grouped_view(weight, groups))
    return view.max(axis=(1, 3)).reshape(-1)


def scale_output_channels(weight: np.ndarray, bias: np.ndarray | None, scales: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """Divide output channel i (weights and bias) by scales[i]: S^-1 W1, S^-1 b1."""
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return weight / scales.reshape(shape), None if bias is None else bias / scales


def scale_input_channels(weight: np.ndarray, scales: np.ndarray, groups: int = 1) -> np.ndarray:
    """Multiply input channel i of a layer's weights by scales[i]: W2 S."""
    view = _grouped_view(weight, groups)
    per_group = scales.reshape(groups, 1, view.shape[2], 1)
    return (view * per_group).reshape(weight.shape)


def equalization_scales(first_ranges: np.ndarray, second_ranges: np.ndarray) -> np.ndarray:
    """s_i = (1 / r2_i) sqrt(r1_i r2_i) (Nagel et al. 2019, eq. 11).

    A channel whose range is zero in either layer is dead (it contributes
    nothing); it keeps s_i = 1 rather than dividing by zero.
    """
    first = np.asarray(first_ranges, np.float64)
    second = np.asarray(second_ranges, np.float64)
    alive = (first > 0) & (second > 0)
    scales = np.ones_like(first)
    scales[alive] = np.sqrt(first[alive] * second[alive]) / second[alive]
    return scales


def equalize_pair(first_weight: np.ndarray, first_bias: np.ndarray | None,
                  second_weight: np.ndarray, second_groups: int = 1):
    """Equalize one pair of layers; returns (W1', b1', W2', s)."""
    scales = equalization_scales(output_channel_ranges(first_weight),
                                 input_channel_ranges(second_weight, second_groups))
    weight, bias = scale_output_channels(first_weight, first_bias, scales)
    return weight, bias, scale_input_channels(second_weight, scales, second_groups), scales


@dataclass(frozen=True)
class ChainLayer:
    """One conv or linear layer of a chain: weight [out, in / groups, *kernel], bias or None."""

    weight: np.ndarray
    bias: np.ndarray | None
    groups: int = 1


@dataclass(frozen=True)
class ChainResult:
    layers: list[ChainLayer]
    # The product of all scales applied to each pair's channels (1 = untouched).
    total_scales: list[np.ndarray]
    sweeps: int
    converged: bool


def equalize_chain(layers: list[ChainLayer], iterations: int = 100, tolerance: float = 1e-6
                   ) -> ChainResult:
    """Equalize consecutive pairs of a chain, sweeping until no scale differs from 1 by
    more than `tolerance` (or `iterations` sweeps).

    Arithmetic is done in float64 and the result is cast back to each weight's
    dtype once, so repeated sweeps do not accumulate float32 rounding.
    """
    if len(layers) < 2:
        raise ValueError(f"a chain needs at least two layers, got {len(layers)}")
    weights = [layer.weight.astype(np.float64) for layer in layers]
    biases = [None if layer.bias is None else layer.bias.astype(np.float64) for layer in layers]
    totals = [np.ones(layer.weight.shape[0]) for layer in layers[:-1]]
    converged, sweeps = False, 0
    while sweeps < iterations and not converged:
        sweeps += 1
        largest_change = 0.0
        for k in range(len(layers) - 1):
            weights[k], biases[k], weights[k + 1], scales = equalize_pair(
                weights[k], biases[k], weights[k + 1], layers[k + 1].groups)
            totals[k] *= scales
            largest_change = max(largest_change, float(np.max(np.abs(scales - 1.0))))
        converged = largest_change <= tolerance
    result = [
        ChainLayer(w.astype(layer.weight.dtype),
                   None if b is None else b.astype(layer.bias.dtype), layer.groups)
        for layer, w, b in zip(layers, weights, biases, strict=True)
    ]
    return ChainResult(result, totals, sweeps, converged)


def high_bias_shift(beta: np.ndarray, gamma: np.ndarray, sigmas: float = 3.0) -> np.ndarray:
    """c = max(0, beta - sigmas |gamma|) (Nagel et al. 2019, section 4.2).

    beta and gamma are a batch norm's shift and scale: the normalised input is
    roughly N(0, 1), so the batch norm output is roughly N(beta, gamma^2). A
    negative gamma flips the sign but not the spread, hence |gamma|.
    """
    return np.maximum(0.0, np.asarray(beta, np.float64) - sigmas * np.abs(gamma))


def input_channel_sum(weight: np.ndarray, per_channel: np.ndarray, groups: int = 1) -> np.ndarray:
    """W2 c: the output of a layer (without bias) whose input channel i is the constant c_i
    everywhere, e.g. sum over input channels and kernel taps of W2[o, i, ...] c_i for a conv.

    (At the border of a zero-padded conv fewer taps see the constant; see the
    absorb_high_bias pass for what that means.)
    """
    view = _grouped_view(weight.astype(np.float64), groups)
    per_group = np.asarray(per_channel, np.float64).reshape(groups, 1, view.shape[2], 1)
    return (view * per_group).sum(axis=(2, 3)).reshape(-1)


def absorbed_biases(first_bias: np.ndarray, second_weight: np.ndarray,
                     second_bias: np.ndarray | None, shift: np.ndarray, second_groups: int = 1
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Move `shift` (c) out of layer 1's bias and into layer 2's: (b1 - c, b2 + W2 c).

    Layer 2's bias may be absent (None); it is then created. Results keep the
    dtype of the inputs (float32 weights stay float32).
    """
    dtype = first_bias.dtype
    moved = input_channel_sum(second_weight, shift, second_groups)
    base = np.zeros(second_weight.shape[0]) if second_bias is None else second_bias.astype(np.float64)
    return ((first_bias.astype(np.float64) - shift).astype(dtype), (base + moved).astype(dtype))
