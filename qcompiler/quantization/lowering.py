"""The integer lowering driver: apply the lowering rules to a calibrated fake-quant graph.

`lower(graph, target=..., strict=...)` walks the old graph once, in order, with a
`LoweringState` (`qcompiler.quantization.lowering_state`): graph inputs become float
inputs of the new graph; each node is lowered by its rule in `RULES` (the rules are in
`qcompiler.quantization.lowering_rules` and `lowering_rules_layout`), or, when it has
none or its rule says why not, falls back to float between `dequantize` and `quantize`
(refused in strict mode); fake_quant nodes no rule consumed become `quantize` (at float
values) or `requantize`; graph outputs are dequantized. Last, the accumulator overflow
check of spec section 7. What the result preserves is written in the pass that wraps this,
`qcompiler.passes.lower_to_integer`.
"""

from __future__ import annotations

import numpy as np

from qcompiler.errors import IntegerOnlyError, QuantizationError
from qcompiler.ir import FLOAT_DTYPES, Graph, Node, Value
from qcompiler.ir.edit import moves_values_only
from qcompiler.ir.ops import LOOKUP_OPS, OPS, ops_where
from qcompiler.numerics.integer_params import largest_offset, worst_case_accumulator
from qcompiler.quantization import lowering_rules as compute
from qcompiler.quantization import lowering_rules_grouped as grouped
from qcompiler.quantization import lowering_rules_ibert as ibert_rules
from qcompiler.quantization import lowering_rules_layout as layout
from qcompiler.quantization import lowering_rules_masks as masks
from qcompiler.quantization.lowering_rules import check_rounding, emit_requantize
from qcompiler.quantization.lowering_rules_low_bit import LOW_BIT_LAYER_OPS, integer_weight
from qcompiler.quantization.lowering_state import LoweringState, Rule, fake_quant_qparams
from qcompiler.quantization.quantizers import require_calibrated

# The rewrite rules, as data: float op -> rule(state, node) -> None (lowered) or why not.
RULES: dict[str, Rule] = {
    "conv2d": compute.lower_weighted, "conv1d": compute.lower_weighted,
    "linear": grouped.lower_linear, "matmul": compute.lower_matmul,
    "add": compute.lower_add, "sub": compute.lower_add, "mul": compute.lower_mul,
    "div": compute.lower_div, "relu": compute.lower_activation, "clamp": compute.lower_activation,
    **{op: compute.lower_lookup for op in LOOKUP_OPS},
    "avg_pool2d": layout.lower_avg_pool, "avg_pool1d": layout.lower_avg_pool,
    "adaptive_avg_pool2d": layout.lower_adaptive_avg_pool,
    "adaptive_avg_pool1d": layout.lower_adaptive_avg_pool, "mean": layout.lower_mean,
    "sum": layout.lower_mean,
    **{op: layout.lower_moving for op in ("reshape", "flatten", "permute", "transpose", "slice",
                                          "split", "max_pool2d", "max_pool1d", "pad", "expand",
                                          "amax", "amin")},
    "concat": layout.lower_concat, "embedding": layout.lower_embedding,
    "cast": masks.lower_cast, **{op: masks.lower_compare for op in ops_where(category="compare")},
    "where": masks.lower_where, "argmax": masks.lower_argmax,
}
# What to do about a float op without a rule, where something can be done.
_HINTS = {
    "batch_norm": "; a batch norm that cannot fold is a depthwise 1x1 conv: run "
                  "qc.passes.convert_batchnorm_to_conv before insert_fake_quant (qc.quantize does)",
    "resize": "; nearest resizing moves values and stays integer (mode='nearest')",
    **{op: "; lower_to_integer(ibert=True) makes it integer (I-BERT's approximation, spec "
           "section 15)" for op in ibert_rules.RULES},
}
# Float ops without a rule: they always fall back to float (softmax, layer_norm, ...).
FALLBACK_OPS = frozenset(op for op, spec in OPS.items()
                         if spec.category not in ("quant", "integer") and op not in RULES)


def check_calibrated(graph: Graph) -> bool:
    """Every fake_quant has a finite, positive scale (errors name the node); False if there
    are no fake_quants at all."""
    require_calibrated(graph, "lower_to_integer")
    fake_quants = [node for node in graph if node.op == "fake_quant"]
    for node in fake_quants:
        fake_quant_qparams(node)
    return bool(fake_quants)


