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

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qcompiler.errors import VerificationError
from qcompiler.ir import integer_ops, low_bit_ops
from qcompiler.ir import math_ops as m
from qcompiler.ir.dims import PROBES, Dim, shape_at, solve_probe_dims, symbols
from qcompiler.ir.fake_quant_ops import fake_quant, fake_quant_bias, fake_quant_grouped

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
    """One op: its arity, attributes and torch semantics, and the kinds passes ask about.
    Every op-kind question (is it a weighted layer, can it be fused into a requantization,
    does it only move values...) is answered from these fields, so adding an op means
    adding its row to `OPS` and nothing else."""

    name: str
    fn: Callable  # fn(*inputs, **attrs) -> Tensor | tuple[Tensor, ...]
    min_inputs: int
    max_inputs: int
    attrs: dict = field(default_factory=dict)
    # "weighted" (the output is linear in a weight, input 1), "norm", "activation",
    # "binary", "compare" (a bool result), "pool", "shape", "quant", "integer" or "other".
    category: str = "other"
    # Weighted ops: the axis of the weight that holds the output channels.
    weight_out_axis: int | None = None
    # The inputs that carry activations (the others are weights, biases, statistics or
    # indices); None: every input.
    data_inputs: tuple[int, ...] | None = None
    # An activation that integer kernels apply while requantizing the output of the op
    # before it (spec section 4), so quantization fuses it into that op.
    fusable: bool = False
    # Float op: its integer form requantizes an int32 accumulator (round half up, spec
    # section 3). Integer op: it ends in that requantization.
    requantizing: bool = False
    # Lowered to a lookup table indexed by its 8-bit input (spec section 5).
    lookup: bool = False
    # Its outputs hold only values of input 0 (moved, selected, or zeros), so integer
    # runtimes run it on the integers with the input's quantization. A function of the
    # node's full attributes where that depends on them (see `moves_values_only`).
    moves_values: bool | Callable[[dict], bool] = False
    # Channel-preserving and positively homogeneous per channel, f(x / s) = f(x) / s for
    # every s > 0: a per-channel rescaling passes through it unchanged (Nagel et al. 2019,
    # sec. 4.1), which cross-layer equalization and neuron merging rely on.
    homogeneous: bool = False
    # Its output is an average of input values (pooling by averaging, mean), so it keeps a
    # channel's mean where it averages over positions only.
    averages: bool = False
    # Its output holds values of its float data inputs, each element copied from one of them
    # (concat, where): those inputs and the output share one quantization, so integer
    # runtimes copy bytes (spec section 5).
    shares_quantization: bool = False


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
# XNOR layers: the unpacked weight's shape and the power of two every weight magnitude is.
_BINARY_WEIGHT = {"weight_shape": REQUIRED, "weight_shift": REQUIRED}


def _spec(name, fn, min_inputs, max_inputs=None, attrs=None, category="other", **kinds):
    return OpSpec(name, fn, min_inputs, min_inputs if max_inputs is None else max_inputs,
                  dict(attrs or {}), category, **kinds)


def _pads_with_zeros(attrs: dict) -> bool:
    return attrs["mode"] != "constant" or attrs["value"] == 0


def _resizes_by_nearest(attrs: dict) -> bool:
    return attrs["mode"] == "nearest"



_REQUANTIZES = {"requantizing": True}
_HOMOGENEOUS = {"homogeneous": True}
_LAYER = {"category": "weighted", "data_inputs": (0,), "requantizing": True}
_AVERAGES = {"requantizing": True, "averages": True}

