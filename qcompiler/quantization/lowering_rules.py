"""The rules of integer lowering for accumulating and elementwise ops, and the pieces every
rule shares (pooling and data movement are in `qcompiler.quantization.lowering_rules_layout`; the
table from op to rule is `qcompiler.quantization.lowering.RULES`).

A rule takes the lowering state (`qcompiler.quantization.lowering_state.LoweringState`) and an
old node. It either emits the integer op(s)
for the node, marks the relu/clamp chain and fake_quant it folded in as consumed,
and returns None; or it emits nothing and returns why the node has no integer
form here (the driver then falls back to float, or refuses in strict mode).
Numbers come from `qcompiler.numerics.integer_params`; the op semantics are in
`qcompiler.ir.integer_ops` and `docs/integer-spec.md`.
"""

from __future__ import annotations

import math
from copy import deepcopy

import numpy as np
import torch

from qcompiler.errors import QuantizationError
from qcompiler.ir import Node, QParams, Value
from qcompiler.ir.edit import layer_bias, optional_input, single_user_chain
from qcompiler.ir.ops import FUSABLE_ACTIVATIONS, ops_where, run_op
from qcompiler.numerics.fixed_point import quantize_multiplier
from qcompiler.numerics.integer_params import (
    add_multipliers,
    fused_clamp,
    lookup_table,
    quantize_bias,
    weighted_multipliers,
)
from qcompiler.numerics.quant import fake_quantize, quantize
from qcompiler.quantization.lowering_rules_low_bit import low_bit_layer
from qcompiler.quantization.lowering_state import LoweringState, fake_quant_qparams, integer_dtype

# The integer ops that end in a requantization (spec section 3: round half up; lookups,
# embeddings and quantize do not): the op table's `requantizing` integer ops.
_REQUANTIZING_INTEGER_OPS = ops_where(category="integer", requantizing=True)


# ---- shared pieces ---------------------------------------------------------------------------


def fused_chain(state: LoweringState, value: Value) -> tuple[list[Node], Node] | None:
    """The relu/clamp nodes that follow `value` one after the other, each the only user of the
    value before it, ending in the fake_quant that quantizes the result; None if there is none."""
    chain, last = single_user_chain(state.old, value, lambda user: user.op in FUSABLE_ACTIVATIONS)
    if last in state.old.outputs or len(last.users) != 1:
        return None
    user = last.users[0]
    return (chain, user) if user.op == "fake_quant" and user.inputs[0] is last else None


def _bounds(activations: list[Node]) -> list[tuple]:
    return [(0.0, None) if a.op == "relu" else (a.attrs.get("min"), a.attrs.get("max"))
            for a in activations]


def output_attrs(qparams: QParams, activations: list[Node], where: str) -> dict:
    """output_zero_point / output_min / output_max / output_dtype with the activations folded
    into the clamp (spec section 4)."""
    scale, zero_point = float(qparams.scale[0]), int(qparams.zero_point[0])
    low, high = fused_clamp(qparams.qmin, qparams.qmax, scale, zero_point, _bounds(activations))
    return {"output_zero_point": zero_point, "output_min": low, "output_max": high,
            "output_dtype": integer_dtype(qparams, where)}


def multiplier(real: float, node: Node) -> tuple[int, int]:
    """quantize_multiplier, with its refusal turned into an error naming the node."""
    try:
        return quantize_multiplier(real)
    except ValueError as error:
        raise QuantizationError(f"{node.describe()}: {error}") from None


def finish(state: LoweringState, node: Node, chain: list[Node], fake_quant: Node, result: Value) -> None:
    state.consume([*chain, fake_quant])
    state.set_int(fake_quant.output, result, fake_quant_qparams(fake_quant))
    check_rounding(state, fake_quant, result.producer.op if result.producer is not None else "")


def check_rounding(state: LoweringState, fake_quant: Node, integer_op: str) -> None:
    """Note a fake_quant whose `rounding` is not the rule of the integer op that computes its
    value: a float64 simulation would then round that point differently (rarely: at ties)."""
    if integer_op == "qconcat":  # copies (its differing inputs were requantized before it)
        return
    expected = "half_up" if integer_op in _REQUANTIZING_INTEGER_OPS else "half_to_even"
    if fake_quant.attrs.get("rounding", "half_to_even") != expected:
        state.notes.append(f"{fake_quant.describe()} has rounding="
                              f"{fake_quant.attrs.get('rounding', 'half_to_even')!r} but its value "
                              f"comes from {integer_op} ({expected}); re-run insert_fake_quant for a "
                              "float64 simulation that rounds as the integer path does")


