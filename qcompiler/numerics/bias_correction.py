"""Bias correction arithmetic (pure numpy): remove the mean output error that weight
quantization adds to a layer.

Nagel, van Baalen, Blankevoort and Welling 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction" (ICCV), sec. 4.2. With quantized weights
W_q = W + eps, a layer's output shifts by eps x, whose expectation per output
channel is

    E[y_q] - E[y] = eps E[x]                                            (eq. 14)

so subtracting it from the bias, b' = b - eps E[x], makes the quantized layer
unbiased. For a conv, "eps E[x]" sums eps over the input channels and kernel taps
of each output channel, each tap weighted by the mean of its input channel
(`input_channel_sum`); at zero-padded borders fewer taps see the input, so the
analytical value is the interior one.

E[x] comes from one of two places:
- empirical: measured on calibration data. Then E[eps x] is the mean, over the
  batch and all positions, of the layer applied to x with weights eps and no
  bias (`mean_output_error`), which is also exact at borders;
- analytical (data-free): a batch norm before the activation says that its
  output is roughly N(beta, gamma^2) per channel, and the activation clips it,
  so E[x] is the mean of a clipped normal (`clipped_normal_mean`; eq. 16-17 in
  the paper for ReLU, the same integral with an upper bound for ReLU6).
"""

from __future__ import annotations

import math

import numpy as np

from qcompiler.numerics.equalization import input_channel_sum

_erf = np.vectorize(math.erf, otypes=[np.float64])


def normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(np.asarray(z, np.float64) / math.sqrt(2.0)))


def normal_pdf(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def clipped_normal_mean(mean, std, low: float | None = 0.0, high: float | None = None) -> np.ndarray:
    """E[clip(y, low, high)] for y ~ N(mean, std^2), per channel; None is an open bound.

        E = low Phi(a) + mean (Phi(b) - Phi(a)) + std (phi(a) - phi(b)) + high (1 - Phi(b))

    with a = (low - mean) / std, b = (high - mean) / std. For low = 0, high = inf
    this is the ReLU case, std phi(mean / std) + mean Phi(mean / std). A channel with
    std = 0 is the constant clip(mean).
    """
    mean = np.asarray(mean, np.float64)
    std = np.abs(np.asarray(std, np.float64))
    degenerate = std == 0
    safe_std = np.where(degenerate, 1.0, std)
    if low is None:
        cdf_a, pdf_a, low_term = 0.0, 0.0, 0.0
    else:
        a = (low - mean) / safe_std
        cdf_a, pdf_a = normal_cdf(a), normal_pdf(a)
        low_term = low * cdf_a
    if high is None:
        cdf_b, pdf_b, high_term = 1.0, 0.0, 0.0
    else:
        b = (high - mean) / safe_std
        cdf_b, pdf_b = normal_cdf(b), normal_pdf(b)
        high_term = high * (1.0 - cdf_b)
    result = low_term + mean * (cdf_b - cdf_a) + safe_std * (pdf_a - pdf_b) + high_term
    constant = np.clip(mean, -np.inf if low is None else low, np.inf if high is None else high)
    return np.where(degenerate, constant, result)


def expected_output_error(weight_error: np.ndarray, input_mean: np.ndarray, groups: int = 1
                          ) -> np.ndarray:
    """eps E[x] per output channel (analytical; interior positions of a padded conv)."""
    return input_channel_sum(weight_error, input_mean, groups)


def mean_output_error(error_outputs: list[np.ndarray], channel_axis: int) -> np.ndarray:
    """The per-channel mean of a layer's output error over every batch and position.

    `error_outputs` are the layer applied to its calibration inputs with weights
    eps = W_q - W and no bias, one array per batch (batches may differ in size,
    so each position counts once, not each batch).
    """
    total, count = None, 0
    for array in error_outputs:
        moved = np.moveaxis(np.asarray(array, np.float64), channel_axis, -1)
        flat = moved.reshape(-1, moved.shape[-1])
        total = flat.sum(axis=0) if total is None else total + flat.sum(axis=0)
        count += flat.shape[0]
    if total is None or count == 0:
        raise ValueError("mean_output_error needs at least one non-empty batch")
    return total / count


def corrected_bias(bias: np.ndarray | None, output_error: np.ndarray, dtype=np.float32) -> np.ndarray:
    """b - E[eps x]; a layer without bias gets one."""
    base = np.zeros(output_error.shape) if bias is None else np.asarray(bias, np.float64)
    return (base - output_error).astype(dtype)
