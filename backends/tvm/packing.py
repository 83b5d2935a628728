"""Compile-time data layout of the blocked kernels, in numpy: channel padding, packed weights,
per-channel vectors, the zero point folded into the bias, and the blocked activation layout
itself (the references the tests compare the kernels' layout conversions with).

Activations are NCHW[b]c: `(N, ceil(C / b), H, W, b)`, channel `c` at block `c // b`, lane
`c % b`; channels past C are padding. Weights are packed once, here, into the order the
kernels read them:

| kernel | weight | packed |
|---|---|---|
| int8 conv (dot intrinsic) | `[O, I/g, kh, kw]` | `(O/L, I/g/ib, kh, kw, ib/4, L, 4)` |
| float conv | `[O, I/g, kh, kw]` | `(O/L, I/g/ib, kh, kw, ib, L)` |
| depthwise (int8 or float) | `[C, 1, kh, kw]` | `(C/L, kh, kw, L)` |
| int8 depthwise 3x3 (dot) | `[C, 1, 3, 3]` | `(C/L, 3 (kw), L, 4 (kh and a zero))` |
| int8 dense | `[O, K]` | `(O/L, K/4, L, 4)` |
| float dense | `[O, K]` | `(O/L, K, L)` |

(L: output lanes, ib: the input's channel block; the innermost `(L, 4)` of an int8 weight
is the dot intrinsic's operand.) Padded output channels get zero weights, a
zero bias and the multiplier 2**30 with t = 31, so they compute the output zero point (a
finite value nobody reads); padded input channels get zero weights, so whatever they hold
adds nothing.
"""

from __future__ import annotations

import numpy as np

# The requantization of a padded output channel: (0 * 2**30 + 2**30) >> 31 = 0.
PADDING_MULTIPLIER, PADDING_SHIFT = 1 << 30, 31


def round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def pad_axis(array: np.ndarray, axis: int, multiple: int, value=0) -> np.ndarray:
    """`array` padded at the end of `axis` to a multiple of `multiple` with `value`."""
    extra = round_up(array.shape[axis], multiple) - array.shape[axis]
    if extra == 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    return np.pad(array, widths, constant_values=value)


def per_channel(vector: np.ndarray, lanes: int, fill, dtype) -> np.ndarray:
    """A per-output-channel vector as `(C/L, L)`, padded with `fill`."""
    return np.ascontiguousarray(pad_axis(np.asarray(vector).astype(dtype), 0, lanes, fill)
                                .reshape(-1, lanes))


def requantization(multiplier: np.ndarray, shift: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(M0 as int32, t = 31 + shift as int64), each `(C/L, L)`, padded channels neutral."""
    return (per_channel(multiplier, lanes, PADDING_MULTIPLIER, np.int32),
            per_channel(np.asarray(shift, np.int64) + 31, lanes, PADDING_SHIFT, np.int64))


def fold_zero_point(weight: np.ndarray, bias: np.ndarray, zero_point: int,
                    operand_range: tuple[int, int]) -> np.ndarray | None:
    """`bias - z_x * sum_k w` (int32), so a kernel can accumulate raw `x * w`:

        sum_k (x - z_x) * w  =  sum_k x * w  -  z_x * sum_k w

    or None when that is not exact in int32: when a partial sum of `x * w` with `x` in
    `operand_range` could reach 2**31, or the folded bias does not fit beside it."""
    rows = weight.reshape(weight.shape[0], -1).astype(np.int64)
    largest = int(np.abs(rows).max()) if rows.size else 0
    worst = rows.shape[1] * max(abs(operand_range[0]), abs(operand_range[1])) * largest
    folded = bias.astype(np.int64) - int(zero_point) * rows.sum(axis=1)
    if worst < 2**31 and np.abs(folded).max(initial=0) < 2**31 - worst:
        return folded.astype(np.int32)
    return None


def pack_conv_int8(weight: np.ndarray, in_block: int, lanes: int) -> np.ndarray:
    """`[O, I, kh, kw]` int8 -> `(O/L, I/ib, kh, kw, ib/4, L, 4)`, padding O to L and I to
    ib (a multiple of 4)."""
    weight = pad_axis(pad_axis(weight, 0, lanes), 1, in_block)
    o, i, kh, kw = weight.shape
    tiles = weight.reshape(o // lanes, lanes, i // in_block, in_block // 4, 4, kh, kw)
    return np.ascontiguousarray(tiles.transpose(0, 2, 5, 6, 3, 1, 4))


def pack_conv_float(weight: np.ndarray, in_block: int, lanes: int) -> np.ndarray:
    """`[O, I, kh, kw]` float32 -> `(O/L, I/ib, kh, kw, ib, L)`."""
    weight = pad_axis(pad_axis(weight, 0, lanes), 1, in_block)
    o, i, kh, kw = weight.shape
    tiles = weight.reshape(o // lanes, lanes, i // in_block, in_block, kh, kw)
    return np.ascontiguousarray(tiles.transpose(0, 2, 4, 5, 3, 1))


def pack_depthwise(weight: np.ndarray, lanes: int) -> np.ndarray:
    """`[C, 1, kh, kw]` -> `(C/L, kh, kw, L)`."""
    weight = pad_axis(weight, 0, lanes)
    c, _, kh, kw = weight.shape
    return np.ascontiguousarray(weight.reshape(c // lanes, lanes, kh, kw).transpose(0, 2, 3, 1))


def pack_depthwise_rows(weight: np.ndarray, lanes: int) -> np.ndarray:
    """`[C, 1, 3, 3]` int8 -> `(C/L, 3, L, 4)`: for each column tap, the three row taps of
    each channel and a zero, the operand of the depthwise dot intrinsic."""
    weight = pad_axis(weight, 0, lanes)
    c = weight.shape[0]
    packed = np.zeros((c // lanes, 3, lanes, 4), weight.dtype)
    packed[..., :3] = weight.reshape(c // lanes, lanes, 3, 3).transpose(0, 3, 1, 2)
    return packed


def pack_dense_int8(weight: np.ndarray, depth: int, lanes: int) -> np.ndarray:
    """`[O, K]` int8 -> `(O/L, depth/4, L, 4)` with K padded to `depth` (a multiple of 4)."""
    weight = pad_axis(pad_axis(weight, 0, lanes), 1, depth)
    o = weight.shape[0]
    return np.ascontiguousarray(weight.reshape(o // lanes, lanes, depth // 4, 4).transpose(0, 2, 1, 3))


def pack_dense_float(weight: np.ndarray, depth: int, lanes: int) -> np.ndarray:
    """`[O, K]` float32 -> `(O/L, depth, L)`."""
    weight = pad_axis(pad_axis(weight, 0, lanes), 1, depth)
    o = weight.shape[0]
    return np.ascontiguousarray(weight.reshape(o // lanes, lanes, depth).transpose(0, 2, 1))


def to_blocked(x: np.ndarray, block: int, fill=0) -> np.ndarray:
    """NCHW -> NCHW[b]c, padded channels holding `fill`."""
    x = pad_axis(x, 1, block, fill)
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2))


def from_blocked(x: np.ndarray, channels: int) -> np.ndarray:
    """NCHW[b]c -> NCHW, padded channels dropped."""
    n, blocks, h, w, block = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, blocks * block, h, w)[:, :channels])
