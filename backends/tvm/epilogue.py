"""The requantize epilogue of the blocked int8 kernels: docs/integer-spec.md, section 3, on
an int32 accumulator (bias already added), in one of two exact forms, and the float32
epilogue (bias, clamp) of the float kernels.

`requantize` is the spec as written, in int64 (`out`, a `kernels.Output`, in the stored form
of `layout.Blocked`: zero point and clamp moved by the storage offset):

    p = int64(acc) * int64(M0);  r = (p + 2**(t-1)) >> t;  q = clamp(r + z_out, lo, hi)

AVX2 has no 64-bit arithmetic shift, min/max or narrowing pack, so LLVM emulates them with
long sequences there. When every shift of a layer is `t >= 31` (real multiplier below 1,
checked at compile time: `use_unsigned_shift`), `requantize_unsigned_shift` computes the
same integer with a logical shift and int32 clamping:

    u = uint64(p) + (2**(t-1) + 2**63)       # biased into the unsigned range (wraps)
    r = int32(u >> t) - int32(2**63 >> t)    # exact modulo 2**32
    q = clamp(r, lo - z_out, hi - z_out) + z_out

Why it is exact: `u = p + 2**(t-1) + 2**63 (mod 2**64)` and `p + 2**(t-1) + 2**63` lies in
[0, 2**64) because |p| < 2**62, so `u >> t = floor((p + 2**(t-1)) / 2**t) + 2**63 >> t`
(2**63 is a multiple of 2**t). With t >= 31 and |acc| < 2**31, |M0| < 2**31, the result r
has |r| < 2**31, so the int32 subtraction (modulo 2**32) gives it exactly. Measured with
the prototype kernels (1 thread, paired rounds): 35-40% faster than the int64 form on AVX2,
about 5% slower on AVX-512 (which has vpsravq and vpmovsqb), so AVX-512 keeps the int64 form.

The accumulator is read as a plain load and widened with a Cast node built directly:
`int64(acc + bias)` written inline is simplified into `int64(acc) + int64(bias)`, which
keeps LLVM from using the 32x32->64 `vpmuldq` (it emits the 3-uop `vpmullq` instead), so
the kernels add the bias in a separate int32 stage.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx

from qcompiler.backends.tvm.kernels import Output


def requantize(acc, multiplier, total_shift, out: Output):
    """Spec 3 in int64; `acc` an int32 load, `multiplier` an int32 and `total_shift` (t) an
    int64 expression."""
    product = tirx.Cast("int64", acc) * tirx.Cast("int64", multiplier)
    one = tirx.const(1, "int64")
    scaled = (product + (one << (total_shift - one))) >> total_shift
    clamped = tirx.max(tirx.min(scaled + tirx.const(out.zero_point, "int64"),
                                tirx.const(out.high, "int64")), tirx.const(out.low, "int64"))
    return clamped.astype(out.dtype)


def requantize_unsigned_shift(acc, multiplier, total_shift, out: Output):
    """The same integer as `requantize` when t >= 31 (module docstring)."""
    product = tirx.Cast("int64", acc) * tirx.Cast("int64", multiplier)
    shift = total_shift.astype("uint64")
    one = tirx.const(1, "uint64")
    sign = tirx.const(1 << 63, "uint64")
    biased = tirx.Cast("uint64", product) + ((one << (shift - one)) + sign)
    scaled = tirx.Cast("int32", (biased >> shift).astype("uint32") - (sign >> shift).astype("uint32"))
    clamped = tirx.max(tirx.min(scaled, tirx.const(out.high - out.zero_point, "int32")),
                       tirx.const(out.low - out.zero_point, "int32"))
    return (clamped + tirx.const(out.zero_point, "int32")).astype(out.dtype)


def use_unsigned_shift(isa: str, total_shifts: np.ndarray) -> bool:
    """The unsigned-shift form on AVX2 when every t >= 31 (module docstring)."""
    return isa == "avx2" and bool((np.asarray(total_shifts) >= 31).all())


def requantize_form(isa: str, total_shifts: np.ndarray):
    return requantize_unsigned_shift if use_unsigned_shift(isa, total_shifts) else requantize


def clamp_float(value, low: float | None, high: float | None):
    """value clamped to [low, high] where given (a fused relu / relu6 / clamp)."""
    if low is not None:
        value = tirx.max(value, tirx.const(float(low), "float32"))
    if high is not None:
        value = tirx.min(value, tirx.const(float(high), "float32"))
    return value