OPS: dict[str, OpSpec] = {spec.name: spec for spec in [
    # Weighted layers: the output is linear in the weight (input 1), whose output channels
    # are on `weight_out_axis`.
    _spec("conv2d", _conv2d, 2, 3, _CONV_ATTRS, weight_out_axis=0, **_LAYER),
    _spec("conv1d", _conv1d, 2, 3, _CONV_ATTRS, weight_out_axis=0, **_LAYER),
    # Integer lowering runs conv_transpose2d in float: its requantization is a fall back's.
    _spec("conv_transpose2d", _conv_transpose2d, 2, 3, {**_CONV_ATTRS, "output_padding": REQUIRED},
          "weighted", weight_out_axis=1, data_inputs=(0,)),
    _spec("linear", F.linear, 2, 3, weight_out_axis=0, **_LAYER),
    _spec("matmul", torch.matmul, 2, **_REQUANTIZES),
    _spec("embedding", F.embedding, 2, data_inputs=()),
    # Normalisation.
    _spec("batch_norm", _batch_norm, 5, 5, {"eps": 1e-5}, "norm", data_inputs=(0,)),
    _spec("layer_norm", _layer_norm, 1, 3, {"normalized_shape": REQUIRED, "eps": 1e-5}, "norm",
          data_inputs=(0,)),
    # Elementwise activations.
    _spec("relu", F.relu, 1, category="activation", fusable=True, homogeneous=True, **_REQUANTIZES),
    _spec("clamp", _clamp, 1, 1, {"min": None, "max": None}, "activation", fusable=True,
          **_REQUANTIZES),
    _spec("hardswish", F.hardswish, 1, category="activation", lookup=True),
    _spec("hardsigmoid", F.hardsigmoid, 1, category="activation", lookup=True),
    _spec("silu", F.silu, 1, category="activation", lookup=True),
    _spec("gelu", F.gelu, 1, 1, {"approximate": "none"}, "activation", lookup=True),
    _spec("sigmoid", torch.sigmoid, 1, category="activation", lookup=True),
    _spec("tanh", torch.tanh, 1, category="activation", lookup=True),
    _spec("softmax", F.softmax, 1, 1, {"dim": REQUIRED}),
    # Elementwise functions of one activation (and constants): lookup tables (spec section 9).
    *[_spec(name, fn, 1, category="activation", lookup=True, **kinds) for name, fn, kinds in [
        ("abs", torch.abs, _HOMOGENEOUS), ("exp", torch.exp, {}), ("log", torch.log, {}),
        ("erf", torch.erf, {}), ("sqrt", torch.sqrt, {}), ("rsqrt", torch.rsqrt, {}),
        ("reciprocal", torch.reciprocal, {}), ("mish", F.mish, {})]],
    _spec("pow", m.power, 1, 1, {"exponent": REQUIRED}, "activation", lookup=True),
    _spec("leaky_relu", m.leaky_relu, 1, 1, {"negative_slope": 0.01}, "activation", lookup=True,
          **_HOMOGENEOUS),
    _spec("elu", m.elu, 1, 1, {"alpha": 1.0, "scale": 1.0, "input_scale": 1.0}, "activation",
          lookup=True),
    _spec("softplus", m.softplus, 1, 1, {"beta": 1.0, "threshold": 20.0}, "activation", lookup=True),
    # Slopes [1] (one lookup table) or [C] along axis 1 (one table per channel).
    _spec("prelu", m.prelu, 2, data_inputs=(0,), lookup=True),
    # Casts, comparisons and selection (masks): bool results; `where` selects from inputs 1, 2.
    _spec("cast", m.cast, 1, 1, {"dtype": REQUIRED}),
    *[_spec(name, getattr(torch, name), 2, category="compare")
      for name in ("eq", "ne", "gt", "ge", "lt", "le", "logical_and", "logical_or")],
    _spec("logical_not", torch.logical_not, 1, category="compare"),
    _spec("where", m.where, 3, data_inputs=(1, 2), shares_quantization=True),
    # Elementwise binary ops, with numpy broadcasting.
    _spec("add", torch.add, 2, category="binary", **_REQUANTIZES),
    _spec("sub", torch.sub, 2, category="binary", **_REQUANTIZES),
    _spec("mul", torch.mul, 2, category="binary", **_REQUANTIZES),
    _spec("div", torch.div, 2, category="binary", **_REQUANTIZES),
    # Pooling and reductions.
    _spec("max_pool2d", _max_pool2d, 1, 1, _POOL_MAX_ATTRS, "pool", moves_values=True,
          homogeneous=True),
    _spec("avg_pool2d", _avg_pool2d, 1, 1, _POOL_AVG_ATTRS, "pool", homogeneous=True, **_AVERAGES),
    _spec("adaptive_avg_pool2d", F.adaptive_avg_pool2d, 1, 1, {"output_size": REQUIRED}, "pool",
          homogeneous=True, **_AVERAGES),
    _spec("max_pool1d", _max_pool1d, 1, 1, _POOL_MAX_ATTRS, "pool", moves_values=True,
          homogeneous=True),
    _spec("avg_pool1d", _avg_pool1d, 1, 1, _POOL_AVG_ATTRS, "pool", homogeneous=True, **_AVERAGES),
    _spec("adaptive_avg_pool1d", F.adaptive_avg_pool1d, 1, 1, {"output_size": REQUIRED}, "pool",
          homogeneous=True, **_AVERAGES),
    # Whether it keeps channels apart depends on `dim`: not marked homogeneous.
    _spec("mean", torch.mean, 1, 1, {"dim": REQUIRED, "keepdim": False}, "pool", **_AVERAGES),
    _spec("sum", m.reduce_sum, 1, 1, {"dim": REQUIRED, "keepdim": False}, "pool", **_REQUANTIZES),
    # The largest / smallest element along `dim` is one of the input's values.
    *[_spec(name, fn, 1, 1, {"dim": REQUIRED, "keepdim": False}, "pool", moves_values=True)
      for name, fn in (("amax", m.amax), ("amin", m.amin))],
    _spec("argmax", m.argmax, 1, 1, {"dim": REQUIRED, "keepdim": False}),
    # No integer form (float fall backs): statistics over an axis.
    _spec("var", m.var, 1, 1, {"dim": REQUIRED, "correction": 1, "keepdim": False}),
    _spec("vector_norm", m.vector_norm, 1, 1, {"ord": 2.0, "dim": None, "keepdim": False}),
    # Data movement.
    _spec("concat", _concat, 1, 1 << 16, {"dim": REQUIRED}, "shape", shares_quantization=True),
    _spec("expand", m.expand, 1, 1, {"shape": REQUIRED}, "shape", moves_values=True),
    _spec("split", _split, 1, 1, {"axis": REQUIRED, "sizes": REQUIRED}, "shape", moves_values=True),
    _spec("slice", _slice, 1, 1, {"axis": REQUIRED, "start": REQUIRED, "end": REQUIRED, "step": 1},
          "shape", moves_values=True),
    _spec("reshape", torch.reshape, 1, 1, {"shape": REQUIRED}, "shape", moves_values=True),
    _spec("flatten", torch.flatten, 1, 1, {"start_dim": 0, "end_dim": -1}, "shape",
          moves_values=True),
    _spec("permute", torch.permute, 1, 1, {"dims": REQUIRED}, "shape", moves_values=True),
    _spec("transpose", torch.transpose, 1, 1, {"dim0": REQUIRED, "dim1": REQUIRED}, "shape",
          moves_values=True),
    _spec("pad", _pad, 1, 1, {"pads": REQUIRED, "mode": "constant", "value": 0.0}, "shape",
          moves_values=_pads_with_zeros),
    _spec("resize", _resize, 1, 1, {"size": REQUIRED, "mode": "nearest", "align_corners": None},
          "shape", moves_values=_resizes_by_nearest),
    # Quantization: real = scale * (q - zero_point); scale f32[C], zero_point i32[C] constants
    # (C = 1 per tensor). The output value's qparams mirror them once calibrated.
    _spec("fake_quant", fake_quant, 3, 3, {"axis": None, "bits": 8, "signed": True,
                                           "narrow_range": False, "symmetric": False,
                                           "rounding": "half_to_even"}, "quant"),
    # fake_quant_bias(bias, input_scale, weight_scale): the bias on the int32 grid the integer
    # kernel adds (scales are the fake_quant scale constants of the layer's input and weight).
    _spec("fake_quant_bias", fake_quant_bias, 3, 3, {}, "quant"),
    # fake_quant_grouped(weight, scale, zero_point=None): a linear weight [out, in] quantized
    # with one f32 scale per group of `group_size` input features (scale [out, in / group_size]),
    # symmetric, or asymmetric on [0, 2^bits - 1] with an integer zero point of the scale's
    # shape; weight-only low-bit quantization (qc.passes.quantize_weights_grouped).
    _spec("fake_quant_grouped", fake_quant_grouped, 2, 3, {"bits": 4, "group_size": REQUIRED}, "quant"),
    # Integer ops (docs/integer-spec.md; semantics in qcompiler.ir.integer_ops). Per-channel numbers
    # of weighted ops are constant inputs: int8 weight, int32 bias, int32 multiplier and shift.
    _spec("quantize", integer_ops.quantize, 1, 1, {"scale": REQUIRED, "zero_point": REQUIRED,
                                                    "qmin": REQUIRED, "qmax": REQUIRED,
                                                    "dtype": REQUIRED}, "quant"),
    _spec("dequantize", integer_ops.dequantize, 1, 1, {"scale": REQUIRED, "zero_point": REQUIRED},
          "quant"),
    _spec("qconv2d", integer_ops.qconv2d, 5, 5, {**_CONV_ATTRS, **_INPUT_ZP, **_REQUANT_OUT},
          "integer", **_REQUANTIZES),
    _spec("qconv1d", integer_ops.qconv1d, 5, 5, {**_CONV_ATTRS, **_INPUT_ZP, **_REQUANT_OUT},
          "integer", **_REQUANTIZES),
    _spec("qlinear", integer_ops.qlinear, 5, 5, {**_INPUT_ZP, **_REQUANT_OUT}, "integer",
          **_REQUANTIZES),
    _spec("qmatmul", integer_ops.qmatmul, 2, 2, {"a_zero_point": REQUIRED, "b_zero_point": REQUIRED,
                                                  **_SCALAR_MULTIPLIER, **_REQUANT_OUT}, "integer",
          **_REQUANTIZES),
    _spec("qadd", integer_ops.qadd, 2, 2, {"a_zero_point": REQUIRED, "a_multiplier": REQUIRED,
                                            "b_zero_point": REQUIRED, "b_multiplier": REQUIRED,
                                            "shift": REQUIRED, **_REQUANT_OUT}, "integer",
          **_REQUANTIZES),
    _spec("qmul", integer_ops.qmul, 2, 2, {"a_zero_point": REQUIRED, "b_zero_point": REQUIRED,
                                            **_SCALAR_MULTIPLIER, **_REQUANT_OUT}, "integer",
          **_REQUANTIZES),
    _spec("requantize", integer_ops.requantize, 1, 1, {**_INPUT_ZP, **_SCALAR_MULTIPLIER,
                                                        **_REQUANT_OUT}, "integer", **_REQUANTIZES),
    _spec("qconcat", integer_ops.qconcat, 1, 1 << 16, {"dim": REQUIRED}, "integer"),
    _spec("qmax_pool2d", integer_ops.qmax_pool2d, 1, 1, _POOL_MAX_ATTRS, "integer"),
    _spec("qmax_pool1d", integer_ops.qmax_pool1d, 1, 1, _POOL_MAX_ATTRS, "integer"),
    _spec("qavg_pool2d", integer_ops.qavg_pool2d, 1, 1, {**_POOL_AVG_ATTRS, **_INPUT_ZP,
                                                          **_COUNT_MULTIPLIERS, **_REQUANT_OUT},
          "integer", **_REQUANTIZES),
    _spec("qavg_pool1d", integer_ops.qavg_pool1d, 1, 1, {**_POOL_AVG_ATTRS, **_INPUT_ZP,
                                                          **_COUNT_MULTIPLIERS, **_REQUANT_OUT},
          "integer", **_REQUANTIZES),
    _spec("qmean", integer_ops.qmean, 1, 1, {"dim": REQUIRED, "keepdim": False, **_INPUT_ZP,
                                              **_SCALAR_MULTIPLIER, **_REQUANT_OUT}, "integer",
          **_REQUANTIZES),
    _spec("qlookup", integer_ops.qlookup, 2, 2, {"input_min": REQUIRED, "axis": None}, "integer"),
    # Binary networks (docs/integer-spec.md, section 13; qcompiler.ir.low_bit_ops): 1-bit
    # activations (a lookup table once quantized), XNOR-popcount layers for binary input x
    # binary weight, shift layers for power-of-two (and ternary) weights.
    _spec("sign", low_bit_ops.sign, 1, category="activation", lookup=True),
    _spec("qxnor_conv2d", low_bit_ops.qxnor_conv2d, 5, 5,
          {**_CONV_ATTRS, **_BINARY_WEIGHT, **_INPUT_ZP, **_REQUANT_OUT}, "integer", **_REQUANTIZES),
    _spec("qxnor_linear", low_bit_ops.qxnor_linear, 5, 5, {**_BINARY_WEIGHT, **_INPUT_ZP, **_REQUANT_OUT},
          "integer", **_REQUANTIZES),
    _spec("qshift_conv2d", low_bit_ops.qshift_conv2d, 5, 5, {**_CONV_ATTRS, **_INPUT_ZP, **_REQUANT_OUT},
          "integer", **_REQUANTIZES),
    _spec("qshift_linear", low_bit_ops.qshift_linear, 5, 5, {**_INPUT_ZP, **_REQUANT_OUT}, "integer",
          **_REQUANTIZES),
    # qlinear_grouped(x, weight u8 [C, K/2] packed int4, zero_point u8 [C, G], multiplier i32
    # [C, G], bias i64 [C], shift i32 [C]): the weight-only int4 linear (spec section 14).
    _spec("qlinear_grouped", integer_ops.qlinear_grouped, 6, 6, {"group_size": REQUIRED, **_INPUT_ZP,
                                                                 **_REQUANT_OUT}, "integer",
          **_REQUANTIZES),
    # I-BERT's integer softmax and layer_norm (spec section 15; lower_to_integer(ibert=True)).
    _spec("qsoftmax", integer_ops.qsoftmax, 1, 1, {"dim": REQUIRED, "exp_ln2": REQUIRED, "exp_b": REQUIRED,
                                                   "exp_c": REQUIRED, "fraction_bits": REQUIRED,
                                                   **_SCALAR_MULTIPLIER, **_REQUANT_OUT}, "integer"),
    _spec("qlayer_norm", integer_ops.qlayer_norm, 4, 4, {"eps_q": REQUIRED, **_REQUANT_OUT}, "integer"),
]}