def lower(graph: Graph, *, target: str = "generic", strict: bool = True, ibert: bool = False
          ) -> LoweringState:
    """Lower a calibrated fake-quant graph (see the module docstring); the finished state's
    `new` is the integer graph (verified) and its `notes` say what a reader should know.
    `ibert`: softmax and layer_norm become I-BERT's integer approximations
    (`lowering_rules_ibert`) instead of float fall backs."""
    state = LoweringState(graph, target, strict, ibert)
    for value in graph.inputs:
        state.float_of[id(value)] = state.new.add_input(value.name, value.shape, value.dtype)
    for node in graph:
        if id(node) in state.consumed:
            continue
        if node.op == "fake_quant":
            _lower_fake_quant(state, node)
            continue
        if node.op in ("fake_quant_bias", "fake_quant_grouped"):
            continue  # read by its layer's rule (int32 bias, int4 codes), or made by as_float
        rule = RULES.get(node.op) or (ibert_rules.RULES.get(node.op) if state.ibert else None)
        reason = rule(state, node) if rule is not None else \
            f"{node.op} has no integer form (docs/integer-spec.md, section 9)" + _HINTS.get(node.op, "")
        if reason is not None:
            _fall_back(state, node, reason)
    state.new.outputs = [_output(state, value) for value in graph.outputs]
    state.new.remove_unused_constants()
    _check_overflow(state)
    if state.fallbacks:
        state.notes.append(f"{len(state.fallbacks)} node(s) run in float32 between dequantize "
                           "and quantize: " + "; ".join(state.fallbacks))
    state.new.verify()
    return state


def lower_with_origins(graph: Graph, *, target: str = "generic", strict: bool = True
                       ) -> tuple[LoweringState, dict[str, str]]:
    """`lower`, and for every activation fake_quant of `graph` that became an integer value,
    fake_quant output name -> integer value name (to compare the two layer by layer)."""
    if not check_calibrated(graph):
        raise QuantizationError(f"graph {graph.name} has no fake_quant nodes: quantize it first")
    state = lower(graph, target=target, strict=strict)
    origins = {node.output.name: state.int_of[id(node.output)].name for node in graph
               if node.op == "fake_quant" and not node.inputs[0].is_constant
               and id(node.output) in state.int_of}
    return state, origins


def _output(state: LoweringState, value: Value) -> Value:
    if id(value) in state.float_of or value.dtype not in FLOAT_DTYPES:
        return state.as_float(value)
    integer = state.as_int(value)
    if integer is None:
        return state.as_float(value)
    return state.dequantize(integer, f"{value.name}.dequantize")


def _lower_fake_quant(state: LoweringState, node: Node) -> None:
    """A fake_quant that no rule consumed: quantize a float value, or requantize an integer one."""
    source = node.inputs[0]
    if source.is_constant:
        return  # weights and constant operands: made on demand by as_int / as_float
    qparams = fake_quant_qparams(node)
    if qparams.axis is not None:
        raise QuantizationError(f"{node.describe()} quantizes an activation per channel; "
                                "integer ops take per-tensor activations")
    integer = state.as_int(source)
    if integer is None:  # a float value (graph input or fall back): the boundary quantize
        state.set_int(node.output, state.quantize(state.as_float(source), qparams, node.name,
                                                  node.source), qparams)
        check_rounding(state, node, "quantize")
    elif integer.qparams == qparams:
        state.int_of[id(node.output)] = integer
    else:
        state.set_int(node.output, emit_requantize(state, integer, qparams, [], node.name, node),
                      qparams)
        check_rounding(state, node, "requantize")


