"""TE computes of the blocked int8 kernels (docs/integer-spec.md, sections 2-4, 6 and 10):
convolutions (dense, pointwise, grouped), depthwise convolutions, dense layers, the
graph-boundary quantize / dequantize, average pooling and means, each with its
requantization fused into the same kernel. `schedules.py` gives each its loop nest and
tensorizes the dot products.

The accumulation is the spec's `sum (x - z_x) * w` computed as `bias' + sum x * w`, with
`bias' = bias - z_x * sum w` folded at compile time (`packing.fold_zero_point`, used only
where it is exact in int32), so the inner loop multiplies raw stored bytes: what the dot
intrinsics take. Activations are read in their stored form (`blocked.py`): the folded bias
uses the stored zero point, and `out` is the stored form of the output.

Every kernel is a chain of named stages, the names the schedules look for: `pad` (the
padded input, filled with the input zero point), `conv` (the int32 accumulator), `bias_add`
(int32, its own stage: see `epilogue.py`) and `out` (the requantized output).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from qcompiler.backends.tvm.blocked import pad_spatial, spatial_sum, window_sum
from qcompiler.backends.tvm.epilogue import requantize
from qcompiler.backends.tvm.kernels import Output


def requantized(acc, bias, multiplier, total_shift, out: Output, form=requantize):
    """The epilogue stages on an accumulator whose last two axes are (channel block, lane);
    `bias`, `multiplier` and `total_shift` are `(blocks, lanes)` tensors."""
    biased = te.compute(acc.shape, lambda *i: acc(*i) + bias[i[1], i[-1]], name="bias_add")
    return te.compute(acc.shape, lambda *i: form(biased(*i), multiplier[i[1], i[-1]],
                                                  total_shift[i[1], i[-1]], out), name="out")


def conv(x, weight, bias, multiplier, total_shift, *, out_spatial, stride, padding, dilation,
         groups: int, input_zero_point: int, out: Output, form=requantize):
    """x `(N, IC/ib, H, W, ib)`, weight `(OC/L, IC/g/ib, kh, kw, ib/4, L, 4)`
    (`packing.pack_conv_int8`): a convolution with `groups` groups whose channels per group
    are whole blocks. The innermost `(L, 4)` loop pair is the dot intrinsic."""
    n = x.shape[0]
    out_blocks, group_chunks, kh, kw, quads, lanes, _ = (int(d) for d in weight.shape)
    padded = pad_spatial(x, padding, int(input_zero_point))
    chunk = te.reduce_axis((0, group_chunks), name="rc")
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    quad, step = te.reduce_axis((0, quads), name="rq"), te.reduce_axis((0, 4), name="rs")
    blocks_per_group = out_blocks // groups

    def accumulate(i, o, y, xx, lane):
        source = chunk if groups == 1 else (o // blocks_per_group) * group_chunks + chunk
        value = padded[i, source, y * stride[0] + ry * dilation[0], xx * stride[1] + rx * dilation[1],
                       quad * 4 + step]
        return te.sum(value.astype("int32") * weight[o, chunk, ry, rx, quad, lane, step].astype("int32"),
                      axis=[chunk, ry, rx, quad, step])

    acc = te.compute((n, out_blocks, *out_spatial, lanes), accumulate, name="conv")
    return requantized(acc, bias, multiplier, total_shift, out, form)


def depthwise(x, weight, bias, multiplier, total_shift, *, out_spatial, stride, padding, dilation,
              input_zero_point: int, out: Output, form=requantize):
    """Depthwise convolution, weight `(C/L, kh, kw, L)`, vectorized over the lanes. Products
    are formed in int16 (|255 x -128| < 2**15, exact), cheaper than int32 multiplies."""
    n = x.shape[0]
    blocks, kh, kw, lanes = (int(d) for d in weight.shape)
    padded = pad_spatial(x, padding, int(input_zero_point))
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")

    def accumulate(i, c, y, xx, lane):
        value = padded[i, c, y * stride[0] + ry * dilation[0], xx * stride[1] + rx * dilation[1], lane]
        return te.sum((value.astype("int16") * weight[c, ry, rx, lane].astype("int16")).astype("int32"),
                      axis=[ry, rx])

    acc = te.compute((n, blocks, *out_spatial, lanes), accumulate, name="conv")
    return requantized(acc, bias, multiplier, total_shift, out, form)


def depthwise_rows(x, weight, bias, multiplier, total_shift, *, out_spatial, stride, padding,
                   input_zero_point: int, out: Output, form=requantize):
    """3x3 depthwise convolution as per-lane 4-element dot products (the depthwise dot
    intrinsic): for each column tap, the three row taps and a zero-weighted fourth,

        acc[y, x, l] = sum_{kw < 3, q < 4} xpad[x * s + kw, y * s + q, l] * w[kw, l, q]

    weight `(C/L, 3, L, 4)` (`packing.pack_depthwise_rows`). The padded input is stored
    column-major, `(N, C/L, W', H', L)`, so a column's four rows are contiguous bytes (and
    tensorize finds the 4-row region next to the lanes); it has one more row where the
    zero-weighted fourth tap would read past the image."""
    n, blocks, h, w, lanes = x.shape
    pad_h, pad_w = padding
    rows = max(int(h) + 2 * pad_h, (out_spatial[0] - 1) * stride[0] + 4)
    fill = tirx.const(int(input_zero_point), str(x.dtype))
    padded = te.compute(
        (n, blocks, w + 2 * pad_w, rows, lanes),
        lambda i, c, xx, y, lane: tirx.if_then_else(
            tirx.all(y >= pad_h, y < h + pad_h, xx >= pad_w, xx < w + pad_w),
            x[i, c, y - pad_h, xx - pad_w, lane], fill),
        name="pad")
    rx, rq = te.reduce_axis((0, 3), name="rx"), te.reduce_axis((0, 4), name="rq")
    acc = te.compute(
        (n, blocks, *out_spatial, lanes),
        lambda i, c, y, xx, lane: te.sum(
            padded[i, c, xx * stride[1] + rx, y * stride[0] + rq, lane].astype("int32")
            * weight[c, rx, lane, rq].astype("int32"), axis=[rx, rq]),
        name="conv")
    return requantized(acc, bias, multiplier, total_shift, out, form)


def dense(x, weight, bias, multiplier, total_shift, *, out: Output, form=requantize):
    """x `(M, K')` in the stored operand form (K' a multiple of 4), weight `(O/L, K'/4, L, 4)`
    (`packing.pack_dense_int8`) -> `(M, O/L, L)`."""
    rows = x.shape[0]
    out_blocks, quads, lanes, _ = (int(d) for d in weight.shape)
    quad, step = te.reduce_axis((0, quads), name="rq"), te.reduce_axis((0, 4), name="rs")
    acc = te.compute(
        (rows, out_blocks, lanes),
        lambda m, o, lane: te.sum(x[m, quad * 4 + step].astype("int32")
                                  * weight[o, quad, lane, step].astype("int32"), axis=[quad, step]),
        name="conv")
    return requantized(acc, bias, multiplier, total_shift, out, form)


def dense_operand(x, *, depth: int, offset: int, dtype: str):
    """A plain `[M, K]` input as the dense kernel's operand: moved by the storage offset and
    padded to `depth` columns (the padding meets zero weights)."""
    columns = int(x.shape[1])
    return te.compute(
        (x.shape[0], depth),
        lambda m, k: tirx.if_then_else(
            k < columns, (x[m, tirx.min(k, columns - 1)].astype("int32")
                          + tirx.const(offset, "int32")).astype(dtype), tirx.const(0, dtype)),
        name="pad")


def quantize(x, *, scale: float, zero_point: int, qmin: int, qmax: int, block: int, blocks: int,
             offset: int, dtype: str):
    """Spec 10 (`kernels.quantize`: one float32 product, round half to even, clamp) reading
    a plain float NCHW input and writing the blocked stored form; padded channels hold the
    stored zero point."""
    inverse = float(np.float32(1.0) / np.float32(scale))
    channels = int(x.shape[1])
    low, high = float(qmin - int(zero_point)), float(qmax - int(zero_point))

    def element(i, c, y, xx, lane):
        channel = c * block + lane
        rounded = tirx.nearbyint(x[i, tirx.min(channel, channels - 1), y, xx]
                                 * tirx.const(inverse, "float32"))
        bounded = tirx.max(tirx.min(rounded, tirx.const(high, "float32")), tirx.const(low, "float32"))
        stored = (bounded.astype("int32") + tirx.const(int(zero_point) + offset, "int32")).astype(dtype)
        return tirx.if_then_else(channel < channels, stored, tirx.const(int(zero_point) + offset, dtype))

    return te.compute((x.shape[0], blocks, x.shape[2], x.shape[3], block), element, name="out")


def dequantize(x, *, scale: float, zero_point: int, channels: int, flat: bool):
    """Spec 10 from the blocked stored form (`zero_point` is the stored one) to a plain float
    NCHW tensor, or `[N, C]` for a `flat` value."""
    factor = tirx.const(float(np.float32(scale)), "float32")
    block = int(x.shape[4])

    def real(value):
        return (value.astype("int32") - tirx.const(int(zero_point), "int32")).astype("float32") * factor

    if flat:
        return te.compute((x.shape[0], channels), lambda i, c: real(x[i, c // block, 0, 0, c % block]),
                          name="out")
    return te.compute((x.shape[0], channels, x.shape[2], x.shape[3]),
                      lambda i, c, y, xx: real(x[i, c // block, y, xx, c % block]), name="out")


def average_pool(x, multipliers, total_shifts, *, out_shape, kernel_size, stride, padding,
                 input_zero_point: int, out: Output, form=requantize):
    """Spec 6: window sums of `x - z_x`, requantized with the (M0, t) of each position's
    count; `multipliers` and `total_shifts` are `[OH, OW]` tensors chosen at compile time."""
    sums = window_sum(x, out_shape=out_shape, kernel_size=kernel_size, stride=stride,
                      padding=padding, zero_point=input_zero_point)
    return te.compute(out_shape, lambda i, c, y, xx, lane: form(
        sums[i, c, y, xx, lane], multipliers[y, xx], total_shifts[y, xx], out), name="out")


def mean(x, *, input_zero_point: int, multiplier: int, total_shift: int, out: Output,
         form=requantize):
    """qmean over H and W: the int32 sum of `x - z_x`, then spec 3 (M includes the count)."""
    sums = spatial_sum(x, zero_point=input_zero_point)
    return te.compute(sums.shape, lambda *i: form(sums(*i), tirx.const(int(multiplier), "int32"),
                                                   tirx.const(int(total_shift), "int64"), out),
                      name="out")
