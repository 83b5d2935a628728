"""Float math, comparison, selection, cast and reduction ops -> Relax: the rows of the op table
that real networks add to the CNN core (`qcompiler.ir.math_ops`: masks, norms, attention,
recurrent cells), with torch's semantics. In integer graphs they are lookup tables or float
fall backs (docs/integer-spec.md, section 9); here they lower as float ops.

Where Relax has no operator with torch's exact meaning, the lowering composes one from
operators that do: `var` with torch's `correction`, `vector_norm` for any order, `elu` with
aten's three constants, `softplus` with its linear region, and `cast` to bool as `!= 0`.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax

from qcompiler.backends.tvm.lower_common import TVM_DTYPES, Lowering, constant, relax_shape, shape_of
from qcompiler.ir import Node


def _dims(value, rank: int) -> list[int] | None:
    """An IR `dim` attribute (an int, a list, or None for every axis) as Relax axes."""
    if value is None:
        return None
    dims = value if isinstance(value, list | tuple) else [value]
    return [int(d) % rank for d in dims] or None


def _const_like(value: float, dtype: str = "float32"):
    return constant(np.array(value, dtype=dtype))


def _unary(op):
    return lambda ctx, node, attrs: ctx.emit(op(ctx[node.inputs[0]]))


def _binary(op):
    return lambda ctx, node, attrs: ctx.emit(op(ctx[node.inputs[0]], ctx[node.inputs[1]]))


def _reduce(op):
    def lower(ctx: Lowering, node: Node, attrs: dict):
        x = node.inputs[0]
        return ctx.emit(op(ctx[x], _dims(attrs["dim"], len(x.shape)), keepdims=bool(attrs["keepdim"])))
    return lower


def lower_argmax(ctx: Lowering, node: Node, attrs: dict):
    """torch.argmax: the first maximum's index, int64; dim=None flattens first."""
    x, dim = ctx[node.inputs[0]], attrs["dim"]
    if dim is None:
        x, dim = relax.op.reshape(x, [-1]), 0
    result = relax.op.argmax(x, int(dim), keepdims=bool(attrs["keepdim"]))
    if attrs["keepdim"] and attrs["dim"] is None:
        result = relax.op.reshape(result, relax_shape(shape_of(node.output)))
    return ctx.emit(relax.op.astype(result, "int64"))


def lower_var(ctx: Lowering, node: Node, attrs: dict):
    """torch.var: sum((x - mean)^2) / (n - correction) over `dim`."""
    x = node.inputs[0]
    axes = _dims(attrs["dim"], len(x.shape))
    count = math.prod(int(x.shape[a]) for a in (axes if axes is not None else range(len(x.shape))))
    centred = relax.op.subtract(ctx[x], relax.op.mean(ctx[x], axes, keepdims=True))
    squares = relax.op.sum(relax.op.multiply(centred, centred), axes, keepdims=bool(attrs["keepdim"]))
    divisor = max(count - int(attrs["correction"]), 0)  # 0: inf / nan, as torch gives
    return ctx.emit(relax.op.divide(squares, _const_like(float(divisor))))


def lower_vector_norm(ctx: Lowering, node: Node, attrs: dict):
    """torch.linalg.vector_norm: (sum |x|^p)^(1/p); p = inf / -inf: max / min |x|; p = 0: the
    count of non-zeros."""
    x = node.inputs[0]
    axes, keep, order = _dims(attrs["dim"], len(x.shape)), bool(attrs["keepdim"]), float(attrs["ord"])
    magnitude = relax.op.abs(ctx[x])
    if math.isinf(order):
        return ctx.emit((relax.op.max if order > 0 else relax.op.min)(magnitude, axes, keepdims=keep))
    if order == 0:
        nonzero = relax.op.astype(relax.op.not_equal(magnitude, _const_like(0.0)), "float32")
        return ctx.emit(relax.op.sum(nonzero, axes, keepdims=keep))
    if order == 1:
        return ctx.emit(relax.op.sum(magnitude, axes, keepdims=keep))
    if order == 2:
        return ctx.emit(relax.op.sqrt(relax.op.sum(relax.op.multiply(magnitude, magnitude), axes,
                                                   keepdims=keep)))
    powered = relax.op.sum(relax.op.power(magnitude, _const_like(order)), axes, keepdims=keep)
    return ctx.emit(relax.op.power(powered, _const_like(1.0 / order)))


def lower_cast(ctx: Lowering, node: Node, attrs: dict):
    """x.to(dtype): float -> integer truncates toward zero (as LLVM's fptosi does); anything
    -> bool is `x != 0`."""
    x = node.inputs[0]
    if attrs["dtype"] == "bool":
        zero = _const_like(0, TVM_DTYPES[x.dtype])
        return ctx.emit(relax.op.not_equal(ctx[x], zero))
    return ctx.emit(relax.op.astype(ctx[x], TVM_DTYPES[attrs["dtype"]]))


