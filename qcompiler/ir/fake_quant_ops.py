"""Torch semantics of the simulated quantizers, `fake_quant` and `fake_quant_bias`.

These functions are what `qcompiler.ir.ops.OPS` calls for the two ops (shape inference
runs them on meta tensors, the torch backend on CPU tensors); their rounding follows
`docs/integer-spec.md`, so that a float64 simulation computes what integer lowering does.
"""

from __future__ import annotations

import numpy as np
import torch

from qcompiler.errors import QuantizationError
from qcompiler.numerics.integer_params import fake_quantize_bias
from qcompiler.numerics.quant import quant_range

FAKE_QUANT_ROUNDINGS = ("half_to_even", "half_up")
_FLOAT_SCALES = (torch.float32, torch.float64)  # float64 once a module runs with .double()


def fake_quant(x, scale, zero_point, *, axis, bits, signed, narrow_range, symmetric, rounding):
    """Quantize and dequantize x with the scale/zero point constants; gradients are
    straight-through inside [qmin, qmax] and zero outside, as torch defines them (QAT).

    float32 x: torch's fake-quant kernels, `round_half_even(x * float32(1 / scale))`: the
    graph-boundary rule (`qcompiler.numerics.quant`, bit for bit), whatever `rounding` says.
    float64 x (the simulation run with `.double()`): exactly the rule the integer path
    applies at this point. `rounding="half_up"` marks requantization points (outputs of ops
    whose integer form requantizes an accumulator): the exact quotient x / scale rounded
    half up (docs/integer-spec.md, section 3). "half_to_even" marks the graph boundary,
    weights, lookup-table and embedding outputs: the float32 rule above applied to
    float32(x) (section 10). The output is exact in float64.
    `symmetric` only records how calibration must choose the scale (zero_point = 0)."""
    qmin, qmax = quant_range(bits, signed, narrow_range)
    channels = 1 if axis is None else x.shape[axis]
    if tuple(scale.shape) != (channels,) or tuple(zero_point.shape) != (channels,):
        kind = "per-tensor" if axis is None else f"per-channel on axis {axis}"
        raise ValueError(f"{kind} fake_quant needs scale and zero_point of shape [{channels}], "
                         f"got {list(scale.shape)} and {list(zero_point.shape)}")
    if scale.dtype not in _FLOAT_SCALES or zero_point.dtype != torch.int32:
        raise ValueError(f"fake_quant needs an f32 scale and an i32 zero_point, got "
                         f"{scale.dtype} and {zero_point.dtype}")
    if rounding not in FAKE_QUANT_ROUNDINGS:
        raise ValueError(f"fake_quant rounding must be one of {FAKE_QUANT_ROUNDINGS}, got {rounding!r}")
    if x.device.type == "meta":  # shape inference; torch's kernels have no meta version
        return torch.empty_like(x)
    if torch.isnan(scale).any():
        raise QuantizationError(
            "a fake_quant node has no calibrated scale (NaN): calibrate the graph first "
            "(qc.quantize, or qcompiler.quantization.calibrate.calibrate); "
            "qcompiler.quantization.quantizers.require_calibrated(graph) names the node")
    if x.dtype == torch.float64:
        return _fake_quant_exact(x, scale, zero_point, axis, qmin, qmax, rounding)
    scale = scale.to(torch.float32)  # the calibrated float32 numbers, whatever the module's dtype
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis % x.dim(), qmin, qmax)


def _fake_quant_exact(x, scale, zero_point, axis, qmin, qmax, rounding):
    """The float64 path of `fake_quant` (see there)."""
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis % x.dim()] = -1
    scale64 = scale.to(torch.float64).reshape(shape)
    zero_point = zero_point.to(torch.float64).reshape(shape)
    with torch.no_grad():
        if rounding == "half_up":  # the float64 quotient: exact but within 2**-52 of a half
            unclamped = torch.floor(x / scale64 + 0.5) + zero_point
        else:  # torch's kernel: float32 reciprocal, float32 product, nearbyint
            inverse = (1.0 / scale.to(torch.float32)).reshape(shape)
            unclamped = torch.round(x.to(torch.float32) * inverse).to(torch.float64) + zero_point
        inside = (unclamped >= qmin) & (unclamped <= qmax)
        # NaN quantizes to qmin, as in torch's float32 kernels and the integer path.
        unclamped = torch.where(torch.isnan(unclamped), float(qmin), unclamped)
        value = (unclamped.clamp(qmin, qmax) - zero_point) * scale64
    # value in the forward pass, gradient 1 inside the range and 0 outside (where, not a
    # product: an infinite x, a -inf mask fill, would make inf - inf = NaN).
    return value + torch.where(inside, x - x.detach(), torch.zeros_like(x))


