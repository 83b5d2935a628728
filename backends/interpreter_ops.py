"""Numpy kernels of the integer reference interpreter, one function per IR op.

Each kernel takes numpy arrays (the node's inputs, None for absent optional
ones) and the node's attributes as keywords, exactly like the op's torch
function in `qcompiler.ir.ops`, and implements `docs/integer-spec.md` with integer
arithmetic only: products and sums in int64, checked to fit int32 where the
spec says the accumulator is int32, then the one rounding rule of
`qcompiler.numerics.fixed_point`. Convolutions and pooling are vectorised with
sliding windows (im2col) and batched integer matmuls.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qcompiler.numerics import ibert, quant
from qcompiler.numerics.fixed_point import rounding_shift

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
_DTYPES = {"u8": np.uint8, "i8": np.int8, "i16": np.int16, "i32": np.int32}


class AccumulatorOverflowError(ArithmeticError):
    """An int32 accumulator left [-2**31, 2**31) (the lowering's bound should prevent it)."""


def _int32_accumulator(acc: np.ndarray) -> np.ndarray:
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise AccumulatorOverflowError(f"an int32 accumulator reached {int(np.abs(acc).max())}, "
                                       "outside [-2**31, 2**31)")
    return acc


def _requantize(acc, multiplier, shift, output_zero_point, output_min, output_max, output_dtype):
    """Spec section 3 on int64 accumulators (checked to fit int32); `multiplier` and `shift`
    are ints or int arrays broadcasting against acc."""
    acc = _int32_accumulator(np.asarray(acc, np.int64))
    product = acc * np.asarray(multiplier, np.int64)
    scaled = rounding_shift(product, 31 + np.asarray(shift, np.int64))
    return np.clip(scaled + output_zero_point, output_min, output_max).astype(_DTYPES[output_dtype])


def _along(vector: np.ndarray, rank: int, axis: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = -1
    return np.asarray(vector, np.int64).reshape(shape)


def _offset(x: np.ndarray, zero_point: int) -> np.ndarray:
    return x.astype(np.int64) - zero_point


# ---- graph boundary ------------------------------------------------------------------------


def quantize(x, *, scale, zero_point, qmin, qmax, dtype):
    return quant.quantize(x, scale, zero_point, qmin, qmax).astype(_DTYPES[dtype])


def dequantize(q, *, scale, zero_point):
    return quant.dequantize(q, scale, zero_point)


# ---- windows -----------------------------------------------------------------------------------


def pooled_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool
                ) -> int:
    """Output length of a window op, as torch computes it (a window must start inside the
    input or its left padding)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _windows(x, kernel, stride, padding, dilation, ceil_mode, pad_value):
    """[N, C, *out, *kernel]: every window of x (padded with pad_value, plus any extra on the
    right that ceil_mode's last windows reach)."""
    spatial = x.ndim - 2
    outs = [pooled_size(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode)
            for i in range(spatial)]
    pads = [(0, 0), (0, 0)]
    for i in range(spatial):
        needed = (outs[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
        pads.append((padding[i], max(needed - x.shape[2 + i] - padding[i], padding[i])))
    padded = np.pad(x, pads, constant_values=pad_value)
    extents = [dilation[i] * (kernel[i] - 1) + 1 for i in range(spatial)]
    view = sliding_window_view(padded, extents, axis=tuple(range(2, 2 + spatial)))
    index = (slice(None), slice(None))
    index += tuple(slice(0, (outs[i] - 1) * stride[i] + 1, stride[i]) for i in range(spatial))
    index += tuple(slice(None, None, dilation[i]) for i in range(spatial))
    return view[index]


# ---- accumulating ops ---------------------------------------------------------------------------


def _qconv(x, weight, bias, multiplier, shift, stride, padding, dilation, groups, input_zero_point,
           output_zero_point, output_min, output_max, output_dtype):
    spatial = x.ndim - 2
    kernel = weight.shape[2:]
    windows = _windows(_offset(x, input_zero_point), kernel, stride, padding, dilation, False, 0)
    batch, channels = x.shape[:2]
    outs = windows.shape[2:2 + spatial]
    per_group = channels // groups
    out_channels = weight.shape[0]
    # im2col: [N, G, L, Cg*K] @ [G, Cg*K, Og] -> [N, G, L, Og]
    columns = windows.reshape(batch, groups, per_group, -1, *kernel)
    columns = np.moveaxis(columns, 2, 3 + 0).reshape(batch, groups, int(np.prod(outs)), -1)
    weights = weight.astype(np.int64).reshape(groups, out_channels // groups, -1).transpose(0, 2, 1)
    acc = np.matmul(columns, weights)
    acc = np.moveaxis(acc, 3, 2).reshape(batch, out_channels, *outs)
    acc = acc + _along(bias, acc.ndim, 1)
    return _requantize(acc, _along(multiplier, acc.ndim, 1), _along(shift, acc.ndim, 1),
                       output_zero_point, output_min, output_max, output_dtype)


def qconv2d(x, weight, bias, multiplier, shift, *, stride, padding, dilation, groups, **requant):
    return _qconv(x, weight, bias, multiplier, shift, stride, padding, dilation, groups, **requant)


def qconv1d(x, weight, bias, multiplier, shift, *, stride, padding, dilation, groups, **requant):
    return _qconv(x, weight, bias, multiplier, shift, stride, padding, dilation, groups, **requant)


def qlinear(x, weight, bias, multiplier, shift, *, input_zero_point, **output):
    acc = _offset(x, input_zero_point) @ weight.astype(np.int64).T + bias.astype(np.int64)
    return _requantize(acc, multiplier.astype(np.int64), shift.astype(np.int64), **output)


def qmatmul(a, b, *, a_zero_point, b_zero_point, multiplier, shift, **output):
    acc = np.matmul(_offset(a, a_zero_point), _offset(b, b_zero_point))
    return _requantize(acc, multiplier, shift, **output)


def qadd(a, b, *, a_zero_point, a_multiplier, b_zero_point, b_multiplier, shift, output_zero_point,
         output_min, output_max, output_dtype):
    """Spec section 5: both operands scaled to one fixed point in int64, one rounding."""
    product = _offset(a, a_zero_point) * np.int64(a_multiplier) \
        + _offset(b, b_zero_point) * np.int64(b_multiplier)
    scaled = rounding_shift(product, 31 + shift)
    return np.clip(scaled + output_zero_point, output_min, output_max).astype(_DTYPES[output_dtype])


def qmul(a, b, *, a_zero_point, b_zero_point, multiplier, shift, **output):
    return _requantize(_offset(a, a_zero_point) * _offset(b, b_zero_point), multiplier, shift, **output)


def requantize(x, *, input_zero_point, multiplier, shift, **output):
    return _requantize(_offset(x, input_zero_point), multiplier, shift, **output)


# ---- pooling -------------------------------------------------------------------------------------


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode):
    # Padding is the dtype's minimum: every window holds at least one real element, never less.
    windows = _windows(x, kernel_size, stride, padding, dilation, ceil_mode, np.iinfo(x.dtype).min)
    spatial = len(kernel_size)
    return windows.max(axis=tuple(range(-spatial, 0)))


def qmax_pool2d(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)


def qmax_pool1d(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)


def window_counts(size, kernel, stride, padding, ceil_mode, count_include_pad) -> np.ndarray:
    """torch's average-pooling divisor along one dimension, for each output position."""
    out = pooled_size(size, kernel, stride, padding, 1, ceil_mode)
    start = np.arange(out) * stride - padding
    end = np.minimum(start + kernel, size + padding)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, input_zero_point,
              multipliers, shifts, **output):
    spatial = len(kernel_size)
    ones = [1] * spatial
    windows = _windows(_offset(x, input_zero_point), kernel_size, stride, padding, ones, ceil_mode, 0)
    acc = windows.sum(axis=tuple(range(-spatial, 0)))
    count = np.ones((1,) * spatial, np.int64)
    for i in range(spatial):
        along = window_counts(x.shape[2 + i], kernel_size[i], stride[i], padding[i], ceil_mode,
                              count_include_pad)
        count = count * along.reshape([-1 if j == i else 1 for j in range(spatial)])
    index = count - 1
    return _requantize(acc, np.asarray(multipliers, np.int64)[index],
                       np.asarray(shifts, np.int64)[index], **output)


def qavg_pool2d(x, *, kernel_size, stride, padding, ceil_mode, count_include_pad, **rest):
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, **rest)


def qavg_pool1d(x, *, kernel_size, stride, padding, ceil_mode, count_include_pad, **rest):
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, **rest)


def qmean(x, *, dim, keepdim, input_zero_point, multiplier, shift, **output):
    acc = _offset(x, input_zero_point).sum(axis=tuple(dim), keepdims=keepdim)
    return _requantize(acc, multiplier, shift, **output)


def qlookup(x, table, *, input_min, axis=None):
    index = _offset(x, input_min)
    if axis is None:
        return table[index]
    channels = _along(np.arange(table.shape[0]), x.ndim, axis % x.ndim)
    return table[channels, index]


def qlinear_grouped(x, weight, zero_point, multiplier, bias, shift, *, group_size, input_zero_point,
                    output_zero_point, output_min, output_max, output_dtype):
    """Spec section 14: packed 4-bit codes, per-group int64 accumulators scaled by their
    int32 multipliers onto the row's fixed point, one rounding shift."""
    rows, columns = weight.shape[0], weight.shape[1] * 2
    codes = np.empty((rows, columns), np.int64)
    codes[:, 0::2], codes[:, 1::2] = weight & 15, weight >> 4
    codes -= np.repeat(zero_point.astype(np.int64), group_size, axis=1)
    flat = _offset(x, input_zero_point).reshape(-1, columns)
    p = np.broadcast_to(bias.astype(np.int64), (flat.shape[0], rows)).copy()
    for group, start in enumerate(range(0, columns, group_size)):
        acc = flat[:, start:start + group_size] @ codes[:, start:start + group_size].T
        p += acc * multiplier[:, group].astype(np.int64)
    scaled = rounding_shift(p, 31 + shift.astype(np.int64))
    out = np.clip(scaled + output_zero_point, output_min, output_max).astype(_DTYPES[output_dtype])
    return out.reshape(*x.shape[:-1], rows)


def qsoftmax(x, *, dim, exp_ln2, exp_b, exp_c, fraction_bits, multiplier, shift, output_dtype, **output):
    """Spec section 15 (I-BERT softmax): `qcompiler.numerics.ibert`."""
    out = ibert.integer_softmax(x, dim, (exp_ln2, exp_b, exp_c), fraction_bits, multiplier, shift, **output)
    return out.astype(_DTYPES[output_dtype])


def qlayer_norm(x, multiplier, bias, shift, *, eps_q, output_dtype, **output):
    """Spec section 15 (I-BERT layer_norm): `qcompiler.numerics.ibert`."""
    return ibert.integer_layer_norm(x, multiplier, bias, shift, eps_q, **output).astype(_DTYPES[output_dtype])


# ---- data movement ----------------------------------------------------------------------------------


def qconcat(*xs, dim):
    return np.concatenate(xs, axis=dim)


def concat(*xs, dim):
    return np.concatenate(xs, axis=dim)


def reshape(x, *, shape):
    return x.reshape(shape)


def flatten(x, *, start_dim, end_dim):
    start, end = start_dim % max(x.ndim, 1), end_dim % max(x.ndim, 1)
    return x.reshape(*x.shape[:start], -1, *x.shape[end + 1:]) if x.ndim else x.reshape(1)


def permute(x, *, dims):
    return np.transpose(x, dims)


def transpose(x, *, dim0, dim1):
    return np.swapaxes(x, dim0, dim1)


def slice_(x, *, axis, start, end, step):
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, end, step)
    return x[tuple(index)]


