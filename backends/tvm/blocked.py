"""TE computes on blocked activations that are the same for integer and float tensors: the
layout conversions at the edges of a blocked region, spatial padding, and pooling.

A blocked tensor is NCHW[b]c, `(N, ceil(C / b), H, W, b)` (`packing.py`). An integer one
may be stored with an offset (`layout.Blocked`): x86's dot instructions multiply uint8 by
int8 and ARM's sdot int8 by int8, so an int8 value is stored as `x + 128` in uint8 on x86
and a uint8 value as `x - 128` in int8 on ARM. The offset moves the zero point with the
value, so every `x - z` the spec computes is unchanged; the conversions here apply it and
take it off again.
"""

from __future__ import annotations

from tvm import te, tirx

from qcompiler.backends.tvm.kernels import window


def _stored(value, offset: int, dtype: str):
    if offset == 0 and str(value.dtype) == dtype:
        return value
    return (value.astype("int32") + tirx.const(offset, "int32")).astype(dtype)


def to_blocked(x, *, block: int, blocks: int, fill, offset: int = 0, dtype: str | None = None):
    """NCHW (plain) -> NCHW[b]c with `blocks` blocks; channels past C hold `fill` (already in
    the stored form); integer values move by `offset` into `dtype`."""
    channels = int(x.shape[1])
    dtype = dtype or str(x.dtype)
    n, h, w = x.shape[0], x.shape[2], x.shape[3]

    def element(i, c, y, xx, lane):
        channel = c * block + lane
        value = _stored(x[i, tirx.min(channel, channels - 1), y, xx], offset, dtype)
        return tirx.if_then_else(channel < channels, value, tirx.const(fill, dtype))

    return te.compute((n, blocks, h, w, block), element, name="to_blocked")


def to_plain(x, *, channels: int, offset: int = 0, dtype: str | None = None):
    """NCHW[b]c -> NCHW with the padded channels dropped and the storage offset taken off."""
    dtype = dtype or str(x.dtype)
    block = int(x.shape[4])
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    return te.compute((n, channels, h, w), lambda i, c, y, xx: _stored(
        x[i, c // block, y, xx, c % block], -offset, dtype), name="to_plain")


def flat_to_plain(x, *, channels: int, offset: int = 0, dtype: str | None = None):
    """A blocked `(N, C/b, 1, 1, b)` holding an `[N, C]` value -> `[N, C]`."""
    dtype = dtype or str(x.dtype)
    block = int(x.shape[4])
    return te.compute((x.shape[0], channels), lambda i, c: _stored(
        x[i, c // block, 0, 0, c % block], -offset, dtype), name="to_plain")


def pad_spatial(x, padding, fill):
    """Pad H and W of a blocked tensor by `padding` (each side) with `fill`: the input zero
    point for an integer convolution (so `x - z_x` is 0 there), 0.0 for a float one."""
    pad_h, pad_w = padding
    if pad_h == 0 and pad_w == 0:
        return x
    n, blocks, h, w, block = x.shape
    fill = tirx.const(fill, str(x.dtype))
    return te.compute(
        (n, blocks, h + 2 * pad_h, w + 2 * pad_w, block),
        lambda i, c, y, xx, lane: tirx.if_then_else(
            tirx.all(y >= pad_h, y < h + pad_h, xx >= pad_w, xx < w + pad_w),
            x[i, c, y - pad_h, xx - pad_w, lane], fill),
        name="pad")


def max_pool(x, *, out_shape, kernel_size, stride, padding, dilation):
    """Max pooling on a blocked tensor (integer or float), torch's windows (ceil_mode ones
    may stop short; positions outside the input never win)."""
    axes, source = window(x, out_shape, kernel_size, stride, padding, dilation)
    lowest = tirx.min_value(str(x.dtype))

    def element(i, c, y, xx, lane):
        safe, inside = source((y, xx))
        return te.max(tirx.if_then_else(inside, x[i, c, safe[0], safe[1], lane], lowest), axis=axes)

    return te.compute(out_shape, element, name="pool")


def window_sum(x, *, out_shape, kernel_size, stride, padding, zero_point=None):
    """The window sums of average pooling: int32 sums of `x - zero_point` for an integer
    tensor (positions outside count 0), float32 sums for a float one."""
    axes, source = window(x, out_shape, kernel_size, stride, padding, [1, 1])
    integer = zero_point is not None
    dtype = "int32" if integer else "float32"

    def element(i, c, y, xx, lane):
        safe, inside = source((y, xx))
        value = x[i, c, safe[0], safe[1], lane]
        if integer:
            value = value.astype("int32") - tirx.const(int(zero_point), "int32")
        return te.sum(tirx.if_then_else(inside, value, tirx.const(0, dtype)), axis=axes)

    return te.compute(out_shape, element, name="pool")


def spatial_sum(x, *, zero_point=None):
    """Sums over H and W (global average pooling, mean over dims 2 and 3): int32 sums of
    `x - zero_point`, or float32 sums; shape `(N, C/b, 1, 1, b)`."""
    n, blocks, h, w, block = x.shape
    ry, rx = te.reduce_axis((0, h), name="ry"), te.reduce_axis((0, w), name="rx")

    def element(i, c, _y, _x, lane):
        value = x[i, c, ry, rx, lane]
        if zero_point is not None:
            value = value.astype("int32") - tirx.const(int(zero_point), "int32")
        return te.sum(value, axis=[ry, rx])

    return te.compute((n, blocks, 1, 1, block), element, name="pool")
