"""TE computes of the blocked float32 kernels: convolutions (dense, pointwise, grouped),
depthwise convolutions and dense layers with their epilogue fused (bias, then the clamp of
a following relu / relu6 / clamp; a following batch norm is folded into the weights at
compile time), residual adds with a fused relu, and pooling. Same layouts and stage names
as the int8 kernels (`blocked_int8.py`): `pad`, `conv`, `out`.

Float results match torch to float32 rounding, not bit for bit: the kernels sum in their
own order and LLVM contracts multiply-adds into FMAs.
"""

from __future__ import annotations

from tvm import te, tirx

from qcompiler.backends.tvm.blocked import pad_spatial, spatial_sum, window_sum
from qcompiler.backends.tvm.epilogue import clamp_float


def _epilogue(acc, bias, low, high):
    return te.compute(acc.shape, lambda *i: clamp_float(acc(*i) + bias[i[1], i[-1]], low, high),
                      name="out")


def conv(x, weight, bias, *, out_spatial, stride, padding, dilation, groups: int, low=None,
         high=None):
    """x `(N, IC/ib, H, W, ib)`, weight `(OC/L, IC/g/ib, kh, kw, ib, L)`
    (`packing.pack_conv_float`), bias `(OC/L, L)`."""
    n = x.shape[0]
    out_blocks, group_chunks, kh, kw, in_block, lanes = (int(d) for d in weight.shape)
    padded = pad_spatial(x, padding, 0.0)
    chunk = te.reduce_axis((0, group_chunks), name="rc")
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    inner = te.reduce_axis((0, in_block), name="ri")
    blocks_per_group = out_blocks // groups

    def accumulate(i, o, y, xx, lane):
        source = chunk if groups == 1 else (o // blocks_per_group) * group_chunks + chunk
        value = padded[i, source, y * stride[0] + ry * dilation[0], xx * stride[1] + rx * dilation[1], inner]
        return te.sum(value * weight[o, chunk, ry, rx, inner, lane], axis=[chunk, ry, rx, inner])

    acc = te.compute((n, out_blocks, *out_spatial, lanes), accumulate, name="conv")
    return _epilogue(acc, bias, low, high)


def depthwise(x, weight, bias, *, out_spatial, stride, padding, dilation, low=None, high=None):
    """Depthwise convolution, weight `(C/L, kh, kw, L)`, vectorized over the lanes."""
    n = x.shape[0]
    blocks, kh, kw, lanes = (int(d) for d in weight.shape)
    padded = pad_spatial(x, padding, 0.0)
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    acc = te.compute(
        (n, blocks, *out_spatial, lanes),
        lambda i, c, y, xx, lane: te.sum(
            padded[i, c, y * stride[0] + ry * dilation[0], xx * stride[1] + rx * dilation[1], lane]
            * weight[c, ry, rx, lane], axis=[ry, rx]),
        name="conv")
    return _epilogue(acc, bias, low, high)


def dense(x, weight, bias, *, low=None, high=None):
    """x `(M, K')`, weight `(O/L, K', L)` (`packing.pack_dense_float`) -> `(M, O/L, L)`."""
    out_blocks, depth, lanes = (int(d) for d in weight.shape)
    k = te.reduce_axis((0, depth), name="rk")
    acc = te.compute((x.shape[0], out_blocks, lanes),
                     lambda m, o, lane: te.sum(x[m, k] * weight[o, k, lane], axis=k), name="conv")
    return _epilogue(acc, bias, low, high)


def add(a, b, *, low=None, high=None):
    """a + b (same blocked shape), clamped where a relu / clamp is fused."""
    return te.compute(a.shape, lambda *i: clamp_float(a(*i) + b(*i), low, high), name="out")


def clamp(x, *, low=None, high=None):
    return te.compute(x.shape, lambda *i: clamp_float(x(*i), low, high), name="out")


def average_pool(x, counts, *, out_shape, kernel_size, stride, padding):
    """Window sums divided by torch's divisor at each position (`counts`, `[OH, OW]`)."""
    sums = window_sum(x, out_shape=out_shape, kernel_size=kernel_size, stride=stride, padding=padding)
    return te.compute(out_shape, lambda i, c, y, xx, lane: sums[i, c, y, xx, lane] / counts[y, xx],
                      name="out")


def mean(x):
    """The mean over H and W, `(N, C/b, 1, 1, b)`."""
    count = tirx.const(float(int(x.shape[2]) * int(x.shape[3])), "float32")
    sums = spatial_sum(x)
    return te.compute(sums.shape, lambda *i: sums(*i) / count, name="out")
