"""Group-wise low-bit weight quantization of linear layers (pure numpy): round to nearest,
AWQ's activation-aware scale search and GPTQ's error feedback.

Format. A weight W [out, in] is cut along its input features into groups of `group_size`
columns; group g of row o has its own scale s[o, g] (float32) and the codes are signed,
symmetric and narrow-range: q in [-(2^(b-1) - 1), 2^(b-1) - 1] ([-7, 7] for 4 bits), zero
point 0, W ~ s[o, g] * q. The scale is max|W[o, group]| / qmax (a group of zeros gets 1).
Rounding is the project's (`qcompiler.numerics.quant`): q = clamp(rint(float32(w) *
float32(1 / s))). `group_size` must divide the input features (`check_group_size` says so
otherwise; nothing is padded, so the packed layout stays a plain [out, in / 2] byte array).

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
  group-wise variant).
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
    """Scales (float32 [out, in / group_size]): max|W| of each group / qmax."""
    weight = np.asarray(weight, np.float64)
    check_group_size(weight.shape[1], group_size)
    peak = np.abs(weight).reshape(weight.shape[0], -1, group_size).max(axis=2)
    return np.where(peak == 0, 1.0, peak / code_max(bits)).astype(np.float32)


def quantize_grouped(weight, scales, bits: int, group_size: int) -> np.ndarray:
    """Codes (int8 [out, in]) of `weight` on the group scales (module docstring's rounding)."""
    weight = np.asarray(weight, np.float32)
    inverse = (np.float32(1.0) / np.asarray(scales, np.float32)).astype(np.float32)
    per_column = np.repeat(inverse, group_size, axis=1)
    limit = code_max(bits)
    return np.clip(np.rint((weight * per_column).astype(np.float32)), -limit, limit).astype(np.int8)


def dequantize_grouped(codes, scales, group_size: int) -> np.ndarray:
    """float32 [out, in]: code * its group's scale."""
    per_column = np.repeat(np.asarray(scales, np.float32), group_size, axis=1)
    return (np.asarray(codes, np.float32) * per_column).astype(np.float32)


def round_to_nearest(weight, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, scales) by independent rounding."""
    scales = group_scales(weight, bits, group_size)
    return quantize_grouped(weight, scales, bits, group_size), scales


def output_error(weight, approximation, gram) -> float:
    """sum over rows of (W - Wq) G (W - Wq)^T: the squared output error on the data of G."""
    difference = np.asarray(weight, np.float64) - np.asarray(approximation, np.float64)
    # (D G) . D: two matrix products' worth, where a three-operand einsum loops naively.
    return float(np.sum((difference @ np.asarray(gram, np.float64)) * difference))


def awq_search(weight, gram, abs_mean, bits: int, group_size: int,
               grid: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(input-channel scales a [in], codes, scales) of Q(W diag(a)) with the lowest output
    error over alpha in {0, 1/grid, ..., (grid - 1)/grid}, and the chosen alpha. The layer
    must then read x / a (module docstring)."""
    weight = np.asarray(weight, np.float64)
    abs_mean = np.maximum(np.asarray(abs_mean, np.float64), 1e-8)
    best = None
    for step in range(grid):
        alpha = step / grid
        channel = abs_mean ** alpha
        channel = channel / np.sqrt(channel.max() * channel.min())
        codes, scales = round_to_nearest(weight * channel, bits, group_size)
        effective = dequantize_grouped(codes, scales, group_size) / channel
        error = output_error(weight, effective, gram)
        if best is None or error < best[0]:
            best = (error, channel, codes, scales, alpha)
    _, channel, codes, scales, alpha = best
    return channel, codes, scales, alpha


def gptq(weight, gram, bits: int, group_size: int, *, damping: float = 0.01,
         block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(codes, scales) by GPTQ's error feedback (module docstring). `gram` is X^T X."""
    weight = np.array(weight, np.float64)
    rows, columns = weight.shape
    check_group_size(columns, group_size)
    hessian = 2.0 * np.array(gram, np.float64)
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    weight[:, dead] = 0.0
    hessian[np.diag_indices(columns)] += damping * np.mean(np.diag(hessian))
    # Upper Cholesky factor of H^-1 (the paper's "Cholesky inverse" of line 3).
    inverse = np.linalg.cholesky(np.linalg.inv(hessian)).T
    block = group_size * max(1, block // group_size)  # groups never straddle blocks
    codes = np.zeros((rows, columns), np.int8)
    scales = np.zeros((rows, columns // group_size), np.float32)
    for start in range(0, columns, block):
        end = min(start + block, columns)
        part, errors = weight[:, start:end].copy(), np.zeros((rows, end - start))
        local = inverse[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if column % group_size == 0:
                group = column // group_size
                scales[:, group] = group_scales(part[:, i:i + group_size], bits, group_size)[:, 0]
            scale = scales[:, column // group_size][:, None]
            code = quantize_grouped(part[:, i:i + 1], scale, bits, 1)
            codes[:, column] = code[:, 0]
            error = (part[:, i] - dequantize_grouped(code, scale, 1)[:, 0]) / local[i, i]
            part[:, i:] -= np.outer(error, local[i, i:])
            errors[:, i] = error
        weight[:, end:] -= errors @ inverse[start:end, end:]
    return codes, scales


def packed_bytes(out_features: int, in_features: int, bits: int, group_size: int) -> int:
    """Bytes of the packed codes (two 4-bit codes a byte; `bits` bits each in general) and
    their float32 group scales."""
    code_bytes = -(-out_features * in_features * bits // 8)
    return code_bytes + 4 * out_features * (in_features // group_size)
