"""Group-wise low-bit weight quantization of linear layers (pure numpy): round to nearest,
AWQ's activation-aware scale search and GPTQ's error feedback.

Format. A weight W [out, in] is cut along its input features into groups of `group_size`
columns; group g of row o has its own scale s[o, g] (float32). Two code grids:
- symmetric: signed narrow-range codes q in [-(2^(b-1) - 1), 2^(b-1) - 1] ([-7, 7] for 4
  bits), zero point 0, W ~ s[o, g] * q; s = max|W[o, group]| / qmax;
- asymmetric (`zero_points` given): unsigned codes q in [0, 2^b - 1] ([0, 15]) with an
  integer zero point z[o, g] in that range, W ~ s[o, g] * (q - z); s = (hi - lo) / (2^b - 1)
  over the group's range widened to hold 0 (lo = min(min W, 0), hi = max(max W, 0)) and
  z = clamp(rint(-lo / s)). It uses all 16 levels (the symmetric grid 15) and fits a
  group whose weights lean to one side, which is what lifts INT4 fidelity on transformer
  weights (GPTQ's and AWQ's reference implementations default to it).
A group of zeros gets scale 1. Rounding is the project's (`qcompiler.numerics.quant`):
q = clamp(rint(float32(w) * float32(1 / s)) + z). `group_size` must divide the input
features (`check_group_size` says so otherwise; nothing is padded, so the packed layout
stays a plain [out, in / 2] byte array).

Error measure. What matters is the layer output on real inputs X [tokens, in]:
||X W^T - X Wq^T||^2 = sum_o (W - Wq)[o] G (W - Wq)[o]^T with G = X^T X (the Gram matrix,
`output_error`), so every method is judged on the calibration data's G.

- `round_to_nearest`: the scales above, codes rounded independently.
- `awq_search` (Lin et al. 2024, sec. 3.2): channels with large mean |x| matter more, so
  scale input column j of W by a_j = mean|x_j|^alpha before quantizing and divide the input by
  a_j (folded into the op that produces it); the effective weight is Q(W diag(a)) diag(a)^-1.
  alpha is searched on a grid in [0, 1] (alpha = 0 is round to nearest) for the lowest
  output error; a is normalised to a geometric mean of 1 (the paper's
  s / sqrt(max(s) min(s))).
- `gptq` (Frantar et al. 2023, alg. 1): quantize the columns in order; after each, spread
  its rounding error over the columns not yet quantized, weighted by the inverse Hessian
  H = 2 G / tokens (damped by `damping` times its mean diagonal), through its upper
  Cholesky factor; processed in blocks of columns (lazy batch updates). A group's scale is
  chosen when its first column is reached, from the weights as updated so far (the paper's
  group-wise variant). With `act_order`, columns are quantized in order of decreasing
  Hessian diagonal (the inputs with the most energy first, while the most columns are left
  to absorb their error; the GPTQ authors' "act-order"); the group scales are then fixed
  up front from the unquantized weights ("static groups"), so the groups stay contiguous
  runs of input features and the storage format does not change.
"""

from __future__ import annotations

import numpy as np


def check_group_size(in_features: int, group_size: int) -> None:
    """ValueError unless `group_size` is a positive divisor of `in_features`."""
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if in_features % group_size:
        divisors = [d for d in (32, 64, 128, 256) if in_features % d == 0] or [in_features]
        raise ValueError(f"group_size {group_size} does not divide the {in_features} input "
                         f"features; choose a divisor (e.g. {', '.join(map(str, divisors))})")


def code_max(bits: int) -> int:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    return (1 << (bits - 1)) - 1


def group_scales(weight, bits: int, group_size: int) -> np.ndarray:
    """Symmetric scales (float32 [out, in / group_size]): max|W| of each group / qmax."""
    weight = np.asarray(weight, np.float64)
    check_group_size(weight.shape[1], group_size)
    peak = np.abs(weight).reshape(weight.shape[0], -1, group_size).max(axis=2)
    return np.where(peak == 0, 1.0, peak / code_max(bits)).astype(np.float32)


