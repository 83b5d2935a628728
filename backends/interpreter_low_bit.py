"""Numpy kernels of the binary-network integer ops (`docs/integer-spec.md`, section 13).

Written from the spec, independently of their torch semantics (`qcompiler.ir.low_bit_ops`,
which rebuild an int8 weight and call the ordinary layer):

- XNOR-popcount (Rastegari et al. 2016, §3.2): with +-1 operands coded as sign bits,
  x . w = n - 2 popcount(x XOR w) over the n positions that exist; a padded position has no
  bit, so a validity mask (packed like the data) leaves it out, which is what padding with
  the zero point (a real zero) gives an ordinary layer. The count is then shifted left by
  `weight_shift` (every binary weight is +-2^weight_shift).
- shift-and-add: a power-of-two weight +-2^e multiplies by shifting, so the accumulator is
  the sum over exponents e of (sum of +-x at the weights of exponent e) << e.

Both then requantize the int32 accumulator by section 3, as the interpreter's other layers.
"""

from __future__ import annotations

import numpy as np

from qcompiler.backends.interpreter_ops import _along, _offset, _requantize, _windows


class BinaryInputError(ValueError):
    """An XNOR layer was given an input that is not +-1 around its zero point."""


def _columns(x: np.ndarray, kernel, stride, padding, dilation, groups) -> tuple[np.ndarray, tuple]:
    """im2col: [N, G, L, C/G * prod(kernel)] windows of x (padded with 0) and the output sizes."""
    spatial = x.ndim - 2
    windows = _windows(x, kernel, stride, padding, dilation, False, 0)
    batch, channels = x.shape[:2]
    outs = windows.shape[2:2 + spatial]
    columns = windows.reshape(batch, groups, channels // groups, -1, *kernel)
    return np.moveaxis(columns, 2, 3).reshape(batch, groups, int(np.prod(outs)), -1), outs


def _negative_bits(x, input_zero_point) -> np.ndarray:
    offset = _offset(x, input_zero_point)
    if offset.size and not np.isin(offset, (-1, 1)).all():
        found = np.unique(offset[~np.isin(offset, (-1, 1))])[:4].tolist()
        raise BinaryInputError(f"an XNOR layer needs inputs of +-1 around its zero point "
                               f"{input_zero_point}, got offsets {found}")
    return (offset < 0).astype(np.uint8)


def _popcount(packed: np.ndarray) -> np.ndarray:
    return np.bitwise_count(packed).sum(axis=-1, dtype=np.int64)


def qxnor_conv2d(x, bits, bias, multiplier, shift, *, stride, padding, dilation, groups,
                 weight_shape, weight_shift, input_zero_point, **output):
    negative = _negative_bits(x, input_zero_point)
    kernel = tuple(weight_shape[2:])
    signs, outs = _columns(negative, kernel, stride, padding, dilation, groups)
    valid, _ = _columns(np.ones_like(negative), kernel, stride, padding, dilation, groups)
    signs = np.packbits(signs, axis=-1, bitorder="little")[:, :, :, None, :]
    valid = np.packbits(valid, axis=-1, bitorder="little")[:, :, :, None, :]
    out_channels = weight_shape[0]
    weights = bits.reshape(groups, out_channels // groups, -1)[None, :, None]  # [1, G, 1, Og, B]
    mismatches = _popcount((signs ^ weights) & valid)  # [N, G, L, Og]
    dot = _popcount(valid) - 2 * mismatches
    acc = np.left_shift(dot, int(weight_shift))
    batch = x.shape[0]
    acc = np.moveaxis(acc, 3, 2).reshape(batch, out_channels, *outs) + _along(bias, len(outs) + 2, 1)
    return _requantize(acc, _along(multiplier, acc.ndim, 1), _along(shift, acc.ndim, 1), **output)


def qxnor_linear(x, bits, bias, multiplier, shift, *, weight_shape, weight_shift, input_zero_point,
                 **output):
    negative = np.packbits(_negative_bits(x, input_zero_point), axis=-1, bitorder="little")
    features = int(weight_shape[1])
    dot = features - 2 * _popcount(negative[..., None, :] ^ bits)  # padding bits are 0 in both
    acc = np.left_shift(dot, int(weight_shift)) + bias.astype(np.int64)
    return _requantize(acc, multiplier.astype(np.int64), shift.astype(np.int64), **output)


def _shift_add(columns: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """sum_k sign(code_k) * (column_k << (|code_k| - 1)) as sum over exponents of shifted
    sums: columns [..., K] int64, codes [O, K] -> [..., O]."""
    codes = codes.astype(np.int64)
    acc = np.zeros((*columns.shape[:-1], codes.shape[0]), np.int64)
    for exponent in np.unique(np.abs(codes[codes != 0])) - 1:
        selected = np.where(np.abs(codes) == exponent + 1, np.sign(codes), 0)  # {-1, 0, 1}
        acc += np.left_shift(columns @ selected.T, int(exponent))
    return acc


def qshift_conv2d(x, codes, bias, multiplier, shift, *, stride, padding, dilation, groups,
                  input_zero_point, **output):
    kernel = codes.shape[2:]
    columns, outs = _columns(_offset(x, input_zero_point), kernel, stride, padding, dilation, groups)
    out_channels = codes.shape[0]
    grouped = codes.reshape(groups, out_channels // groups, -1)
    acc = np.stack([_shift_add(columns[:, g], grouped[g]) for g in range(groups)], axis=1)
    acc = np.moveaxis(acc, 3, 2).reshape(x.shape[0], out_channels, *outs)
    acc = acc + _along(bias, acc.ndim, 1)
    return _requantize(acc, _along(multiplier, acc.ndim, 1), _along(shift, acc.ndim, 1), **output)


def qshift_linear(x, codes, bias, multiplier, shift, *, input_zero_point, **output):
    acc = _shift_add(_offset(x, input_zero_point), codes) + bias.astype(np.int64)
    return _requantize(acc, multiplier.astype(np.int64), shift.astype(np.int64), **output)


KERNELS = {"qxnor_conv2d": qxnor_conv2d, "qxnor_linear": qxnor_linear,
           "qshift_conv2d": qshift_conv2d, "qshift_linear": qshift_linear}
