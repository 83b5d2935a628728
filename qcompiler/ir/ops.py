"""The closed set of IR ops and their semantics.

Each op is an `OpSpec`: its input arity, its attributes with defaults, and a
torch function that defines what it computes. That one function serves three
purposes, so the semantics cannot drift apart:

- the torch backend (`qc.to_torch`) calls it to run the graph;
- `infer_types` runs it on meta tensors to infer output shapes and dtypes;
- `Graph.verify` compares those inferred types with the recorded ones.

Input order follows torch's functional API (`conv2d(x, weight, bias)`,
`batch_norm(x, weight, bias, running_mean, running_var)`,
`embedding(indices, table)`); an optional input is `None`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from qcompiler.errors import QuantizationError, VerificationError
from qcompiler.ir import integer_ops
from qcompiler.numerics.integer_params import fake_quantize_bias
from qcompiler.numerics.quant import quant_range

REQUIRED = object()  # marks an attribute that has no default

_TORCH_TO_DTYPE = {
    torch.float32: "f32", torch.float16: "f16", torch.float64: "f64", torch.int64: "i64",
    torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.bool: "bool",
}
TORCH_DTYPES = {v: k for k, v in _TORCH_TO_DTYPE.items()}


def ir_dtype(dtype: torch.dtype) -> str:
    try:
        return _TORCH_TO_DTYPE[dtype]
    except KeyError:
        raise ValueError(f"torch dtype {dtype} has no IR dtype") from None


@dataclass(frozen=True)
class OpSpec:
    name: str
    fn: Callable  # fn(*inputs, **attrs) -> Tensor | tuple[Tensor, ...]
    min_inputs: int
    max_inputs: int
    attrs: dict = field(default_factory=dict)
    # Ops whose output is an affine function of a weight input (for passes and cost).
    category: str = "other"


def _conv2d(x, w, b=None, *, stride, padding, dilation, groups):
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


def _conv1d(x, w, b=None, *, stride, padding, dilation, groups):
    return F.conv1d(x, w, b, stride, padding, dilation, groups)


def _conv_transpose2d(x, w, b=None, *, stride, padding, output_padding, groups, dilation):
    return F.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)


def _batch_norm(x, weight, bias, mean, var, *, eps):
    return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)


def _layer_norm(x, weight=None, bias=None, *, normalized_shape, eps):
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


def _clamp(x, *, min, max):
    return torch.clamp(x, min, max)


def _max_pool2d(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)


def _avg_pool2d(x, *, kernel_size, stride, padding, ceil_mode, count_include_pad):
    return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad)


def _max_pool1d(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    return F.max_pool1d(x, kernel_size, stride, padding, dilation, ceil_mode)


def _avg_pool1d(x, *, kernel_size, stride, padding, ceil_mode, count_include_pad):
    return F.avg_pool1d(x, kernel_size, stride, padding, ceil_mode, count_include_pad)


def _concat(*xs, dim):
    return torch.cat(xs, dim)


def _split(x, *, axis, sizes):
    return tuple(torch.split(x, sizes, axis))


def _slice(x, *, axis, start, end, step):
    index = [slice(None)] * x.dim()
    index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _pad(x, *, pads, mode, value):
    return F.pad(x, pads, mode, value if mode == "constant" else None)


def _resize(x, *, size, mode, align_corners):
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)


_CONV_ATTRS = {"stride": REQUIRED, "padding": REQUIRED, "dilation": REQUIRED, "groups": 1}
_POOL_MAX_ATTRS = {"kernel_size": REQUIRED, "stride": REQUIRED, "padding": REQUIRED,
                   "dilation": REQUIRED, "ceil_mode": False}
_POOL_AVG_ATTRS = {"kernel_size": REQUIRED, "stride": REQUIRED, "padding": REQUIRED,
                   "ceil_mode": False, "count_include_pad": True}


# Attributes of the integer ops (docs/integer-spec.md): the input zero point, a per-tensor
# multiplier (M0, shift with t = 31 + shift), average pooling's multipliers indexed by window
# count - 1, and the output's zero point, clamp (fused activations included) and dtype.
_INPUT_ZP = {"input_zero_point": REQUIRED}
_SCALAR_MULTIPLIER = {"multiplier": REQUIRED, "shift": REQUIRED}
_COUNT_MULTIPLIERS = {"multipliers": REQUIRED, "shifts": REQUIRED}
_REQUANT_OUT = {"output_zero_point": REQUIRED, "output_min": REQUIRED, "output_max": REQUIRED,
                "output_dtype": REQUIRED}


def _spec(name, fn, min_inputs, max_inputs=None, attrs=None, category="other"):
    return OpSpec(name, fn, min_inputs, min_inputs if max_inputs is None else max_inputs,
                  dict(attrs or {}), category)


FAKE_QUANT_ROUNDINGS = ("half_to_even", "half_up")
# The simulated quantizers: each passes its input 0 through onto a grid. Bypassing them gives
# the float graph (calibration, AdaRound's float run); their input 0 is what QAT trains.
FAKE_QUANT_OPS = frozenset({"fake_quant", "fake_quant_bias"})
_FLOAT_SCALES = (torch.float32, torch.float64)  # float64 once a module runs with .double()


def _fake_quant(x, scale, zero_point, *, axis, bits, signed, narrow_range, symmetric, rounding):
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
            "qcompiler.quantization.calibrate.require_calibrated(graph) names the node")
    if x.dtype == torch.float64:
        return _fake_quant_exact(x, scale, zero_point, axis, qmin, qmax, rounding)
    scale = scale.to(torch.float32)  # the calibrated float32 numbers, whatever the module's dtype
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis % x.dim(), qmin, qmax)


def _fake_quant_exact(x, scale, zero_point, axis, qmin, qmax, rounding):
    """The float64 path of `_fake_quant` (see there)."""
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
        value = (unclamped.clamp(qmin, qmax) - zero_point) * scale64
        inside = (unclamped >= qmin) & (unclamped <= qmax)
    # value in the forward pass, gradient 1 inside the range and 0 outside.
    return value + (x - x.detach()) * inside


def _fake_quant_bias(bias, input_scale, weight_scale):
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


OPS: dict[str, OpSpec] = {spec.name: spec for spec in [
    # Weighted layers: the output is linear in the weight (input 1).
    _spec("conv2d", _conv2d, 2, 3, _CONV_ATTRS, "weighted"),
    _spec("conv1d", _conv1d, 2, 3, _CONV_ATTRS, "weighted"),
    _spec("conv_transpose2d", _conv_transpose2d, 2, 3,
          {**_CONV_ATTRS, "output_padding": REQUIRED}, "weighted"),
    _spec("linear", F.linear, 2, 3, category="weighted"),
    _spec("matmul", torch.matmul, 2),
    _spec("embedding", F.embedding, 2),
    # Normalisation.
    _spec("batch_norm", _batch_norm, 5, 5, {"eps": 1e-5}, "norm"),
    _spec("layer_norm", _layer_norm, 1, 3, {"normalized_shape": REQUIRED, "eps": 1e-5}, "norm"),
    # Elementwise activations.
    _spec("relu", F.relu, 1, category="activation"),
    _spec("clamp", _clamp, 1, 1, {"min": None, "max": None}, "activation"),
    _spec("hardswish", F.hardswish, 1, category="activation"),
    _spec("hardsigmoid", F.hardsigmoid, 1, category="activation"),
    _spec("silu", F.silu, 1, category="activation"),
    _spec("gelu", F.gelu, 1, 1, {"approximate": "none"}, "activation"),
    _spec("sigmoid", torch.sigmoid, 1, category="activation"),
    _spec("tanh", torch.tanh, 1, category="activation"),
    _spec("softmax", F.softmax, 1, 1, {"dim": REQUIRED}),
    # Elementwise binary ops, with numpy broadcasting.
    _spec("add", torch.add, 2, category="binary"),
    _spec("sub", torch.sub, 2, category="binary"),
    _spec("mul", torch.mul, 2, category="binary"),
    _spec("div", torch.div, 2, category="binary"),
    # Pooling and reductions.
    _spec("max_pool2d", _max_pool2d, 1, 1, _POOL_MAX_ATTRS, "pool"),
    _spec("avg_pool2d", _avg_pool2d, 1, 1, _POOL_AVG_ATTRS, "pool"),
    _spec("adaptive_avg_pool2d", F.adaptive_avg_pool2d, 1, 1, {"output_size": REQUIRED}, "pool"),
    _spec("max_pool1d", _max_pool1d, 1, 1, _POOL_MAX_ATTRS, "pool"),
    _spec("avg_pool1d", _avg_pool1d, 1, 1, _POOL_AVG_ATTRS, "pool"),
    _spec("adaptive_avg_pool1d", F.adaptive_avg_pool1d, 1, 1, {"output_size": REQUIRED}, "pool"),
    _spec("mean", torch.mean, 1, 1, {"dim": REQUIRED, "keepdim": False}, "pool"),
    # Data movement.
    _spec("concat", _concat, 1, 1 << 16, {"dim": REQUIRED}, "shape"),
    _spec("split", _split, 1, 1, {"axis": REQUIRED, "sizes": REQUIRED}, "shape"),
    _spec("slice", _slice, 1, 1, {"axis": REQUIRED, "start": REQUIRED, "end": REQUIRED, "step": 1},
          "shape"),
    _spec("reshape", torch.reshape, 1, 1, {"shape": REQUIRED}, "shape"),
    _spec("flatten", torch.flatten, 1, 1, {"start_dim": 0, "end_dim": -1}, "shape"),
    _spec("permute", torch.permute, 1, 1, {"dims": REQUIRED}, "shape"),
    _spec("transpose", torch.transpose, 1, 1, {"dim0": REQUIRED, "dim1": REQUIRED}, "shape"),
    _spec("pad", _pad, 1, 1, {"pads": REQUIRED, "mode": "constant", "value": 0.0}, "shape"),
    _spec("resize", _resize, 1, 1, {"size": REQUIRED, "mode": "nearest", "align_corners": None},
          "shape"),
    # Quantization: real = scale * (q - zero_point); scale f32[C], zero_point i32[C] constants
    # (C = 1 per tensor). The output value's qparams mirror them once calibrated.
    _spec("fake_quant", _fake_quant, 3, 3, {"axis": None, "bits": 8, "signed": True,
                                            "narrow_range": False, "symmetric": False,
                                            "rounding": "half_to_even"}, "quant"),
    # fake_quant_bias(bias, input_scale, weight_scale): the bias on the int32 grid the integer
    # kernel adds (scales are the fake_quant scale constants of the layer's input and weight).
    _spec("fake_quant_bias", _fake_quant_bias, 3, 3, {}, "quant"),
    # Integer ops (docs/integer-spec.md; semantics in qcompiler.ir.integer_ops). Per-channel numbers
    # of weighted ops are constant inputs: int8 weight, int32 bias, int32 multiplier and shift.
    _spec("quantize", integer_ops.quantize, 1, 1, {"scale": REQUIRED, "zero_point": REQUIRED,
                                                    "qmin": REQUIRED, "qmax": REQUIRED,
                                                    "dtype": REQUIRED}, "quant"),
    _spec("dequantize", integer_ops.dequantize, 1, 1, {"scale": REQUIRED, "zero_point": REQUIRED},
          "quant"),
    _spec("qconv2d", integer_ops.qconv2d, 5, 5, {**_CONV_ATTRS, **_INPUT_ZP, **_REQUANT_OUT},
          "integer"),
    _spec("qconv1d", integer_ops.qconv1d, 5, 5, {**_CONV_ATTRS, **_INPUT_ZP, **_REQUANT_OUT},
          "integer"),
    _spec("qlinear", integer_ops.qlinear, 5, 5, {**_INPUT_ZP, **_REQUANT_OUT}, "integer"),
    _spec("qmatmul", integer_ops.qmatmul, 2, 2, {"a_zero_point": REQUIRED, "b_zero_point": REQUIRED,
                                                  **_SCALAR_MULTIPLIER, **_REQUANT_OUT}, "integer"),
    _spec("qadd", integer_ops.qadd, 2, 2, {"a_zero_point": REQUIRED, "a_multiplier": REQUIRED,
                                            "b_zero_point": REQUIRED, "b_multiplier": REQUIRED,
                                            "shift": REQUIRED, **_REQUANT_OUT}, "integer"),
    _spec("qmul", integer_ops.qmul, 2, 2, {"a_zero_point": REQUIRED, "b_zero_point": REQUIRED,
                                            **_SCALAR_MULTIPLIER, **_REQUANT_OUT}, "integer"),
    _spec("requantize", integer_ops.requantize, 1, 1, {**_INPUT_ZP, **_SCALAR_MULTIPLIER,
                                                        **_REQUANT_OUT}, "integer"),
    _spec("qconcat", integer_ops.qconcat, 1, 1 << 16, {"dim": REQUIRED}, "integer"),
    _spec("qmax_pool2d", integer_ops.qmax_pool2d, 1, 1, _POOL_MAX_ATTRS, "integer"),
    _spec("qmax_pool1d", integer_ops.qmax_pool1d, 1, 1, _POOL_MAX_ATTRS, "integer"),
    _spec("qavg_pool2d", integer_ops.qavg_pool2d, 1, 1, {**_POOL_AVG_ATTRS, **_INPUT_ZP,
                                                          **_COUNT_MULTIPLIERS, **_REQUANT_OUT},
          "integer"),
    _spec("qavg_pool1d", integer_ops.qavg_pool1d, 1, 1, {**_POOL_AVG_ATTRS, **_INPUT_ZP,
                                                          **_COUNT_MULTIPLIERS, **_REQUANT_OUT},
          "integer"),
    _spec("qmean", integer_ops.qmean, 1, 1, {"dim": REQUIRED, "keepdim": False, **_INPUT_ZP,
                                              **_SCALAR_MULTIPLIER, **_REQUANT_OUT}, "integer"),
    _spec("qlookup", integer_ops.qlookup, 2, 2, {"input_min": REQUIRED}, "integer"),
]}



def attrs_with_defaults(op: str, attrs: dict) -> dict:
    """The full attribute dict of an op, defaults filled in; unknown or missing ones raise."""
    spec = OPS.get(op)
    if spec is None:
        raise VerificationError(f"unknown op '{op}'; the IR ops are: {', '.join(sorted(OPS))}")
    unknown = set(attrs) - set(spec.attrs)
    if unknown:
        raise VerificationError(f"op '{op}' has no attribute(s) {sorted(unknown)}; "
                                f"it takes {sorted(spec.attrs)}")
    full = {}
    for key, default in spec.attrs.items():
        if key in attrs:
            full[key] = attrs[key]
        elif default is REQUIRED:
            raise VerificationError(f"op '{op}' needs attribute '{key}'")
        else:
            full[key] = default
    return full


def run_op(op: str, inputs: list, attrs: dict):
    """Run an op on torch tensors (None for absent optional inputs); always returns a tuple."""
    spec = OPS[op]
    while inputs and inputs[-1] is None and len(inputs) > spec.min_inputs:
        inputs = inputs[:-1]
    result = spec.fn(*inputs, **attrs_with_defaults(op, attrs))
    return result if isinstance(result, tuple) else (result,)


def _meta(value):
    if value is None:
        return None
    return torch.empty(value.shape, dtype=TORCH_DTYPES[value.dtype], device="meta")


def infer_types(op: str, inputs: list, attrs: dict) -> list[tuple[tuple[int, ...], str]]:
    """Output (shape, dtype) pairs of an op applied to IR values, by running it on meta tensors."""
    spec = OPS.get(op)
    if spec is None:
        raise VerificationError(f"unknown op '{op}'; the IR ops are: {', '.join(sorted(OPS))}")
    if not spec.min_inputs <= len(inputs) <= spec.max_inputs:
        raise VerificationError(f"op '{op}' takes {spec.min_inputs}..{spec.max_inputs} inputs, "
                                f"got {len(inputs)}")
    try:
        outputs = run_op(op, [_meta(v) for v in inputs], attrs)
    except VerificationError:
        raise
    except Exception as error:  # torch explains the shape mismatch; keep its words
        types = ", ".join("None" if v is None else v.type_str for v in inputs)
        raise VerificationError(f"op '{op}' cannot take inputs ({types}) with attrs {attrs}: "
                                f"{str(error).splitlines()[0]}") from None
    return [(tuple(int(d) for d in t.shape), ir_dtype(t.dtype)) for t in outputs]


def check_node(node) -> None:
    """Raise VerificationError unless the node's recorded output types are what its op infers."""
    try:
        inferred = infer_types(node.op, node.inputs, node.attrs)
    except VerificationError as error:
        raise VerificationError(f"{node.describe()}: {error}") from None
    recorded = [(v.shape, v.dtype) for v in node.outputs]
    if inferred != recorded:
        raise VerificationError(f"{node.describe()}: outputs are recorded as "
                                f"{recorded} but the op gives {inferred}")
