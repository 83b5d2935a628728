"""How each aten op of a torch.export graph maps onto the IR op set (used by
`qcompiler.frontends.torch_export.convert`).

`HANDLERS` is data: aten op name (the overload packet, without the trailing `_`
of in-place variants) -> a function `handler(ctx, args)`. `args` holds the op's
arguments bound to their schema names (`args["stride"]`), tensors already
converted to IR `Value`s or capture-time constants. A handler emits IR nodes
through `ctx.emit(op, inputs, attrs)` and returns the result (a Value, a tuple
for multi-output ops, or an input unchanged for identities); it calls
`ctx.unsupported(why)` when an argument combination has no IR equivalent.
Data-movement ops (reshape, permute, slice, split, concat, pad, resize) live in
`qcompiler.frontends.torch_export.layout_ops`.
"""

from __future__ import annotations

import torch

from qcompiler.frontends.torch_export.layout_ops import LAYOUT_HANDLERS, first_argument
from qcompiler.frontends.torch_export.math_handlers import MATH_HANDLERS

# Composite ops that we let torch's own decomposition table rewrite (into
# matmul/softmax/reshape/permute/...) before conversion, rather than hand-writing
# their math. Any of these in a graph triggers `ExportedProgram.run_decompositions`.
DECOMPOSED_OPS = (
    "scaled_dot_product_attention", "_scaled_dot_product_attention_math",
    "_scaled_dot_product_flash_attention_for_cpu", "einsum", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "native_channel_shuffle", "glu", "baddbmm",
    # Recurrent layers and cells: unrolled over the (static) sequence into linear layers,
    # sigmoid, tanh and elementwise products, which quantize and lower like any other.
    "lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell",
    "rnn_relu_cell",
)

# Ops that return their input unchanged at inference (dropout only with train=False).
# Also used when folding constants, so a parameter passed through `alias` keeps its name.
DROPOUT_OPS = ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
IDENTITY_OPS = (*DROPOUT_OPS, "clone", "contiguous", "alias", "detach", "lift_fresh_copy")


def _ints(value, rank: int) -> list[int]:
    """A conv/pool size argument as `rank` ints (torch accepts one int for all dims)."""
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return values * rank if len(values) == 1 else values


def _identity(ctx, args):
    return first_argument(args)


def _copy(ctx, args):
    """copy(dst, src) is src in dst's shape and dtype; the IR can express it when those agree."""
    dst, src = args["self"], args["src"]
    if ctx.shape(dst) != ctx.shape(src) or ctx.dtype(dst) != ctx.dtype(src):
        ctx.unsupported("copying with a broadcast or a dtype change has no IR equivalent")
    return src


def _dropout(ctx, args):
    if args.get("train"):
        ctx.unsupported("dropout with train=True is random at inference; use nn.Dropout and model.eval()")
    return args["input"]


def _no_output(ctx, args):  # export's runtime assertions: nothing to compute
    return None


# ---- weighted layers -------------------------------------------------------------------


