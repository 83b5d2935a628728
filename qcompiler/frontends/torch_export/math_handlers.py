"""Casts, comparisons and masks, elementwise math and reductions of a torch.export graph mapped
onto the IR (part of the handler table of `qcompiler.frontends.torch_export.ops`; see there for
the handler interface).

What real networks need beyond the CNN core: HF-style attention masks (an int64 input cast to
bool or float, compared, filled), normalised embeddings (`F.normalize` is a vector norm, a
clamp and a division), statistics (`std`, `var`, `sum`, `max(dim)`), and the activations of
audio and speech models (PReLU, LeakyReLU, ELU, Mish, Softplus, erf-GELU pieces). Recurrent
layers (`nn.LSTM`, `nn.GRU` and their cells) are decomposed by torch into linear layers,
sigmoid, tanh and elementwise products before conversion (`DECOMPOSED_OPS`), and `flip`
(bidirectional layers run the sequence backwards) is a split and a concat in reverse.
"""

from __future__ import annotations

import torch

from qcompiler.frontends.torch_export.layout_ops import first_argument
from qcompiler.ir.dims import Dim
from qcompiler.ir.ops import TORCH_DTYPES

# SELU's constants (Klambauer et al. 2017, eq. 2), as torch's aten.selu uses them.
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def _dims(ctx, x, dims) -> list[int]:
    """A reduction's `dim` argument as sorted non-negative ints (None or [] means every axis)."""
    rank = len(ctx.shape(x))
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return list(range(rank))
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    return sorted(int(d) % max(rank, 1) for d in dims)


def _no_dtype_change(ctx, args, what: str) -> None:
    dtype = args.get("dtype")
    if dtype is not None and dtype != ctx.torch_dtype(first_argument(args)):
        ctx.unsupported(f"{what} with dtype={dtype}: cast the input first (x.to({dtype}))")


# ---- casts --------------------------------------------------------------------------------------


def _cast(ctx, args):
    """`.to(dtype)`, `.float()`, `.bool()`, `.type_as(y)`: a cast when the dtype changes."""
    x = first_argument(args)
    if ctx.shape(x) != ctx.out_shape:
        ctx.unsupported(f"it changes the shape {list(ctx.shape(x))} to {list(ctx.out_shape)}")
    if ctx.dtype(x) == ctx.out_dtype:
        return x
    return ctx.emit("cast", [x], {"dtype": ctx.out_dtype})


# ---- comparisons, masks and selection ----------------------------------------------------------


def _operand(ctx, x, other):
    """`other` as an IR operand of a binary op with the tensor `x`: a Python number becomes a
    constant of the dtype torch computes in (`mask > 0.5` compares in float32)."""
    if not isinstance(other, (bool, int, float)):
        return other
    dtype = torch.result_type(torch.empty((), dtype=ctx.torch_dtype(x)), other)
    return ctx.constant("other", torch.tensor(other, dtype=dtype))


def _compare(op):
    def handler(ctx, args):
        x = args["self"]
        return ctx.emit(op, [x, _operand(ctx, x, args["other"])])
    return handler


def _logical(op):
    def handler(ctx, args):
        x = args["self"]
        if op != "logical_not" and not ctx.aten_name.startswith("logical") and ctx.dtype(x) != "bool":
            ctx.unsupported(f"bitwise operations on {ctx.dtype(x)} have no IR op (on bool masks "
                            "they are logical_and / logical_or)")
        if op == "logical_not":
            if ctx.aten_name == "bitwise_not" and ctx.dtype(x) != "bool":
                ctx.unsupported(f"bitwise not of {ctx.dtype(x)} has no IR op (of a bool mask it is "
                                "logical_not)")
            return ctx.emit(op, [x])
        return ctx.emit(op, [x, _operand(ctx, x, args["other"])])
    return handler


def _where(ctx, args):
    condition = args["condition"]
    if ctx.dtype(condition) != "bool":
        condition = ctx.emit("cast", [condition], {"dtype": "bool"}, part="condition")
    return ctx.emit("where", [condition, args["self"], args["other"]])


def _masked_fill(ctx, args):
    """x.masked_fill(mask, value) is where(mask, value, x)."""
    x, value = args["self"], args["value"]
    if not isinstance(value, (bool, int, float)):
        value = ctx.constant_data(value).item() if ctx.is_constant(value) else value
    if isinstance(value, (bool, int, float)):
        value = ctx.constant("value", torch.tensor(value, dtype=ctx.torch_dtype(x)))
    return ctx.emit("where", [args["mask"], value, x])


