"""The integer form of a group-wise low-bit linear (`qlinear_grouped`, docs/integer-spec.md
section 14): packed codes and the fixed-point group multipliers, in pure numpy.

The fake-quant graph computes y = sum_g s[c, g] * sum_{k in g} x[k] w[c, k] + b[c] with
x = s_x (x_q - z_x) and w = (q - z[c, g]) (`qcompiler.numerics.grouped_quant`), and then
quantizes y / s_out half up. Each group has its own float32 scale, so there is no single
per-channel multiplier as in `qlinear`. Instead, as `qadd` does for its two operands (spec
section 5), every group's real multiplier R[c, g] = s_x s[c, g] / s_out is put on one fixed
point per output channel:

    R[c, g] ~= K[c, g] * 2**-t[c],   max_g K[c, g] in [2**30, 2**31)   (K int32)

and the float bias joins that fixed point as B[c] = rint(b[c] / s_out * 2**t[c]) (int64).
At run time, in int64:

    acc[c, g] = sum_{k in g} (x_q[k] - z_x) * (q[c, k] - z[c, g])
    p = B[c] + sum_g acc[c, g] * K[c, g]
    y_q = clamp(((p + 2**(t-1)) >> t) + z_out, qmin_out, qmax_out)

One rounding, half up, as the simulation's fake_quant does (rounding="half_up"). The
multipliers are within 2**-31 of the real ratios (relative to the row's largest), the same
precision as section 3, so a float64 simulation and the integer op round apart only when
y / s_out lies that close to a half. `t` is lowered below the precision choice when the
worst case of |p| could reach 2**62 (`group_multipliers`), which a layer with int16 inputs
and many groups can need; the row's multipliers then carry fewer bits, which the
lowering's notes report.

Codes are unsigned (a symmetric grid's code q in [-7, 7] is stored as q + 8 with zero point
8, the same numbers) and packed two to a byte, the even input feature in the low nibble.
"""

from __future__ import annotations

import math

import numpy as np

P_LIMIT = 1 << 62  # |p| stays below this: int64 with headroom for the rounding term


def unsigned_codes(codes, zero_points, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [C, K], zero points uint8 [C, K / group_size]) on [0, 2^bits - 1]: a
    symmetric grid (zero points None, signed codes) is offset by 2^(bits-1)."""
    if zero_points is not None:
        return np.asarray(codes, np.uint8), np.asarray(zero_points, np.uint8)
    codes = np.asarray(codes, np.int16)
    offset = 1 << (bits - 1)
    zeros = np.full((codes.shape[0], codes.shape[1] // group_size), offset, np.uint8)
    return (codes + offset).astype(np.uint8), zeros


def pack_int4(codes) -> np.ndarray:
    """uint8 [rows, columns / 2]: codes in [0, 15], column 2j in the low nibble of byte j."""
    codes = np.asarray(codes, np.uint8)
    if codes.ndim != 2 or codes.shape[1] % 2 or (codes > 15).any():
        raise ValueError(f"pack_int4 needs codes [rows, even columns] in [0, 15], got shape "
                         f"{list(codes.shape)} and maximum {int(codes.max(initial=0))}")
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed) -> np.ndarray:
    """The codes `pack_int4` packed (uint8 [rows, 2 * bytes])."""
    packed = np.asarray(packed, np.uint8)
    codes = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    codes[:, 0::2] = packed & 15
    codes[:, 1::2] = packed >> 4
    return codes


def group_multipliers(input_scale: float, group_scales, output_scale: float, bias, *,
                      input_offset: int, code_offsets, group_size: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(K int32 [C, G], B int64 [C], shift int32 [C] with t = 31 + shift, rows whose
    precision the int64 bound lowered) for the real multipliers s_x s[c, g] / s_out and
    the float bias (module docstring). `input_offset` is max |x_q - z_x|, `code_offsets`
    [C, G] the largest |q - z| of each group: they bound |p|."""
    scales = np.asarray(group_scales, np.float32).astype(np.float64)
    real = np.float64(np.float32(input_scale)) * scales / np.float64(np.float32(output_scale))
    rows = real.shape[0]
    bias = np.zeros(rows) if bias is None else np.asarray(bias, np.float32).astype(np.float64)
    bias_steps = bias / np.float64(np.float32(output_scale))
    # The worst |sum_g R acc| in output steps, plus the bias, plus K's rounding (<= 1/2 each).
    products = float(input_offset) * group_size * np.asarray(code_offsets, np.float64)
    worst = (real * products).sum(axis=1) + np.abs(bias_steps)
    slack = 0.5 * products.sum(axis=1) + 2.0
    multipliers, offsets, shifts, lowered = fixed_point_rows(real, bias_steps, worst, slack)
    return multipliers.astype(np.int32), offsets, shifts, lowered


