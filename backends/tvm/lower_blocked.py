"""Lowerings of the nodes the plan (`plan.py`) puts in the blocked layout: each packs its
constants in numpy (`packing.py`), emits the kernel of `kernel_table.py` (or a lane-wise
TE compute) and records its schedule. A lowering that produces a blocked value stores it
with `Lowering.set_blocked` and returns None; one that produces a plain value (dense
layers, dequantize) returns it. Conversions to and from the plain layout are
`Lowering.blocked` / `Lowering.__getitem__`.

Integer inputs are read in their stored form (`plan.Blocked`: the zero point moves with the
storage offset) and integer outputs written in theirs (`stored`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from tvm import relax

from qcompiler.backends.tvm import blocked, blocked_float, blocked_int8, kernel_table, packing
from qcompiler.backends.tvm.epilogue import requantize_form
from qcompiler.backends.tvm.kernels import Output, qadd, requantize, window_counts
from qcompiler.backends.tvm.lower_common import Lowering, constant, pool_geometry, scalar, shape_of
from qcompiler.backends.tvm.plan import STORAGE_RANGES, Blocked
from qcompiler.backends.tvm.schedules import schedule_copy, schedule_elementwise, schedule_pool
from qcompiler.ir import Node
from qcompiler.numerics.batchnorm import batchnorm_scale_shift, fold_batchnorm_into_weights


def _pairs(value) -> list[int]:
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value, value])]


def _shape(layout: Blocked, value) -> list:
    """The blocked shape of a 4-D IR value."""
    n, _, h, w = shape_of(value)
    return [n, layout.blocks, h, w, layout.block]


def stored(attrs: dict, layout: Blocked) -> Output:
    """The output attributes of a requantizing op, moved to the stored form."""
    out = Output.of(attrs)
    return dataclasses.replace(out, zero_point=out.zero_point + layout.offset, low=out.low + layout.offset,
                               high=out.high + layout.offset, dtype=layout.dtype)


def _kernel_schedule(ctx: Lowering, kernel: kernel_table.Kernel):
    return functools.partial(kernel.apply_schedule, registers=kernel_table.registers(ctx.plan.isa))


def _slice_channels(ctx: Lowering, expr, lead: list, padded: int, channels: int):
    """A dense kernel's `(M, O'/L, L)` result as `[*lead, O]`."""
    result = ctx.emit(relax.op.reshape(expr, [*lead, padded]))
    if padded == channels:
        return result
    return ctx.emit(relax.op.strided_slice(result, axes=[len(lead)], begin=[0], end=[channels]))


def _dense_operand(ctx: Lowering, node: Node, depth_multiple: int, integer: bool):
    """(operand `(M, K')`, leading shape, K', storage offset) of a dense layer's input: a flat
    blocked value as it is stored, or a plain one reshaped (and for int8 moved by the storage
    offset and padded to a multiple of 4 in a small copy)."""
    x = node.inputs[0]
    form = ctx.blocked_forms.get(x.name)
    if form is not None and form[1].flat:
        expr, layout = form
        return ctx.emit(relax.op.reshape(expr, [x.shape[0], layout.padded])), [x.shape[0]], \
            layout.padded, layout.offset
    lead, depth = shape_of(x)[:-1], int(x.shape[-1])
    operand = ctx.emit(relax.op.reshape(ctx[x], [int(np.prod(lead)), depth]))
    if not integer:
        return operand, lead, depth, 0
    offset, padded = ctx.plan.offset(x.dtype), packing.round_up(depth, depth_multiple)
    if offset or padded != depth:
        operand = ctx.emit_te(f"{node.name}_operand", blocked_int8.dense_operand, operand, depth=padded,
                              offset=offset, dtype=ctx.plan.storage_dtype, schedule=schedule_copy)
    return operand, lead, padded, offset


# ---- integer --------------------------------------------------------------------------------


def lower_qconv(ctx: Lowering, node: Node, attrs: dict):
    kernel = ctx.plan.kernels[node.name]
    weight, bias, multiplier, shift = (v.data for v in node.inputs[1:5])
    lanes, groups = kernel.lanes, int(attrs["groups"])
    expr, layout = ctx.blocked(node.inputs[0], None if kernel.kind == "conv" and groups == 1 else lanes)
    zero_point = scalar(attrs, "input_zero_point") + layout.offset
    folded = packing.fold_zero_point(weight, bias, zero_point, STORAGE_RANGES[layout.dtype])
    packed = {"conv": lambda: packing.pack_conv_int8(weight, layout.block, lanes),
              "depthwise": lambda: packing.pack_depthwise(weight, lanes),
              "depthwise3x3": lambda: packing.pack_depthwise_rows(weight, lanes)}[kernel.kind]()
    m0, total_shift = packing.requantization(multiplier, shift, lanes)
    out_layout = ctx.plan.integer_layout(node.output, lanes)
    options = {"out_spatial": shape_of(node.output)[2:], "stride": _pairs(attrs["stride"]),
               "padding": _pairs(attrs["padding"]), "input_zero_point": zero_point,
               "out": stored(attrs, out_layout), "form": requantize_form(ctx.plan.isa, total_shift)}
    if kernel.kind != "depthwise3x3":
        options["dilation"] = _pairs(attrs["dilation"])
    if kernel.kind == "conv":
        options["groups"] = groups
    var = ctx.emit_te(node, kernel.compute, expr, constant(packed),
                      constant(packing.per_channel(folded, lanes, 0, np.int32)), constant(m0),
                      constant(total_shift), schedule=_kernel_schedule(ctx, kernel), **options)
    ctx.set_blocked(node.output, var, out_layout)


def lower_qlinear(ctx: Lowering, node: Node, attrs: dict):
    kernel = ctx.plan.kernels[node.name]
    weight, bias, multiplier, shift = (v.data for v in node.inputs[1:5])
    operand, lead, depth, offset = _dense_operand(ctx, node, 4, integer=True)
    zero_point = scalar(attrs, "input_zero_point") + offset
    folded = packing.fold_zero_point(weight, bias, zero_point, STORAGE_RANGES[ctx.plan.storage_dtype])
    m0, total_shift = packing.requantization(multiplier, shift, kernel.lanes)
    var = ctx.emit_te(node, blocked_int8.dense, operand,
                      constant(packing.pack_dense_int8(weight, depth, kernel.lanes)),
                      constant(packing.per_channel(folded, kernel.lanes, 0, np.int32)), constant(m0),
                      constant(total_shift), out=Output.of(attrs),
                      form=requantize_form(ctx.plan.isa, total_shift), schedule=_kernel_schedule(ctx, kernel))
    return _slice_channels(ctx, var, lead, packing.round_up(weight.shape[0], kernel.lanes), weight.shape[0])


def lower_quantize(ctx: Lowering, node: Node, attrs: dict):
    layout = ctx.plan.default_layout(node.output)
    var = ctx.emit_te(node, blocked_int8.quantize, ctx[node.inputs[0]], scale=attrs["scale"],
                      zero_point=scalar(attrs, "zero_point"), qmin=scalar(attrs, "qmin"),
                      qmax=scalar(attrs, "qmax"), block=layout.block, blocks=layout.blocks,
                      offset=layout.offset, dtype=layout.dtype, schedule=schedule_elementwise)
    ctx.set_blocked(node.output, var, layout)


def lower_dequantize(ctx: Lowering, node: Node, attrs: dict):
    expr, layout = ctx.blocked(node.inputs[0])
    return ctx.emit_te(node, blocked_int8.dequantize, expr, scale=attrs["scale"],
                       zero_point=scalar(attrs, "zero_point") + layout.offset,
                       channels=layout.channels, flat=layout.flat, schedule=schedule_elementwise)


def lower_qadd(ctx: Lowering, node: Node, attrs: dict):
    a, b = node.inputs
    a_expr, a_layout = ctx.blocked(a)
    b_expr, b_layout = ctx.blocked(b, a_layout.block)
    layout = ctx.plan.integer_layout(node.output, a_layout.block)
    var = ctx.emit_te(node, qadd, a_expr, b_expr, out_shape=_shape(layout, node.output),
                      a_zero_point=scalar(attrs, "a_zero_point") + a_layout.offset,
                      a_multiplier=scalar(attrs, "a_multiplier"),
                      b_zero_point=scalar(attrs, "b_zero_point") + b_layout.offset,
                      b_multiplier=scalar(attrs, "b_multiplier"), shift=scalar(attrs, "shift"),
                      out=stored(attrs, layout), schedule=schedule_elementwise)
    ctx.set_blocked(node.output, var, layout)


def lower_requantize(ctx: Lowering, node: Node, attrs: dict):
    expr, layout = ctx.blocked(node.inputs[0])
    out_layout = ctx.plan.integer_layout(node.output, layout.block)
    zero_point = scalar(attrs, "input_zero_point") + layout.offset
    var = ctx.emit_te(node, requantize, expr, input_zero_point=zero_point,
                      multiplier=scalar(attrs, "multiplier"), shift=scalar(attrs, "shift"),
                      out=stored(attrs, out_layout), schedule=schedule_elementwise)
    ctx.set_blocked(node.output, var, out_layout)


def lower_max_pool(ctx: Lowering, node: Node, attrs: dict):
    """Integer or float max pooling; the output has the input's layout (spec 6: the same
    quantization parameters)."""
    expr, layout = ctx.blocked(node.inputs[0])
    geometry = pool_geometry(node, attrs)
    geometry.setdefault("dilation", [1, 1])
    var = ctx.emit_te(node, blocked.max_pool, expr, out_shape=_shape(layout, node.output),
                      schedule=schedule_pool, **geometry)
    ctx.set_blocked(node.output, var, layout)


def _counts(node: Node, attrs: dict, geometry: dict) -> np.ndarray:
    """torch's divisor at each output position of an average pool, `[OH, OW]`."""
    x_shape, out_shape = shape_of(node.inputs[0]), shape_of(node.output)
    along = [window_counts(x_shape[2 + axis], geometry["kernel_size"][axis], geometry["stride"][axis],
                           geometry["padding"][axis], out_shape[2 + axis], bool(attrs["count_include_pad"]))
             for axis in range(2)]
    return np.multiply.outer(along[0], along[1])