def quantized_output(state: LoweringState, node: Node):
    """(chain, fake_quant, output qparams) after `node`, or a reason string."""
    found = fused_chain(state, node.output) if len(node.outputs) == 1 else None
    if found is None:
        return "its output is not quantized (no fake_quant follows it, after relu/clamp)"
    chain, fake_quant = found
    qparams = fake_quant_qparams(fake_quant)
    if qparams.axis is not None:
        return "its output is quantized per channel; activations are per tensor"
    return chain, fake_quant, qparams


def int_inputs(state: LoweringState, node: Node, indices) -> list[Value] | str:
    values = []
    for index in indices:
        integer = state.as_int(node.inputs[index])
        if integer is None:
            return f"its input %{node.inputs[index].name} is not quantized"
        if integer.qparams.axis is not None:
            return f"its input %{node.inputs[index].name} is quantized per channel"
        values.append(integer)
    return values


def quantized_operands(state: LoweringState, node: Node, indices):
    """(integer inputs at `indices`, (chain, fake_quant, output qparams)) of a node whose
    operands and output are quantized per tensor, or the reason string of the first that is
    not (`int_inputs`, then `quantized_output`)."""
    inputs = int_inputs(state, node, indices)
    if isinstance(inputs, str):
        return inputs
    found = quantized_output(state, node)
    if isinstance(found, str):
        return found
    return inputs, found


def scale_of(value: Value) -> float:
    return float(value.qparams.scale[0])


def zero_point_of(value: Value) -> int:
    return int(value.qparams.zero_point[0])


def emit_requantize(state: LoweringState, integer: Value, qparams: QParams, activations: list[Node],
                    name: str, node: Node, real_multiplier: float | None = None) -> Value:
    """requantize `integer` to `qparams` (M = s_in / s_out unless given), clamps folded in;
    `node` is the old node it stands for (for messages and the source location)."""
    real = real_multiplier if real_multiplier is not None else \
        float(np.float64(scale_of(integer)) / np.float64(qparams.scale[0]))
    m0, shift = multiplier(real, node)
    attrs = {"input_zero_point": zero_point_of(integer), "multiplier": m0, "shift": shift,
             **output_attrs(qparams, activations, node.describe())}
    result = state.emit("requantize", [integer], attrs, name, node.source).output
    result.qparams = qparams
    return result


# ---- accumulating ops -------------------------------------------------------------------------


def lower_weighted(state: LoweringState, node: Node):
    inputs = int_inputs(state, node, [0])
    if isinstance(inputs, str):
        return inputs
    x = inputs[0]
    weight_fq = node.inputs[1].producer
    if weight_fq is None or weight_fq.op != "fake_quant" or not weight_fq.inputs[0].is_constant:
        return "its weight is not a quantized constant"
    bias = layer_bias(node)
    if bias is not None and not bias.is_constant:
        return "its bias is not a constant"
    found = quantized_output(state, node)
    if isinstance(found, str):
        return found
    chain, fake_quant, out_q = found
    w_q = fake_quant_qparams(weight_fq)
    if (w_q.zero_point != 0).any():
        return "its weight is quantized asymmetrically; integer ops need zero_point 0 (spec section 1)"
    if w_q.axis not in (None, 0):
        return f"its weight is quantized along axis {w_q.axis}, not the output channels"
    _check_target(state.target, node, x.qparams, w_q)
    _check_bias_grid(node, x, w_q)
    weight = weight_fq.inputs[0].data
    channels = weight.shape[0]
    weight_scales = np.broadcast_to(w_q.scale, (channels,))
    weight_q = quantize(weight, w_q.scale, w_q.zero_point, w_q.qmin, w_q.qmax, w_q.axis)
    bias_q, saturated = quantize_bias(None if bias is None else bias.data, scale_of(x), weight_scales,
                                      channels)
    if saturated:
        state.notes.append(f"{node.describe()}: {saturated} bias value(s) saturated to int32")
    try:
        m0, shift = weighted_multipliers(scale_of(x), weight_scales, float(out_q.scale[0]))
    except ValueError as error:
        raise QuantizationError(f"{node.describe()}: {error}") from None
    name = node.name
    op, stored, attrs = f"q{node.op}", state.constant(
        f"{name}.weight_q", weight_q, integer_dtype(w_q, weight_fq.describe())), deepcopy(node.attrs)
    special = low_bit_layer(node, x, weight, weight_q)  # binary networks: spec section 13
    if special is not None:
        op, stored = special.op, state.constant(f"{name}.{special.suffix}", special.weight, special.dtype)
        attrs.update(special.attrs)
    constants = [stored,
                 state.constant(f"{name}.bias_q", bias_q, "i32"),
                 state.constant(f"{name}.multiplier", m0, "i32"),
                 state.constant(f"{name}.shift", shift, "i32")]
    attrs.update(input_zero_point=zero_point_of(x), **output_attrs(out_q, chain, node.describe()))
    result = state.emit(op, [x, *constants], attrs, name, node.source).output
    finish(state, node, chain, fake_quant, result)
    return None


