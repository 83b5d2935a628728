"""Affine quantization arithmetic (pure numpy): integer ranges, scale and zero point
from a real range, quantize, dequantize and fake-quantize.

    real = scale * (q - zero_point),     q in [qmin, qmax]

Integer ranges. `bits` b, signed: [-2^(b-1), 2^(b-1) - 1]; unsigned: [0, 2^b - 1];
narrow range drops the most negative level so the range is symmetric
([-127, 127] for int8), which is what symmetric weights use so that -w and w
quantize to opposite integers (Jacob et al. 2018, sec. 2.2; Krishnamoorthi 2018).

Scale and zero point (`choose_qparams`). The real range is first widened to
contain 0, so that 0 (zero padding, ReLU's output floor) is exactly representable.
- asymmetric: scale = (hi - lo) / (qmax - qmin) and
  zero_point = qmin - round(lo / scale), clamped to [qmin, qmax];
- symmetric (signed only): zero_point = 0 and scale = max(|lo|, |hi|) / qmax, so that
  +-max(|lo|, |hi|) are both representable exactly (torch's observers divide by
  (qmax - qmin) / 2 instead, which clips the top value by half a step).
A range of zero width (an all-zero channel, e.g. a pruned filter) gets scale 1
rather than an arbitrary tiny number: a tiny weight scale would make the int32
bias scale s_in * s_w overflow. Other scales are floored at float32 epsilon, as
torch's observers do. Scales are float32; the zero point is computed from the
float32 scale so that the pair is self-consistent.

Rounding rule (the contract with torch, tested bit for bit): quantize computes
`q = clamp(round_half_to_even(x * (1 / scale)) + zero_point, qmin, qmax)` in
float32, with `1 / scale` rounded to float32 first. This is exactly what
`torch.fake_quantize_per_tensor_affine` and `torch.fake_quantize_per_channel_affine`
do on CPU (`std::nearbyint` under the default round-to-nearest-even mode, applied
to `x * inv_scale`); note that `x * (1/scale)` and `x / scale` can differ by one
ulp, which moves values that sit on a rounding tie. Dequantize is
`(q - zero_point) * scale` in float32. Zero points are rounded half to even too.
"""

from __future__ import annotations

import numpy as np

# Torch's observers floor scales at float32 epsilon; we do the same for nonzero ranges.
MIN_SCALE = float(np.finfo(np.float32).eps)


def quant_range(bits: int, signed: bool, narrow_range: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of a `bits`-bit integer type."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    if signed:
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        qmin, qmax = 0, (1 << bits) - 1
    if narrow_range:
        if not signed:
            raise ValueError("narrow_range drops the most negative level of a signed type; "
                             "it has no meaning for unsigned integers")
        qmin += 1
    return qmin, qmax


def choose_qparams(lo, hi, *, bits: int = 8, symmetric: bool = False, signed: bool = True,
                   narrow_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (int32) arrays for the real range [lo, hi].

    `lo` and `hi` are scalars (per-tensor; 1-element arrays are returned) or arrays
    of one entry per channel. See the module docstring for the formulas.
    """
    lo = np.atleast_1d(np.asarray(lo, np.float64))
    hi = np.atleast_1d(np.asarray(hi, np.float64))
    if lo.shape != hi.shape:
        raise ValueError(f"lo has shape {lo.shape} but hi has shape {hi.shape}")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError("the range to quantize is not finite (NaN or Inf in lo or hi)")
    if (lo > hi).any():
        raise ValueError(f"lo must be <= hi, got lo={lo.tolist()} hi={hi.tolist()}")
    if symmetric and not signed:
        raise ValueError("symmetric quantization (zero_point = 0, range centred on 0) needs a "
                         "signed integer type; use signed=True or symmetric=False")
    qmin, qmax = quant_range(bits, signed, narrow_range)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if symmetric:
        raw = np.maximum(-lo, hi) / qmax
    else:
        raw = (hi - lo) / (qmax - qmin)
    scale = np.where(raw == 0, 1.0, np.maximum(raw, MIN_SCALE)).astype(np.float32)
    if symmetric:
        zero_point = np.zeros(lo.shape, np.int64)
    else:
        zero_point = qmin - np.rint(lo / scale.astype(np.float64)).astype(np.int64)
    return scale, np.clip(zero_point, qmin, qmax).astype(np.int32)


def _broadcast(params: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Shape per-channel parameters [C] to broadcast along `axis` of an ndim array."""
    params = np.asarray(params).reshape(-1)
    if axis is None:
        if params.size != 1:
            raise ValueError(f"per-tensor quantization takes one scale, got {params.size}")
        return params.reshape(())
    shape = [1] * ndim
    shape[axis] = params.size
    return params.reshape(shape)


def quantize(x, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> np.ndarray:
    """Integers (int32) representing x; rounding as in the module docstring."""
    x = np.asarray(x, np.float32)
    inv_scale = (np.float32(1.0) / np.asarray(scale, np.float32)).astype(np.float32)
    inv_scale = _broadcast(inv_scale, x.ndim, axis)
    zero_point = _broadcast(np.asarray(zero_point, np.int64), x.ndim, axis)
    # The product is float32 (as torch computes it); rint rounds half to even. NaN becomes
    # qmin, as in torch's kernel; +-inf saturate.
    rounded = np.rint((x * inv_scale).astype(np.float32)).astype(np.float64)
    result = np.clip(rounded + zero_point, qmin, qmax)
    return np.where(np.isnan(result), qmin, result).astype(np.int32)


def dequantize(q, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """Real values (float32) of integers q: (q - zero_point) * scale."""
    q = np.asarray(q, np.int64)
    zero_point = _broadcast(np.asarray(zero_point, np.int64), q.ndim, axis)
    scale = _broadcast(np.asarray(scale, np.float32), q.ndim, axis)
    return ((q - zero_point).astype(np.float32) * scale).astype(np.float32)


def fake_quantize(x, scale, zero_point, qmin: int, qmax: int, axis: int | None = None
                  ) -> np.ndarray:
    """dequantize(quantize(x)): the float values an integer runtime would represent x by."""
    return dequantize(quantize(x, scale, zero_point, qmin, qmax, axis), scale, zero_point, axis)


def sqnr_db(reference, approximation) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (ref - approx)^2).

    Each 8-bit step of an ideal uniform quantizer of a full-range signal adds about
    6 dB; inf when the two agree exactly."""
    reference = np.asarray(reference, np.float64)
    noise = float(np.sum((reference - np.asarray(approximation, np.float64)) ** 2))
    signal = float(np.sum(reference ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0 else float("-inf")