def lower_qavg_pool(ctx: Lowering, node: Node, attrs: dict):
    expr, layout = ctx.blocked(node.inputs[0])
    geometry = pool_geometry(node, attrs)
    counts = _counts(node, attrs, geometry)
    out_layout = ctx.plan.integer_layout(node.output, layout.block)
    multipliers = np.asarray(attrs["multipliers"], np.int64)[counts - 1].astype(np.int32)
    total_shifts = np.asarray(attrs["shifts"], np.int64)[counts - 1] + 31
    var = ctx.emit_te(node, blocked_int8.average_pool, expr, constant(multipliers), constant(total_shifts),
                      out_shape=_shape(out_layout, node.output), kernel_size=geometry["kernel_size"],
                      stride=geometry["stride"], padding=geometry["padding"],
                      input_zero_point=scalar(attrs, "input_zero_point") + layout.offset,
                      out=stored(attrs, out_layout), schedule=schedule_pool)
    ctx.set_blocked(node.output, var, out_layout)


def lower_qmean(ctx: Lowering, node: Node, attrs: dict):
    expr, layout = ctx.blocked(node.inputs[0])
    out_layout = ctx.plan.integer_layout(node.output, layout.block, flat=not attrs["keepdim"])
    var = ctx.emit_te(node, blocked_int8.mean, expr,
                      input_zero_point=scalar(attrs, "input_zero_point") + layout.offset,
                      multiplier=scalar(attrs, "multiplier"), total_shift=scalar(attrs, "shift") + 31,
                      out=stored(attrs, out_layout), schedule=schedule_pool)
    ctx.set_blocked(node.output, var, out_layout)


