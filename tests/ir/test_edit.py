"""The graph-editing library (`qcompiler.ir.edit`): each helper on a small graph, checked
against the graph's text form and the verifier."""

import numpy as np
import pytest

from qcompiler.errors import PassError
from qcompiler.ir import Graph
from qcompiler.ir.edit import (
    input_channel_axis,
    is_relu6,
    is_relu_like,
    layer_bias,
    optional_input,
    output_channel_axis,
    remove_if_unused,
    rename_value,
    replace_constant,
    select_layers,
    set_layer_bias,
    set_optional_input,
    single_user_chain,
    why_not_float_constant,
    why_not_private,
)

CONV = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1]}


def conv_graph(bias: bool = True) -> Graph:
    g = Graph()
    x = g.add_input("x", (1, 2, 4, 4))
    w = g.add_constant("conv.weight", np.ones((3, 2, 1, 1), np.float32))
    inputs = [x, w] + ([g.add_constant("conv.bias", np.zeros(3, np.float32))] if bias else [])
    conv = g.add_node("conv2d", inputs, CONV, name="conv")
    relu = g.add_node("relu", [conv.output], name="relu")
    clamp = g.add_node("clamp", [relu.output], {"min": 0.0, "max": 6.0}, name="relu6")
    g.outputs = [clamp.output]
    return g.verify()


def test_replace_constant_replaces_and_drops_the_old_one():
    g = conv_graph()
    conv = g.values["conv"].producer
    new = replace_constant(g, conv, 1, np.full((3, 2, 1, 1), 2, np.float32), "conv.weight.scaled")
    assert conv.inputs[1] is new and "conv.weight" not in g.values
    g.verify()


def test_replace_constant_keeps_a_shared_constant_for_its_other_reader():
    g = conv_graph()
    conv = g.values["conv"].producer
    shared = g.add_node("mul", [g.values["conv.bias"], g.values["conv.bias"]], name="other")
    g.outputs.append(shared.output)
    replace_constant(g, conv, 2, np.ones(3, np.float32), "conv.bias.new")
    assert "conv.bias" in g.values and g.values["conv.bias"].users == [shared, shared]
    g.verify()


def test_replace_constant_fills_an_absent_input():
    g = conv_graph(bias=False)
    conv = g.values["conv"].producer
    assert optional_input(conv, 2) is None
    new = replace_constant(g, conv, 2, np.ones(3, np.float32), "conv.bias.new")
    assert conv.inputs[2] is new and new.users == [conv]
    g.verify()


def test_set_optional_input_refuses_a_present_input():
    g = conv_graph()
    conv = g.values["conv"].producer
    with pytest.raises(ValueError, match="already has input 2"):
        set_optional_input(conv, 2, g.add_constant("b2", np.zeros(3, np.float32)))


def test_set_layer_bias_on_a_float_layer():
    g = conv_graph(bias=False)
    conv = g.values["conv"].producer
    set_layer_bias(g, conv, g.add_constant("b", np.ones(3, np.float32)))
    assert layer_bias(conv).name == "b"
    set_layer_bias(g, conv, g.add_constant("b2", np.ones(3, np.float32)))
    assert layer_bias(conv).name == "b2" and "b" not in g.values
    g.verify()


def test_rename_value_and_remove_if_unused():
    g = conv_graph()
    with pytest.raises(ValueError, match="the name is taken"):
        rename_value(g, g.values["relu"], "conv")
    rename_value(g, g.values["relu"], "activation")
    assert g.values["activation"].producer.op == "relu" and "relu" not in g.values
    unused = g.add_constant("unused", np.zeros(1, np.float32))
    remove_if_unused(g, g.values["conv.weight"])  # read by conv: stays
    remove_if_unused(g, unused)
    assert "conv.weight" in g.values and "unused" not in g.values
    g.verify()


def test_single_user_chain():
    g = conv_graph()
    conv = g.values["conv"].producer
    chain, last = single_user_chain(g, conv.output, lambda node: node.op in ("relu", "clamp"))
    assert [n.name for n in chain] == ["relu", "relu6"] and last is g.outputs[0]
    chain, last = single_user_chain(g, conv.output, is_relu_like)
    assert [n.name for n in chain] == ["relu"] and last is g.values["relu"]
    g.outputs.append(g.values["relu"])  # a graph output ends the chain
    chain, _ = single_user_chain(g, conv.output, lambda node: True)
    assert [n.name for n in chain] == ["relu"]


def test_activation_predicates():
    g = conv_graph()
    assert is_relu_like(g.values["relu"].producer) and not is_relu6(g.values["relu"].producer)
    assert is_relu6(g.values["relu6"].producer) and not is_relu_like(g.values["relu6"].producer)


def test_channel_axes():
    g = Graph()
    x = g.add_input("x", (2, 5, 3))
    fc = g.add_node("linear", [x, g.add_constant("w", np.ones((4, 3), np.float32))], name="fc")
    g.outputs = [fc.output]
    assert output_channel_axis(fc) == 2 and input_channel_axis(fc) == 2
    conv = conv_graph().values["conv"].producer
    assert output_channel_axis(conv) == 1 and input_channel_axis(conv) == 1


def test_why_not_private_and_float_constant():
    g = conv_graph()
    conv = g.values["conv"].producer
    weight, x = conv.inputs[1], conv.inputs[0]
    assert why_not_private(g, weight, conv, "equalize") is None
    assert why_not_float_constant(x, "equalize") == "is not a constant"
    reader = g.add_node("relu", [weight], name="reader")
    assert why_not_private(g, weight, conv, "equalize") == "is shared with %reader"
    assert why_not_float_constant(weight, "equalize") is None
    g.remove_node(reader)
    g.outputs.append(weight)
    assert why_not_private(g, weight, conv, "equalize") == "is shared with a graph output"
    integer = g.add_constant("i", np.zeros(3, np.int8))
    assert why_not_float_constant(integer, "merge") == "is i8, not a float"


def test_select_layers_by_name_and_pattern():
    g = conv_graph()
    assert [n.name for n in select_layers(g, ["conv2d"], ["conv*"], (), "test")] == ["conv"]
    assert select_layers(g, ["conv2d"], None, ("conv",), "test") == []
    with pytest.raises(PassError, match="no layer is named 'conx'; did you mean 'conv'"):
        select_layers(g, ["conv2d"], ["conx"], (), "test")
    with pytest.raises(PassError, match="layer 'conv' is conv2d; test applies to linear layers"):
        select_layers(g, ["linear"], ["conv"], (), "test")