def _constant_like(fill):
    """zeros_like / ones_like / full_like / new_zeros ...: a constant of the recorded shape."""
    def handler(ctx, args):
        value = fill if fill is not None else args["fill_value"]
        return ctx.constant("fill", torch.full(ctx.out_shape, value,
                                               dtype=TORCH_DTYPES[ctx.out_dtype]))
    return handler


# ---- elementwise math -------------------------------------------------------------------------


def _unary(op):
    return lambda ctx, args: ctx.emit(op, [first_argument(args)])


def _pow(ctx, args):
    x = args["self"]
    exponent = args["exponent"]
    if not isinstance(exponent, (int, float)) and ctx.is_constant(exponent) \
            and ctx.constant_data(exponent).numel() == 1:
        exponent = ctx.constant_data(exponent).item()
    if not isinstance(exponent, (int, float)) or isinstance(x, (int, float)):
        ctx.unsupported("only a tensor raised to a constant number has an IR op (pow with "
                        "{'exponent': number}); rewrite base ** y as torch.exp(y * math.log(base)) "
                        "and x ** y as torch.exp(y * torch.log(x))")
    if exponent == 1:
        return x
    return ctx.emit("pow", [x], {"exponent": float(exponent)})


def _leaky_relu(ctx, args):
    return ctx.emit("leaky_relu", [args["self"]], {"negative_slope": float(args["negative_slope"])})


def _elu(ctx, args):
    return ctx.emit("elu", [args["self"]], {"alpha": float(args["alpha"]), "scale": float(args["scale"]),
                                            "input_scale": float(args["input_scale"])})


def _selu(ctx, args):
    return ctx.emit("elu", [args["self"]], {"alpha": _SELU_ALPHA, "scale": _SELU_SCALE,
                                            "input_scale": 1.0})


def _celu(ctx, args):  # celu(x, a) = max(0, x) + min(0, a * (exp(x / a) - 1))
    alpha = float(args["alpha"])
    return ctx.emit("elu", [args["self"]], {"alpha": alpha, "scale": 1.0, "input_scale": 1.0 / alpha})


def _softplus(ctx, args):
    return ctx.emit("softplus", [args["self"]], {"beta": float(args["beta"]),
                                                 "threshold": float(args["threshold"])})


def _prelu(ctx, args):
    weight = args["weight"]
    if not ctx.is_constant(weight):
        ctx.unsupported("PReLU's slopes are not constant (the IR's prelu reads a constant weight)")
    return ctx.emit("prelu", [args["self"], weight])


# ---- reductions ------------------------------------------------------------------------------------


def _sum(ctx, args):
    x = args["self"]
    _no_dtype_change(ctx, args, "sum")
    if ctx.dtype(x) in ("bool", "u8", "i8", "i16", "i32"):
        ctx.unsupported(f"sum of a {ctx.dtype(x)} tensor gives int64; cast it first (x.long() or "
                        "x.float())")
    return ctx.emit("sum", [x], {"dim": _dims(ctx, x, args.get("dim")),
                                 "keepdim": bool(args.get("keepdim", False))})


def _extreme(op):
    """amax / amin, and max / min with a dim (values, indices) or without (one value)."""
    def handler(ctx, args):
        x = args["self"]
        if "other" in args:
            ctx.unsupported(f"the elementwise {ctx.aten_name} of two tensors has no IR op; "
                            "write it with where: torch.where(a > b, a, b)")
        dims = _dims(ctx, x, args.get("dim"))
        keepdim = bool(args.get("keepdim", False))
        values = ctx.emit(op, [x], {"dim": dims, "keepdim": keepdim},
                          part=None if ctx.aten_name in ("amax", "amin") else "values")
        if ctx.aten_name in ("amax", "amin") or "dim" not in args:
            return values
        indices_used = any(user.args[1] == 1 and user.users for user in ctx.node.users)
        if not indices_used:
            return values, None
        if op == "amin":
            ctx.unsupported("the indices of min(dim) have no IR op; use torch.argmax(-x, dim)")
        return values, ctx.emit("argmax", [x], {"dim": dims[0], "keepdim": keepdim}, part="indices")
    return handler