def lower_flatten(ctx: Lowering, node: Node, attrs: dict):
    """A `[N, C, 1, 1]` -> `[N, C]` flatten (or reshape) is free in the blocked layout."""
    expr, layout = ctx.blocked(node.inputs[0])
    ctx.set_blocked(node.output, expr, dataclasses.replace(layout, flat=True))


# ---- float ------------------------------------------------------------------------------------


def _activation_bounds(chain: list[Node]) -> tuple[float | None, float | None]:
    """The clamp of a fused relu / clamp (the last node of an epilogue chain), if any."""
    if not chain or chain[-1].op not in ("relu", "clamp"):
        return None, None
    if chain[-1].op == "relu":
        return 0.0, None
    attrs = chain[-1].attrs
    return (None if attrs.get("min") is None else float(attrs["min"]),
            None if attrs.get("max") is None else float(attrs["max"]))


def _folded_float_weights(node: Node, chain: list[Node]) -> tuple[np.ndarray, np.ndarray]:
    """The layer's weight and bias with a fused batch norm folded in (float64, rounded once)."""
    weight = node.inputs[1].data
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias.data
    for fused in chain:
        if fused.op == "batch_norm":
            gamma, beta, mean, var = (None if v is None else v.data for v in fused.inputs[1:5])
            scale, shift = batchnorm_scale_shift(gamma, beta, mean, var, float(fused.attrs["eps"]))
            weight, bias = fold_batchnorm_into_weights(weight, bias, scale, shift)
    return weight.astype(np.float32), bias.astype(np.float32)


def _fused_output(ctx: Lowering, node: Node):
    chain = ctx.plan.epilogue.get(node.name, [])
    return chain, (chain[-1].output if chain else node.output)