def ops_where(**fields) -> frozenset[str]:
    """The names of the ops whose OpSpec has every one of these field values, e.g.
    `ops_where(category="weighted")`."""
    return frozenset(name for name, spec in OPS.items()
                     if all(getattr(spec, key) == value for key, value in fields.items()))


# The op kinds passes ask about most, derived from the table.
WEIGHTED_OPS = ops_where(category="weighted")
# Weighted ops whose weight is laid out [C_out, C_in / groups, *kernel] (all but
# conv_transpose2d): output channels are weight rows, input channels weight columns.
OUT_IN_WEIGHTED_OPS = ops_where(category="weighted", weight_out_axis=0)
FUSABLE_ACTIVATIONS = ops_where(fusable=True)
LOOKUP_OPS = ops_where(lookup=True)
# The simulated quantizers: each passes its input 0 through onto a grid. Bypassing them gives
# the float graph (calibration, AdaRound's float run); their input 0 is what QAT trains.
FAKE_QUANT_OPS = frozenset({"fake_quant", "fake_quant_bias"})


def moves_values_only(op: str, attrs: dict) -> bool:
    """Whether a node of `op` with these attributes only moves values of its input 0 (the
    `moves_values` field, asked of the full attributes where it is a function of them)."""
    moves = OPS[op].moves_values
    return moves(attrs_with_defaults(op, attrs)) if callable(moves) else moves



