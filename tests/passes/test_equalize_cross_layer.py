"""equalize_cross_layer: function-preserving on random chains and on the built-in
models, equal per-channel ranges afterwards (the paper's criterion), and one
negative test per rule that blocks a match."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import assert_same_function

from qcompiler.examples import models
from qcompiler.frontends.torch_export.capture import trace
from qcompiler.ir import Graph
from qcompiler.ir.dims import shape_at
from qcompiler.ir.pipeline import Pipeline
from qcompiler.numerics.equalization import input_channel_ranges, output_channel_ranges
from qcompiler.passes.equalize_cross_layer import EqualizeCrossLayer, equalize_cross_layer
from qcompiler.passes.fold_batchnorm import fold_batchnorm

CONV_ATTRS = {"stride": [1, 1], "dilation": [1, 1]}


def uneven_weight(generator, shape):
    spread = np.exp(generator.uniform(-2.5, 2.5, (shape[0],) + (1,) * (len(shape) - 1)))
    return (generator.normal(size=shape) * spread).astype(np.float32)


def add_conv(graph, x, generator, cout, groups=1, kernel=3, bias=True, name="conv"):
    cin = x.shape[1]
    weight = graph.add_constant(f"{name}.weight", uneven_weight(generator, (cout, cin // groups,
                                                                            kernel, kernel)))
    inputs = [x, weight]
    if bias:
        inputs.append(graph.add_constant(f"{name}.bias", generator.normal(size=cout).astype(np.float32)))
    attrs = {**CONV_ATTRS, "padding": [kernel // 2] * 2, "groups": groups}
    return graph.add_node("conv2d", inputs, attrs, name=name)


def add_activation(graph, x, kind):
    if kind == "relu":
        return graph.add_node("relu", [x]).output
    if kind == "relu6":
        return graph.add_node("clamp", [x], {"min": 0.0, "max": 6.0}, name="relu6").output
    if kind == "max_pool":
        attrs = {"kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}
        return graph.add_node("max_pool2d", [x], attrs).output
    return x  # identity


def inverted_residual_graph(seed=0, activation="relu"):
    """conv 1x1 -> act -> dw 3x3 -> act -> conv 1x1: the MobileNetV2 chain."""
    generator = np.random.default_rng(seed)
    graph = Graph()
    x = graph.add_input("x", (2, 4, 6, 6))
    h = add_conv(graph, x, generator, 12, kernel=1, name="expand").output
    h = add_conv(graph, add_activation(graph, h, activation), generator, 12, groups=12, name="dw").output
    h = add_conv(graph, add_activation(graph, h, activation), generator, 5, kernel=1, name="project")
    graph.outputs = [h.output]
    return graph


def inputs_for(graph, count=3):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(shape_at(graph.inputs[0].shape, 2), generator=generator),) for _ in range(count)]


# float32 to 1e-5 of the output's scale (weights span e^+-2.5, so outputs do too; an absolute
# 1e-5 would be meaningless at that scale): scale_relative=True.


def layer(graph, name):
    return graph.values[name].producer


def test_inverted_residual_is_equalized_and_keeps_its_function():
    graph = inverted_residual_graph()
    original = graph.copy()
    result = equalize_cross_layer(graph)
    assert result.modified
    graph.verify()
    assert_same_function(original, graph, inputs_for(graph), scale_relative=True)
    expand, dw, project = (layer(graph, n) for n in ("expand", "dw", "project"))
    assert "%expand -> %dw -> %project: converged" in "\n".join(result.notes)
    # At the fixed point each channel's range is the same in all three tied layers
    # (to the default tolerance 1e-6 on the scales; float32 storage adds ~1e-7).
    r_expand = output_channel_ranges(expand.inputs[1].data)
    r_dw = output_channel_ranges(dw.inputs[1].data)
    np.testing.assert_allclose(r_expand, input_channel_ranges(dw.inputs[1].data, 12), rtol=1e-5)
    np.testing.assert_allclose(r_dw, input_channel_ranges(project.inputs[1].data), rtol=1e-5)
    np.testing.assert_allclose(r_expand, r_dw, rtol=1e-5)
    # Before: the ranges were far apart.
    before_ranges = output_channel_ranges(layer(original, "expand").inputs[1].data)
    assert before_ranges.max() / before_ranges.min() > 10 * r_expand.max() / r_expand.min()
    assert graph.values["expand.weight.equalized"] is expand.inputs[1]
    assert "expand.weight" not in graph.values


def test_a_second_run_reports_no_change():
    graph = inverted_residual_graph()
    assert equalize_cross_layer(graph).modified
    text = str(graph)
    again = equalize_cross_layer(graph)
    assert not again.modified
    assert str(graph) == text
    assert any("already equalized" in note for note in again.notes)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1),
       steps=st.lists(st.tuples(st.sampled_from(["relu", "identity", "max_pool"]),
                                st.booleans(), st.booleans()), min_size=1, max_size=3))
def test_random_chains_keep_their_function(seed, steps):
    generator = np.random.default_rng(seed)
    graph = Graph()
    x = graph.add_input("x", (2, 6, 5, 5))
    h = add_conv(graph, x, generator, 6, name="conv0").output
    for index, (activation, depthwise, bias) in enumerate(steps, start=1):
        h = add_activation(graph, h, activation)
        h = add_conv(graph, h, generator, 6, groups=6 if depthwise else 1, bias=bias,
                     name=f"conv{index}").output
    graph.outputs = [h]
    original = graph.copy()
    result = equalize_cross_layer(graph)
    assert result.modified
    graph.verify()
    assert_same_function(original, graph, inputs_for(graph, 2), scale_relative=True)


def test_linear_chain_with_relu():
    generator = np.random.default_rng(5)
    graph = Graph()
    x = graph.add_input("x", (4, 10))
    w1 = graph.add_constant("fc1.weight", uneven_weight(generator, (16, 10)))
    b1 = graph.add_constant("fc1.bias", generator.normal(size=16).astype(np.float32))
    h = graph.add_node("relu", [graph.add_node("linear", [x, w1, b1], name="fc1").output]).output
    w2 = graph.add_constant("fc2.weight", uneven_weight(generator, (3, 16)))
    graph.outputs = [graph.add_node("linear", [h, w2], name="fc2").output]
    original = graph.copy()
    assert equalize_cross_layer(graph).modified
    assert_same_function(original, graph, inputs_for(graph), scale_relative=True)
    np.testing.assert_allclose(output_channel_ranges(graph.values["fc1"].producer.inputs[1].data),
                               input_channel_ranges(graph.values["fc2"].producer.inputs[1].data),
                               rtol=1e-5)


def test_a_branch_blocks_the_match():
    # The relu output feeds the next conv and a residual add: the add has no
    # weights to undo the rescaling, so equalizing would change the function.
    generator = np.random.default_rng(6)
    graph = Graph()
    x = graph.add_input("x", (1, 6, 5, 5))
    h = graph.add_node("relu", [add_conv(graph, x, generator, 6, name="conv1").output]).output
    y = add_conv(graph, h, generator, 6, name="conv2").output
    graph.outputs = [graph.add_node("add", [h, y]).output]
    text = str(graph)
    result = equalize_cross_layer(graph)
    assert not result.modified and str(graph) == text
    assert any("%relu has 2 users" in note and "residual add" in note for note in result.notes)


def test_shared_weights_block_the_match():
    generator = np.random.default_rng(7)
    graph = Graph()
    x = graph.add_input("x", (1, 6, 5, 5))
    h = graph.add_node("relu", [add_conv(graph, x, generator, 6, name="conv1").output]).output
    conv2 = add_conv(graph, h, generator, 6, bias=False, name="conv2")
    # conv3 reuses conv2's weight: rescaling it for conv2 would change conv3.
    conv3 = graph.add_node("conv2d", [conv2.output, conv2.inputs[1]],
                           {**CONV_ATTRS, "padding": [1, 1]}, name="conv3")
    graph.outputs = [conv3.output]
    text = str(graph)
    result = equalize_cross_layer(graph)
    assert not result.modified and str(graph) == text
    assert any("the weight %conv2.weight of %conv2 is shared with %conv3" in n for n in result.notes)


def test_relu6_is_left_alone_unless_replacement_is_allowed():
    graph = inverted_residual_graph(activation="relu6")
    text = str(graph)
    result = equalize_cross_layer(graph)
    assert not result.modified and str(graph) == text
    assert any("ReLU6 %relu6 is in the way; it is not positively homogeneous" in n for n in result.notes)

    # Allowed: ReLU6 becomes ReLU, and the result equals the ReLU network.
    relu_reference = graph.copy()
    for node in relu_reference:
        if node.op == "clamp":
            node.op, node.attrs = "relu", {}
    result = equalize_cross_layer(replace_relu6=True)(graph)
    assert result.modified
    assert [n.op for n in graph].count("clamp") == 0
    assert any("replaced ReLU6 %relu6, %relu6_1 by ReLU" in n for n in result.notes)
    assert_same_function(relu_reference, graph, inputs_for(graph), scale_relative=True)


def test_batch_norm_in_the_way_says_to_fold_first():
    generator = np.random.default_rng(8)
    graph = Graph()
    x = graph.add_input("x", (1, 4, 5, 5))
    h = add_conv(graph, x, generator, 4, name="conv1").output
    stats = [graph.add_constant(n, np.full(4, v, np.float32))
             for n, v in (("g", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0))]
    h = graph.add_node("batch_norm", [h, *stats], name="bn").output
    graph.outputs = [add_conv(graph, h, generator, 4, name="conv2").output]
    result = equalize_cross_layer(graph)
    assert not result.modified
    assert any("batch_norm %bn is in the way; run fold_batchnorm first" in n for n in result.notes)


def test_usable_in_a_pipeline_with_and_without_options():
    graph = inverted_residual_graph()
    for step in (equalize_cross_layer, equalize_cross_layer(iterations=50, tolerance=1e-7)):
        _, records = Pipeline([step]).run_with_report(graph)
        assert records[0].name == "equalize_cross_layer" and records[0].modified
    assert isinstance(equalize_cross_layer(replace_relu6=True), EqualizeCrossLayer)
    with pytest.raises(ValueError, match="iterations must be >= 1, got 0"):
        equalize_cross_layer(iterations=0)


def relu_reference(before, after):
    """`before` with the ReLU6 nodes that the pass turned into ReLU turned into ReLU too:
    the function equalization must preserve when replace_relu6=True."""
    reference = before.copy()
    for node in reference:
        if node.op == "clamp" and after.values[node.name].producer.op == "relu":
            node.op, node.attrs = "relu", {}
    return reference


@pytest.mark.parametrize("factory, kwargs, chains", [
    (models.resnet_style, {}, {False: 6, True: 6}),
    (models.mobilenet_v2, {"resolution": 32}, {False: 2, True: 16}),
])
def test_builtin_models_keep_their_function(factory, kwargs, chains):
    model, example = factory(**kwargs)
    folded = fold_batchnorm(trace(model, example)).graph
    for replace_relu6 in (False, True):
        graph = folded.copy()
        result = equalize_cross_layer(replace_relu6=replace_relu6)(graph)
        assert result.notes[0] == f"equalized {chains[replace_relu6]} chain(s)"
        graph.verify()
        assert_same_function(relu_reference(folded, graph), graph, inputs_for(graph, 2), scale_relative=True)


@pytest.mark.slow  # ~10 s: traces the full ImageNet MobileNetV2
@pytest.mark.skipif(models.pretrained_weights_path() is None, reason="pretrained weights not installed")
def test_pretrained_mobilenet_v2_keeps_its_function_and_evens_out_depthwise_ranges():
    model, example = models.pretrained_mobilenet_v2(resolution=64)
    folded = fold_batchnorm(trace(model, example)).graph
    graph = folded.copy()
    result = equalize_cross_layer(replace_relu6=True)(graph)
    assert result.notes[0] == "equalized 16 chain(s)"
    assert not any("did NOT converge" in n for n in result.notes)
    # Trained weights, same relative 1e-5 (measured ~3e-6 at 96x96).
    assert_same_function(relu_reference(folded, graph), graph, inputs_for(graph, 2), scale_relative=True)

    # The depthwise filters are why per-tensor INT8 fails on MobileNetV2 (Nagel et
    # al. 2019, fig. 2): their channel ranges span orders of magnitude. Measured
    # geometric mean of max/min channel range over the 17 depthwise layers:
    # 61.7 before, 13.8 after.
    def depthwise_spread(g):
        spreads = [np.log(r.max() / r.min()) for r in
                   (output_channel_ranges(n.inputs[1].data) for n in g
                    if n.op == "conv2d" and n.attrs["groups"] > 1)]
        return float(np.exp(np.mean(spreads)))

    assert depthwise_spread(folded) > 4 * depthwise_spread(graph)