def lower_conv(ctx: Lowering, node: Node, attrs: dict):
    kernel = ctx.plan.kernels[node.name]
    chain, result = _fused_output(ctx, node)
    weight, bias = _folded_float_weights(node, chain)
    low, high = _activation_bounds(chain)
    lanes, groups = kernel.lanes, int(attrs["groups"])
    expr, layout = ctx.blocked(node.inputs[0], None if kernel.kind == "conv_float" and groups == 1 else lanes)
    packed = (packing.pack_conv_float(weight, layout.block, lanes) if kernel.kind == "conv_float"
              else packing.pack_depthwise(weight, lanes))
    options = {"out_spatial": shape_of(node.output)[2:], "stride": _pairs(attrs["stride"]),
               "padding": _pairs(attrs["padding"]), "dilation": _pairs(attrs["dilation"]),
               "low": low, "high": high}
    if kernel.kind == "conv_float":
        options["groups"] = groups
    var = ctx.emit_te(node, kernel.compute, expr, constant(packed),
                      constant(packing.per_channel(bias, lanes, 0, np.float32)),
                      schedule=_kernel_schedule(ctx, kernel), **options)
    ctx.set_blocked(result, var, Blocked(lanes, int(weight.shape[0]), 0, "float32"))


def lower_linear(ctx: Lowering, node: Node, attrs: dict):
    kernel = ctx.plan.kernels[node.name]
    chain, result = _fused_output(ctx, node)
    weight, bias = _folded_float_weights(node, chain)
    low, high = _activation_bounds(chain)
    operand, lead, depth, _ = _dense_operand(ctx, node, 1, integer=False)
    var = ctx.emit_te(node, blocked_float.dense, operand,
                      constant(packing.pack_dense_float(weight, depth, kernel.lanes)),
                      constant(packing.per_channel(bias, kernel.lanes, 0, np.float32)), low=low, high=high,
                      schedule=_kernel_schedule(ctx, kernel))
    ctx.exprs[result.name] = _slice_channels(ctx, var, lead, packing.round_up(weight.shape[0], kernel.lanes),
                                             weight.shape[0])


def lower_add(ctx: Lowering, node: Node, attrs: dict):
    chain, result = _fused_output(ctx, node)
    low, high = _activation_bounds(chain)
    a_expr, layout = ctx.blocked(node.inputs[0])
    b_expr, _ = ctx.blocked(node.inputs[1], layout.block)
    var = ctx.emit_te(node, blocked_float.add, a_expr, b_expr, low=low, high=high,
                      schedule=schedule_elementwise)
    ctx.set_blocked(result, var, layout)


def lower_clamp(ctx: Lowering, node: Node, attrs: dict):
    expr, layout = ctx.blocked(node.inputs[0])
    low, high = _activation_bounds([node])
    var = ctx.emit_te(node, blocked_float.clamp, expr, low=low, high=high, schedule=schedule_elementwise)
    ctx.set_blocked(node.output, var, layout)


def lower_avg_pool(ctx: Lowering, node: Node, attrs: dict):
    expr, layout = ctx.blocked(node.inputs[0])
    geometry = pool_geometry(node, attrs)
    counts = _counts(node, attrs, geometry).astype(np.float32)
    var = ctx.emit_te(node, blocked_float.average_pool, expr, constant(counts),
                      out_shape=_shape(layout, node.output), kernel_size=geometry["kernel_size"],
                      stride=geometry["stride"], padding=geometry["padding"], schedule=schedule_pool)
    ctx.set_blocked(node.output, var, layout)


def lower_mean(ctx: Lowering, node: Node, attrs: dict):
    """mean over H and W, or adaptive average pooling to 1x1."""
    expr, layout = ctx.blocked(node.inputs[0])
    flat = node.op == "mean" and not attrs["keepdim"]
    var = ctx.emit_te(node, blocked_float.mean, expr, schedule=schedule_pool)
    ctx.set_blocked(node.output, var, dataclasses.replace(layout, flat=flat))


BLOCKED_LOWERINGS = {
    "qconv2d": lower_qconv, "qlinear": lower_qlinear, "quantize": lower_quantize,
    "dequantize": lower_dequantize, "qadd": lower_qadd, "requantize": lower_requantize,
    "qmax_pool2d": lower_max_pool, "qavg_pool2d": lower_qavg_pool, "qmean": lower_qmean,
    "flatten": lower_flatten, "reshape": lower_flatten,
    "conv2d": lower_conv, "linear": lower_linear, "add": lower_add, "relu": lower_clamp,
    "clamp": lower_clamp, "max_pool2d": lower_max_pool, "avg_pool2d": lower_avg_pool,
    "adaptive_avg_pool2d": lower_mean, "mean": lower_mean,
}