def _check_bias_grid(node: Node, x: Value, w_q: QParams) -> None:
    """A fake_quant_bias rounds the bias with the scales it reads; the int32 bias is rounded
    with the input's and weight's qparams. They must be the same numbers (spec section 1)."""
    bias = optional_input(node, 2)
    if bias is None or bias.producer is None or bias.producer.op != "fake_quant_bias":
        return
    input_scale, weight_scale = (v.data for v in bias.producer.inputs[1:])
    if not (np.array_equal(np.asarray(input_scale).reshape(-1), x.qparams.scale.reshape(-1))
            and np.array_equal(np.asarray(weight_scale).reshape(-1), np.asarray(w_q.scale).reshape(-1))):
        raise QuantizationError(
            f"{bias.producer.describe()} rounds the bias of {node.describe()} with scales that are "
            "not those of the layer's input and weight, so simulation and the int32 bias would "
            "differ; re-run insert_fake_quant "
            "(qcompiler.quantization.quantizers.fake_quant_problems explains)")


def _check_target(target: str, node: Node, x_q: QParams, w_q: QParams) -> None:
    """Operand ranges of spec section 8."""
    if target == "x86":
        if x_q.signed or x_q.bits > 8:
            raise QuantizationError(
                f"{node.describe()}: target x86 needs uint8 activations into conv/linear "
                f"(vpmaddubsw multiplies u8 by s8), but its input is {'int' if x_q.signed else 'uint'}"
                f"{x_q.bits}; quantize with QuantConfig(activation=QScheme(8, signed=False))")
        if w_q.qmin < -64 or w_q.qmax > 63:
            raise QuantizationError(
                f"{node.describe()}: target x86 needs weights in [-64, 63] so that vpmaddubsw's "
                f"int16 pair sums cannot saturate, but they span [{w_q.qmin}, {w_q.qmax}]; quantize "
                "weights with QScheme(7, symmetric=True, per_channel=True, narrow_range=True)")
    elif target == "aarch64" and (not x_q.signed or x_q.bits > 8):
        raise QuantizationError(
            f"{node.describe()}: target aarch64 needs int8 activations into conv/linear (sdot "
            f"multiplies s8 by s8), but its input is {'int' if x_q.signed else 'uint'}{x_q.bits}; "
            "quantize with QuantConfig(activation=QScheme(8, signed=True))")


def lower_matmul(state: LoweringState, node: Node):
    return _lower_product(state, node, "qmatmul")


def lower_add(state: LoweringState, node: Node):
    found = quantized_operands(state, node, [0, 1])
    if isinstance(found, str):
        return found
    (a, b), (chain, fake_quant, out_q) = found
    try:
        ka, kb, shift = add_multipliers(scale_of(a), scale_of(b), float(out_q.scale[0]),
                                        subtract=node.op == "sub")
    except ValueError as error:
        raise QuantizationError(f"{node.describe()}: {error}") from None
    attrs = {"a_zero_point": zero_point_of(a), "a_multiplier": ka, "b_zero_point": zero_point_of(b),
             "b_multiplier": kb, "shift": shift, **output_attrs(out_q, chain, node.describe())}
    result = state.emit("qadd", [a, b], attrs, node.name, node.source).output
    finish(state, node, chain, fake_quant, result)


def lower_mul(state: LoweringState, node: Node):
    return _lower_product(state, node, "qmul")


def _lower_product(state: LoweringState, node: Node, integer_op: str):
    """matmul and elementwise mul: (a - za)(b - zb) accumulated, requantized by s_a s_b / s_out."""
    found = quantized_operands(state, node, [0, 1])
    if isinstance(found, str):
        return found
    (a, b), (chain, fake_quant, out_q) = found
    m0, shift = multiplier(float(np.float64(scale_of(a)) * scale_of(b) / np.float64(out_q.scale[0])), node)
    attrs = {"a_zero_point": zero_point_of(a), "b_zero_point": zero_point_of(b), "multiplier": m0,
             "shift": shift, **output_attrs(out_q, chain, node.describe())}
    result = state.emit(integer_op, [a, b], attrs, node.name, node.source).output
    finish(state, node, chain, fake_quant, result)
    return None


