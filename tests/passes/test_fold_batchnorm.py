"""fold_batchnorm: every foldable BN disappears and the graph computes the same
function; every BN that cannot be folded stays, with the reason in the notes."""

import numpy as np
import pytest
import torch
from oracles import assert_same_function, run

from qcompiler.ir import Graph, Value
from qcompiler.passes import fold_batchnorm

CONV_ATTRS = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}


def add_bn(g: Graph, x: Value, seed: int = 0, name: str = "bn"):
    """Append a batch norm with random, non-trivial statistics over axis 1 of `x`."""
    generator = np.random.default_rng(seed)
    channels = x.shape[1]
    params = [
        g.add_constant(f"{name}.weight", generator.uniform(0.5, 1.5, channels)),
        g.add_constant(f"{name}.bias", generator.normal(0, 0.5, channels)),
        g.add_constant(f"{name}.running_mean", generator.normal(0, 0.5, channels)),
        g.add_constant(f"{name}.running_var", generator.uniform(0.2, 2.0, channels)),
    ]
    return g.add_node("batch_norm", [x, *params], {"eps": 1e-3}, name=name)


def weight(g: Graph, name: str, shape, seed: int = 1):
    return g.add_constant(name, np.random.default_rng(seed).normal(0, 0.3, shape))


def count(g: Graph, op: str) -> int:
    return sum(node.op == op for node in g)


def fold_and_check(g: Graph, expected_bn_left: int = 0):
    g.verify()
    before = g.copy()
    arrays_before = {v.name: v.data.copy() for v in g.constants}
    result = fold_batchnorm(g)
    g.verify()
    assert count(g, "batch_norm") == expected_bn_left
    assert result.modified == (count(before, "batch_norm") > expected_bn_left)
    assert_same_function(before, g)
    # Constants are shared with copies of the graph, so they must never change in place.
    for value in before.constants:
        np.testing.assert_array_equal(value.data, arrays_before[value.name])
    assert fold_batchnorm(g).modified is False
    return result


# ---- folding ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [False, True])
def test_conv2d_batchnorm_folds(with_bias):
    g = Graph()
    x = g.add_input("x", (2, 3, 6, 6))
    b = weight(g, "conv.bias", (4,), seed=2) if with_bias else None
    conv = g.add_node("conv2d", [x, weight(g, "conv.weight", (4, 3, 3, 3)), b], CONV_ATTRS,
                      name="conv")
    g.outputs = [g.add_node("relu", [add_bn(g, conv.output).output]).output]
    result = fold_and_check(g)
    assert result.notes == []
    # Without a bias the fold creates one, named after the layer.
    assert [v.name for v in conv.inputs[1:]] == ["conv.weight.folded", "conv.bias.folded"]
    # The old weight and all BN parameters are gone; only the folded ones remain.
    assert sorted(v.name for v in g.constants) == ["conv.bias.folded", "conv.weight.folded"]
    assert g.nodes[1].inputs[0] is conv.output


def test_depthwise_conv1d_and_graph_output_batchnorm_fold():
    g = Graph()
    x = g.add_input("x", (2, 4, 10))
    conv = g.add_node("conv1d", [x, weight(g, "w", (4, 1, 3))],
                      {"stride": [1], "padding": [2], "dilation": [2], "groups": 4}, name="conv")
    g.outputs = [add_bn(g, conv.output).output]
    fold_and_check(g)
    assert g.outputs == [conv.output]


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose2d_batchnorm_folds(groups):
    g = Graph()
    x = g.add_input("x", (1, 4, 5, 5))
    attrs = {"stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "groups": groups,
             "output_padding": [1, 1]}
    conv = g.add_node("conv_transpose2d", [x, weight(g, "w", (4, 3, 3, 3))], attrs, name="up")
    assert conv.output.shape[1] == 3 * groups
    g.outputs = [add_bn(g, conv.output).output]
    fold_and_check(g)


def test_linear_batchnorm1d_on_2d_input_folds():
    g = Graph()
    x = g.add_input("x", (5, 6))
    fc = g.add_node("linear", [x, weight(g, "fc.weight", (4, 6)), weight(g, "fc.bias", (4,))],
                    name="fc")
    g.outputs = [add_bn(g, fc.output).output]
    fold_and_check(g)


