"""Integer-only softmax and layer_norm (I-BERT, Kim et al. 2021), in pure numpy, with
their compile-time constants and Python-integer references (docs/integer-spec.md,
section 15).

Softmax of integers q with scale S (sec. 3.4-3.5 of the paper). Softmax is shift invariant,
so d = q - max(q) <= 0 (no zero point). exp(S d) = 2^-z exp(S p) with z = floor(-d / l),
p = d + z l in (-l, 0], l = floor(ln 2 / S); exp(S p) is the second-order polynomial
a (S p + b)^2 + c (a = 0.3585, b = 1.353, c = 0.344), computed as
(p + b_q)^2 + c_q with b_q = floor(b / S), c_q = floor(c / (a S^2)) (i-exp), then shifted
right by z. The integer exponentials e are normalised by their sum with an integer division
to r = floor((e 2^k + sum / 2) / sum) (a probability with scale 2^-k) and requantized to the
output grid with one fixed-point multiply (section 3: M = 2^-k / s_out).

Layer norm of integers q (sec. 3.6): m = round(sum(q) / N) (half up), y = q - m,
v = floor(sum(y^2) / N) + e_q (e_q = rint(eps / S^2)), sigma = isqrt(v) (floor of the exact
square root; 1 if v = 0), n = round(y 2^k / sigma) (half up): the normalised value with
scale 2^-k, and per channel c one fixed point carries gamma and beta to the output grid:
out = clamp(((n K[c] + B[c] + 2^(t-1)) >> t) + z_out) with K[c] = rint(gamma[c] / s_out
2^(t-k)), B[c] = rint(beta[c] / s_out 2^t) (`grouped_integer.fixed_point_rows`).

Every step is integer; the only float is at compile time. The approximation error is the
polynomial's (I-BERT: below 2e-3 relative for exp on (-ln 2, 0]) and the rounding of m,
sigma and the integer division; what it costs end to end is measured in
benchmarks/transformer_ptq.py.
"""

from __future__ import annotations

import math

import numpy as np

from qcompiler.numerics.grouped_integer import P_LIMIT, fixed_point_rows

EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344  # I-BERT's fit of exp on (-ln 2, 0]
NORM_BITS = 16  # the normalised layer_norm value's fraction bits


def exp_constants(scale: float) -> tuple[int, int, int]:
    """(l, b_q, c_q) of i-exp for inputs of `scale` (module docstring)."""
    scale = float(np.float32(scale))
    ln2 = math.floor(math.log(2.0) / scale)
    if ln2 < 1:
        raise ValueError(f"softmax input scale {scale:g} is coarser than ln 2: i-exp needs a finer "
                         "input grid (16-bit scores)")
    return ln2, math.floor(EXP_B / scale), math.floor(EXP_C / (EXP_A * scale * scale))


def exp_fraction_bits(constants: tuple[int, int, int], length: int) -> int:
    """k for r = e 2^k / sum: the largest <= 30 with e 2^k inside int64 and the sum of
    `length` exponentials too."""
    _, b_q, c_q = constants
    peak = b_q * b_q + c_q  # e at d = 0
    if peak * length >= P_LIMIT:
        raise ValueError(f"i-exp values up to {peak} over {length} elements overflow int64")
    return max(0, min(30, 62 - peak.bit_length()))


def integer_exp(d: np.ndarray, constants: tuple[int, int, int]) -> np.ndarray:
    """i-exp of d <= 0 (int64), scale a S^2 (module docstring)."""
    ln2, b_q, c_q = constants
    d = np.asarray(d, np.int64)
    z = (-d) // ln2
    p = d + z * ln2
    poly = (p + b_q) ** 2 + c_q
    return np.right_shift(poly, np.minimum(z, 63))


