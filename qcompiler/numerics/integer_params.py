"""Compile-time parameters of integer ops (pure numpy): requantization multipliers, int32
biases, fused-activation clamps, lookup tables and worst-case accumulators.

This is the only place, besides the graph boundary, where integer lowering touches
floating point (`docs/integer-spec.md`, sections 3-9). Every function takes plain
numbers or arrays and knows nothing about the IR.

- `weighted_multipliers`: `M[c] = s_in * s_w[c] / s_out` as (M0, shift) pairs (spec 3).
- `bias_scales`, `quantize_bias`: `round_half_even(b / (s_in * s_w[c]))`, saturated to int32
  (spec 1, 7); `weight_scales_fitting_bias`: weight scales coarse enough that no channel's
  int32 bias needs more than 2**30; `fake_quantize_bias`: the real values those integers
  stand for, which is what fake-quant simulation adds (the `fake_quant_bias` op), so
  lowering and simulation share this one rounding.
- `add_multipliers`: the two multipliers of `qadd` with one shared shift (spec 5).
- `average_multipliers`: one (M0, shift) per window count for average pooling (spec 6).
- `fused_clamp`: the output clamp of a requantizing op with relu/clamp folded in (spec 4).
- `lookup_table`, `lookup_values`: the 2**bits-entry table of an elementwise function
  (spec 9), quantized or (bool / integer results) not.
- `worst_case_accumulator`: the bound of spec 7, per output channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from qcompiler.numerics.fixed_point import quantize_multiplier, quantize_multipliers
from qcompiler.numerics.quant import dequantize, quantize

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def weighted_multipliers(input_scale: float, weight_scales: np.ndarray, output_scale: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (M0 int32[C], shift int32[C]) for `M[c] = s_in * s_w[c] / s_out`.

    The real multiplier is formed in float64 from the float32 scales, so it is the
    exact ratio of the numbers the graph stores (up to one float64 rounding)."""
    real = (np.float64(input_scale) * np.asarray(weight_scales, np.float64).reshape(-1)
            / np.float64(output_scale))
    return quantize_multipliers(real)


def bias_scales(input_scale: float, weight_scales: np.ndarray, channels: int) -> np.ndarray:
    """The step of the int32 bias grid, `s_in * s_w[c]` per output channel, formed in float64
    from the float32 scales (a per-tensor weight scale is broadcast to every channel)."""
    weight_scales = np.asarray(weight_scales, np.float64).reshape(-1)
    return np.float64(np.asarray(input_scale, np.float64).reshape(-1)[0]) * np.broadcast_to(
        weight_scales, (channels,))


def quantize_bias(bias: np.ndarray | None, input_scale: float, weight_scales: np.ndarray,
                  channels: int) -> tuple[np.ndarray, int]:
    """int32 bias with scale `s_in * s_w[c]` (zeros when there is none), and how many
    entries saturated. Rounding is half to even (numpy's rint) of the float64 quotient."""
    if bias is None:
        return np.zeros(channels, np.int32), 0
    exact = np.rint(np.asarray(bias, np.float64).reshape(-1) / bias_scales(input_scale, weight_scales,
                                                                          channels))
    saturated = int(np.count_nonzero((exact < INT32_MIN) | (exact > INT32_MAX)))
    return np.clip(exact, INT32_MIN, INT32_MAX).astype(np.int32), saturated


# The largest |int32 bias| calibration lets a channel have: the other half of the int32
# accumulator's range is left to the sum of products (spec section 7).
BIAS_LIMIT = 1 << 30


def weight_scales_fitting_bias(bias: np.ndarray, input_scale: float, weight_scales: np.ndarray,
                               limit: int = BIAS_LIMIT) -> np.ndarray:
    """Weight scales (float32, the shape of `weight_scales`) no smaller than given and large
    enough that every channel's int32 bias `round(b / (s_in * s_w[c]))` stays within `limit`.

    A channel whose weights are near zero (|w| ~ 1e-9 after folding a batch norm with a
    vanishing gamma) gets a tiny weight scale, floored at float32 epsilon, while its bias
    stays large (-1 to -7 in pretrained EfficientNet stems): its bias quantized on the grid
    s_in * s_w would need more than 32 bits. Its weights are below any step that lets the
    bias fit, so they quantize to zero and the channel computes its bias, as the float one
    nearly does. A per-tensor scale (one entry) grows for the channel that needs most."""
    bias = np.abs(np.asarray(bias, np.float64).reshape(-1))
    scales = np.asarray(weight_scales, np.float32).reshape(-1)
    needed = bias / (np.float64(input_scale) * limit)
    if scales.size == 1:
        needed = np.array([needed.max(initial=0.0)])
    # float32 rounding must not undercut the bound: round the needed scale up.
    needed32 = needed.astype(np.float32)
    needed32 = np.where(needed32.astype(np.float64) < needed,
                        np.nextafter(needed32, np.float32(np.inf)), needed32)
    return np.maximum(scales, needed32).astype(np.float32).reshape(np.shape(weight_scales))