def test_two_batchnorms_in_a_row_both_fold():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    conv = g.add_node("conv2d", [x, weight(g, "w", (3, 3, 3, 3))], CONV_ATTRS, name="conv")
    first = add_bn(g, conv.output, seed=0, name="bn1")
    g.outputs = [add_bn(g, first.output, seed=1, name="bn2").output]
    fold_and_check(g)


def test_shared_bias_is_copied_not_changed():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    bias = weight(g, "shared.bias", (3,))
    conv_a = g.add_node("conv2d", [x, weight(g, "wa", (3, 3, 3, 3), 1), bias], CONV_ATTRS, name="a")
    conv_b = g.add_node("conv2d", [x, weight(g, "wb", (3, 3, 3, 3), 2), bias], CONV_ATTRS, name="b")
    g.outputs = [add_bn(g, conv_a.output).output, conv_b.output]
    fold_and_check(g)
    assert conv_b.inputs[2] is bias and conv_a.inputs[2] is not bias


def test_no_batchnorm_means_not_modified():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    g.outputs = [g.add_node("conv2d", [x, weight(g, "w", (3, 3, 3, 3))], CONV_ATTRS).output]
    result = fold_batchnorm(g)
    assert result.modified is False and result.notes == []


# ---- batch norms that must stay -------------------------------------------------------


def only_note(g: Graph) -> str:
    result = fold_and_check(g, expected_bn_left=1)
    assert len(result.notes) == 1
    return result.notes[0]


def test_batchnorm_after_relu_stays():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    conv = g.add_node("conv2d", [x, weight(g, "w", (3, 3, 3, 3))], CONV_ATTRS, name="conv")
    relu = g.add_node("relu", [conv.output], name="act")
    g.outputs = [add_bn(g, relu.output).output]
    assert only_note(g) == ("batch_norm %bn left in place: its input %act comes from relu, not "
                            "from conv1d, conv2d, conv_transpose2d, linear")


def test_batchnorm_on_graph_input_stays():
    g = Graph()
    g.outputs = [add_bn(g, g.add_input("x", (2, 3, 4))).output]
    assert only_note(g) == ("batch_norm %bn left in place: its input %x is a graph input, not the "
                            "output of a conv or linear layer")


def test_conv_with_two_users_blocks_folding():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    conv = g.add_node("conv2d", [x, weight(g, "w", (3, 3, 3, 3))], CONV_ATTRS, name="conv")
    bn = add_bn(g, conv.output)
    g.outputs = [g.add_node("add", [bn.output, conv.output], name="residual").output]
    assert only_note(g) == ("batch_norm %bn left in place: the output %conv of conv2d is also "
                            "used by %residual")


def test_conv_output_that_is_a_graph_output_blocks_folding():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    conv = g.add_node("conv2d", [x, weight(g, "w", (3, 3, 3, 3))], CONV_ATTRS, name="conv")
    g.outputs = [add_bn(g, conv.output).output, conv.output]
    assert only_note(g) == ("batch_norm %bn left in place: the output %conv of conv2d is also a "
                            "graph output")


def test_shared_weight_blocks_folding():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    w = weight(g, "tied", (3, 3, 3, 3))
    conv_a = g.add_node("conv2d", [x, w], CONV_ATTRS, name="a")
    conv_b = g.add_node("conv2d", [conv_a.output, w], CONV_ATTRS, name="b")
    g.outputs = [add_bn(g, conv_b.output).output]
    assert only_note(g) == ("batch_norm %bn left in place: the weight %tied of %b is shared with "
                            "%a; folding would untie the shared weight")


def test_weight_that_is_a_graph_input_blocks_folding():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    w = g.add_input("w", (3, 3, 3, 3))
    conv = g.add_node("conv2d", [x, w], CONV_ATTRS, name="conv")
    g.outputs = [add_bn(g, conv.output).output]
    assert only_note(g) == ("batch_norm %bn left in place: the weight %w of conv2d %conv is not "
                            "a constant")


def test_statistics_that_are_not_constant_block_folding():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    mean = g.add_input("mean", (3,))
    conv = g.add_node("conv2d", [x, weight(g, "w", (3, 3, 3, 3))], CONV_ATTRS, name="conv")
    var = g.add_constant("var", np.ones(3, np.float32))
    g.outputs = [g.add_node("batch_norm", [conv.output, None, None, mean, var], name="bn").output]
    assert only_note(g) == "batch_norm %bn left in place: its running_mean %mean is not a constant"