def _argmax(ctx, args):
    x = args["self"]
    if args.get("dim") is None:
        if args.get("keepdim"):
            ctx.unsupported("argmax without dim but with keepdim=True")
        x = ctx.emit("reshape", [x], {"shape": [-1]}, part="flatten")
        return ctx.emit("argmax", [x], {"dim": 0, "keepdim": False})
    return ctx.emit("argmax", [x], {"dim": int(args["dim"]) % len(ctx.shape(x)),
                                    "keepdim": bool(args["keepdim"])})


def _var(ctx, args, sqrt: bool = False):
    """var / std (std is sqrt(var), which is how torch computes it)."""
    x = args["input"] if "input" in args else args["self"]
    correction = args.get("correction")
    if correction is None:
        correction = 1 if args.get("unbiased", True) else 0
    result = ctx.emit("var", [x], {"dim": _dims(ctx, x, args.get("dim")),
                                   "correction": float(correction),
                                   "keepdim": bool(args.get("keepdim", False))},
                      part="var" if sqrt else None)
    return ctx.emit("sqrt", [result]) if sqrt else result


def _vector_norm(ctx, args):
    x = args["self"]
    _no_dtype_change(ctx, args, "vector norm")
    dims = args.get("dim")
    return ctx.emit("vector_norm", [x], {"ord": float(args["ord"]),
                                         "dim": None if dims is None else _dims(ctx, x, dims),
                                         "keepdim": bool(args["keepdim"])})


# ---- data movement ---------------------------------------------------------------------------------


def _expand(ctx, args):
    x = first_argument(args)
    if ctx.shape(x) == ctx.out_shape:
        return x
    shape, source = list(ctx.out_shape), ctx.shape(x)
    offset = len(shape) - len(source)
    for axis, size in enumerate(shape):
        if isinstance(size, Dim):  # the batch: kept from the input (-1), never made
            if axis < offset or source[axis - offset] != size:
                ctx.batch_dependent(f"it expands to the batch size ({size}) from a tensor without it")
            shape[axis] = -1
    return ctx.emit("expand", [x], {"shape": shape})


def _flip(ctx, args):
    """flip along each axis: split into single slices, concatenated in reverse."""
    x = args["self"]
    rank = len(ctx.shape(x))
    for axis in sorted({int(d) % rank for d in args["dims"]}):
        size = ctx.shape(x)[axis]
        if size == 1:
            continue
        pieces = ctx.emit("split", [x], {"axis": axis, "sizes": [1] * size}, part=f"flip{axis}")
        x = ctx.emit("concat", list(reversed(pieces)), {"dim": axis},
                     part=f"flip{axis}.reversed")
    return x


def _table():
    table = {}

    def add(names, handler):
        for name in names.split():
            table[name] = handler

    add("to _to_copy type_as", _cast)
    for op in ("eq", "ne", "gt", "ge", "lt", "le"):
        add(op, _compare(op))
    add("greater", _compare("gt"))
    add("less", _compare("lt"))
    add("logical_not bitwise_not", _logical("logical_not"))
    add("logical_and bitwise_and __and__", _logical("logical_and"))
    add("logical_or bitwise_or __or__", _logical("logical_or"))
    add("where", _where)
    add("masked_fill", _masked_fill)
    add("zeros_like new_zeros", _constant_like(0))
    add("ones_like new_ones", _constant_like(1))
    add("full_like new_full", _constant_like(None))
    for op in ("abs", "exp", "log", "erf", "sqrt", "rsqrt", "reciprocal", "mish"):
        add(op, _unary(op))
    add("pow", _pow)
    add("square", lambda ctx, args: ctx.emit("pow", [args["self"]], {"exponent": 2.0}))
    add("leaky_relu", _leaky_relu)
    add("elu", _elu)
    add("selu", _selu)
    add("celu", _celu)
    add("softplus", _softplus)
    add("prelu", _prelu)
    add("sum", _sum)
    add("amax max", _extreme("amax"))
    add("amin min", _extreme("amin"))
    add("argmax", _argmax)
    add("var", _var)
    add("std", lambda ctx, args: _var(ctx, args, sqrt=True))
    add("linalg_vector_norm", _vector_norm)
    add("expand expand_as", _expand)
    add("flip", _flip)
    return table


MATH_HANDLERS = _table()