def _unknown_op(op: str) -> VerificationError:
    close = difflib.get_close_matches(op, list(OPS), n=3, cutoff=0.75)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return VerificationError(f"unknown op '{op}'; {hint}the {len(OPS)} IR ops are listed in "
                             "qcompiler.ir.ops.OPS (docs/ops.md)")


def attrs_with_defaults(op: str, attrs: dict) -> dict:
    """The full attribute dict of an op, defaults filled in; unknown or missing ones raise."""
    spec = OPS.get(op)
    if spec is None:
        raise _unknown_op(op)
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
    return bound_op(op, attrs)(inputs)


def bound_op(op: str, attrs: dict) -> Callable[[list], tuple]:
    """`run_op` with the op and attributes checked and filled in once: a function of the
    inputs, for running the same node many times."""
    spec = OPS[op]
    full = attrs_with_defaults(op, attrs)

    def call(inputs: list) -> tuple:
        while inputs and inputs[-1] is None and len(inputs) > spec.min_inputs:
            inputs = inputs[:-1]
        result = spec.fn(*inputs, **full)
        return result if isinstance(result, tuple) else (result,)

    return call


def _meta(value, sizes: dict[str, int]):
    if value is None:
        return None
    return torch.empty(shape_at(value.shape, sizes), dtype=TORCH_DTYPES[value.dtype], device="meta")