def test_linear_on_3d_input_normalised_over_tokens_stays():
    g = Graph()
    x = g.add_input("x", (2, 5, 6))
    fc = g.add_node("linear", [x, weight(g, "fc.weight", (4, 6))], name="fc")
    g.outputs = [add_bn(g, fc.output).output]   # normalises the 5 tokens, not the 4 features
    assert only_note(g) == ("batch_norm %bn left in place: batch_norm normalises axis 1 but the "
                            "output channels of linear %fc are on axis 2 (shape [2, 5, 4])")


def test_nonpositive_running_variance_stays():
    g = Graph()
    x = g.add_input("x", (1, 2, 4, 4))
    conv = g.add_node("conv2d", [x, weight(g, "w", (2, 2, 3, 3))], CONV_ATTRS, name="conv")
    var = g.add_constant("var", np.array([1.0, -1.0], np.float32))
    mean = g.add_constant("mean", np.zeros(2, np.float32))
    bn = g.add_node("batch_norm", [conv.output, None, None, mean, var], {"eps": 1e-5}, name="bn")
    g.outputs = [bn.output]
    result = fold_batchnorm(g)
    assert result.modified is False
    assert result.notes == ["batch_norm %bn left in place: running_var + eps is not positive in "
                            "every channel"]


def test_only_the_foldable_batchnorm_of_two_is_folded():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    conv = g.add_node("conv2d", [x, weight(g, "w", (3, 3, 3, 3))], CONV_ATTRS, name="conv")
    relu = g.add_node("relu", [add_bn(g, conv.output, name="bn1").output], name="act")
    g.outputs = [add_bn(g, relu.output, name="bn2").output]
    result = fold_and_check(g, expected_bn_left=1)
    assert result.modified is True
    assert [note.split(":")[0] for note in result.notes] == ["batch_norm %bn2 left in place"]


# ---- the built-in models, captured with torch.export -------------------------------------

BUILTIN_CASES = {
    "resnet_style": {},
    "mobilenet_v2": {"resolution": 64},  # 64x64 keeps the test fast; folding is size-independent
    "audio_conv1d": {},
    "digits_cnn": {},
}


@pytest.mark.parametrize("name", sorted(BUILTIN_CASES))
def test_every_batchnorm_of_builtin_models_folds(name):
    capture = pytest.importorskip("qcompiler.frontends.torch_export.capture")
    from qcompiler.examples.models import BUILTIN_MODELS

    model, inputs = BUILTIN_MODELS[name](**BUILTIN_CASES[name])
    g = capture.trace(model, inputs)
    batchnorm_modules = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                            for m in model.modules())
    assert count(g, "batch_norm") == batchnorm_modules
    result = fold_batchnorm(g)
    g.verify()
    assert result.modified is True and result.notes == []
    assert count(g, "batch_norm") == 0   # in all these models each BN directly follows its conv
    with torch.no_grad():
        expected = model(*inputs)
    # Twenty-odd folded layers in a row round differently from conv-then-BN; the
    # relative error stays near float32 epsilon times depth.
    torch.testing.assert_close(run(g, *inputs)[0], expected, rtol=1e-4, atol=1e-5)
    assert fold_batchnorm(g).modified is False


def test_canonical_pipeline_order_lets_every_batchnorm_fold():
    """The two ordering reasons of `canonical_float_pipeline`: a dead user of the conv
    output (removed by the first DCE) and a weight computed by a transpose (folded by
    fold_constants) would each block fold_batchnorm if it ran first."""
    from qcompiler.pipelines import canonical_float_pipeline

    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    w_t = g.add_node("transpose", [weight(g, "w", (3, 3, 3, 3))], {"dim0": 0, "dim1": 1},
                     name="w_t")
    conv = g.add_node("conv2d", [x, w_t.output], CONV_ATTRS, name="conv")
    g.add_node("tanh", [conv.output], name="dead")
    g.outputs = [add_bn(g, conv.output).output]
    assert fold_batchnorm(g.copy()).modified is False

    folded, records = canonical_float_pipeline().run_with_report(g)
    assert [node.op for node in folded] == ["conv2d"]
    assert [(r.name, r.modified) for r in records] == [
        ("eliminate_dead_code", True), ("fold_constants", True), ("fold_batchnorm", True),
        ("eliminate_dead_code", False)]
    assert_same_function(g, folded)
