"""Integer lowering rules for pooling, data movement, concat and embedding (the accumulating
and elementwise rules are in `qcompiler.quantization.lowering_rules`; the table of both is
`qcompiler.quantization.lowering.RULES`).

Ops that only move or select values run on the integers and keep their input's
quantization parameters (spec section 6); average pooling sums zero-point-corrected
integers and requantizes with a multiplier chosen per window count.
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np

from qcompiler.errors import QuantizationError
from qcompiler.ir import Dim, Node
from qcompiler.numerics.integer_params import average_multipliers
from qcompiler.numerics.quant import quantize
from qcompiler.quantization.lowering_rules import (
    emit_requantize,
    finish,
    fused_chain,
    int_inputs,
    multiplier,
    output_attrs,
    quantized_operands,
    quantized_output,
    scale_of,
    zero_point_of,
)
from qcompiler.quantization.lowering_state import LoweringState, fake_quant_qparams, integer_dtype


def _positive_dims(dims, rank: int) -> list[int]:
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted(d % rank for d in dims)


def lower_avg_pool(state: LoweringState, node: Node):
    found = quantized_operands(state, node, [0])
    if isinstance(found, str):
        return found
    (x,), (chain, fake_quant, out_q) = found
    attrs = deepcopy(node.attrs)
    _emit_avg_pool(state, node, x, f"q{node.op}", attrs, chain, fake_quant, out_q)
    return None


def _emit_avg_pool(state: LoweringState, node, x, op, attrs, chain, fake_quant, out_q) -> None:
    windows = int(np.prod(attrs["kernel_size"]))
    try:
        multipliers, shifts = average_multipliers(scale_of(x), float(out_q.scale[0]), windows)
    except ValueError as error:
        raise QuantizationError(f"{node.describe()}: {error}") from None
    attrs.update(input_zero_point=zero_point_of(x), multipliers=multipliers, shifts=shifts,
                 **output_attrs(out_q, chain, node.describe()))
    result = state.emit(op, [x], attrs, node.name, node.source).output
    finish(state, node, chain, fake_quant, result)


def _emit_mean(state: LoweringState, node, x, dims, keepdim, chain, fake_quant, out_q,
               average: bool = True) -> None:
    """qmean over `dims`: M = s_in / (s_out * count) for a mean, s_in / s_out for a sum."""
    count = int(np.prod([x.shape[d] for d in dims])) if average else 1
    m0, shift = multiplier(float(np.float64(scale_of(x)) / (np.float64(out_q.scale[0]) * count)), node)
    attrs = {"dim": dims, "keepdim": keepdim, "input_zero_point": zero_point_of(x), "multiplier": m0,
             "shift": shift, **output_attrs(out_q, chain, node.describe())}
    result = state.emit("qmean", [x], attrs, node.name, node.source).output
    finish(state, node, chain, fake_quant, result)


def lower_mean(state: LoweringState, node: Node):
    """mean, and sum (the same accumulation without the division by the count)."""
    found = quantized_operands(state, node, [0])
    if isinstance(found, str):
        return found
    (x,), (chain, fake_quant, out_q) = found
    dims = _positive_dims(node.attrs["dim"], len(x.shape))
    if any(isinstance(x.shape[d], Dim) for d in dims):
        return (f"it averages over the batch dimension ({x.type_str}), whose size the integer "
                "multiplier would have to fix")
    _emit_mean(state, node, x, dims, bool(node.attrs.get("keepdim", False)), chain, fake_quant,
               out_q, average=node.op == "mean")
    return None


def lower_adaptive_avg_pool(state: LoweringState, node: Node):
    """Output size 1: a global mean (qmean). Output sizes that divide the input: fixed windows
    (qavg_pool). Other sizes have windows of varying extent: no integer rule here."""
    found = quantized_operands(state, node, [0])
    if isinstance(found, str):
        return found
    (x,), (chain, fake_quant, out_q) = found
    spatial = 2 if node.op == "adaptive_avg_pool2d" else 1
    sizes = node.attrs["output_size"]
    sizes = [sizes] * spatial if isinstance(sizes, int) else list(sizes)
    in_sizes = list(x.shape[-spatial:])
    sizes = [i if s is None else s for s, i in zip(sizes, in_sizes, strict=True)]
    if all(s == 1 for s in sizes):
        dims = list(range(len(x.shape) - spatial, len(x.shape)))
        _emit_mean(state, node, x, dims, True, chain, fake_quant, out_q)
        return None
    if any(i % s for i, s in zip(in_sizes, sizes, strict=True)):
        return f"adaptive pooling from {in_sizes} to {sizes} has windows of varying size"
    kernel = [i // s for i, s in zip(in_sizes, sizes, strict=True)]
    attrs = {"kernel_size": kernel, "stride": kernel, "padding": [0] * spatial, "ceil_mode": False,
             "count_include_pad": True}
    _emit_avg_pool(state, node, x, f"qavg_pool{spatial}d", attrs, chain, fake_quant, out_q)
    return None


def lower_moving(state: LoweringState, node: Node):
    """reshape, flatten, permute, transpose, slice, split, max pooling, padding with the real 0:
    the same op on the integers, qparams unchanged."""
    inputs = int_inputs(state, node, [0])
    if isinstance(inputs, str):
        return inputs
    x = inputs[0]
    op, attrs = node.op, deepcopy(node.attrs)
    if op in ("max_pool2d", "max_pool1d"):
        op = f"q{op}"
    elif op == "pad":
        mode = attrs.get("mode", "constant")
        if mode == "constant":
            if attrs.get("value", 0.0) != 0:
                return "padding with a nonzero value is not value-moving"
            attrs["value"] = float(zero_point_of(x))  # the integer of real 0 (spec section 6)
    new = state.new.create_node(op, [x], [v.name for v in node.outputs],
                                   [(v.shape, x.dtype) for v in node.outputs], attrs,
                                   source=node.source)
    for old, value in zip(node.outputs, new.outputs, strict=True):
        state.set_int(old, value, x.qparams)
    return None


def lower_concat(state: LoweringState, node: Node):
    """Inputs sharing one (scale, zero point) concatenate as bytes; otherwise each differing
    input is requantized to the parameters of the fake_quant after the concat (spec 5)."""
    inputs = int_inputs(state, node, range(len(node.inputs)))
    if isinstance(inputs, str):
        return inputs
    if all(v.qparams == inputs[0].qparams for v in inputs):
        result = state.emit("qconcat", inputs, deepcopy(node.attrs), node.name, node.source).output
        state.set_int(node.output, result, inputs[0].qparams)
        return None
    found = fused_chain(state, node.output)
    if found is None or found[0]:
        return "its inputs have different quantization parameters and no fake_quant follows it"
    fake_quant = found[1]
    out_q = fake_quant_qparams(fake_quant)
    aligned = [value if value.qparams == out_q else
               emit_requantize(state, value, out_q, [], f"{node.name}.requantize{index}", node)
               for index, value in enumerate(inputs)]
    result = state.emit("qconcat", aligned, deepcopy(node.attrs), node.name, node.source).output
    finish(state, node, [], fake_quant, result)
    return None


def lower_embedding(state: LoweringState, node: Node):
    """embedding(ids, table) followed by a per-tensor fake_quant: gather from the table quantized
    at compile time (fake-quantizing elementwise commutes with the gather)."""
    table = node.inputs[1]
    if not table.is_constant:
        return "its table is not a constant"
    found = quantized_output(state, node)
    if isinstance(found, str):
        return found
    chain, fake_quant, out_q = found
    if chain:
        return "an activation follows the embedding"
    data = quantize(table.data, out_q.scale, out_q.zero_point, out_q.qmin, out_q.qmax)
    table_q = state.constant(f"{table.name}.q", data, integer_dtype(out_q, node.describe()))
    result = state.emit("embedding", [state.as_float(node.inputs[0]), table_q], deepcopy(node.attrs),
                           node.name, node.source).output
    finish(state, node, chain, fake_quant, result)
    return None
