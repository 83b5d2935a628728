"""Torch semantics of the binary-network ops: the `sign` activation (1-bit activations) and
the integer XNOR-popcount and shift layers (`docs/integer-spec.md`, section 13).

- `sign(x)`: +1 where x >= 0, else -1 (sign(0) = +1, as the binary weights of
  `qcompiler.numerics.low_bit`). Its gradient is the straight-through estimator of
  BinaryNet (Hubara et al. 2016, §1.3): the incoming gradient where |x| <= 1, zero outside
  (the derivative of hard tanh), so a network with binary activations trains.
- `qxnor_conv2d` / `qxnor_linear`: binary input (x_q - z_x in {-1, +1}) times binary weight
  (+-2^weight_shift), stored as one sign bit a weight (bit 1 = negative), packed eight to a
  byte along the flattened [C_in / groups, *kernel] axis (little bit order).
- `qshift_conv2d` / `qshift_linear`: int8 input times a weight that is 0 or +-2^e, stored
  as a code: 0 for zero, +-(e + 1) for +-2^e (so a multiply is a shift).

Both integer layers compute exactly the accumulator of `qconv2d` / `qlinear` with the
weight their codes stand for, then section 3's requantization; the functions here rebuild
that int8 weight and call the `qcompiler.ir.integer_ops` semantics, so the torch backend and
shape inference agree with the ordinary layers by construction. The numpy interpreter's
kernels (`qcompiler.backends.interpreter_low_bit`) are written independently with
popcounts and shifts.
"""

from __future__ import annotations

import torch

from qcompiler.ir import integer_ops
from qcompiler.numerics import low_bit


class _SignStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign(x):
    """+1 where x >= 0, else -1; straight-through gradient (module docstring)."""
    return _SignStraightThrough.apply(x)


def _binary_weight(bits, weight_shape, weight_shift):
    if bits.device.type == "meta":
        return torch.empty(weight_shape, dtype=torch.int64, device="meta")
    weight = low_bit.unpack_signs(bits.numpy(), weight_shape) << int(weight_shift)
    return torch.from_numpy(weight)


def _shift_weight(codes):
    if codes.device.type == "meta":
        return torch.empty(codes.shape, dtype=torch.int64, device="meta")
    return torch.from_numpy(low_bit.decode_shift_codes(codes.numpy()))


def qxnor_conv2d(x, bits, bias, multiplier, shift, *, weight_shape, weight_shift, **attrs):
    return integer_ops.qconv2d(x, _binary_weight(bits, weight_shape, weight_shift), bias, multiplier,
                               shift, **attrs)


def qxnor_linear(x, bits, bias, multiplier, shift, *, weight_shape, weight_shift, **attrs):
    return integer_ops.qlinear(x, _binary_weight(bits, weight_shape, weight_shift), bias, multiplier,
                               shift, **attrs)


def qshift_conv2d(x, codes, bias, multiplier, shift, **attrs):
    return integer_ops.qconv2d(x, _shift_weight(codes), bias, multiplier, shift, **attrs)


def qshift_linear(x, codes, bias, multiplier, shift, **attrs):
    return integer_ops.qlinear(x, _shift_weight(codes), bias, multiplier, shift, **attrs)