def fake_quant_bias(bias, input_scale, weight_scale):
    """The bias a weighted layer's integer kernel adds: rounded to the int32 grid of step
    `s_in * s_w[c]` (docs/integer-spec.md, section 1) by the helper integer lowering uses
    (`qcompiler.numerics.integer_params.fake_quantize_bias`), from the scale constants as
    they are when it runs, so the grid follows calibration and bias changes with nothing to
    keep in sync. `input_scale` is the scale (f32[1]) of the fake_quant the layer's input
    holds, `weight_scale` that of its weight (f32[C] per channel or f32[1]). A float64 bias
    (a `.double()` simulation) gets the grid exactly in float64. The gradient is
    straight-through (identity) for quantization-aware training."""
    channels = bias.shape[0] if bias.dim() == 1 else -1
    if channels < 0 or tuple(input_scale.shape) != (1,) or tuple(weight_scale.shape) not in (
            (1,), (channels,)):
        raise ValueError(f"fake_quant_bias needs a bias [C], an input scale [1] and a weight "
                         f"scale [C] or [1], got {list(bias.shape)}, {list(input_scale.shape)} and "
                         f"{list(weight_scale.shape)}")
    if input_scale.dtype not in _FLOAT_SCALES or weight_scale.dtype not in _FLOAT_SCALES:
        raise ValueError(f"fake_quant_bias needs f32 scales, got {input_scale.dtype} and "
                         f"{weight_scale.dtype}")
    if bias.device.type == "meta":
        return torch.empty_like(bias)
    if torch.isnan(input_scale).any() or torch.isnan(weight_scale).any():
        raise QuantizationError(
            "a fake_quant_bias reads a scale that is not calibrated (NaN): calibrate the graph "
            "first (qc.quantize, or qcompiler.quantization.calibrate.calibrate)")
    dtype = np.float64 if bias.dtype == torch.float64 else np.float32
    grid = torch.from_numpy(fake_quantize_bias(bias.detach().cpu().numpy(),
                                               input_scale.detach().cpu().to(torch.float32).numpy(),
                                               weight_scale.detach().cpu().to(torch.float32).numpy(),
                                               dtype)).to(bias.device)
    # grid + (bias - bias) is exactly grid in value, and its gradient is the identity.
    return grid + (bias - bias.detach())


def fake_quant_grouped(weight, scale, zero_point=None, *, bits, group_size):
    """Group-wise quantization of a linear weight [out, in]: `scale` is f32
    [out, in / group_size]; without `zero_point`, symmetric codes in
    [-(2^(bits-1) - 1), 2^(bits-1) - 1]; with it (integer, the scale's shape), codes in
    [0, 2^bits - 1] and real = scale * (code - zero_point). Rounded as
    `qcompiler.numerics.grouped_quant` rounds (float32 product with the float32 reciprocal,
    half to even); gradients straight-through inside the range."""
    groups = (weight.shape[0], weight.shape[1] // group_size) if weight.dim() == 2 and group_size >= 1 \
        else None
    if groups is None or weight.shape[1] % group_size or tuple(scale.shape) != groups \
            or (zero_point is not None and tuple(zero_point.shape) != groups):
        raise ValueError(f"fake_quant_grouped needs a weight [out, in] with in divisible by "
                         f"group_size={group_size} and a scale (and zero point) [out, in / "
                         f"group_size], got {list(weight.shape)} and {list(scale.shape)}")
    if scale.dtype not in _FLOAT_SCALES:
        raise ValueError(f"fake_quant_grouped needs an f32 scale, got {scale.dtype}")
    if zero_point is not None and (zero_point.dtype.is_floating_point or zero_point.dtype == torch.bool):
        raise ValueError(f"fake_quant_grouped needs an integer zero point, got {zero_point.dtype}")
    if weight.device.type == "meta":
        return torch.empty_like(weight)
    low, high = (-((1 << (bits - 1)) - 1), (1 << (bits - 1)) - 1) if zero_point is None \
        else (0, (1 << bits) - 1)
    per_column = scale.to(torch.float32).repeat_interleave(group_size, dim=1)
    offset = 0.0 if zero_point is None else zero_point.to(torch.float32).repeat_interleave(group_size, dim=1)
    inverse = 1.0 / per_column
    with torch.no_grad():
        codes = torch.round(weight.to(torch.float32) * inverse) + offset
        inside = (codes >= low) & (codes <= high)
        # In the weight's dtype: a float64 simulation gets scale * (code - zero) exactly (up
        # to 28 significant bits, more than float32 holds), as the integer kernel applies it.
        value = (codes.clamp(low, high) - offset).to(weight.dtype) * per_column.to(weight.dtype)
    return value + torch.where(inside, weight - weight.detach(), torch.zeros_like(weight))
