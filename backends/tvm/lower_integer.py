"""Integer ops (docs/integer-spec.md, section 11) lowered to the TE computes of `kernels.py`
with `emit_te`, each named after its node (so profiles and generated code point back at the
graph); per-channel numbers (weights, int32 bias, M0, shift) and lookup tables become Relax
constants, per-tensor numbers (zero points, scalar multipliers, clamps) are baked into the
kernel as immediates. Data movement on integer or float tensors is exact (reshape, permute,
slice, split, pad, concat, gather)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax, te, tirx

from qcompiler.backends.tvm import kernels
from qcompiler.backends.tvm.errors import LoweringError
from qcompiler.backends.tvm.kernels import Output
from qcompiler.backends.tvm.lower_common import Lowering, constant, pool_geometry, scalar, shape_of
from qcompiler.ir import DTYPES, Node


def lower_quantize(ctx: Lowering, node: Node, attrs: dict):
    return ctx.emit_te(node, kernels.quantize, ctx[node.inputs[0]], scale=attrs["scale"],
                       zero_point=scalar(attrs, "zero_point"), qmin=scalar(attrs, "qmin"),
                       qmax=scalar(attrs, "qmax"), dtype=attrs["dtype"])


def lower_dequantize(ctx: Lowering, node: Node, attrs: dict):
    return ctx.emit_te(node, kernels.dequantize, ctx[node.inputs[0]], scale=attrs["scale"],
                       zero_point=scalar(attrs, "zero_point"))


def _weighted(ctx: Lowering, node: Node, attrs: dict) -> tuple[list[relax.Expr], dict]:
    """weight, bias, multiplier and shift of a weighted integer op as Relax constants, the
    weight and bias in the form `kernels.prepare_weighted` gives them, and the kernel's
    options for its input (on ARM a uint8 input is multiplied as int8, `kernels.as_signed`)."""
    for value in node.inputs[1:5]:
        if value is None or not value.is_constant:
            raise LoweringError(f"{node.describe()}: its weight, bias, multiplier and shift must "
                                "be constants (the lowering bakes them into the library)")
    weight, bias = node.inputs[1].data, node.inputs[2].data
    signed = ctx.signed_operands and node.inputs[0].dtype == "u8"
    zero_point = scalar(attrs, "input_zero_point") - (128 if signed else 0)
    prepared = kernels.prepare_weighted(weight, bias, zero_point, "i8" if signed else node.inputs[0].dtype)
    constants = [constant(prepared.weight), constant(prepared.bias),
                 ctx[node.inputs[3]], ctx[node.inputs[4]]]
    options = {"input_zero_point": zero_point, "fold_zero_point": prepared.fold_zero_point,
               "signed_input": signed}
    return constants, options


def lower_qconv(ctx: Lowering, node: Node, attrs: dict):
    spatial = len(node.inputs[0].shape) - 2
    as_list = lambda v: [int(i) for i in (v if isinstance(v, list | tuple) else [v] * spatial)]
    constants, options = _weighted(ctx, node, attrs)
    return ctx.emit_te(node, kernels.qconv, ctx[node.inputs[0]], *constants,
                       out_shape=shape_of(node.output), stride=as_list(attrs["stride"]),
                       padding=as_list(attrs["padding"]), dilation=as_list(attrs["dilation"]),
                       groups=int(attrs["groups"]), out=Output.of(attrs), **options)


def lower_qlinear(ctx: Lowering, node: Node, attrs: dict):
    constants, options = _weighted(ctx, node, attrs)
    return ctx.emit_te(node, kernels.qlinear, ctx[node.inputs[0]], *constants,
                       out=Output.of(attrs), **options)


def _binary(ctx: Lowering, node: Node, attrs: dict, kernel, *scalars: str):
    """A two-operand integer op: its kernel on both inputs, with the integer attributes named."""
    a, b = node.inputs
    return ctx.emit_te(node, kernel, ctx[a], ctx[b], out_shape=shape_of(node.output),
                       out=Output.of(attrs), **{key: scalar(attrs, key) for key in scalars})


def lower_qmatmul(ctx: Lowering, node: Node, attrs: dict):
    a, b = node.inputs
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise LoweringError(f"{node.describe()}: qmatmul of a 1-D operand ({a.type_str} @ "
                            f"{b.type_str}) has no lowering; reshape it to 2-D first")
    return _binary(ctx, node, attrs, kernels.qmatmul, "a_zero_point", "b_zero_point", "multiplier",
                   "shift")


def lower_qadd(ctx: Lowering, node: Node, attrs: dict):
    return _binary(ctx, node, attrs, kernels.qadd, "a_zero_point", "a_multiplier", "b_zero_point",
                   "b_multiplier", "shift")


def lower_qmul(ctx: Lowering, node: Node, attrs: dict):
    return _binary(ctx, node, attrs, kernels.qmul, "a_zero_point", "b_zero_point", "multiplier",
                   "shift")


def lower_requantize(ctx: Lowering, node: Node, attrs: dict):
    return ctx.emit_te(node, kernels.requantize, ctx[node.inputs[0]],
                       input_zero_point=scalar(attrs, "input_zero_point"),
                       multiplier=scalar(attrs, "multiplier"), shift=scalar(attrs, "shift"),
                       out=Output.of(attrs))


def lower_qmean(ctx: Lowering, node: Node, attrs: dict):
    dims = attrs["dim"] if isinstance(attrs["dim"], list | tuple) else [attrs["dim"]]
    return ctx.emit_te(node, kernels.qmean, ctx[node.inputs[0]], dims=[int(d) for d in dims],
                       keepdim=bool(attrs["keepdim"]),
                       input_zero_point=scalar(attrs, "input_zero_point"),
                       multiplier=scalar(attrs, "multiplier"), shift=scalar(attrs, "shift"),
                       out=Output.of(attrs))


def lower_qmax_pool(ctx: Lowering, node: Node, attrs: dict):
    return ctx.emit_te(node, kernels.qmax_pool, ctx[node.inputs[0]], out_shape=shape_of(node.output),
                       **pool_geometry(node, attrs))


def lower_qavg_pool(ctx: Lowering, node: Node, attrs: dict):
    geometry = pool_geometry(node, attrs)
    x_shape, out_shape = shape_of(node.inputs[0]), shape_of(node.output)
    counts = np.ones((), np.int64)
    for axis in range(len(geometry["kernel_size"])):
        along = kernels.window_counts(x_shape[2 + axis], geometry["kernel_size"][axis],
                                      geometry["stride"][axis], geometry["padding"][axis],
                                      out_shape[2 + axis], bool(attrs["count_include_pad"]))
        counts = np.multiply.outer(counts, along)
    table_m = np.asarray(attrs["multipliers"], np.int64)
    table_s = np.asarray(attrs["shifts"], np.int64)
    if counts.min() < 1 or counts.max() > len(table_m):
        raise LoweringError(f"{node.describe()}: window counts {counts.min()}..{counts.max()} "
                            f"fall outside its {len(table_m)} multipliers")
    multipliers = constant(table_m[counts - 1].astype(np.int32))
    shifts = constant(table_s[counts - 1].astype(np.int32))
    return ctx.emit_te(node, kernels.qavg_pool, ctx[node.inputs[0]], multipliers, shifts,
                       out_shape=out_shape, kernel_size=geometry["kernel_size"],
                       stride=geometry["stride"], padding=geometry["padding"],
                       input_zero_point=scalar(attrs, "input_zero_point"), out=Output.of(attrs))


def lower_qlookup(ctx: Lowering, node: Node, attrs: dict):
    return ctx.emit_te(node, kernels.qlookup, ctx[node.inputs[0]], ctx[node.inputs[1]],
                       input_min=scalar(attrs, "input_min"))


# ---- data movement (integer or float tensors) ------------------------------------------------------


def lower_concat(ctx: Lowering, node: Node, attrs: dict):
    rank = len(node.output.shape)
    return ctx.emit(relax.op.concat([ctx[v] for v in node.inputs], axis=int(attrs["dim"]) % rank))


def lower_reshape(ctx: Lowering, node: Node, attrs: dict):
    return ctx.emit(relax.op.reshape(ctx[node.inputs[0]], shape_of(node.output)))


def lower_permute(ctx: Lowering, node: Node, attrs: dict):
    rank = len(node.output.shape)
    return ctx.emit(relax.op.permute_dims(ctx[node.inputs[0]], [int(d) % rank for d in attrs["dims"]]))


def lower_transpose(ctx: Lowering, node: Node, attrs: dict):
    rank = len(node.output.shape)
    axes = list(range(rank))
    first, second = int(attrs["dim0"]) % rank, int(attrs["dim1"]) % rank
    axes[first], axes[second] = axes[second], axes[first]
    return ctx.emit(relax.op.permute_dims(ctx[node.inputs[0]], axes))


def _slice(x, *, axis: int, start: int, step: int, out_shape):
    return te.compute(out_shape, lambda *i: x(*[i[d] * step + start if d == axis else i[d]
                                                 for d in range(len(out_shape))]), name="slice")


def lower_slice(ctx: Lowering, node: Node, attrs: dict):
    x = node.inputs[0]
    axis = int(attrs["axis"]) % len(x.shape)
    start, _, step = slice(attrs["start"], attrs["end"], attrs["step"]).indices(x.shape[axis])
    return ctx.emit_te(node, _slice, ctx[x], axis=axis, start=start, step=step,
                       out_shape=shape_of(node.output))


def lower_split(ctx: Lowering, node: Node, attrs: dict):
    axis = int(attrs["axis"]) % len(node.inputs[0].shape)
    sizes = [v.shape[axis] for v in node.outputs]
    if len(sizes) == 1:
        return [ctx[node.inputs[0]]]
    parts = ctx.emit(relax.op.split(ctx[node.inputs[0]], list(np.cumsum(sizes)[:-1].tolist()), axis))
    return [ctx.emit(relax.TupleGetItem(parts, i)) for i in range(len(sizes))]


def _pad(x, *, widths, mode: str, value):
    """torch.nn.functional.pad on any dtype: widths [(before, after)] per axis."""
    shape = [x.shape[d] + widths[d][0] + widths[d][1] for d in range(len(widths))]
    fill = tirx.const(value, x.dtype)

    def element(*index):
        source, inside = [], []
        for d, (before, _) in enumerate(widths):
            size, position = x.shape[d], index[d] - before
            if before == 0 and widths[d][1] == 0:
                source.append(index[d])
            elif mode == "constant":
                inside.append(tirx.all(position >= 0, position < size))
                source.append(tirx.max(tirx.min(position, size - 1), 0))
            elif mode == "reflect":
                mirrored = tirx.if_then_else(position < 0, -position, position)
                source.append(tirx.if_then_else(mirrored >= size, 2 * (size - 1) - mirrored, mirrored))
            elif mode == "replicate":
                source.append(tirx.max(tirx.min(position, size - 1), 0))
            else:  # circular
                source.append(tirx.floormod(position, size))
        read = x(*source)
        return tirx.if_then_else(tirx.all(*inside), read, fill) if inside else read

    return te.compute(shape, element, name="pad")


def lower_pad(ctx: Lowering, node: Node, attrs: dict):
    x = node.inputs[0]
    pads = [int(p) for p in attrs["pads"]]
    if any(p < 0 for p in pads):
        raise LoweringError(f"{node.describe()}: negative padding (cropping) has no lowering; "
                            "use slice")
    if attrs["mode"] not in ("constant", "reflect", "replicate", "circular"):
        raise LoweringError(f"{node.describe()}: pad mode {attrs['mode']!r} has no lowering")
    widths = [(0, 0)] * len(x.shape)
    for i in range(len(pads) // 2):
        widths[len(x.shape) - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    dtype = DTYPES[x.dtype]
    value = np.asarray(attrs["value"] if attrs["value"] is not None else 0).astype(dtype).item()
    return ctx.emit_te(node, _pad, ctx[x], widths=widths, mode=attrs["mode"], value=value)


def lower_embedding(ctx: Lowering, node: Node, attrs: dict):
    ids, table = node.inputs
    return ctx.emit(relax.op.take(ctx[table], ctx[ids], axis=0))


INTEGER_LOWERINGS: dict[str, Callable] = {
    "quantize": lower_quantize, "dequantize": lower_dequantize,
    "qconv2d": lower_qconv, "qconv1d": lower_qconv, "qlinear": lower_qlinear,
    "qmatmul": lower_qmatmul, "qadd": lower_qadd, "qmul": lower_qmul,
    "requantize": lower_requantize, "qmean": lower_qmean, "qconcat": lower_concat,
    "qmax_pool2d": lower_qmax_pool, "qmax_pool1d": lower_qmax_pool,
    "qavg_pool2d": lower_qavg_pool, "qavg_pool1d": lower_qavg_pool, "qlookup": lower_qlookup,
    "concat": lower_concat, "reshape": lower_reshape, "flatten": lower_reshape,
    "permute": lower_permute, "transpose": lower_transpose, "slice": lower_slice,
    "split": lower_split, "pad": lower_pad, "embedding": lower_embedding,
}