def integer_softmax(q: np.ndarray, axis: int, constants, fraction_bits: int, multiplier: int,
                    shift: int, output_zero_point: int, output_min: int, output_max: int) -> np.ndarray:
    """The section 15 softmax of integers q along `axis` (int64 results, clamped)."""
    q = np.asarray(q, np.int64)
    e = integer_exp(q - q.max(axis=axis, keepdims=True), constants)
    total = e.sum(axis=axis, keepdims=True)
    r = (np.left_shift(e, fraction_bits) + total // 2) // total
    t = 31 + shift
    scaled = np.right_shift(r * np.int64(multiplier) + (np.int64(1) << (t - 1)), t)
    return np.clip(scaled + output_zero_point, output_min, output_max)


def isqrt(v: np.ndarray) -> np.ndarray:
    """floor(sqrt(v)) of int64 v >= 0, exactly: the float64 root corrected by integer
    comparisons (float64 is off by at most one below 2^62)."""
    v = np.asarray(v, np.int64)
    root = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    root -= (root * root > v).astype(np.int64)
    root += ((root + 1) * (root + 1) <= v).astype(np.int64)
    return root


def layer_norm_params(input_scale: float, gamma, beta, output_scale: float, length: int, eps: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(K int32 [C], B int64 [C], shift int32 [C], e_q) for `integer_layer_norm`."""
    s_out = np.float64(np.float32(output_scale))
    gamma = np.asarray(gamma, np.float32).astype(np.float64).reshape(-1)
    beta = np.zeros_like(gamma) if beta is None \
        else np.asarray(beta, np.float32).astype(np.float64).reshape(-1)
    real = (gamma / s_out * 2.0 ** -NORM_BITS)[:, None]
    steps = beta / s_out
    norm_peak = math.sqrt(length) * 2.0 ** NORM_BITS + 1  # |y| / sigma <= sqrt(N)
    worst = np.abs(real[:, 0]) * norm_peak + np.abs(steps)
    slack = np.full(len(gamma), norm_peak / 2 + 2)
    k, b, shift, _ = fixed_point_rows(real, steps, worst, slack)
    eps_q = int(np.rint(eps / float(np.float32(input_scale)) ** 2))
    return k[:, 0].astype(np.int32), b, shift, eps_q


def integer_layer_norm(q: np.ndarray, multiplier, bias, shift, eps_q: int, output_zero_point: int,
                       output_min: int, output_max: int) -> np.ndarray:
    """The section 15 layer_norm of integers q over the last axis (int64 results, clamped)."""
    q = np.asarray(q, np.int64)
    n = q.shape[-1]
    mean = (2 * q.sum(axis=-1, keepdims=True) + n) // (2 * n)
    y = q - mean
    sigma = np.maximum(isqrt((y * y).sum(axis=-1, keepdims=True) // n + eps_q), 1)
    normalised = (np.left_shift(y, NORM_BITS + 1) + sigma) // (2 * sigma)
    t = 31 + np.asarray(shift, np.int64)
    p = normalised * np.asarray(multiplier, np.int64) + np.asarray(bias, np.int64)
    scaled = np.right_shift(p + np.left_shift(np.int64(1), t - 1), t)
    return np.clip(scaled + output_zero_point, output_min, output_max)


# ---- Python-integer references (the tests' oracles; small inputs only) --------------------------


def reference_softmax(row, constants, fraction_bits, multiplier, shift, output_zero_point,
                      output_min, output_max) -> list[int]:
    ln2, b_q, c_q = constants
    top = max(int(v) for v in row)
    exps = []
    for v in row:
        d = int(v) - top
        z = (-d) // ln2
        p = d + z * ln2
        exps.append(((p + b_q) ** 2 + c_q) >> min(z, 63))
    total = sum(exps)
    t = 31 + shift
    out = []
    for e in exps:
        r = ((e << fraction_bits) + total // 2) // total
        out.append(min(max(((r * multiplier + (1 << (t - 1))) >> t) + output_zero_point, output_min),
                       output_max))
    return out


def reference_layer_norm(row, multiplier, bias, shift, eps_q, output_zero_point, output_min,
                         output_max) -> list[int]:
    row = [int(v) for v in row]
    n = len(row)
    mean = (2 * sum(row) + n) // (2 * n)
    y = [v - mean for v in row]
    sigma = max(math.isqrt(sum(v * v for v in y) // n + eps_q), 1)
    out = []
    for c, v in enumerate(y):
        normalised = ((v << (NORM_BITS + 1)) + sigma) // (2 * sigma)
        t = 31 + int(shift[c])
        p = normalised * int(multiplier[c]) + int(bias[c])
        out.append(min(max(((p + (1 << (t - 1))) >> t) + output_zero_point, output_min), output_max))
    return out