def _string_padding(padding: str, kernel, dilation):
    """padding='same'/'valid' as conv padding, plus explicit pads when 'same' is asymmetric."""
    if padding == "valid":
        return [0] * len(kernel), None
    totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    before = [t // 2 for t in totals]
    if all(t % 2 == 0 for t in totals):
        return before, None
    pads = []  # F.pad order: last dim first; torch puts the odd element after
    for total, low in reversed(list(zip(totals, before, strict=True))):
        pads += [low, total - low]
    return [0] * len(kernel), pads


def _conv(ctx, args, transposed=False):
    x, weight, bias = args["input"], args["weight"], args["bias"]
    rank = len(ctx.shape(weight)) - 2
    stride, dilation = _ints(args["stride"], rank), _ints(args["dilation"], rank)
    padding = args["padding"]
    if isinstance(padding, str):
        padding, pads = _string_padding(padding, ctx.shape(weight)[2:], dilation)
        if pads is not None:
            x = ctx.emit("pad", [x], {"pads": pads, "mode": "constant", "value": 0.0}, part="pad")
    attrs = {"stride": stride, "padding": _ints(padding, rank), "dilation": dilation,
             "groups": int(args["groups"])}
    if transposed:
        if rank != 2:
            ctx.unsupported(f"the IR has conv_transpose2d only (this is {rank}-D)")
        attrs["output_padding"] = _ints(args["output_padding"], rank)
        return ctx.emit("conv_transpose2d", [x, weight, bias], attrs)
    if rank not in (1, 2):
        ctx.unsupported(f"the IR has conv1d and conv2d only (this is {rank}-D)")
    return ctx.emit(f"conv{rank}d", [x, weight, bias], attrs)


def _convolution(ctx, args):
    return _conv(ctx, args, transposed=bool(args["transposed"]))


def _addmm(ctx, args):
    if args["beta"] != 1 or args["alpha"] != 1:
        ctx.unsupported("beta/alpha other than 1")
    product = ctx.emit("matmul", [args["mat1"], args["mat2"]], part="matmul")
    return ctx.emit("add", [product, args["self"]])


def _t(ctx, args):
    x = args["self"]
    return x if len(ctx.shape(x)) < 2 else ctx.emit("transpose", [x], {"dim0": 0, "dim1": 1})


# ---- normalisation ---------------------------------------------------------------------


def _batch_norm(ctx, args):
    if args.get("training") or args["running_mean"] is None:
        ctx.unsupported("batch_norm uses batch statistics (training=True or track_running_stats="
                        "False); the IR's batch_norm needs running statistics: call model.eval() "
                        "on a model whose BatchNorm layers track running stats")
    x = args["input"]
    channels = ctx.shape(x)[1]
    weight = args["weight"] if args["weight"] is not None else ctx.constant("weight", torch.ones(channels))
    bias = args["bias"] if args["bias"] is not None else ctx.constant("bias", torch.zeros(channels))
    out = ctx.emit("batch_norm", [x, weight, bias, args["running_mean"], args["running_var"]],
                   {"eps": float(args["eps"])})
    return out if ctx.aten_name == "batch_norm" else (out, None, None)


def _layer_norm(ctx, args):
    out = ctx.emit("layer_norm", [args["input"], args["weight"], args["bias"]],
                   {"normalized_shape": [int(d) for d in args["normalized_shape"]],
                    "eps": float(args["eps"])})
    return out if ctx.aten_name == "layer_norm" else (out, None, None)


# ---- activations -----------------------------------------------------------------------


def _unary(op):
    return lambda ctx, args: ctx.emit(op, [first_argument(args)])


def _scalar_bound(ctx, bound):
    """A clamp bound as a Python number (a constant 0-dim tensor is accepted too)."""
    if bound is None or isinstance(bound, (int, float)):
        return None if bound is None else float(bound)
    if ctx.is_constant(bound) and ctx.constant_data(bound).numel() == 1:
        return float(ctx.constant_data(bound).item())
    ctx.unsupported("clamp bounds must be numbers; the IR's clamp has scalar min/max attributes")


def _clamp(ctx, args):
    low, high = args.get("min"), args.get("max")
    return ctx.emit("clamp", [args["self"]], {"min": _scalar_bound(ctx, low),
                                              "max": _scalar_bound(ctx, high)})


def _hardtanh(ctx, args):
    return ctx.emit("clamp", [args["self"]], {"min": float(args["min_val"]),
                                              "max": float(args["max_val"])})


def _relu6(ctx, args):
    return ctx.emit("clamp", [args["self"]], {"min": 0.0, "max": 6.0})


def _gelu(ctx, args):
    return ctx.emit("gelu", [args["self"]], {"approximate": args["approximate"]})


def _softmax(ctx, args):
    # `_safe_softmax` (from the attention decomposition) differs only on rows that are
    # entirely -inf: it gives 0 where softmax gives NaN.
    dim = int(args["dim"])
    return ctx.emit("softmax", [args["self"]], {"dim": dim % len(ctx.shape(args["self"]))})


# ---- elementwise binary ------------------------------------------------------------------


def _binary(op):
    def handler(ctx, args):
        other = args["other"]
        alpha = args.get("alpha", 1)
        if alpha != 1:  # torch's add/sub(x, y, alpha=a) is x + a*y
            other = ctx.emit("mul", [other, alpha], part="alpha")
        return ctx.emit(op, [args["self"], other])
    return handler


def _div(ctx, args):
    if args.get("rounding_mode") is not None:
        ctx.unsupported(f"rounding_mode={args['rounding_mode']!r}; the IR's div is true division")
    return ctx.emit("div", [args["self"], args["other"]])


def _rsub(ctx, args):  # rsub(x, y, alpha) = y - alpha * x
    x = args["self"]
    if args["alpha"] != 1:
        x = ctx.emit("mul", [x, args["alpha"]], part="alpha")
    return ctx.emit("sub", [args["other"], x])


def _neg(ctx, args):
    return ctx.emit("mul", [args["self"], -1])


# ---- pooling and reductions ------------------------------------------------------------------


def _pool(kind, rank):
    def handler(ctx, args):
        kernel = _ints(args["kernel_size"], rank)
        stride = _ints(args["stride"], rank) if args["stride"] else kernel
        attrs = {"kernel_size": kernel, "stride": stride, "padding": _ints(args["padding"], rank),
                 "ceil_mode": bool(args["ceil_mode"])}
        if kind == "max":
            attrs["dilation"] = _ints(args["dilation"], rank)
        else:
            if args.get("divisor_override") is not None:
                ctx.unsupported("divisor_override is not in the IR's avg_pool")
            attrs["count_include_pad"] = bool(args["count_include_pad"])
        out = ctx.emit(f"{kind}_pool{rank}d", [args["self"]], attrs)
        return (out, None) if ctx.aten_name.endswith("with_indices") else out
    return handler


def _adaptive_avg_pool(rank):
    def handler(ctx, args):
        size = _ints(args["output_size"], rank)
        return ctx.emit(f"adaptive_avg_pool{rank}d", [args["self"]],
                        {"output_size": size if rank > 1 else size[0]})
    return handler


def _mean(ctx, args):
    x = args["self"]
    if args.get("dtype") is not None and args["dtype"] != ctx.torch_dtype(x):
        ctx.unsupported(f"mean with dtype={args['dtype']}: cast the input first (x.to(...))")
    rank = len(ctx.shape(x))
    dims = args.get("dim")
    dims = list(range(rank)) if not dims else [int(d) % rank for d in dims]
    return ctx.emit("mean", [x], {"dim": dims, "keepdim": bool(args.get("keepdim", False))})


def _table():
    table = {}

    def add(names, handler):
        for name in names.split():
            table[name] = handler

    add(" ".join(IDENTITY_OPS), _identity)
    add(" ".join(DROPOUT_OPS), _dropout)
    add("copy", _copy)
    add("_assert_tensor_metadata _assert_scalar sym_constrain_range_for_size", _no_output)
    add("conv1d conv2d", _conv)
    add("conv_transpose2d", lambda ctx, args: _conv(ctx, args, transposed=True))
    add("convolution _convolution", _convolution)
    add("linear", lambda ctx, args: ctx.emit("linear", [args["input"], args["weight"], args["bias"]]))
    add("matmul mm bmm", lambda ctx, args: ctx.emit("matmul", [args["self"], args["other"]
                                                               if "other" in args else args["mat2"]]))
    add("addmm", _addmm)
    add("t", _t)
    add("embedding", lambda ctx, args: ctx.emit("embedding", [args["indices"], args["weight"]]))
    add("batch_norm native_batch_norm _native_batch_norm_legit_no_training", _batch_norm)
    add("layer_norm native_layer_norm", _layer_norm)
    for op in ("relu", "hardswish", "hardsigmoid", "silu", "sigmoid", "tanh"):
        add(op, _unary(op))
    add("clamp clamp_min clamp_max", _clamp)
    add("hardtanh", _hardtanh)
    add("relu6", _relu6)
    add("gelu", _gelu)
    add("softmax _softmax _safe_softmax", _softmax)
    add("add", _binary("add"))
    add("sub", _binary("sub"))
    add("mul", _binary("mul"))
    add("div", _div)
    add("rsub", _rsub)
    add("neg", _neg)
    add("max_pool2d max_pool2d_with_indices", _pool("max", 2))
    add("max_pool1d max_pool1d_with_indices", _pool("max", 1))
    add("avg_pool2d", _pool("avg", 2))
    add("avg_pool1d", _pool("avg", 1))
    add("adaptive_avg_pool2d _adaptive_avg_pool2d", _adaptive_avg_pool(2))
    add("adaptive_avg_pool1d", _adaptive_avg_pool(1))
    add("mean", _mean)
    return {**LAYOUT_HANDLERS, **MATH_HANDLERS, **table}


HANDLERS = _table()
