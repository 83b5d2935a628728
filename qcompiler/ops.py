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

import torch
import torch.nn.functional as F

from qcompiler.errors import VerificationError

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


def _spec(name, fn, min_inputs, max_inputs=None, attrs=None, category="other"):
    return OpSpec(name, fn, min_inputs, min_inputs if max_inputs is None else max_inputs,
                  dict(attrs or {}), category)


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