def fake_quantize_bias(bias: np.ndarray, input_scale: float, weight_scales: np.ndarray,
                       dtype=np.float32) -> np.ndarray:
    """The real values of the int32 bias an integer kernel adds in place of `bias`:
    `quantize_bias(bias) * s_in * s_w[c]`, the product in float64, rounded once to `dtype`.
    Fake-quant simulation adds these, so it sees the bias the integer path sees."""
    bias = np.asarray(bias)
    channels = bias.reshape(-1).shape[0]
    integers, _ = quantize_bias(bias, input_scale, weight_scales, channels)
    real = integers.astype(np.float64) * bias_scales(input_scale, weight_scales, channels)
    return real.astype(dtype).reshape(bias.shape)


def add_multipliers(scale_a: float, scale_b: float, output_scale: float, subtract: bool = False
                    ) -> tuple[int, int, int]:
    """(Ka, Kb, shift) for `qadd`: K = round(M * 2**t) with t = 31 + shift chosen so that
    the larger of |Ka|, |Kb| lies in [2**30, 2**31). `subtract` negates Kb (`qsub`)."""
    ma = float(np.float64(scale_a) / np.float64(output_scale))
    mb = float(np.float64(scale_b) / np.float64(output_scale))
    m0, shift = quantize_multiplier(max(ma, mb))
    total = 31 + shift
    # M * 2**t is exact in float64 (a power-of-two scaling); round() is half to even.
    ka, kb = (m0, round(math.ldexp(mb, total))) if ma >= mb else (round(math.ldexp(ma, total)), m0)
    return int(ka), int(-kb if subtract else kb), int(shift)


def average_multipliers(input_scale: float, output_scale: float, max_count: int
                        ) -> tuple[list[int], list[int]]:
    """Lists of M0 and shift indexed by `count - 1` for count = 1..max_count, where
    `M = s_in / (s_out * count)` averages `count` values (spec 6)."""
    pairs = [quantize_multiplier(float(np.float64(input_scale) / (np.float64(output_scale) * count)))
             for count in range(1, max_count + 1)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def fused_clamp(qmin: int, qmax: int, scale: float, zero_point: int,
                bounds: list[tuple[float | None, float | None]]) -> tuple[int, int]:
    """The output clamp [lo_q, hi_q] of a requantizing op followed by clamps (relu is
    (0, None), relu6 (0, 6)). Each real bound is quantized with the rounding the graph
    boundary and fake-quant simulation use (`numerics.quant.quantize`), so a clamped
    value lands on the integer the simulation gives it."""
    low, high = qmin, qmax
    for lo, hi in bounds:
        if lo is not None:
            low = max(low, int(quantize(np.float32(lo), scale, zero_point, qmin, qmax)))
        if hi is not None:
            high = min(high, int(quantize(np.float32(hi), scale, zero_point, qmin, qmax)))
    if low > high:
        raise ValueError(f"the fused clamps {bounds} leave an empty output range "
                         f"[{low}, {high}] at scale {scale} and zero point {zero_point}")
    return low, high


def lookup_values(function: Callable[[np.ndarray], np.ndarray], input_scale: float,
                  input_zero_point: int, input_range: tuple[int, int]) -> np.ndarray:
    """`function(dequantize(q))` for every input integer q in [qmin_in, qmax_in], in order:
    the table of a function with a bool or integer result (a comparison, a cast), or the
    real values a `lookup_table` quantizes. The last axis of the result runs over q."""
    levels = np.arange(input_range[0], input_range[1] + 1, dtype=np.int64)
    return np.asarray(function(dequantize(levels, input_scale, input_zero_point)))


def lookup_table(function: Callable[[np.ndarray], np.ndarray], input_scale: float,
                 input_zero_point: int, input_range: tuple[int, int], output_scale: float,
                 output_zero_point: int, output_range: tuple[int, int]) -> np.ndarray:
    """`table[q - qmin_in] = quantize(function(dequantize(q)))` for every input integer q
    (int32; the caller casts it to the output dtype). `function` maps float32 arrays to
    float32 arrays (it may add leading axes, e.g. one row per channel); dequantize and
    quantize are the simulation's own (spec 9, 10): a NaN result (sqrt or log of a negative
    level) quantizes to qmin, as torch's fake-quant kernel does."""
    result = np.asarray(lookup_values(function, input_scale, input_zero_point, input_range),
                        np.float32)
    return quantize(result, output_scale, output_zero_point, *output_range)


def largest_offset(qmin: int, qmax: int, zero_point: int) -> int:
    """max |q - zero_point| over [qmin, qmax]: the largest zero-point-corrected operand."""
    return max(abs(qmin - zero_point), abs(qmax - zero_point))


def worst_case_accumulator(weight_q: np.ndarray, bias_q: np.ndarray | None, input_offset: int
                           ) -> np.ndarray:
    """Per output channel (axis 0 of the weight): |bias_q[c]| + sum_k |w_q[c, k]| * input_offset,
    in Python-sized integers (object arrays would be slow; int64 cannot overflow here since
    every factor is below 2**31 and a channel has far fewer than 2**32 weights)."""
    weight = np.abs(np.asarray(weight_q, np.int64).reshape(len(weight_q), -1))
    bound = weight.sum(axis=1) * np.int64(input_offset)
    if bias_q is not None:
        bound = bound + np.abs(np.asarray(bias_q, np.int64).reshape(-1))
    return bound
