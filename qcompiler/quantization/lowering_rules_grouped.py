"""The lowering rule of a linear whose weight is group-wise low-bit (`fake_quant_grouped`,
from `qc.passes.quantize_weights_grouped`): one `qlinear_grouped` (docs/integer-spec.md
section 14, numbers from `qcompiler.numerics.grouped_integer`).

    %w.q = fake_quant_grouped(%w, %w.q.scale, %w.q.zero_point) {bits=4, group_size=128}
    %y = linear(%x.fq, %w.q, %b)            ->   %y = qlinear_grouped(%x.q, %y.weight_q4,
    %y.fq = fake_quant(%y, ...)                        %y.zero_point, %y.multiplier, %y.bias_q,
                                                       %y.shift) {group_size=128, ...}

The codes are the ones the simulation rounds to (`grouped_quant.quantize_grouped` on the
stored weight and scales), packed two a byte; the float bias joins each row's fixed point
as an int64 (no `fake_quant_bias`: the simulation adds the float bias, and the fixed point
carries it to within 2**-31 of a step). Inputs may be 8- or 16-bit; any other linear goes
to `lowering_rules.lower_weighted`.
"""

from __future__ import annotations

import numpy as np

from qcompiler.errors import QuantizationError
from qcompiler.ir import Node
from qcompiler.ir.edit import optional_input
from qcompiler.numerics import grouped_integer as gi
from qcompiler.numerics import grouped_quant as gq
from qcompiler.quantization import lowering_rules as compute
from qcompiler.quantization.lowering_state import LoweringState


def lower_linear(state: LoweringState, node: Node):
    """`qlinear_grouped` for a group-wise weight, else the ordinary weighted rule."""
    producer = node.inputs[1].producer
    if producer is None or producer.op != "fake_quant_grouped":
        return compute.lower_weighted(state, node)
    return lower_grouped(state, node, producer)


def lower_grouped(state: LoweringState, node: Node, quantizer: Node):
    inputs = compute.int_inputs(state, node, [0])
    if isinstance(inputs, str):
        return inputs
    x = inputs[0]
    if not all(value.is_constant for value in quantizer.inputs):
        return "its group-wise weight, scales or zero points are not constants"
    bias = optional_input(node, 2)
    if bias is not None and not bias.is_constant:
        return "its bias is not a constant"
    bits, group_size = int(quantizer.attrs.get("bits", 4)), int(quantizer.attrs["group_size"])
    if bits > 4:
        return f"its weight is {bits}-bit group-wise; qlinear_grouped packs codes of up to 4 bits"
    found = compute.quantized_output(state, node)
    if isinstance(found, str):
        return found
    chain, fake_quant, out_q = found
    weight, scales = quantizer.inputs[0].data, quantizer.inputs[1].data
    zeros = quantizer.inputs[2].data if len(quantizer.inputs) > 2 else None
    codes, zeros = gi.unsigned_codes(gq.quantize_grouped(weight, scales, bits, group_size, zeros),
                                     zeros, bits, group_size)
    offsets = np.abs(codes.astype(np.int64) - np.repeat(zeros.astype(np.int64), group_size, axis=1))
    code_offsets = offsets.reshape(codes.shape[0], -1, group_size).max(axis=2)
    x_q = x.qparams
    input_offset = max(abs(x_q.qmin - compute.zero_point_of(x)), abs(x_q.qmax - compute.zero_point_of(x)))
    try:
        multipliers, bias_q, shifts, lowered = gi.group_multipliers(
            compute.scale_of(x), scales, float(out_q.scale[0]), None if bias is None else bias.data,
            input_offset=input_offset, code_offsets=code_offsets, group_size=group_size)
    except ValueError as error:
        raise QuantizationError(f"{node.describe()}: {error}") from None
    if lowered:
        state.notes.append(f"{node.describe()}: {lowered} output channel(s) use a coarser fixed "
                           "point so that the int64 accumulator cannot overflow")
    name = node.name
    constants = [state.constant(f"{name}.weight_q4", gi.pack_int4(codes), "u8"),
                 state.constant(f"{name}.zero_point", zeros, "u8"),
                 state.constant(f"{name}.multiplier", multipliers, "i32"),
                 state.constant(f"{name}.bias_q", bias_q, "i64"),
                 state.constant(f"{name}.shift", shifts, "i32")]
    attrs = {"group_size": group_size, "input_zero_point": compute.zero_point_of(x),
             **compute.output_attrs(out_q, chain, node.describe())}
    result = state.emit("qlinear_grouped", [x, *constants], attrs, name, node.source).output
    compute.finish(state, node, chain, fake_quant, result)
    state.consume([quantizer])
    return None
