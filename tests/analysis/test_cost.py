"""qc.cost: MACs of known layers by hand and by an independent count, params against torch,
peak memory on a graph whose answer is obvious, energy from the Horowitz table."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler as qc
from qcompiler.analysis.cost import HOROWITZ_45NM, arithmetic, cost, has_cost_rule
from qcompiler.examples.models import BUILTIN_MODELS
from qcompiler.ir import Graph
from qcompiler.ir.ops import OPS


def layer_graph(op, x_shape, w_shape, attrs=None, bias=False, x_dtype="f32", w_dtype="f32"):
    g = Graph()
    x = g.add_input("x", x_shape, x_dtype)
    w = g.add_constant("w", np.zeros(w_shape), w_dtype)
    inputs = [x, w]
    if bias:
        inputs.append(g.add_constant("b", np.zeros(w_shape[0] if op != "conv_transpose2d"
                                                   else w_shape[1] * attrs["groups"])))
    g.outputs = [g.add_node(op, inputs, attrs).output]
    return g.verify()


def conv_attrs(stride=1, padding=0, dilation=1, groups=1, dims=2):
    return {"stride": [stride] * dims, "padding": [padding] * dims,
            "dilation": [dilation] * dims, "groups": groups}


def test_3x3_conv_64_to_64_on_56x56():
    g = layer_graph("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), conv_attrs(padding=1))
    assert cost(g).macs == 115_605_504  # 56*56 outputs * 64 channels * 64*3*3 taps


def test_depthwise_conv_counts_one_input_channel_per_output():
    g = layer_graph("conv2d", (1, 32, 16, 16), (32, 1, 3, 3), conv_attrs(2, 1, groups=32))
    assert cost(g).macs == 32 * 8 * 8 * 9  # stride 2 halves 16x16 to 8x8


def test_grouped_dilated_conv():
    g = layer_graph("conv2d", (2, 64, 10, 10), (128, 16, 3, 3), conv_attrs(1, 2, 2, groups=4),
                    bias=True)
    report = cost(g)
    assert report.macs == 2 * 128 * 10 * 10 * 16 * 9
    assert report.ops == 2 * 128 * 10 * 10  # one bias add per output


def test_conv1d_with_stride_dilation_groups():
    g = layer_graph("conv1d", (2, 40, 100), (64, 10, 5), conv_attrs(2, 2, 1, groups=4, dims=1))
    assert cost(g).macs == 2 * 64 * 50 * 10 * 5


def test_conv_transpose2d_scatters_each_input_element():
    attrs = {**conv_attrs(2, 1), "output_padding": [0, 0]}
    g = layer_graph("conv_transpose2d", (1, 16, 8, 8), (16, 8, 4, 4), attrs)
    assert g.outputs[0].shape == (1, 8, 16, 16)
    assert cost(g).macs == 16 * 8 * 8 * 8 * 4 * 4


def test_linear_on_a_sequence():
    g = layer_graph("linear", (2, 16, 32), (64, 32), bias=True)
    report = cost(g)
    assert report.macs == 2 * 16 * 64 * 32
    assert report.ops == 2 * 16 * 64
    assert report.params == 64 * 32 + 64


@pytest.mark.parametrize("a_shape, b_shape, expected", [
    ((2, 4, 16, 8), (2, 4, 8, 16), 2 * 4 * 16 * 16 * 8),  # attention-style batched matmul
    ((4, 16, 8), (8, 5), 4 * 16 * 5 * 8),  # broadcast right operand
    ((8,), (3, 8, 5), 3 * 5 * 8),  # 1-D left operand
])
def test_matmul_macs(a_shape, b_shape, expected):
    g = Graph()
    a, b = g.add_input("a", a_shape), g.add_input("b", b_shape)
    g.outputs = [g.add_node("matmul", [a, b]).output]
    assert cost(g).macs == expected


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 2), groups=st.integers(1, 3), cin_per_group=st.integers(1, 3),
       cout_per_group=st.integers(1, 3), kernel=st.integers(1, 3), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), size=st.integers(7, 12), transpose=st.booleans())
def test_conv_macs_equal_an_independent_count(batch, groups, cin_per_group, cout_per_group,
                                              kernel, stride, dilation, size, transpose):
    # With zero padding every multiply lands in the output, so convolving all-ones tensors
    # sums to the number of multiplies torch performs: an oracle independent of the formula.
    cin, cout = groups * cin_per_group, groups * cout_per_group
    x = torch.ones(batch, cin, size, size)
    if transpose:
        w = torch.ones(cin, cout_per_group, kernel, kernel)
        attrs = {**conv_attrs(stride, 0, dilation, groups), "output_padding": [0, 0]}
        expected = F.conv_transpose2d(x, w, None, stride, 0, 0, groups, dilation).sum()
        g = layer_graph("conv_transpose2d", x.shape, w.shape, attrs)
    else:
        w = torch.ones(cout, cin_per_group, kernel, kernel)
        expected = F.conv2d(x, w, None, stride, 0, dilation, groups).sum()
        g = layer_graph("conv2d", x.shape, w.shape, conv_attrs(stride, 0, dilation, groups))
    assert cost(g).macs == int(expected)


def test_shared_constant_counts_once_and_batchnorm_statistics_are_not_params():
    g = Graph()
    x = g.add_input("x", (1, 8, 4, 4))
    w = g.add_constant("w", np.zeros((8, 8, 1, 1)))
    stats = [g.add_constant(n, np.ones(8)) for n in ("gamma", "beta", "mean", "var")]
    y = g.add_node("conv2d", [x, w], conv_attrs()).output
    y = g.add_node("conv2d", [y, w], conv_attrs()).output  # same weight again
    g.outputs = [g.add_node("batch_norm", [y, *stats]).output]
    report = cost(g)
    assert report.params == 64 + 8 + 8  # weight once, gamma, beta; no running mean/var
    assert report.weight_bytes == (64 + 4 * 8) * 4  # storage includes the statistics
    assert [r.params for r in report.per_node] == [64, 0, 16]


def test_int8_constants_count_one_byte_and_price_int8_arithmetic():
    g = Graph()
    x = g.add_input("x", (1, 1000), "i8")
    offset = g.add_constant("offset", np.ones((1, 1000)), "i8")
    g.outputs = [g.add_node("add", [x, offset]).output]
    report = cost(g)
    assert report.weight_bytes == 1000
    assert report.compute_energy_pj == pytest.approx(1000 * 0.03)
    assert report.weight_energy_pj == pytest.approx(1000 / 4 * 640)
    assert report.activation_energy_pj == pytest.approx(2000 / 4 * 5)  # read x, write the sum


def test_peak_activation_memory_of_a_residual():
    # x -> a = relu(x) -> b = relu(a) -> c = a + b, every tensor 4,000 bytes. x dies after a;
    # a must stay alive across b for the add, so a, b and c are live together: 12,000 bytes.
    g = Graph()
    x = g.add_input("x", (1, 1000))
    a = g.add_node("relu", [x], name="a").output
    b = g.add_node("relu", [a], name="b").output
    g.outputs = [g.add_node("add", [a, b], name="c").output]
    report = cost(g)
    assert [r.live_bytes for r in report.per_node] == [8000, 8000, 12000]
    assert report.peak_activation_bytes == 12000
    assert report.activation_bytes == 16000


def test_peak_activation_memory_of_a_chain_and_unused_input():
    g = Graph()
    x = g.add_input("x", (1, 1000))
    g.add_input("unused", (1, 5000))  # live at the start only
    y = g.add_node("relu", [x]).output
    g.outputs = [g.add_node("relu", [y]).output]
    report = cost(g)
    assert [r.live_bytes for r in report.per_node] == [8000, 8000]
    assert report.peak_activation_bytes == 24000  # both inputs before the first node


def test_energy_of_a_linear_layer_from_the_table():
    g = layer_graph("linear", (1, 256), (128, 256), bias=True)
    report = cost(g)
    macs, bias_adds = 128 * 256, 128
    assert report.macs == macs
    assert report.compute_energy_pj == pytest.approx(macs * (3.7 + 0.9) + bias_adds * 0.9)
    assert report.weight_energy_pj == pytest.approx((macs + 128) * 640)  # one DRAM word each
    assert report.activation_energy_pj == pytest.approx((256 + 128) * 5)
    assert report.energy_pj == pytest.approx(report.per_node[0].energy_pj)


def test_energy_table_holds_the_horowitz_figures():
    assert dict(HOROWITZ_45NM.add_pj) == {"int8": 0.03, "int32": 0.1, "fp16": 0.4, "fp32": 0.9}
    assert dict(HOROWITZ_45NM.mult_pj) == {"int8": 0.2, "int32": 3.1, "fp16": 1.1, "fp32": 3.7}
    assert (HOROWITZ_45NM.sram_word_pj, HOROWITZ_45NM.dram_word_pj) == (5.0, 640.0)


@pytest.mark.parametrize("op, attrs, per_element", [
    ("relu", {}, (1, 0)), ("clamp", {"min": 0.0, "max": 6.0}, (2, 0)), ("clamp", {"min": 0.0}, (1, 0)),
    ("softmax", {"dim": -1}, (3, 2)), ("gelu", {}, (1, 4)), ("sigmoid", {}, (1, 2)),
])
def test_elementwise_op_counts(op, attrs, per_element):
    g = Graph()
    x = g.add_input("x", (2, 50))
    node = g.add_node(op, [x], attrs)
    assert arithmetic(node) == (0, per_element[0] * 100, per_element[1] * 100)


def test_norm_and_pool_op_counts():
    g = Graph()
    x = g.add_input("x", (1, 4, 8, 8))
    pooled = g.add_node("max_pool2d", [x], {"kernel_size": [2, 2], "stride": [2, 2],
                                             "padding": [0, 0], "dilation": [1, 1]})
    assert arithmetic(pooled) == (0, 4 * 4 * 4 * 4, 0)  # 64 outputs, 4 compares each
    gap = g.add_node("adaptive_avg_pool2d", [x], {"output_size": [1, 1]})
    assert arithmetic(gap) == (0, 256, 4)
    weight, bias = g.add_constant("ln_w", np.ones(8)), g.add_constant("ln_b", np.zeros(8))
    norm = g.add_node("layer_norm", [x, weight, bias], {"normalized_shape": [8]})
    assert arithmetic(norm) == (0, 4 * 256, 3 * 256)
    reshape = g.add_node("reshape", [x], {"shape": [1, 256]})
    assert arithmetic(reshape) == (0, 0, 0)


INTEGER_OUTPUT = {"input_zero_point": 0, "output_zero_point": 0, "output_min": -128,
                  "output_max": 127, "output_dtype": "i8"}


def test_integer_conv_is_priced_as_int8_macs_plus_int32_requantization():
    g = Graph()
    x = g.add_input("x", (1, 4, 8, 8), "i8")
    weight = g.add_constant("w", np.ones((8, 4, 3, 3)), "i8")
    per_channel = [g.add_constant(name, np.full(8, value), "i32")
                   for name, value in (("bias", 0), ("multiplier", 1 << 30), ("shift", 0))]
    node = g.add_node("qconv2d", [x, weight, *per_channel], {**conv_attrs(padding=1), **INTEGER_OUTPUT})
    g.outputs = [node.output]
    report = cost(g.verify())
    outputs, macs = 8 * 8 * 8, 8 * 8 * 8 * 4 * 9
    assert report.macs == macs
    # per output: a bias add, then requantization (4 adds, 1 multiply)
    assert report.ops == outputs * (1 + 4 + 1)
    assert report.compute_energy_pj == pytest.approx(
        macs * (0.2 + 0.03) + outputs * 0.03 + outputs * (4 * 0.1 + 3.1))
    assert report.params == 8 * 4 * 9 + 8  # weight and bias; not the multipliers and shifts
    assert report.weight_bytes == 8 * 4 * 9 + 3 * 8 * 4


def test_quantization_scales_are_not_params():
    g = Graph()
    x = g.add_input("x", (1, 8, 4, 4))
    scale, zero_point = g.add_constant("scale", np.ones(8)), g.add_constant("zp", np.zeros(8), "i32")
    g.outputs = [g.add_node("fake_quant", [x, scale, zero_point], {"axis": 1}).output]
    report = cost(g)
    assert report.params == 0 and report.weight_bytes == 64
    assert report.ops == 128 * (4 + 2)


def test_every_ir_op_has_a_cost_rule():
    missing = [op for op in OPS if not has_cost_rule(op)]
    assert missing == [], f"add a rule to qcompiler/analysis/cost.py for {missing}"


def test_unknown_op_is_reported_not_silently_priced():
    assert not has_cost_rule("frobnicate")


def test_table_and_summary_show_the_totals():
    g = layer_graph("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), conv_attrs(padding=1))
    report = cost(g)
    assert "MACs                  115.61 M" in str(report)
    lines = report.table().splitlines()
    assert lines[0].split() == ["node", "op", "MACs", "ops", "params", "weights", "output", "live",
                                "energy"]
    assert lines[2].split()[:3] == ["conv2d", "conv2d", "115.61"]
    assert lines[-1].startswith("total") and "peak 1.53 MiB" in lines[-1]


SMALL_INPUTS = {"mobilenet_v2": {"resolution": 64}}  # params do not depend on resolution


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_params_of_builtin_models_match_torch(name):
    model, inputs = BUILTIN_MODELS[name](**SMALL_INPUTS.get(name, {}))
    graph = qc.trace(model, inputs)
    assert cost(graph).params == sum(p.numel() for p in model.parameters())
