"""Integer lowering: the graph it produces (ops, fused clamps, int32 biases), that the integer
graph computes what fake-quant simulation computes to within one quantization step per op,
and the errors for graphs it must refuse (uncalibrated, zero scale, overflow, wrong target,
float ops in strict mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.backends.simulation_agreement import compare_with_simulation
from qcompiler.errors import IntegerOnlyError, QuantizationError
from qcompiler.ir import Graph, QParams, structurally_equal
from qcompiler.passes.insert_fake_quant import insert_fake_quant
from qcompiler.passes.lower_to_integer import lower_to_integer
from qcompiler.quantization.calibrate import calibrate
from qcompiler.quantization.config import QScheme, QuantConfig
from qcompiler.quantization.lowering import accumulator_bounds


def quantized(build, shapes, config=None, batches=3, seed=0, integer_inputs=None):
    """A calibrated fake-quant graph of `build(graph, *inputs)` on random data."""
    config = config or QuantConfig()
    graph = Graph("test")
    rng = np.random.default_rng(seed)
    integer_inputs = integer_inputs or {}
    inputs = [graph.add_input(f"x{i}", shape, "i64" if i in integer_inputs else "f32")
              for i, shape in enumerate(shapes)]
    outputs = build(graph, rng, *inputs)
    graph.outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    graph.verify()
    fake_quant = insert_fake_quant(graph, config=config).graph
    generator = torch.Generator().manual_seed(seed)

    def batch():
        return tuple(torch.randint(0, integer_inputs[i], shape, generator=generator)
                     if i in integer_inputs else torch.randn(shape, generator=generator)
                     for i, shape in enumerate(shapes))

    calibrated = calibrate(fake_quant, [batch() for _ in range(batches)], config, progress=False)
    return calibrated, batch()


def weight(graph, rng, name, shape, scale=0.3):
    return graph.add_constant(name, (rng.standard_normal(shape) * scale).astype(np.float32))


def assert_agrees(fake_quant, inputs, strict=True, **options):
    """Outputs within one step of the simulation, and every op, fed the simulation's own
    integers, within one step of it too."""
    agreement = compare_with_simulation(fake_quant, inputs, strict=strict, **options)
    for output in agreement.outputs:
        assert output.max_steps <= 1.0 + 1e-3, output
    for layer in agreement.layers:
        assert layer.local.max_steps <= 1, layer
    return agreement


def ops(graph) -> list[str]:
    return [node.op for node in graph]


# ---- the lowered form ----------------------------------------------------------------------------


def conv_block(activation):
    def build(g, rng, x):
        w, b = weight(g, rng, "conv.weight", (4, 3, 3, 3)), weight(g, rng, "conv.bias", (4,))
        y = g.add_node("conv2d", [x, w, b], {"stride": [1, 1], "padding": [1, 1],
                                             "dilation": [1, 1], "groups": 1}, name="conv").output
        if activation == "relu":
            return g.add_node("relu", [y], name="relu").output
        if activation == "relu6":
            return g.add_node("clamp", [y], {"min": 0.0, "max": 6.0}, name="relu6").output
        return y
    return build


def test_conv_relu_becomes_quantize_qconv2d_dequantize():
    fake_quant, inputs = quantized(conv_block("relu"), [(2, 3, 6, 6)])
    result = lower_to_integer(fake_quant.copy())
    graph = result.graph
    assert result.modified
    assert ops(graph) == ["quantize", "qconv2d", "dequantize"]
    conv = graph.nodes[1]
    out_q = conv.output.qparams
    assert conv.output.dtype == "u8" and out_q is not None
    # Fused relu: real 0 is the output zero point, the lowest integer kept.
    assert conv.attrs["output_min"] == int(out_q.zero_point[0]) and conv.attrs["output_max"] == 255
    # int32 bias at scale s_in * s_w[c], rounded half to even.
    s_in = float(conv.inputs[0].qparams.scale[0])
    weight_fq = fake_quant.values["conv.weight.fq"]
    s_w = weight_fq.qparams.scale.astype(np.float64)
    bias = fake_quant.values["conv.bias"].data.astype(np.float64)
    np.testing.assert_array_equal(conv.inputs[2].data, np.rint(bias / (s_in * s_w)).astype(np.int32))
    assert conv.inputs[1].dtype == "i8" and np.abs(conv.inputs[1].data).max() <= 127
    assert_agrees(fake_quant, inputs)


def test_relu6_folds_into_the_output_clamp():
    fake_quant, _ = quantized(conv_block("relu6"), [(2, 3, 6, 6)])
    conv = lower_to_integer(fake_quant.copy()).graph.nodes[1]
    scale, zero_point = float(conv.output.qparams.scale[0]), int(conv.output.qparams.zero_point[0])
    assert conv.attrs["output_min"] == zero_point
    assert conv.attrs["output_max"] == min(255, zero_point + round(6.0 / scale))


def test_public_api_returns_the_integer_graph_and_leaves_the_input_alone():
    fake_quant, inputs = quantized(conv_block(None), [(2, 3, 6, 6)])
    before = fake_quant.copy()
    integer = qc.lower_to_integer(fake_quant)
    assert structurally_equal(before, fake_quant)
    assert isinstance(integer, Graph) and "qconv2d" in ops(integer)
    y = qc.backends.interpreter.run(integer, inputs[0])
    assert y.dtype == np.float32 and y.shape == (2, 4, 6, 6)


def test_runs_in_a_pipeline_and_the_result_verifies():
    fake_quant, _ = quantized(conv_block("relu"), [(1, 3, 5, 5)])
    graph = qc.Pipeline([lower_to_integer(target="generic", strict=True)]).run(fake_quant)
    assert ops(graph) == ["quantize", "qconv2d", "dequantize"]


def test_a_float_graph_is_refused_not_returned_unchanged():
    graph = Graph("float")
    x = graph.add_input("x", (2, 3))
    graph.outputs = [graph.add_node("relu", [x]).output]
    with pytest.raises(QuantizationError, match=r"^graph float has no fake_quant nodes, so there is "
                       r"nothing to lower: quantize it first \(qg = qc\.quantize\(model, "
                       r"calibration_data\); qc\.lower_to_integer\(qg\)\)$"):
        lower_to_integer(graph)
    with pytest.raises(QuantizationError, match="nothing to lower"):
        qc.lower_to_integer(graph)


# ---- one rule per op: the integer op appears and agrees with the simulation ---------------------------


def _binary(op, constant_other=False):
    def build(g, rng, a, b):
        other = weight(g, rng, "c", (1, 4, 1, 1), 1.0) if constant_other else b
        return g.add_node(op, [a, other], name=op).output
    return build


def _unary(op, attrs=None):
    def build(g, rng, x):
        return g.add_node(op, [x], attrs or {}, name=op).output
    return build


def _div_by_constant(g, rng, x):
    return g.add_node("div", [x, g.add_constant("divisor", np.array([2.828427], np.float32))]).output


def _matmul(g, rng, a, b):
    return g.add_node("matmul", [a, g.add_node("transpose", [b], {"dim0": -1, "dim1": -2}).output]).output


def _linear_gelu(g, rng, x):
    y = g.add_node("linear", [x, weight(g, rng, "w", (6, 5)), weight(g, rng, "b", (6,))]).output
    return g.add_node("gelu", [y]).output


def _conv1d_pool(g, rng, x):
    y = g.add_node("conv1d", [x, weight(g, rng, "w", (4, 2, 3)), None],
                   {"stride": [2], "padding": [1], "dilation": [1], "groups": 2}).output
    y = g.add_node("relu", [y]).output
    return g.add_node("max_pool1d", [y], {"kernel_size": [2], "stride": [2], "padding": [0],
                                          "dilation": [1]}).output


def _residual(g, rng, x):
    """relu(conv(x)[:, :3] + x), with the add's output used twice (so the relu is not fused
    into it) and concatenated."""
    y = conv_block(None)(g, rng, x)
    y = g.add_node("slice", [y], {"axis": 1, "start": 0, "end": 3}).output
    total = g.add_node("add", [y, x]).output
    rectified = g.add_node("relu", [total]).output
    return g.add_node("concat", [rectified, total], {"dim": 1}).output


def _shapes_and_pools(g, rng, x):
    y = g.add_node("avg_pool2d", [x], {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                       "ceil_mode": True, "count_include_pad": False}).output
    y = g.add_node("pad", [y], {"pads": [1, 0, 0, 0]}).output
    parts = g.add_node("split", [y], {"axis": 1, "sizes": [1, 2]})
    a = g.add_node("adaptive_avg_pool2d", [parts.outputs[1]], {"output_size": [2, 2]}).output
    a = g.add_node("permute", [a], {"dims": [0, 2, 3, 1]}).output
    m = g.add_node("mean", [parts.outputs[0]], {"dim": [2, 3], "keepdim": False}).output
    return g.add_node("flatten", [a], {"start_dim": 1}).output, m


def _embedding(g, rng, ids):
    table = weight(g, rng, "table", (10, 4), 1.0)
    y = g.add_node("embedding", [ids, table]).output
    return g.add_node("add", [y, weight(g, rng, "position", (1, 3, 4), 0.1)]).output


CASES = {
    "add": (_binary("add"), [(2, 4, 3, 3), (2, 4, 3, 3)], {}, "qadd"),
    "sub with broadcast constant": (_binary("sub", True), [(2, 4, 3, 3), (1,)], {}, "qadd"),
    "mul": (_binary("mul"), [(2, 4, 3, 3), (2, 4, 3, 3)], {}, "qmul"),
    "div by constant": (_div_by_constant, [(2, 5)], {}, "requantize"),
    "matmul": (_matmul, [(2, 3, 4), (2, 5, 4)], {}, "qmatmul"),
    "linear + gelu table": (_linear_gelu, [(3, 5)], {}, "qlookup"),
    "conv1d + max_pool1d": (_conv1d_pool, [(2, 4, 9)], {}, "qmax_pool1d"),
    "residual, unfused relu, concat": (_residual, [(2, 3, 5, 5)], {}, "qconcat"),
    "pooling and data movement": (_shapes_and_pools, [(2, 3, 6, 8)], {}, "qavg_pool2d"),
    "embedding": (_embedding, [(2, 3)], {0: 10}, "embedding"),
    **{f"{op} table": (_unary(op), [(2, 6)], {}, "qlookup")
       for op in ("sigmoid", "tanh", "hardswish", "hardsigmoid", "silu")},
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_rule_lowers_and_agrees_with_simulation(name):
    build, shapes, integer_inputs, expected_op = CASES[name]
    fake_quant, inputs = quantized(build, shapes, integer_inputs=integer_inputs)
    agreement = assert_agrees(fake_quant, inputs)
    graph = agreement.integer_graph
    assert expected_op in ops(graph)
    float_ops = [n for n in graph if n.op not in ("quantize", "dequantize")
                 and any(v.dtype == "f32" for v in [*n.inputs, *n.outputs] if v is not None)]
    assert not float_ops


def _fake_quant(graph, value, name, scale, zero_point):
    """A calibrated per-tensor uint8 fake_quant, built by hand."""
    scale_constant = graph.add_constant(f"{name}.scale", np.array([scale], np.float32))
    zero_point_constant = graph.add_constant(f"{name}.zero_point", np.array([zero_point], np.int32))
    node = graph.add_node("fake_quant", [value, scale_constant, zero_point_constant],
                          {"signed": False}, name=name)
    node.output.qparams = QParams(np.array([scale]), np.array([zero_point]), 8, False)
    return node.output


def test_concat_of_differently_quantized_inputs_requantizes_them():
    graph = Graph("concat")
    x = graph.add_input("x", (2, 3))
    a = _fake_quant(graph, x, "a", 0.02, 128)
    b = _fake_quant(graph, graph.add_node("sigmoid", [a]).output, "b", 1 / 255, 0)
    joined = graph.add_node("concat", [a, b], {"dim": 1}, name="joined").output
    graph.outputs = [_fake_quant(graph, joined, "out", 0.025, 100)]
    agreement = assert_agrees(graph, (torch.randn(2, 3),))
    lowered = ops(agreement.integer_graph)
    assert lowered.count("requantize") == 2 and "qconcat" in lowered


def test_pooling_and_movement_use_integer_forms():
    fake_quant, _ = quantized(_shapes_and_pools, [(2, 3, 6, 8)])
    lowered = ops(lower_to_integer(fake_quant.copy()).graph)
    for op in ("qavg_pool2d", "pad", "split", "permute", "qmean", "flatten"):
        assert op in lowered


# ---- fall back --------------------------------------------------------------------------------------


def _softmax(g, rng, x):
    y = g.add_node("linear", [x, weight(g, rng, "w", (4, 4)), None], name="proj").output
    return g.add_node("softmax", [y], {"dim": -1}, name="attention").output


def test_strict_lowering_refuses_an_op_without_integer_form_and_names_it():
    fake_quant, _ = quantized(_softmax, [(2, 4)])
    with pytest.raises(IntegerOnlyError, match=r"%attention \(softmax\).*no integer form.*strict=False"):
        lower_to_integer(fake_quant.copy())


def test_non_strict_lowering_falls_back_explicitly_and_reports_it():
    fake_quant, inputs = quantized(_softmax, [(2, 4)])
    result = lower_to_integer(fake_quant.copy(), strict=False)
    assert any("%attention (softmax" in note for note in result.notes)
    assert ops(result.graph) == ["quantize", "qlinear", "dequantize", "softmax", "quantize",
                                 "dequantize"]
    assert_agrees(fake_quant, inputs, strict=False)


def test_adaptive_pooling_with_uneven_windows_falls_back():
    fake_quant, _ = quantized(_unary("adaptive_avg_pool2d", {"output_size": [3, 3]}), [(1, 2, 5, 5)])
    with pytest.raises(IntegerOnlyError, match="windows of varying size"):
        lower_to_integer(fake_quant.copy())


def test_value_moving_fall_back_is_requantized_exactly():
    """nearest resize has no integer kernel; its output is quantized back on the input's grid
    (exact), so the conv after it stays integer."""
    def build(g, rng, x):
        y = g.add_node("resize", [x], {"size": [6, 6]}, name="up").output
        return conv_block(None)(g, rng, y)
    fake_quant, inputs = quantized(build, [(1, 3, 3, 3)])
    graph = lower_to_integer(fake_quant.copy(), strict=False).graph
    assert "qconv2d" in ops(graph)
    assert_agrees(fake_quant, inputs, strict=False)


# ---- refusals -----------------------------------------------------------------------------------------


def test_an_uncalibrated_graph_is_refused_naming_the_node():
    graph = Graph("g")
    x = graph.add_input("x", (2, 3))
    graph.outputs = [graph.add_node("sigmoid", [x], name="gate").output]
    fake_quant = insert_fake_quant(graph).graph
    with pytest.raises(QuantizationError, match=r"needs a calibrated graph.*%x\.fq"):
        lower_to_integer(fake_quant)


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_a_zero_or_non_finite_scale_is_refused_naming_the_node(bad):
    fake_quant, _ = quantized(conv_block("relu"), [(1, 3, 4, 4)])
    fake_quant.values["relu.fq.scale"].data = np.array([bad], np.float32)
    message = r"no scale yet" if np.isnan(bad) else r"%relu\.fq \(fake_quant\) has scale"
    with pytest.raises(QuantizationError, match=message):
        lower_to_integer(fake_quant)


def test_a_layer_whose_accumulator_could_overflow_is_refused():
    """16-bit activations into 512 int8 weights: 512 * 127 * 65535 > 2**31."""
    def build(g, rng, x):
        w = g.add_constant("w", np.full((2, 512), 0.5, np.float32))
        return g.add_node("linear", [x, w, None], name="wide").output
    config = QuantConfig(activation=QScheme(16))
    fake_quant, _ = quantized(build, [(1, 512)], config=config)
    with pytest.raises(QuantizationError, match=r"%wide \(qlinear\).*worst-case int32 accumulator"):
        lower_to_integer(fake_quant)


def test_overflow_bounds_are_reported_and_computed_per_spec():
    def build(g, rng, x):
        return g.add_node("linear", [x, g.add_constant("w", np.array([[1.0, -0.5]], np.float32)),
                                     None], name="tiny").output
    fake_quant, _ = quantized(build, [(1, 2)])
    result = lower_to_integer(fake_quant)
    assert any("overflow check" in note and "%tiny" in note for note in result.notes)
    node = result.graph.values["tiny"].producer
    zero_point = node.attrs["input_zero_point"]
    offset = max(zero_point, 255 - zero_point)
    expected = int(np.abs(node.inputs[1].data.astype(np.int64)).sum()) * offset
    assert accumulator_bounds(result.graph) == {"tiny": expected}


def test_sixteen_bit_activations_lower_to_int16():
    fake_quant, inputs = quantized(conv_block("relu"), [(1, 3, 4, 4)],
                                   config=QuantConfig(activation=QScheme(16)))
    agreement = assert_agrees(fake_quant, inputs)
    assert agreement.integer_graph.nodes[1].output.dtype == "i16"


def test_x86_needs_uint8_activations_and_seven_bit_weights():
    fake_quant, _ = quantized(conv_block(None), [(1, 3, 4, 4)])
    with pytest.raises(QuantizationError, match=r"%conv \(conv2d\).*x86 needs weights in \[-64, 63\]"):
        lower_to_integer(fake_quant.copy(), target="x86")
    seven_bit = QuantConfig(weight=QScheme(7, symmetric=True, per_channel=True, narrow_range=True))
    fake_quant, _ = quantized(conv_block(None), [(1, 3, 4, 4)], config=seven_bit)
    assert "qconv2d" in ops(lower_to_integer(fake_quant, target="x86").graph)


def test_aarch64_needs_int8_activations():
    fake_quant, _ = quantized(conv_block(None), [(1, 3, 4, 4)])
    with pytest.raises(QuantizationError, match="aarch64 needs int8 activations"):
        lower_to_integer(fake_quant.copy(), target="aarch64")
    signed = QuantConfig(activation=QScheme(8, signed=True))
    fake_quant, _ = quantized(conv_block(None), [(1, 3, 4, 4)], config=signed)
    assert "qconv2d" in ops(lower_to_integer(fake_quant, target="aarch64").graph)


def test_an_unknown_target_is_refused():
    with pytest.raises(ValueError, match="unknown target 'arm'"):
        lower_to_integer(target="arm")