def lower_expand(ctx: Lowering, node: Node, attrs: dict):
    return ctx.emit(relax.op.broadcast_to(ctx[node.inputs[0]], relax_shape(shape_of(node.output))))


def lower_pow(ctx: Lowering, node: Node, attrs: dict):
    exponent = float(attrs["exponent"])
    x = ctx[node.inputs[0]]
    if exponent == 2.0:  # torch computes x * x, exact where a general pow is not
        return ctx.emit(relax.op.multiply(x, x))
    return ctx.emit(relax.op.power(x, _const_like(exponent)))


def lower_leaky_relu(ctx: Lowering, node: Node, attrs: dict):
    x = ctx[node.inputs[0]]
    slope = _const_like(float(attrs["negative_slope"]))
    return ctx.emit(relax.op.where(relax.op.greater(x, _const_like(0.0)), x, relax.op.multiply(x, slope)))


def lower_elu(ctx: Lowering, node: Node, attrs: dict):
    """aten.elu: scale * x for x > 0, scale * alpha * (exp(input_scale * x) - 1) otherwise."""
    x = ctx[node.inputs[0]]
    scale = _const_like(float(attrs["scale"]))
    negative = relax.op.multiply(
        _const_like(float(attrs["scale"]) * float(attrs["alpha"])),
        relax.op.subtract(relax.op.exp(relax.op.multiply(x, _const_like(float(attrs["input_scale"])))),
                          _const_like(1.0)))
    return ctx.emit(relax.op.where(relax.op.greater(x, _const_like(0.0)), relax.op.multiply(x, scale),
                                   negative))


def _softplus(x, beta: float, threshold: float):
    """F.softplus: log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold."""
    scaled = relax.op.multiply(x, _const_like(beta))
    smooth = relax.op.divide(relax.op.log(relax.op.add(relax.op.exp(scaled), _const_like(1.0))),
                             _const_like(beta))
    return relax.op.where(relax.op.greater(scaled, _const_like(threshold)), x, smooth)


def lower_softplus(ctx: Lowering, node: Node, attrs: dict):
    return ctx.emit(_softplus(ctx[node.inputs[0]], float(attrs["beta"]), float(attrs["threshold"])))


def lower_mish(ctx: Lowering, node: Node, attrs: dict):
    """F.mish: x * tanh(softplus(x))."""
    x = ctx[node.inputs[0]]
    return ctx.emit(relax.op.multiply(x, relax.op.tanh(_softplus(x, 1.0, 20.0))))


def lower_prelu(ctx: Lowering, node: Node, attrs: dict):
    """nn.PReLU: x where x >= 0, else slope * x, with one slope or one per channel (axis 1)."""
    x, weight = node.inputs
    rank = len(x.shape)
    if weight.is_constant:
        slope = constant(weight.data.reshape([1, -1] + [1] * (rank - 2)) if rank >= 2 else weight.data)
    else:
        slope = relax.op.reshape(ctx[weight], [1, -1] + [1] * (rank - 2)) if rank >= 2 else ctx[weight]
    data = ctx[x]
    return ctx.emit(relax.op.where(relax.op.greater_equal(data, _const_like(0.0)), data,
                                   relax.op.multiply(data, slope)))


MATH_LOWERINGS = {
    "abs": _unary(relax.op.abs), "exp": _unary(relax.op.exp), "log": _unary(relax.op.log),
    "erf": _unary(relax.op.erf), "sqrt": _unary(relax.op.sqrt), "rsqrt": _unary(relax.op.rsqrt),
    "reciprocal": lambda ctx, node, attrs: ctx.emit(relax.op.divide(_const_like(1.0),
                                                                    ctx[node.inputs[0]])),
    "pow": lower_pow, "leaky_relu": lower_leaky_relu, "elu": lower_elu, "softplus": lower_softplus,
    "mish": lower_mish, "prelu": lower_prelu, "cast": lower_cast,
    "eq": _binary(relax.op.equal), "ne": _binary(relax.op.not_equal),
    "gt": _binary(relax.op.greater), "ge": _binary(relax.op.greater_equal),
    "lt": _binary(relax.op.less), "le": _binary(relax.op.less_equal),
    "logical_and": _binary(relax.op.logical_and), "logical_or": _binary(relax.op.logical_or),
    "logical_not": _unary(relax.op.logical_not),
    "where": lambda ctx, node, attrs: ctx.emit(relax.op.where(*[ctx[v] for v in node.inputs])),
    "sum": _reduce(relax.op.sum), "amax": _reduce(relax.op.max), "amin": _reduce(relax.op.min),
    "argmax": lower_argmax, "var": lower_var, "vector_norm": lower_vector_norm,
    "expand": lower_expand,
}