def _fall_back(state: LoweringState, node: Node, reason: str) -> None:
    is_float = any(v is not None and v.dtype in FLOAT_DTYPES for v in [*node.inputs, *node.outputs])
    if is_float and state.strict:
        raise IntegerOnlyError(
            f"{node.describe()} cannot be lowered to integer ops: {reason}. Lower with "
            "strict=False to run it in float32 between dequantize and quantize (the integer "
            "interpreter then needs strict=False too)")
    new = state.copy_as_float(node)
    if is_float:
        state.fallbacks.append(f"%{node.name} ({node.op}: {reason})")
    grid = state.as_int(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
    if moves_values_only(node) and grid is not None:
        # Values only moved (e.g. nearest resize): they are still on the input's grid, so
        # quantizing them back is exact and keeps what follows integer.
        for old, value in zip(node.outputs, new.outputs, strict=True):
            state.set_int(old, state.quantize(value, grid.qparams, f"{old.name}.q", node.source),
                          grid.qparams)


# ---- overflow (spec section 7) -----------------------------------------------------------------


def _check_overflow(state: LoweringState) -> None:
    bounds = accumulator_bounds(state.new)
    if not bounds:
        return
    for name, bound in bounds.items():
        if bound >= 1 << 31:
            node = state.new.values[name].producer
            raise QuantizationError(
                f"{node.describe()}: the worst-case int32 accumulator is {bound} "
                f"(2**{np.log2(bound):.2f} >= 2**31), so it could wrap; {_overflow_cause(node)}")
    worst = sorted(bounds.items(), key=lambda item: -item[1])[:3]
    shown = ", ".join(f"%{name} 2**{np.log2(max(bound, 1)):.1f}" for name, bound in worst)
    state.notes.append(f"overflow check (spec section 7): {len(bounds)} accumulating op(s), all "
                       f"below 2**31; largest worst-case accumulators: {shown}")
    for name, bound in bounds.items():
        if bound >= 1 << 30:
            state.notes.append(f"%{name}: worst-case accumulator 2**{np.log2(bound):.2f} leaves "
                               "less than one bit of headroom below 2**31")


def _overflow_cause(node: Node) -> str:
    """Why an accumulator can reach 2**31, and what to do: a bias too large for its grid (a
    near-dead channel), or too many products of too many bits."""
    if node.op in ("qconv2d", "qconv1d", "qlinear") or node.op in LOW_BIT_LAYER_OPS:
        weight, bias = integer_weight(node), node.inputs[2].data.astype(np.int64)
        products = worst_case_accumulator(weight, None, _offset(node.inputs[0]))
        channel = int(np.argmax(np.abs(bias) + products))
        if abs(int(bias[channel])) >= products[channel]:
            return (f"the cause is its int32 bias: channel {channel} holds {int(bias[channel])} "
                    f"(the sum of its products at most {int(products[channel])}), a bias far larger "
                    "than the step s_in * s_w of its weights (a near-dead channel: weights near "
                    "zero, a bias that is not). Calibrate with qc.quantize or "
                    "qcompiler.quantization.calibrate, which widen such channels' weight scale so "
                    "that the bias fits (they then compute their bias alone), or remove the channel")
    return ("the cause is the sum of its products: use fewer weight or activation bits for this "
            "layer (QuantConfig node_overrides) or split it")


def accumulator_bounds(graph: Graph) -> dict[str, int]:
    """Worst-case |int32 accumulator| of every accumulating integer op (spec section 7), by
    node name: from the weights and biases, and the input ranges in the inputs' qparams."""
    bounds = {}
    for node in graph:
        if node.op in ("qconv2d", "qconv1d", "qlinear") or node.op in LOW_BIT_LAYER_OPS:
            x, weight, bias = node.inputs[0], integer_weight(node), node.inputs[2].data
            bound = int(worst_case_accumulator(weight, bias, _offset(x)).max())
        elif node.op == "qmatmul":
            a, b = node.inputs
            bound = a.shape[-1] * _offset(a) * _offset(b)
        elif node.op == "qmul":
            bound = _offset(node.inputs[0]) * _offset(node.inputs[1])
        elif node.op in ("qavg_pool2d", "qavg_pool1d"):
            bound = int(np.prod(node.attrs["kernel_size"])) * _offset(node.inputs[0])
        elif node.op == "qmean":
            dims = node.attrs["dim"]
            count = int(np.prod([node.inputs[0].shape[d] for d in dims]))
            bound = count * _offset(node.inputs[0])
        else:
            continue
        bounds[node.name] = int(bound)
    return bounds


def _offset(value: Value) -> int:
    """The largest |q - zero_point| an integer value can hold (its qparams' range, else its
    dtype's)."""
    q = value.qparams
    if q is not None:
        return largest_offset(q.qmin, q.qmax, int(q.zero_point[0]))
    info = np.iinfo(np.dtype({"u8": np.uint8, "i8": np.int8, "i16": np.int16}[value.dtype]))
    return max(abs(int(info.min)), int(info.max))
