"""Fixed-point requantization: the arithmetic every integer backend shares.

A real multiplier `M = s_in * s_w / s_out` (positive) is represented as

    M ~= M0 * 2**(-31 - shift),    M0 an int32 in [2**30, 2**31)

chosen once, at compile time, by `quantize_multiplier` (the only place that
touches floating point). At run time an int32 accumulator `acc` becomes

    q = clamp(((acc * M0) + 2**(t - 1)) >> t  +  zero_point,  qmin, qmax),  t = 31 + shift

with the product formed in int64 (|acc| < 2**31 and M0 < 2**31, so it fits) and
`>>` an arithmetic shift: one rounding, half-way cases rounded toward +infinity.
This is the rule written in `docs/integer-spec.md`; the interpreter and the
TVM lowering both call or mirror `requantize`.

`t` must lie in [1, 62]: M must be in [2**-31, 2**30), which every real
network's scales satisfy by a wide margin; `quantize_multiplier` refuses others.
"""

from __future__ import annotations

import math

import numpy as np

MIN_SHIFT_TOTAL = 1
MAX_SHIFT_TOTAL = 62


def quantize_multiplier(multiplier: float) -> tuple[int, int]:
    """(M0, shift) with M0 in [2**30, 2**31) and multiplier ~= M0 * 2**(-31 - shift).

    The relative error is below 2**-31. Raises ValueError for a multiplier that is
    not finite and positive, or too large or small for the int64 product.
    """
    m = float(multiplier)
    if not math.isfinite(m) or m <= 0.0:
        raise ValueError(f"requantization multiplier must be finite and > 0, got {multiplier!r}")
    mantissa, exponent = math.frexp(m)  # m = mantissa * 2**exponent, mantissa in [0.5, 1)
    m0 = round(mantissa * (1 << 31))
    if m0 == 1 << 31:  # mantissa rounded up to 1.0
        m0 //= 2
        exponent += 1
    shift = -exponent
    total = 31 + shift
    if not MIN_SHIFT_TOTAL <= total <= MAX_SHIFT_TOTAL:
        raise ValueError(
            f"requantization multiplier {m!r} is outside [2**-31, 2**30): the scales give an "
            "accumulator that cannot be requantized with one int64 product; check for a "
            "near-zero or huge scale")
    return int(m0), int(shift)


def quantize_multipliers(multipliers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vector form of `quantize_multiplier` (per-channel): int32 M0s and int32 shifts."""
    pairs = [quantize_multiplier(m) for m in np.asarray(multipliers, np.float64).reshape(-1)]
    m0 = np.array([p[0] for p in pairs], np.int64).astype(np.int32)
    shift = np.array([p[1] for p in pairs], np.int32)
    return m0, shift


def rounding_shift(product: np.ndarray, total_shift: np.ndarray) -> np.ndarray:
    """floor((product + 2**(t-1)) / 2**t) on int64, i.e. round half toward +infinity."""
    product = np.asarray(product, np.int64)
    total_shift = np.asarray(total_shift, np.int64)
    half = np.left_shift(np.int64(1), total_shift - 1)
    return np.right_shift(product + half, total_shift)


def requantize(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, zero_point: np.ndarray | int,
               qmin: int, qmax: int, axis: int | None = None) -> np.ndarray:
    """Requantize int32 accumulators to [qmin, qmax] (returned as int32; cast by the caller).

    `m0`, `shift` and `zero_point` are scalars or per-channel vectors along `axis`.
    """
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise TypeError(f"requantize takes int32 accumulators, got {acc.dtype}")

    def along_axis(v):
        v = np.asarray(v, np.int64)
        if v.ndim == 0 or v.size == 1 or axis is None:
            return v.reshape(()) if v.size == 1 else v
        shape = [1] * acc.ndim
        shape[axis] = v.size
        return v.reshape(shape)

    product = acc.astype(np.int64) * along_axis(m0)
    scaled = rounding_shift(product, 31 + along_axis(shift))
    return np.clip(scaled + along_axis(zero_point), qmin, qmax).astype(np.int32)


def requantize_reference(acc: int, m0: int, shift: int, zero_point: int, qmin: int, qmax: int) -> int:
    """The same rule with Python integers, one element at a time: the oracle for tests."""
    total = 31 + shift
    value = (acc * m0 + (1 << (total - 1))) >> total
    return min(max(value + zero_point, qmin), qmax)