def _constant_divisor(value: Value) -> float | None:
    """The one real number a constant divisor holds, as the simulation sees it (fake-quantized)."""
    producer = value.producer
    if value.is_constant:
        data = value.data
    elif producer is not None and producer.op == "fake_quant" and producer.inputs[0].is_constant:
        q = fake_quant_qparams(producer)
        data = fake_quantize(producer.inputs[0].data, q.scale, q.zero_point, q.qmin, q.qmax, q.axis)
    else:
        return None
    flat = np.asarray(data, np.float32).reshape(-1)
    return float(flat[0]) if flat.size and (flat == flat[0]).all() else None


def lower_div(state: LoweringState, node: Node):
    """x / c for a constant scalar c > 0: a requantize with M = s_x / (c * s_out). A refinement
    of the spec (section 5 has no div): one rounding, as for every requantization."""
    inputs = int_inputs(state, node, [0])
    if isinstance(inputs, str):
        return inputs
    divisor = _constant_divisor(node.inputs[1])
    if divisor is None or not divisor > 0 or not math.isfinite(divisor):
        return "only division by a positive constant scalar has an integer form"
    found = quantized_output(state, node)
    if isinstance(found, str):
        return found
    chain, fake_quant, out_q = found
    real = float(np.float64(scale_of(inputs[0])) / (np.float64(divisor) * np.float64(out_q.scale[0])))
    result = emit_requantize(state, inputs[0], out_q, chain, node.name, node, real)
    finish(state, node, chain, fake_quant, result)


def lower_activation(state: LoweringState, node: Node):
    """A relu/clamp that was not fused into a producer: requantize with its clamp."""
    found = quantized_operands(state, node, [0])
    if isinstance(found, str):
        return found
    inputs, (chain, fake_quant, out_q) = found
    result = emit_requantize(state, inputs[0], out_q, [node, *chain], node.name, node)
    finish(state, node, chain, fake_quant, result)


def lower_lookup(state: LoweringState, node: Node):
    """An elementwise function of one 8-bit input (its other inputs constants, e.g. PReLU's
    slopes) as a table; slopes per channel (along axis 1) give one table row per channel."""
    inputs = int_inputs(state, node, [0])
    if isinstance(inputs, str):
        return inputs
    x = inputs[0]
    if x.qparams.bits > 8:
        return f"its input is {x.qparams.bits}-bit; lookup tables are built for up to 8 bits"
    extra = [v for v in node.inputs[1:] if v is not None]
    if any(not v.is_constant for v in extra):
        return "its parameters (inputs after the first) are not constants"
    channels = max((v.data.size for v in extra), default=1)
    if channels > 1 and (len(x.shape) < 2 or x.shape[1] != channels):
        return f"its {channels} parameters do not run along axis 1 of its input"
    found = quantized_output(state, node)
    if isinstance(found, str):
        return found
    chain, fake_quant, out_q = found
    constants = [torch.from_numpy(v.data) for v in extra]

    def function(real: np.ndarray) -> np.ndarray:
        # One row of levels per channel, laid out [1, C, levels] so that per-channel
        # parameters apply along axis 1 as they do in the graph.
        tensor = torch.from_numpy(real).reshape(1, 1, -1).expand(1, channels, -1)
        tensor = run_op(node.op, [tensor, *constants], node.attrs)[0]
        for step in chain:
            tensor = run_op(step.op, [tensor], step.attrs)[0]
        return tensor.reshape(channels, -1).numpy() if channels > 1 else tensor.reshape(-1).numpy()

    table = lookup_table(function, scale_of(x), zero_point_of(x), (x.qparams.qmin, x.qparams.qmax),
                         float(out_q.scale[0]), int(out_q.zero_point[0]), (out_q.qmin, out_q.qmax))
    table = state.constant(f"{node.name}.table", table, integer_dtype(out_q, node.describe()))
    attrs = {"input_min": x.qparams.qmin, **({"axis": 1} if channels > 1 else {})}
    result = state.emit("qlookup", [x, table], attrs, node.name, node.source).output
    finish(state, node, chain, fake_quant, result)
