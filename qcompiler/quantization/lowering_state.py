"""The state of integer lowering, which every lowering rule reads and writes.

Lowering builds a new, integer graph from a calibrated fake-quant graph (`old`). Every
float value of the old graph maps to an integer value of the new graph (`int_of`, when it
holds quantized numbers) and/or a float one (`float_of`); either is made on demand from
the other, with `quantize` / `dequantize` nodes (`as_int`, `as_float`). A rule (see
`qcompiler.quantization.lowering_rules`) takes the state and one old node, emits integer
ops into `new`, records the old values it computed (`set_int`) and the old nodes it folded
in (`consume`), and appends what a reader should know to `notes`. The driver that applies
the rules is `qcompiler.quantization.lowering`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from copy import deepcopy

import numpy as np

from qcompiler.errors import OptionError, QuantizationError
from qcompiler.ir import Graph, Node, QParams, Value
from qcompiler.numerics import grouped_quant as gq
from qcompiler.numerics.integer_params import fake_quantize_bias
from qcompiler.numerics.quant import fake_quantize, quantize

TARGETS = ("generic", "x86", "aarch64")


def integer_dtype(qparams: QParams, what: str) -> str:
    """The storage dtype of a quantized tensor (spec section 1)."""
    if qparams.bits <= 8:
        return "i8" if qparams.signed else "u8"
    if qparams.signed and qparams.bits <= 16:
        return "i16"
    raise QuantizationError(f"{what} is {'' if qparams.signed else 'un'}signed {qparams.bits}-bit; "
                            "integer lowering stores up to 8 bits, or 16 bits signed "
                            "(QScheme(16, signed=True))")


def fake_quant_qparams(node: Node) -> QParams:
    """The quantization parameters of a calibrated fake_quant node, from its constants (the
    source of truth), checked: finite, positive scales."""
    scale, zero_point = node.inputs[1].data, node.inputs[2].data
    bad = ~np.isfinite(scale) | (scale <= 0)
    if bad.any():
        raise QuantizationError(f"{node.describe()} has scale {scale[bad][0]!r}: a scale must be "
                                "finite and > 0 for integer lowering; recalibrate (a zero scale "
                                "comes from a quantization point that saw no range)")
    attrs = node.attrs
    return QParams(scale, zero_point, attrs.get("bits", 8), attrs.get("signed", True),
                   attrs.get("axis"), attrs.get("narrow_range", False))


def grouped_weight(node: Node) -> np.ndarray:
    """The float32 weight a constant `fake_quant_grouped` node computes."""
    weight, scales = node.inputs[0].data, node.inputs[1].data
    zeros = node.inputs[2].data if len(node.inputs) > 2 else None
    bits, group_size = int(node.attrs.get("bits", 4)), int(node.attrs["group_size"])
    return gq.dequantize_grouped(gq.quantize_grouped(weight, scales, bits, group_size, zeros), scales,
                                 group_size, zeros)


class LoweringState:
    """The old (fake-quant) graph, the new (integer) graph being built, and the maps between
    their values (see the module docstring)."""

    def __init__(self, graph: Graph, target: str, strict: bool, ibert: bool = False):
        if target not in TARGETS:
            raise OptionError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
        self.old: Graph = graph
        self.new: Graph = Graph(graph.name)
        self.target: str = target
        self.strict: bool = strict
        self.ibert: bool = ibert  # I-BERT integer softmax / layer_norm (lowering_rules_ibert)
        self.int_of: dict[int, Value] = {}  # id of an old value -> its integer value
        self.float_of: dict[int, Value] = {}  # id of an old value -> its float value
        self.consumed: set[int] = set()  # ids of old nodes lowered as part of an earlier rule
        self.notes: list[str] = []
        self.fallbacks: list[str] = []  # old nodes that run in float, with the reason

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
        elif producer is not None and producer.op == "fake_quant_grouped" \
                and all(v.is_constant for v in producer.inputs):
            # A group-wise weight whose layer falls back: the weights the simulation uses.
            result = self.new.add_constant(value.name, grouped_weight(producer))
        elif id(value) in self.int_of:
            result = self.dequantize(self.int_of[id(value)], f"{value.name}.dequantize")
        else:
            raise AssertionError(f"%{value.name} was not lowered before its use")
        self.float_of[id(value)] = result
        return result

    def set_int(self, old: Value, new: Value, qparams: QParams) -> Value:
        """Record that the integer value `new` (with `qparams`) holds the old value `old`."""
        new.qparams = qparams
        self.int_of[id(old)] = new
        return new

    def consume(self, nodes: Iterable[Node]) -> None:
        """Mark old nodes as lowered by the current rule (the driver then skips them)."""
        self.consumed.update(id(node) for node in nodes)

    # ---- emitting ---------------------------------------------------------------------------

    def emit(self, op: str, inputs: list, attrs: dict, name: str, source: str = "") -> Node:
        return self.new.add_node(op, inputs, attrs, name=name, source=source)

    def copy_as_float(self, node: Node) -> Node:
        """`node` again in the new graph, on the float (or unquantized integer) form of its
        inputs: a float fall back, or an op on masks and indices that is not quantized."""
        inputs = [None if v is None else self.as_float(v) for v in node.inputs]
        new = self.new.create_node(node.op, inputs, [v.name for v in node.outputs],
                                   [(v.shape, v.dtype) for v in node.outputs], deepcopy(node.attrs),
                                   source=node.source)
        for old, value in zip(node.outputs, new.outputs, strict=True):
            self.float_of[id(old)] = value
        return new

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


# A lowering rule: emit the integer form of an old node and return None, or emit nothing and
# return why the node has no integer form here (the driver then falls back to float).
Rule = Callable[[LoweringState, Node], str | None]