def fixed_point_rows(real, offset_steps, worst, slack) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per row r of the real multipliers `real` [R, G] (any sign): (K int64 [R, G], B int64
    [R], shift int32 [R], rows lowered) with K = rint(real * 2**t), B = rint(offset_steps *
    2**t), t = 31 + shift the largest that gives max |K| in [2**30, 2**31) and keeps
    worst[r] * 2**t + slack[r] + 2**(t-1) below 2**62 (`worst`: the row's largest |p| / 2**t
    in real terms; `slack`: what K's rounding can add). ValueError if no t >= 1 fits."""
    real = np.asarray(real, np.float64)
    rows = real.shape[0]
    multipliers = np.zeros(real.shape, np.int64)
    offsets = np.zeros(rows, np.int64)
    shifts = np.zeros(rows, np.int32)
    lowered = 0
    for c in range(rows):
        peak = np.abs(real[c]).max()
        precise = 31 - math.frexp(peak)[1] if peak > 0 else 62  # max |K| in [2**30, 2**31)
        t = min(precise, 62)
        while t > 1 and worst[c] * 2.0 ** t + slack[c] + 2.0 ** (t - 1) >= P_LIMIT:
            t -= 1
        if worst[c] * 2.0 ** t + slack[c] + 2.0 ** (t - 1) >= P_LIMIT:
            raise ValueError(f"output channel {c}: the worst-case accumulator cannot fit int64 "
                             "at any fixed point; lower the input bits or the group count")
        lowered += t < precise
        multipliers[c] = np.rint(np.ldexp(real[c], t))
        offsets[c] = int(np.rint(np.ldexp(offset_steps[c], t)))
        shifts[c] = t - 31
    if np.abs(multipliers).max(initial=0) >= 1 << 31:
        raise ValueError("a multiplier reached 2**31")  # by construction it cannot
    return multipliers, offsets, shifts, lowered


def reference_output(x_q, input_zero_point: int, codes, zero_points, multipliers, offsets, shifts,
                     group_size: int, output_zero_point: int, output_min: int, output_max: int
                     ) -> np.ndarray:
    """The module docstring's arithmetic with Python integers, element by element: the oracle
    the interpreter and the torch semantics are tested against (small inputs only)."""
    x_q = np.asarray(x_q).reshape(-1, np.asarray(codes).shape[1])
    rows, columns = np.asarray(codes).shape
    out = np.zeros((x_q.shape[0], rows), np.int64)
    for n in range(x_q.shape[0]):
        for c in range(rows):
            p = int(offsets[c])
            for g in range(columns // group_size):
                acc = sum((int(x_q[n, k]) - input_zero_point) * (int(codes[c, k]) - int(zero_points[c, g]))
                          for k in range(g * group_size, (g + 1) * group_size))
                p += acc * int(multipliers[c, g])
            t = 31 + int(shifts[c])
            out[n, c] = min(max(((p + (1 << (t - 1))) >> t) + output_zero_point, output_min), output_max)
    return out
