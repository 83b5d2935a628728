"""Torch reference semantics of the integer IR ops (`docs/integer-spec.md`).

These functions are what `qcompiler.ir.ops.OPS` calls for the integer ops: shape
inference runs them on meta tensors, the torch backend runs them on CPU tensors.
The numpy reference interpreter (`qcompiler.backends.interpreter`) is written
independently and tests check that the two agree exactly.

Convolutions and matrix products are formed in float64 here, because torch has
no CPU integer convolution: every product and partial sum is an integer of
magnitude below 2**31 (the lowering refuses layers whose worst-case accumulator
can reach 2**31, spec section 7), and float64 represents every integer below
2**53 exactly, so the float64 result *is* the int32 accumulator. Everything
after the accumulator (requantization, clamps, lookups) is int64 arithmetic.

Parameter layout (why inputs versus attributes): per-channel numbers of weighted
ops (int8 weight, int32 bias, int32 multiplier M0 and shift) are constant inputs,
like the weights they belong to; per-tensor numbers (zero points, scalar
multipliers, output clamp, output dtype) are attributes, so the text form shows
them on the node's line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcompiler.numerics import ibert

_INTEGER_DTYPES = {"u8": torch.uint8, "i8": torch.int8, "i16": torch.int16, "i32": torch.int32}


def _is_meta(*tensors) -> bool:
    return any(t is not None and t.device.type == "meta" for t in tensors)


def _offset(x: torch.Tensor, zero_point: int) -> torch.Tensor:
    """x - zero_point as int64 (the zero-point-corrected operand of spec section 2)."""
    return x.to(torch.int64) - int(zero_point)


def _exact(acc: torch.Tensor) -> torch.Tensor:
    """A float64 tensor that holds integers, as int64 (see the module docstring)."""
    return torch.round(acc).to(torch.int64)


def _requantize(acc: torch.Tensor, multiplier, shift, output_zero_point: int, output_min: int,
                output_max: int, output_dtype: str) -> torch.Tensor:
    """Spec section 3: ((acc * M0 + 2**(t-1)) >> t) + z_out, clamped; t = 31 + shift.
    `multiplier` and `shift` are ints or int tensors broadcasting against acc."""
    multiplier = torch.as_tensor(multiplier, dtype=torch.int64, device=acc.device)
    total = 31 + torch.as_tensor(shift, dtype=torch.int64, device=acc.device)
    half = torch.bitwise_left_shift(torch.ones_like(total), total - 1)
    scaled = torch.bitwise_right_shift(acc * multiplier + half, total)
    out = torch.clamp(scaled + int(output_zero_point), int(output_min), int(output_max))
    return out.to(_INTEGER_DTYPES[output_dtype])


def _channel_vector(v: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    shape = [1] * rank
    shape[axis] = -1
    return v.to(torch.int64).reshape(shape)


def quantize(x, *, scale, zero_point, qmin, qmax, dtype):
    """Spec section 10: clamp(round_half_even(x * (1 / scale)) + zero_point), float32."""
    inverse = (torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)).item() \
        if not _is_meta(x) else 1.0
    rounded = torch.round(x.to(torch.float32) * inverse)
    return torch.clamp(rounded + zero_point, qmin, qmax).to(_INTEGER_DTYPES[dtype])


def dequantize(q, *, scale, zero_point):
    """Spec section 10: scale * (q - zero_point) in float32."""
    return _offset(q, zero_point).to(torch.float32) * torch.tensor(scale, dtype=torch.float32)


def _weighted(conv, x, weight, bias, multiplier, shift, input_zero_point, output_zero_point,
              output_min, output_max, output_dtype, axis):
    acc = conv(_offset(x, input_zero_point).to(torch.float64), weight.to(torch.float64),
               bias.to(torch.float64))
    acc = _exact(acc)
    rank = acc.dim()
    return _requantize(acc, _channel_vector(multiplier, rank, axis), _channel_vector(shift, rank, axis),
                       output_zero_point, output_min, output_max, output_dtype)


def qconv2d(x, weight, bias, multiplier, shift, *, stride, padding, dilation, groups,
            input_zero_point, output_zero_point, output_min, output_max, output_dtype):
    def conv(a, w, b):
        return F.conv2d(a, w, b, stride, padding, dilation, groups)
    return _weighted(conv, x, weight, bias, multiplier, shift, input_zero_point, output_zero_point,
                     output_min, output_max, output_dtype, 1)


def qconv1d(x, weight, bias, multiplier, shift, *, stride, padding, dilation, groups,
            input_zero_point, output_zero_point, output_min, output_max, output_dtype):
    def conv(a, w, b):
        return F.conv1d(a, w, b, stride, padding, dilation, groups)
    return _weighted(conv, x, weight, bias, multiplier, shift, input_zero_point, output_zero_point,
                     output_min, output_max, output_dtype, 1)


def qlinear(x, weight, bias, multiplier, shift, *, input_zero_point, output_zero_point, output_min,
            output_max, output_dtype):
    return _weighted(F.linear, x, weight, bias, multiplier, shift, input_zero_point,
                     output_zero_point, output_min, output_max, output_dtype, -1)


def qmatmul(a, b, *, a_zero_point, b_zero_point, multiplier, shift, output_zero_point, output_min,
            output_max, output_dtype):
    acc = _exact(torch.matmul(_offset(a, a_zero_point).to(torch.float64),
                              _offset(b, b_zero_point).to(torch.float64)))
    return _requantize(acc, multiplier, shift, output_zero_point, output_min, output_max, output_dtype)


def qadd(a, b, *, a_zero_point, a_multiplier, b_zero_point, b_multiplier, shift, output_zero_point,
         output_min, output_max, output_dtype):
    """Spec section 5: p = (a - z_a) * Ka + (b - z_b) * Kb in int64, one rounding shift."""
    total = 31 + int(shift)
    p = _offset(a, a_zero_point) * int(a_multiplier) + _offset(b, b_zero_point) * int(b_multiplier)
    scaled = torch.bitwise_right_shift(p + (1 << (total - 1)), total)
    out = torch.clamp(scaled + int(output_zero_point), int(output_min), int(output_max))
    return out.to(_INTEGER_DTYPES[output_dtype])


def qmul(a, b, *, a_zero_point, b_zero_point, multiplier, shift, output_zero_point, output_min,
         output_max, output_dtype):
    acc = _offset(a, a_zero_point) * _offset(b, b_zero_point)
    return _requantize(acc, multiplier, shift, output_zero_point, output_min, output_max, output_dtype)


def requantize(x, *, input_zero_point, multiplier, shift, output_zero_point, output_min, output_max,
               output_dtype):
    return _requantize(_offset(x, input_zero_point), multiplier, shift, output_zero_point,
                       output_min, output_max, output_dtype)


def qconcat(*xs, dim):
    return torch.cat(xs, dim)


def qmax_pool2d(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    # float32 holds every 8- and 16-bit integer exactly; padding is -inf, never chosen (spec 6).
    return F.max_pool2d(x.to(torch.float32), kernel_size, stride, padding, dilation,
                        ceil_mode).to(x.dtype)


def qmax_pool1d(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    return F.max_pool1d(x.to(torch.float32), kernel_size, stride, padding, dilation,
                        ceil_mode).to(x.dtype)


def _average(pool, x, kernel_size, stride, padding, ceil_mode, count_include_pad, input_zero_point,
             multipliers, shifts, output_zero_point, output_min, output_max, output_dtype):
    offset = _offset(x, input_zero_point).to(torch.float64)
    # Window sums with padding contributing 0 (= padding x with its zero point).
    acc = _exact(pool(offset, kernel_size, stride, padding, ceil_mode, True, divisor_override=1))
    ones = torch.ones_like(offset[:1, :1])
    inside = pool(ones, kernel_size, stride, padding, ceil_mode, True, divisor_override=1)
    averaged = pool(ones, kernel_size, stride, padding, ceil_mode, count_include_pad)
    count = _exact(inside / averaged)  # torch's divisor at each output position
    table_m = torch.tensor(multipliers, dtype=torch.int64, device=x.device)
    table_s = torch.tensor(shifts, dtype=torch.int64, device=x.device)
    if _is_meta(x):
        return torch.empty(acc.shape, dtype=_INTEGER_DTYPES[output_dtype], device="meta")
    return _requantize(acc, table_m[count - 1], table_s[count - 1], output_zero_point, output_min,
                       output_max, output_dtype)


def qavg_pool2d(x, *, kernel_size, stride, padding, ceil_mode, count_include_pad, input_zero_point,
                multipliers, shifts, output_zero_point, output_min, output_max, output_dtype):
    return _average(F.avg_pool2d, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                    input_zero_point, multipliers, shifts, output_zero_point, output_min, output_max,
                    output_dtype)


def qavg_pool1d(x, *, kernel_size, stride, padding, ceil_mode, count_include_pad, input_zero_point,
                multipliers, shifts, output_zero_point, output_min, output_max, output_dtype):
    def pool(a, k, s, p, c, include, divisor_override=None):
        # avg_pool1d has no divisor_override: pool a 2-D view with a 1-row window instead.
        out = F.avg_pool2d(a.unsqueeze(-2), [1, k[0]], [1, s[0]], [0, p[0]], c, include,
                           divisor_override=divisor_override)
        return out.squeeze(-2)
    return _average(pool, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                    input_zero_point, multipliers, shifts, output_zero_point, output_min, output_max,
                    output_dtype)


def qmean(x, *, dim, keepdim, input_zero_point, multiplier, shift, output_zero_point, output_min,
          output_max, output_dtype):
    """Global / adaptive average pooling to size 1: the sum over `dim`, then spec 3 with
    M = s_in / (s_out * count); `multiplier` and `shift` already include the count."""
    acc = torch.sum(_offset(x, input_zero_point), dim=dim, keepdim=keepdim)
    return _requantize(acc, multiplier, shift, output_zero_point, output_min, output_max, output_dtype)


def qlookup(x, table, *, input_min, axis=None):
    """out = table[x - input_min] (spec 9); with `axis`, one table row per channel along that
    axis: out[..., c, ...] = table[c, x[..., c, ...] - input_min]."""
    index = _offset(x, input_min)
    if axis is None:
        return table[index]
    channels = torch.arange(table.shape[0], device=x.device).reshape(
        [-1 if d == axis % x.dim() else 1 for d in range(x.dim())])
    return table[channels, index]


def qlinear_grouped(x, weight, zero_point, multiplier, bias, shift, *, group_size, input_zero_point,
                    output_zero_point, output_min, output_max, output_dtype):
    """Spec section 14: a linear with packed 4-bit weights [C, K / 2] (uint8, even input
    feature in the low nibble), zero points [C, G], and one int32 multiplier per group on a
    fixed point per output channel; p = bias[c] + sum_g acc[c, g] * multiplier[c, g] in
    int64, one rounding shift by t = 31 + shift[c]. Each group's accumulator is a float64
    matmul of integers below 2**53 (exact, see the module docstring)."""
    rows, columns = weight.shape[0], weight.shape[1] * 2
    if _is_meta(x, weight):
        return torch.empty((*x.shape[:-1], rows), dtype=_INTEGER_DTYPES[output_dtype], device="meta")
    codes = torch.stack([weight & 15, weight >> 4], dim=-1).reshape(rows, columns).to(torch.int64)
    codes = codes - zero_point.to(torch.int64).repeat_interleave(group_size, dim=1)
    flat = _offset(x, input_zero_point).reshape(-1, columns)
    p = bias.to(torch.int64).expand(flat.shape[0], rows).clone()
    for group, start in enumerate(range(0, columns, group_size)):
        acc = _exact(flat[:, start:start + group_size].to(torch.float64)
                     @ codes[:, start:start + group_size].to(torch.float64).T)
        p += acc * multiplier[:, group].to(torch.int64)
    total = 31 + shift.to(torch.int64)
    half = torch.bitwise_left_shift(torch.ones_like(total), total - 1)
    scaled = torch.bitwise_right_shift(p + half, total)
    out = torch.clamp(scaled + int(output_zero_point), int(output_min), int(output_max))
    return out.to(_INTEGER_DTYPES[output_dtype]).reshape(*x.shape[:-1], rows)


def qsoftmax(x, *, dim, exp_ln2, exp_b, exp_c, fraction_bits, multiplier, shift, output_zero_point,
             output_min, output_max, output_dtype):
    """Spec section 15: I-BERT's integer softmax (i-exp, an integer division by the sum, one
    fixed-point requantization); the arithmetic is `qcompiler.numerics.ibert`'s."""
    if _is_meta(x):
        return torch.empty(x.shape, dtype=_INTEGER_DTYPES[output_dtype], device="meta")
    out = ibert.integer_softmax(x.numpy(), dim, (exp_ln2, exp_b, exp_c), fraction_bits, multiplier, shift,
                          output_zero_point, output_min, output_max)
    return torch.from_numpy(out).to(_INTEGER_DTYPES[output_dtype])


def qlayer_norm(x, multiplier, bias, shift, *, eps_q, output_zero_point, output_min, output_max,
                output_dtype):
    """Spec section 15: I-BERT's integer layer_norm over the last axis (integer mean,
    integer square root, per-channel fixed point for gamma and beta)."""
    if _is_meta(x):
        return torch.empty(x.shape, dtype=_INTEGER_DTYPES[output_dtype], device="meta")
    out = ibert.integer_layer_norm(x.numpy(), multiplier.numpy(), bias.numpy(), shift.numpy(), eps_q,
                             output_zero_point, output_min, output_max)
    return torch.from_numpy(out).to(_INTEGER_DTYPES[output_dtype])