def _meta_types(op: str, inputs: list, attrs: dict, sizes: dict[str, int]) -> list[tuple]:
    return [(tuple(int(d) for d in t.shape), ir_dtype(t.dtype))
            for t in run_op(op, [_meta(v, sizes) for v in inputs], attrs)]


def infer_types(op: str, inputs: list, attrs: dict) -> list[tuple[tuple, str]]:
    """Output (shape, dtype) pairs of an op applied to IR values, by running it on meta tensors.
    Symbolic dimensions (`qcompiler.ir.dims`) are inferred from two runs at probe sizes."""
    spec = OPS.get(op)
    if spec is None:
        raise _unknown_op(op)
    if not spec.min_inputs <= len(inputs) <= spec.max_inputs:
        raise VerificationError(f"op '{op}' takes {spec.min_inputs}..{spec.max_inputs} inputs, "
                                f"got {len(inputs)}")
    names = sorted(set().union(*(symbols(v.shape) for v in inputs if v is not None)))
    base = dict.fromkeys(names, PROBES[0])
    try:
        types = _meta_types(op, inputs, attrs, base)
        bumped = {name: _meta_types(op, inputs, attrs, {**base, name: PROBES[1]}) for name in names}
    except VerificationError:
        raise
    except Exception as error:  # torch explains the shape mismatch; keep its words
        described = ", ".join("None" if v is None else v.type_str for v in inputs)
        hint = ""
        if names:
            hint = (f" (at {', '.join(names)} = {PROBES[0]} and {PROBES[1]}: an attribute that "
                    "fixes the batch size, such as a reshape to a literal batch, must write -1 "
                    "for the batch)")
        raise VerificationError(f"op '{op}' cannot take inputs ({described}) with attrs {attrs}: "
                                f"{str(error).splitlines()[0]}{hint}") from None
    return [(_symbolic_shape(op, index, shape, {n: runs[index][0] for n, runs in bumped.items()}),
             dtype) for index, (shape, dtype) in enumerate(types)]


def _symbolic_shape(op: str, index: int, shape: tuple[int, ...],
                    bumped: dict[str, tuple[int, ...]]) -> tuple:
    """Output `index`'s shape from the run at the base probe and one run per bumped symbol."""
    dims: list = list(shape)
    for name, other in bumped.items():
        try:
            solved = solve_probe_dims((shape, other), PROBES[0], PROBES[1] - PROBES[0], name)
        except ValueError as error:
            raise VerificationError(f"op '{op}': output {index} {error}; the IR's symbolic "
                                    "dimensions are multiples of one symbol") from None
        for axis, dim in enumerate(solved):
            if isinstance(dim, Dim):
                if isinstance(dims[axis], Dim):
                    raise VerificationError(f"op '{op}': output {index} axis {axis} depends on "
                                            f"{dims[axis].name} and {name}")
                dims[axis] = dim
    return tuple(dims)


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