def group_grid(weight, bits: int, group_size: int,
               asymmetric: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(scales, zero points or None) of each group: the symmetric or asymmetric grid of the
    module docstring; zero points are uint8 [out, in / group_size]."""
    if not asymmetric:
        return group_scales(weight, bits, group_size), None
    weight = np.asarray(weight, np.float64)
    check_group_size(weight.shape[1], group_size)
    view = weight.reshape(weight.shape[0], -1, group_size)
    low, high = np.minimum(view.min(axis=2), 0.0), np.maximum(view.max(axis=2), 0.0)
    code_max(bits)  # checks the width
    levels = (1 << bits) - 1
    scales = np.where(high - low == 0, 1.0, (high - low) / levels).astype(np.float32)
    zeros = np.clip(np.rint(-low / scales.astype(np.float64)), 0, levels).astype(np.uint8)
    return scales, zeros


def quantize_grouped(weight, scales, bits: int, group_size: int, zero_points=None) -> np.ndarray:
    """Codes of `weight` on the group grid (module docstring's rounding): int8 [out, in]
    when symmetric, uint8 with `zero_points`."""
    weight = np.asarray(weight, np.float32)
    inverse = (np.float32(1.0) / np.asarray(scales, np.float32)).astype(np.float32)
    scaled = np.rint((weight * np.repeat(inverse, group_size, axis=1)).astype(np.float32))
    if zero_points is None:
        limit = code_max(bits)
        return np.clip(scaled, -limit, limit).astype(np.int8)
    offset = np.repeat(np.asarray(zero_points, np.float32), group_size, axis=1)
    return np.clip(scaled + offset, 0, (1 << bits) - 1).astype(np.uint8)


def dequantize_grouped(codes, scales, group_size: int, zero_points=None) -> np.ndarray:
    """float32 [out, in]: (code - zero point) * its group's scale."""
    per_column = np.repeat(np.asarray(scales, np.float32), group_size, axis=1)
    codes = np.asarray(codes, np.float32)
    if zero_points is not None:
        codes = codes - np.repeat(np.asarray(zero_points, np.float32), group_size, axis=1)
    return (codes * per_column).astype(np.float32)


def round_to_nearest(weight, bits: int, group_size: int,
                     asymmetric: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(codes, scales, zero points or None) by independent rounding."""
    scales, zeros = group_grid(weight, bits, group_size, asymmetric)
    return quantize_grouped(weight, scales, bits, group_size, zeros), scales, zeros


def output_error(weight, approximation, gram) -> float:
    """sum over rows of (W - Wq) G (W - Wq)^T: the squared output error on the data of G."""
    difference = np.asarray(weight, np.float64) - np.asarray(approximation, np.float64)
    # (D G) . D: two matrix products' worth, where a three-operand einsum loops naively.
    return float(np.sum((difference @ np.asarray(gram, np.float64)) * difference))


def awq_search(weight, gram, abs_mean, bits: int, group_size: int, grid: int = 20,
               asymmetric: bool = False) -> tuple[np.ndarray, tuple, float]:
    """(input-channel scales a [in], (codes, scales, zero points) of Q(W diag(a))) with the
    lowest output error over alpha in {0, 1/grid, ..., (grid - 1)/grid}, and the chosen
    alpha. The layer must then read x / a (module docstring)."""
    weight = np.asarray(weight, np.float64)
    abs_mean = np.maximum(np.asarray(abs_mean, np.float64), 1e-8)
    best = None
    for step in range(grid):
        alpha = step / grid
        channel = abs_mean ** alpha
        channel = channel / np.sqrt(channel.max() * channel.min())
        quantized = round_to_nearest(weight * channel, bits, group_size, asymmetric)
        effective = dequantize_grouped(quantized[0], quantized[1], group_size, quantized[2]) / channel
        error = output_error(weight, effective, gram)
        if best is None or error < best[0]:
            best = (error, channel, quantized, alpha)
    _, channel, quantized, alpha = best
    return channel, quantized, alpha


def gptq(weight, gram, bits: int, group_size: int, *, damping: float = 0.01, block: int = 128,
         asymmetric: bool = False,
         act_order: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(codes, scales, zero points or None) by GPTQ's error feedback (module docstring).
    `gram` is X^T X."""
    weight = np.array(weight, np.float64)
    rows, columns = weight.shape
    check_group_size(columns, group_size)
    hessian = 2.0 * np.array(gram, np.float64)
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    weight[:, dead] = 0.0
    hessian[np.diag_indices(columns)] += damping * np.mean(np.diag(hessian))
    order = np.argsort(-np.diag(hessian), kind="stable") if act_order else np.arange(columns)
    static = group_grid(weight, bits, group_size, asymmetric) if act_order else None
    weight, hessian = weight[:, order], hessian[np.ix_(order, order)]
    # Upper Cholesky factor of H^-1 (the paper's "Cholesky inverse" of line 3).
    inverse = np.linalg.cholesky(np.linalg.inv(hessian)).T
    block = group_size * max(1, block // group_size)  # groups never straddle blocks
    codes = np.zeros((rows, columns), np.uint8 if asymmetric else np.int8)
    scales = np.zeros((rows, columns // group_size), np.float32)
    zeros = np.zeros((rows, columns // group_size), np.uint8) if asymmetric else None
    if static is not None:
        scales, zeros = static
    for start in range(0, columns, block):
        end = min(start + block, columns)
        part, errors = weight[:, start:end].copy(), np.zeros((rows, end - start))
        local = inverse[start:end, start:end]
        for i in range(end - start):
            column = order[start + i]
            group = column // group_size
            if static is None and column % group_size == 0:
                group_scale, group_zero = group_grid(part[:, i:i + group_size], bits, group_size,
                                                     asymmetric)
                scales[:, group] = group_scale[:, 0]
                if zeros is not None:
                    zeros[:, group] = group_zero[:, 0]
            scale = scales[:, group][:, None]
            zero = None if zeros is None else zeros[:, group][:, None]
            code = quantize_grouped(part[:, i:i + 1], scale, bits, 1, zero)
            codes[:, column] = code[:, 0]
            error = (part[:, i] - dequantize_grouped(code, scale, 1, zero)[:, 0]) / local[i, i]
            part[:, i:] -= np.outer(error, local[i, i:])
            errors[:, i] = error
        weight[:, end:] -= errors @ inverse[start:end, end:]
    return codes, scales, zeros


def packed_bytes(out_features: int, in_features: int, bits: int, group_size: int,
                 asymmetric: bool = False) -> int:
    """Bytes of the packed codes (two 4-bit codes a byte; `bits` bits each in general), their
    float32 group scales and, asymmetric, their zero points (`bits` bits each, packed)."""
    code_bytes = -(-out_features * in_features * bits // 8)
    groups = out_features * (in_features // group_size)
    return code_bytes + 4 * groups + (-(-groups * bits // 8) if asymmetric else 0)
