"""Deployed bytes: packed low-bit codes, group scales, int32 biases, float constants, counted
once each, by hand on small graphs."""

import numpy as np
import pytest

from qcompiler.analysis.model_size import stored_bytes
from qcompiler.ir import Graph
from qcompiler.numerics.grouped_quant import packed_bytes
from qcompiler.passes import insert_fake_quant, quantize_weights_grouped


def linear_graph(out_features=6, in_features=64):
    graph = Graph("linear")
    x = graph.add_input("x", [2, in_features])
    weight = graph.add_constant("fc.weight", np.ones((out_features, in_features), np.float32))
    bias = graph.add_constant("fc.bias", np.zeros(out_features, np.float32))
    node = graph.add_node("linear", [x, weight, bias], name="fc")
    graph.outputs = [node.output]
    return graph


def test_float_graph_is_its_float32_constants():
    assert stored_bytes(linear_graph()) == 4 * (6 * 64 + 6)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_int4_group_wise_weights_are_packed_with_their_scales(asymmetric):
    graph = quantize_weights_grouped(linear_graph(), method="rtn", group_size=32,
                                     asymmetric=asymmetric).graph
    assert stored_bytes(graph) == packed_bytes(6, 64, 4, 32, asymmetric) + 4 * 6  # + the float bias
    assert packed_bytes(6, 64, 4, 32) == 6 * 64 // 2 + 4 * 6 * 2
    assert packed_bytes(6, 64, 4, 32, asymmetric=True) == 6 * 64 // 2 + 4 * 6 * 2 + 6  # 12 zero points


def test_fake_quant_weights_count_their_bits_and_qparams():
    graph = insert_fake_quant(linear_graph(), config="w4a8").graph
    # int4 weight packed, f32[6] scale + i32[6] zero point; int32 bias; the input and output
    # activations' scale and zero point (4 + 4 bytes each).
    assert stored_bytes(graph) == 6 * 64 // 2 + 6 * 8 + 6 * 4 + 2 * 8
