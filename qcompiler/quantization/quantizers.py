"""The quantizers of a fake-quant graph: finding them, checking them, and the int32 bias.

A fake-quant graph marks every quantization point with a `fake_quant` node (scale and
zero point constants; NaN scale until calibrated) and every layer bias that integer
lowering stores as int32 with a `fake_quant_bias` node reading the scale constants of
the layer's input and weight (docs/integer-spec.md, section 1). These helpers are
shared by the quantization passes, calibration, lowering and the torch backend.
"""

from __future__ import annotations

import numpy as np

from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.edit import moves_values_only, optional_input
from qcompiler.ir.ops import ops_where

# Weighted ops that integer lowering runs with an int32 bias (it runs conv_transpose2d in float).
INTEGER_BIAS_OPS = ops_where(category="weighted", requantizing=True)


def fake_quant_nodes(graph: Graph) -> list[Node]:
    return [node for node in graph if node.op == "fake_quant"]


def find_uncalibrated(graph: Graph) -> list[Node]:
    """fake_quant nodes whose scale is still NaN (as insert_fake_quant leaves them)."""
    return [node for node in fake_quant_nodes(graph)
            if node.inputs[1].data is None or np.isnan(node.inputs[1].data).any()]


def require_calibrated(graph: Graph, purpose: str = "this step") -> None:
    """Raise QuantizationError naming the first uncalibrated fake_quant, if any."""
    missing = find_uncalibrated(graph)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise QuantizationError(
            f"{purpose} needs a calibrated graph, but {missing[0].describe()}{more} has no scale "
            "yet: run qcompiler.quantization.calibrate.calibrate(graph, calibration_data) "
            "or qc.quantize first")


def observed_name(value: Value) -> str:
    """The name of the float value that `value` is (fake_quant chains bypassed)."""
    while value.producer is not None and value.producer.op == "fake_quant":
        value = value.producer.inputs[0]
    return value.name


def source_fake_quants(value: Value) -> list[Node]:
    """The fake_quant nodes whose numbers `value` holds (through value-moving ops, concat and
    where)."""
    producer = value.producer
    if producer is None:
        return []
    if producer.op == "fake_quant":
        return [producer]
    if producer.op == "concat":
        return [fq for v in producer.inputs for fq in source_fake_quants(v)]
    if producer.op == "where":
        return [fq for v in producer.inputs[1:] for fq in source_fake_quants(v)]
    if moves_values_only(producer):
        return source_fake_quants(producer.inputs[0])
    return []


def bias_scale_sources(layer: Node) -> tuple[Value, Value] | None:
    """The scale constants (input, weight) whose product is the step of `layer`'s int32 bias,
    or None when integer lowering would not give it one: the weight is not fake-quantized
    symmetrically along the output channels, or the input does not hold one per-tensor
    quantization."""
    if layer.op not in INTEGER_BIAS_OPS or len(layer.inputs) < 2:
        return None
    weight_fq = layer.inputs[1].producer
    if (weight_fq is None or weight_fq.op != "fake_quant" or not weight_fq.inputs[0].is_constant
            or not weight_fq.attrs.get("symmetric", False) or weight_fq.attrs.get("axis") not in (None, 0)):
        return None
    sources = source_fake_quants(layer.inputs[0])
    if not sources or sources[0].attrs.get("axis") is not None \
            or any(fq.inputs[1] is not sources[0].inputs[1] for fq in sources):
        return None
    return sources[0].inputs[1], weight_fq.inputs[1]


def quantize_layer_bias(graph: Graph, layer: Node) -> Node | None:
    """Put a fake_quant_bias between `layer` and its float constant bias, if lowering gives the
    layer an int32 bias (see `bias_scale_sources`) and it has none yet; the new node or None."""
    bias = optional_input(layer, 2)
    scales = bias_scale_sources(layer)
    if bias is None or scales is None or bias.dtype != "f32" or not bias.is_constant:
        return None
    node = graph.add_node("fake_quant_bias", [bias, *scales], {},
                          name=graph.unique_name(f"{layer.name}.bias.fq"), before=layer,
                          source=layer.source)
    layer.replace_input(bias, node.output)
    return node


def fake_quant_problems(graph: Graph) -> list[str]:
    """Inconsistencies between fake_quant nodes and the qparams on their outputs, in words:
    a calibrated node's output qparams must mirror its constants and attributes; an
    uncalibrated one (NaN scale) must have none. (Graph.verify checks qparams against
    shapes only; this is the quantization-specific part.)"""
    problems = []
    for node in fake_quant_nodes(graph):
        scale, zero_point, q = node.inputs[1].data, node.inputs[2].data, node.output.qparams
        uncalibrated = scale is None or np.isnan(scale).any()
        if uncalibrated:
            if q is not None:
                problems.append(f"{node.describe()} has qparams on its output but a NaN scale")
            continue
        attrs = node.attrs
        expected = (attrs.get("bits", 8), attrs.get("signed", True), attrs.get("axis"),
                    attrs.get("narrow_range", False))
        if q is None:
            problems.append(f"{node.describe()} is calibrated but its output has no qparams")
        elif (q.bits, q.signed, q.axis, q.narrow_range) != expected \
                or not np.array_equal(q.scale, scale) or not np.array_equal(q.zero_point, zero_point):
            problems.append(f"{node.describe()}: output qparams do not match its scale/zero_point "
                            "constants and attributes")
    return problems + _fake_quant_bias_problems(graph)


def _fake_quant_bias_problems(graph: Graph) -> list[str]:
    """A fake_quant_bias must read the scale constants of its layer's input and weight
    fake_quants (then lowering and simulation round the bias to the same grid)."""
    problems = []
    for node in graph:
        if node.op != "fake_quant_bias":
            continue
        layers = node.output.users
        if len(layers) != 1 or len(layers[0].inputs) < 3 or layers[0].inputs[2] is not node.output:
            problems.append(f"{node.describe()} must be the bias of exactly one layer")
            continue
        expected = bias_scale_sources(layers[0])
        if expected is None or expected[0] is not node.inputs[1] or expected[1] is not node.inputs[2]:
            problems.append(f"{node.describe()} does not read the scales of the fake_quants of "
                            f"{layers[0].describe()}'s input and weight; re-run insert_fake_quant")
    return problems