def split(x, *, axis, sizes):
    length = x.shape[axis]
    sizes = [sizes] * (-(-length // sizes)) if isinstance(sizes, int) else list(sizes)
    bounds = np.cumsum(sizes)[:-1]
    return tuple(np.split(x, bounds, axis=axis))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad(x, *, pads, mode, value):
    """torch's pad order: (last dim before, last dim after, second-to-last before, ...)."""
    if any(p < 0 for p in pads):
        raise ValueError("negative padding (cropping) is not supported by the interpreter")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pads) // 2):
        widths[x.ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    if mode == "constant":
        return np.pad(x, widths, constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(x, widths, mode=_PAD_MODES[mode])


def embedding(indices, table):
    return table[indices]


def expand(x, *, shape):
    """torch's expand: -1 keeps the input's size along that axis (the batch, in a graph with a
    symbolic batch)."""
    offset = len(shape) - x.ndim
    shape = [x.shape[axis - offset] if size == -1 else size for axis, size in enumerate(shape)]
    return np.broadcast_to(x, shape).copy()


# ---- integers and masks: casts, comparisons, selection, extremes (spec section 16) --------------

_NUMPY = {"i64": np.int64, "i32": np.int32, "i16": np.int16, "i8": np.int8, "u8": np.uint8,
          "bool": np.bool_}


def cast(x, *, dtype):
    """Integers and bools only (a float cast is a fall back); narrowing wraps, as in torch."""
    if dtype not in _NUMPY:
        raise ValueError(f"the interpreter casts integers and bools only, not to {dtype}")
    return x.astype(_NUMPY[dtype])


def where(condition, a, b):
    return np.where(condition, a, b).astype(np.result_type(a, b))


def amax(x, *, dim, keepdim):
    return np.max(x, axis=tuple(dim), keepdims=keepdim)


def amin(x, *, dim, keepdim):
    return np.min(x, axis=tuple(dim), keepdims=keepdim)


def argmax(x, *, dim, keepdim):
    """The first maximum along `dim`, as torch (numpy's argmax also takes the first)."""
    result = np.argmax(x, axis=dim).astype(np.int64)
    return np.expand_dims(result, dim) if keepdim else result


KERNELS = {
    "quantize": quantize, "dequantize": dequantize,
    "qconv2d": qconv2d, "qconv1d": qconv1d, "qlinear": qlinear, "qmatmul": qmatmul,
    "qlinear_grouped": qlinear_grouped, "qsoftmax": qsoftmax, "qlayer_norm": qlayer_norm,
    "qadd": qadd, "qmul": qmul, "requantize": requantize, "qconcat": qconcat,
    "qmax_pool2d": qmax_pool2d, "qmax_pool1d": qmax_pool1d, "qavg_pool2d": qavg_pool2d,
    "qavg_pool1d": qavg_pool1d, "qmean": qmean, "qlookup": qlookup,
    "concat": concat, "reshape": reshape, "flatten": flatten, "permute": permute,
    "transpose": transpose, "slice": slice_, "split": split, "pad": pad, "embedding": embedding,
    "expand": expand, "cast": cast, "where": where, "amax": amax, "amin": amin, "argmax": argmax,
    "eq": np.equal, "ne": np.not_equal, "gt": np.greater, "ge": np.greater_equal, "lt": np.less,
    "le": np.less_equal, "logical_and": np.logical_and, "logical_or": np.logical_or,
    "logical_not": np.logical_not,
}
