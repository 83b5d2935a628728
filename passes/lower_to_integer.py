"""Lower a calibrated fake-quant graph to integer ops (`docs/integer-spec.md`).

    %x.fq = fake_quant(%x, ...)                     %x.fq = quantize(%x) {scale=.., zero_point=..}
    %w.fq = fake_quant(%w, ...) {axis=0}            %conv = qconv2d(%x.fq, %conv.weight_q, %conv.bias_q,
    %conv = conv2d(%x.fq, %w.fq, %b)         ->                     %conv.multiplier, %conv.shift)
    %relu = relu(%conv)                                     {input_zero_point=.., output_min=z_out, ...}
    %relu.fq = fake_quant(%relu, ...)               %out = dequantize(%conv) {scale=.., zero_point=..}

The result is a new graph (the input is never modified): `quantize` at float
graph inputs, integer ops inside, `dequantize` at float graph outputs. Each rule
(`RULES` below; the rules are in `qcompiler.quantization.lowering_rules` and
`qcompiler.quantization.lowering_rules_layout`) replaces one compute op together with the
relu/clamp chain and the fake_quant that follow it; the weight arithmetic
(multipliers, int32 biases, lookup tables, overflow bounds) is in
`qcompiler.numerics.integer_params`. Value-moving
ops (reshape, permute, slice, split, max pooling, zero padding, concat) run on the
integers and keep their input's quantization parameters. Integer values carry
`qparams`.

Ops without an integer form (softmax, layer_norm, conv_transpose2d, excluded
nodes, ...) fall back to float: `dequantize -> float op -> quantize`. With
`strict=True` (the default) a fallback is an `IntegerOnlyError` naming the node;
with `strict=False` it is reported in `PassResult.notes`.

Requires: every fake_quant calibrated (finite, positive scales), weights quantized
symmetric (zero point 0), activations per tensor, 8-bit or 16-bit signed
activations, and on `target="x86"` uint8 activations and weights in [-64, 63] into
conv/linear, on `target="aarch64"` int8 activations (spec section 8). Refuses a
layer whose worst-case int32 accumulator can reach 2**31 (spec section 7) and
reports the largest bounds. Preserves: the function of the fake-quant graph, whose
`fake_quant_bias` nodes add the int32 bias stored here and whose fake_quant `rounding`
is each integer op's rule: the float64 simulation agrees bit for bit but for the
fixed-point multiplier's 2**-31 (docs/integer-spec.md, section 12); the float32 one, fed
the same integers, within one step at a few elements in a million (float32
accumulation), differences that deep networks can spread
(`qcompiler.backends.simulation_agreement` measures both).
Known limits: nearest resize, conv_transpose2d and ops with float operands of
their own fall back; 16-bit lookup tables are not built (fall back).
References: Jacob et al. 2018 (integer-only inference, sec. 2); the TFLite
quantization spec for the fixed-point multiplier.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import numpy as np

from qcompiler.errors import IntegerOnlyError, QuantizationError
from qcompiler.ir import FLOAT_DTYPES, Graph, Node, QParams, Value
from qcompiler.ir.edit import moves_values_only
from qcompiler.ir.ops import LOOKUP_OPS
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics.integer_params import (
    fake_quantize_bias,
    largest_offset,
    worst_case_accumulator,
)
from qcompiler.numerics.quant import fake_quantize, quantize
from qcompiler.quantization import lowering_rules as compute
from qcompiler.quantization import lowering_rules_layout as layout
from qcompiler.quantization.lowering_rules import (
    check_rounding,
    emit_requantize,
    fake_quant_qparams,
    integer_dtype,
)
from qcompiler.quantization.quantizers import require_calibrated

TARGETS = ("generic", "x86", "aarch64")

# The rewrite rules, as data: float op -> rule(lowering, node) -> None (lowered) or why not.
# Ops absent here (softmax, layer_norm, conv_transpose2d, resize, ...) fall back to float.
RULES = {
    "conv2d": compute.lower_weighted, "conv1d": compute.lower_weighted,
    "linear": compute.lower_weighted, "matmul": compute.lower_matmul,
    "add": compute.lower_add, "sub": compute.lower_add, "mul": compute.lower_mul,
    "div": compute.lower_div, "relu": compute.lower_activation, "clamp": compute.lower_activation,
    **{op: compute.lower_lookup for op in LOOKUP_OPS},
    "avg_pool2d": layout.lower_avg_pool, "avg_pool1d": layout.lower_avg_pool,
    "adaptive_avg_pool2d": layout.lower_adaptive_avg_pool,
    "adaptive_avg_pool1d": layout.lower_adaptive_avg_pool, "mean": layout.lower_mean,
    **{op: layout.lower_moving for op in ("reshape", "flatten", "permute", "transpose", "slice",
                                          "split", "max_pool2d", "max_pool1d", "pad")},
    "concat": layout.lower_concat, "embedding": layout.lower_embedding,
}


@dataclass(frozen=True)
class LowerToInteger:
    """The configured lowering pass (see the module docstring)."""

    target: str = "generic"
    strict: bool = True

    __name__ = "lower_to_integer"

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; valid targets: {', '.join(TARGETS)}")

    def __call__(self, graph: Graph) -> PassResult:
        if not _check_calibrated(graph):
            return PassResult(graph, False, ["no fake_quant nodes: nothing to lower"])
        return _Lowering(graph, self.target, self.strict).run()


def _check_calibrated(graph: Graph) -> bool:
    """Every fake_quant has a finite, positive scale (errors name the node); False if there
    are no fake_quants at all."""
    require_calibrated(graph, "lower_to_integer")
    fake_quants = [node for node in graph if node.op == "fake_quant"]
    for node in fake_quants:
        fake_quant_qparams(node)
    return bool(fake_quants)


def lower_to_integer(graph: Graph | None = None, /, *, target: str = "generic", strict: bool = True):
    """`lower_to_integer(graph)` runs the pass (a PassResult); `lower_to_integer(target=...)`
    returns the configured pass for a Pipeline."""
    configured = LowerToInteger(target, strict)
    return configured if graph is None else configured(graph)


def lower_graph_to_integer(graph: Graph, *, target: str = "generic", strict: bool = True) -> Graph:
    """The public `qc.lower_to_integer`: the integer graph itself (the caller's graph is not
    modified). Use `qc.passes.lower_to_integer` for the notes (fallbacks, overflow bounds)."""
    return LowerToInteger(target, strict)(graph).graph


def lower_with_origins(graph: Graph, *, target: str = "generic", strict: bool = True
                       ) -> tuple[PassResult, dict[str, str]]:
    """The pass result and, for every activation fake_quant of `graph` that became an integer
    value, fake_quant output name -> integer value name (to compare the two layer by layer)."""
    LowerToInteger(target, strict)  # validates the target
    if not _check_calibrated(graph):
        raise QuantizationError(f"graph {graph.name} has no fake_quant nodes: quantize it first")
    lowering = _Lowering(graph, target, strict)
    result = lowering.run()
    origins = {node.output.name: lowering.int_of[id(node.output)].name for node in lowering.old
               if node.op == "fake_quant" and not node.inputs[0].is_constant
               and id(node.output) in lowering.int_of}
    return result, origins


class _Lowering:
    """Builds the integer graph. Every float value of the old graph maps to an integer value
    (`int_of`, when it holds quantized numbers) and/or a float value (`float_of`) of the new one;
    either is made on demand from the other (quantize / dequantize)."""

    def __init__(self, graph: Graph, target: str, strict: bool):
        self.old, self.target, self.strict = graph, target, strict
        self.new = Graph(graph.name)
        self.int_of: dict[int, Value] = {}
        self.float_of: dict[int, Value] = {}
        self.consumed: set[int] = set()  # old nodes already lowered as part of an earlier rule
        self.notes: list[str] = []
        self.fallbacks: list[str] = []

    # ---- driver -------------------------------------------------------------------------

    def run(self) -> PassResult:
        for value in self.old.inputs:
            self.float_of[id(value)] = self.new.add_input(value.name, value.shape, value.dtype)
        for node in self.old:
            if id(node) in self.consumed:
                continue
            if node.op == "fake_quant":
                self._lower_fake_quant(node)
                continue
            if node.op == "fake_quant_bias":
                continue  # read by its layer's rule (int32 bias), or made on demand by as_float
            rule = RULES.get(node.op)
            reason = rule(self, node) if rule is not None else \
                f"{node.op} has no integer form (docs/integer-spec.md, section 9)"
            if reason is not None:
                self._fall_back(node, reason)
        self.new.outputs = [self._output(value) for value in self.old.outputs]
        self.new.remove_unused_constants()
        self._check_overflow()
        if self.fallbacks:
            self.notes.append(f"{len(self.fallbacks)} node(s) run in float32 between dequantize "
                              "and quantize: " + "; ".join(self.fallbacks))
        self.new.verify()
        return PassResult(self.new, True, self.notes)

    def _output(self, value: Value) -> Value:
        if id(value) in self.float_of or value.dtype not in FLOAT_DTYPES:
            return self.as_float(value)
        integer = self.as_int(value)
        if integer is None:
            return self.as_float(value)
        return self.dequantize(integer, f"{value.name}.dequantize")

    # ---- value maps -------------------------------------------------------------------------

    def as_int(self, value: Value | None) -> Value | None:
        """The integer form of an old value, or None if it holds no quantized numbers."""
        if value is None:
            return None
        if id(value) in self.int_of:
            return self.int_of[id(value)]
        producer = value.producer
        if producer is not None and producer.op == "fake_quant" and producer.inputs[0].is_constant:
            qparams = fake_quant_qparams(producer)
            if qparams.axis is not None:
                return None  # a per-channel weight: only its weighted op reads it (weight_q)
            data = quantize(producer.inputs[0].data, qparams.scale, qparams.zero_point,
                            qparams.qmin, qparams.qmax)
            dtype = integer_dtype(qparams, producer.describe())
            constant = self.new.add_constant(f"{value.name}.q", data, dtype)
            constant.qparams = qparams
            self.int_of[id(value)] = constant
            return constant
        return None

    def as_float(self, value: Value) -> Value:
        """The float (or, for non-float values, the unchanged) form of an old value."""
        if id(value) in self.float_of:
            return self.float_of[id(value)]
        producer = value.producer
        if value.is_constant:
            result = self.new.add_constant(value.name, value.data)
        elif producer is not None and producer.op == "fake_quant" and producer.inputs[0].is_constant:
            qparams = fake_quant_qparams(producer)
            data = fake_quantize(producer.inputs[0].data, qparams.scale, qparams.zero_point,
                                 qparams.qmin, qparams.qmax, qparams.axis)
            result = self.new.add_constant(value.name, data)
        elif producer is not None and producer.op == "fake_quant_bias" \
                and all(v.is_constant for v in producer.inputs):
            # A layer that falls back to float adds the bias the simulation adds.
            bias, input_scale, weight_scale = (v.data for v in producer.inputs)
            result = self.new.add_constant(value.name, fake_quantize_bias(bias, input_scale,
                                                                          weight_scale))
        elif id(value) in self.int_of:
            result = self.dequantize(self.int_of[id(value)], f"{value.name}.dequantize")
        else:
            raise AssertionError(f"%{value.name} was not lowered before its use")
        self.float_of[id(value)] = result
        return result

    def set_int(self, old: Value, new: Value, qparams: QParams) -> Value:
        new.qparams = qparams
        self.int_of[id(old)] = new
        return new

    # ---- emitting -------------------------------------------------------------------------

    def emit(self, op: str, inputs: list, attrs: dict, name: str, source: str = "") -> Node:
        return self.new.add_node(op, inputs, attrs, name=name, source=source)

    def constant(self, name: str, data: np.ndarray, dtype: str) -> Value:
        return self.new.add_constant(name, data, dtype)

    def dequantize(self, integer: Value, name: str) -> Value:
        q = integer.qparams
        return self.emit("dequantize", [integer], {"scale": float(q.scale[0]),
                                                   "zero_point": int(q.zero_point[0])}, name).output

    def quantize(self, value: Value, qparams: QParams, name: str, source: str = "") -> Value:
        attrs = {"scale": float(qparams.scale[0]), "zero_point": int(qparams.zero_point[0]),
                 "qmin": qparams.qmin, "qmax": qparams.qmax,
                 "dtype": integer_dtype(qparams, f"%{name}")}
        output = self.emit("quantize", [value], attrs, name, source).output
        output.qparams = qparams
        return output

    # ---- fake_quant nodes that no rule consumed -----------------------------------------------

    def _lower_fake_quant(self, node: Node) -> None:
        source = node.inputs[0]
        if source.is_constant:
            return  # weights and constant operands: made on demand by as_int / as_float
        qparams = fake_quant_qparams(node)
        if qparams.axis is not None:
            raise QuantizationError(f"{node.describe()} quantizes an activation per channel; "
                                    "integer ops take per-tensor activations")
        integer = self.as_int(source)
        if integer is None:  # a float value (graph input or fall back): the boundary quantize
            self.set_int(node.output, self.quantize(self.as_float(source), qparams, node.name,
                                                    node.source), qparams)
            check_rounding(self, node, "quantize")
        elif integer.qparams == qparams:
            self.int_of[id(node.output)] = integer
        else:
            self.set_int(node.output, emit_requantize(self, integer, qparams, [], node.name, node),
                         qparams)
            check_rounding(self, node, "requantize")

    # ---- fall back ------------------------------------------------------------------------------

    def _fall_back(self, node: Node, reason: str) -> None:
        is_float = any(v is not None and v.dtype in FLOAT_DTYPES for v in [*node.inputs, *node.outputs])
        if is_float and self.strict:
            raise IntegerOnlyError(
                f"{node.describe()} cannot be lowered to integer ops: {reason}. Lower with "
                "strict=False to run it in float32 between dequantize and quantize (the integer "
                "interpreter then needs strict=False too)")
        inputs = [None if v is None else self.as_float(v) for v in node.inputs]
        new = self.new.create_node(node.op, inputs, [v.name for v in node.outputs],
                                   [(v.shape, v.dtype) for v in node.outputs], deepcopy(node.attrs),
                                   source=node.source)
        for old, value in zip(node.outputs, new.outputs, strict=True):
            self.float_of[id(old)] = value
        if is_float:
            self.fallbacks.append(f"%{node.name} ({node.op}: {reason})")
        grid = self.as_int(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
        if moves_values_only(node) and grid is not None:
            # Values only moved (e.g. nearest resize): they are still on the input's grid, so
            # quantizing them back is exact and keeps what follows integer.
            for old, value in zip(node.outputs, new.outputs, strict=True):
                self.set_int(old, self.quantize(value, grid.qparams, f"{old.name}.q", node.source),
                             grid.qparams)

    # ---- overflow (spec section 7) -----------------------------------------------------------

    def _check_overflow(self) -> None:
        bounds = accumulator_bounds(self.new)
        if not bounds:
            return
        for name, bound in bounds.items():
            if bound >= 1 << 31:
                node = self.new.values[name].producer
                raise QuantizationError(
                    f"{node.describe()}: the worst-case int32 accumulator is {bound} "
                    f"(2**{np.log2(bound):.2f} >= 2**31), so it could wrap; use fewer weight or "
                    "activation bits for this layer (QuantConfig node_overrides) or split it")
        worst = sorted(bounds.items(), key=lambda item: -item[1])[:3]
        shown = ", ".join(f"%{name} 2**{np.log2(max(bound, 1)):.1f}" for name, bound in worst)
        self.notes.append(f"overflow check (spec section 7): {len(bounds)} accumulating op(s), all "
                          f"below 2**31; largest worst-case accumulators: {shown}")
        for name, bound in bounds.items():
            if bound >= 1 << 30:
                self.notes.append(f"%{name}: worst-case accumulator 2**{np.log2(bound):.2f} leaves "
                                  "less than one bit of headroom below 2**31")


def accumulator_bounds(graph: Graph) -> dict[str, int]:
    """Worst-case |int32 accumulator| of every accumulating integer op (spec section 7), by
    node name: from the weights and biases, and the input ranges in the inputs' qparams."""
    bounds = {}
    for node in graph:
        if node.op in ("qconv2d", "qconv1d", "qlinear"):
            x, weight, bias = node.inputs[0], node.inputs[1].data, node.inputs[2].data
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
