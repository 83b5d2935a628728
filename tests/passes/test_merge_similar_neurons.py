"""merge_similar_neurons: exact on duplicated (and positively scaled) filters, honest about
what it merged and what blocked it; and the clustering and merging math it rests on."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import assert_same_function, run

from qcompiler.errors import PassError
from qcompiler.ir import Graph
from qcompiler.numerics.similarity import (
    cluster_neurons,
    direction_distances,
    merge_neurons,
    neuron_rows,
)
from qcompiler.passes import merge_similar_neurons

CONV = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
CONV1D = {"stride": [1], "padding": [1], "dilation": [1], "groups": 1}


def rng(seed=0):
    return np.random.default_rng(seed)


def with_duplicates(base: np.ndarray, bias: np.ndarray, copies: dict[int, tuple[int, float]],
                    dead: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Append rows: copies[new_index] = (source, positive scale), then `dead` all-zero rows."""
    rows_w, rows_b = list(base), list(bias)
    for source, scale in copies.values():
        rows_w.append(base[source] * np.float32(scale))
        rows_b.append(bias[source] * np.float32(scale))
    rows_w += [np.zeros_like(base[0])] * dead
    rows_b += [np.float32(0)] * dead
    return np.stack(rows_w).astype(np.float32), np.array(rows_b, np.float32)


def chain(op, w1, b1, w2, x_shape, middle=("relu",), attrs1=None, attrs2=None, next_op=None):
    """x -> op(w1, b1) -> middle ops -> next_op(w2, b2) -> output."""
    graph = Graph("chain")
    value = graph.add_input("x", x_shape)
    value = graph.add_node(op, [value, graph.add_constant("first.weight", w1),
                                graph.add_constant("first.bias", b1)], attrs1 or {}, name="first").output
    for index, step in enumerate(middle):
        op_name, attrs = (step, {}) if isinstance(step, str) else step
        value = graph.add_node(op_name, [value], attrs, name=f"mid{index}").output
    b2 = rng(9).standard_normal(w2.shape[0]).astype(np.float32)
    value = graph.add_node(next_op or op, [value, graph.add_constant("second.weight", w2),
                                           graph.add_constant("second.bias", b2)], attrs2 or {},
                           name="second").output
    graph.outputs = [value]
    return graph.verify()


# Function checks are to 1e-5 of the output's scale (scale_relative=True): merged weights sum
# several filters' columns.


def merged(graph, **options):
    result = merge_similar_neurons(**options)(graph.copy())
    return result.graph.verify(), result


def conv_with_duplicates():
    """8 filters: 5 distinct, a copy of filter 1, 2.5 x filter 2, and a dead one."""
    base = rng(1).standard_normal((5, 3, 3, 3)).astype(np.float32)
    w1, b1 = with_duplicates(base, rng(2).standard_normal(5).astype(np.float32),
                             {5: (1, 1.0), 6: (2, 2.5)}, dead=1)
    w2 = rng(3).standard_normal((4, 8, 3, 3)).astype(np.float32)
    pool = ("max_pool2d", {"kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0],
                           "dilation": [1, 1]})
    return chain("conv2d", w1, b1, w2, (2, 3, 8, 8), ("relu", pool), CONV, CONV)


def test_duplicated_conv_filters_merge_exactly():
    graph = conv_with_duplicates()
    after, result = merged(graph)
    assert result.modified
    assert after.values["first"].shape == (2, 5, 8, 8)
    assert after.values["mid1"].shape == (2, 5, 4, 4)
    assert after.values["second"].shape == graph.values["second"].shape
    assert result.notes == [
        "removed 3 neuron(s) in all",
        "node %first (conv2d): 8 -> 5 neurons (2 merged into similar ones, 1 all-zero dropped); "
        "%second input weights summed accordingly",
        "node %second (conv2d) not merged: %second is a graph output",
    ]
    assert_same_function(graph, after, scale_relative=True)
    assert {"first.weight", "first.bias", "second.weight"}.isdisjoint(after.values)


def test_linear_on_three_dimensional_input_merges_exactly():
    base = rng(4).standard_normal((6, 12)).astype(np.float32)
    w1, b1 = with_duplicates(base, rng(5).standard_normal(6).astype(np.float32),
                             {6: (0, 1.0), 7: (0, 0.5), 8: (3, 4.0)})
    graph = chain("linear", w1, b1, rng(6).standard_normal((3, 9)).astype(np.float32), (2, 5, 12))
    after, result = merged(graph)
    assert after.values["first"].shape == (2, 5, 6)
    assert_same_function(graph, after, scale_relative=True)


def test_merging_reaches_a_linear_layer_through_global_pooling_and_flatten():
    base = rng(7).standard_normal((4, 2, 3, 3)).astype(np.float32)
    w1, b1 = with_duplicates(base, rng(8).standard_normal(4).astype(np.float32), {4: (3, 3.0)})
    middle = ("relu", ("adaptive_avg_pool2d", {"output_size": [1, 1]}),
              ("flatten", {"start_dim": 1}))
    graph = chain("conv2d", w1, b1, rng(9).standard_normal((7, 5)).astype(np.float32),
                  (2, 2, 6, 6), middle, CONV, next_op="linear")
    after, result = merged(graph)
    assert after.values["mid2"].shape == (2, 4)
    assert_same_function(graph, after, scale_relative=True)


def test_conv1d_without_activation_merges_exactly():
    base = rng(10).standard_normal((3, 4, 3)).astype(np.float32)
    w1, b1 = with_duplicates(base, rng(11).standard_normal(3).astype(np.float32), {3: (1, 1.0)})
    graph = chain("conv1d", w1, b1, rng(12).standard_normal((5, 4, 3)).astype(np.float32),
                  (1, 4, 10), (), CONV1D, CONV1D)
    after, result = merged(graph)
    assert result.modified and after.values["first"].shape == (1, 3, 10)
    assert_same_function(graph, after, scale_relative=True)


@settings(max_examples=20, deadline=None)
@given(base_count=st.integers(1, 6), data=st.data())
def test_any_pattern_of_positive_multiples_merges_exactly(base_count, data):
    base = rng(data.draw(st.integers(0, 1000))).standard_normal((base_count, 5)).astype(np.float32)
    bias = rng(13).standard_normal(base_count).astype(np.float32)
    extra = data.draw(st.lists(st.tuples(st.integers(0, base_count - 1),
                                         st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0])), max_size=6))
    w1, b1 = with_duplicates(base, bias, dict(enumerate(extra, start=base_count)))
    order = np.array(data.draw(st.permutations(range(len(w1)))))  # duplicates anywhere
    graph = chain("linear", w1[order], b1[order],
                  rng(14).standard_normal((3, len(w1))).astype(np.float32), (4, 5))
    after, result = merged(graph)
    assert result.modified == bool(extra)
    assert after.values["first"].shape == (4, base_count)
    assert_same_function(graph, after, seeds=(0,), scale_relative=True)


def test_two_layers_in_a_row_both_merge():
    base = rng(15).standard_normal((3, 4)).astype(np.float32)
    w1, b1 = with_duplicates(base, np.ones(3, np.float32), {3: (0, 1.0)})
    graph = Graph("three")
    x = graph.add_input("x", (2, 4))
    a = graph.add_node("linear", [x, graph.add_constant("a.weight", w1),
                                  graph.add_constant("a.bias", b1)], name="a")
    r = graph.add_node("relu", [a.output], name="r")
    # Layer b has two identical rows; after a's merge they are still identical.
    w2 = np.concatenate([rng(16).standard_normal((2, 4)), rng(16).standard_normal((1, 4))])
    b = graph.add_node("linear", [r.output, graph.add_constant("b.weight", w2.astype(np.float32))],
                       name="b")
    s = graph.add_node("relu", [b.output], name="s")
    c = graph.add_node("linear", [s.output, graph.add_constant("c.weight", np.eye(3, dtype=np.float32))],
                       name="c")
    graph.outputs = [c.output]
    after, result = merged(graph.verify())
    assert after.values["a"].shape == (2, 3) and after.values["b"].shape == (2, 2)
    assert result.notes[0] == "removed 2 neuron(s) in all"
    assert_same_function(graph, after, scale_relative=True)


# ---- approximate merging ---------------------------------------------------------------------


def near_duplicates(noise: float):
    """8 distinct filters plus 4 copies perturbed by `noise` (relative)."""
    base = rng(17).standard_normal((8, 16)).astype(np.float32)
    bias = rng(18).standard_normal(8).astype(np.float32)
    w1, b1 = with_duplicates(base, bias, {8 + i: (2 * i, 1.0) for i in range(4)})
    perturb = rng(19).standard_normal(w1[8:].shape).astype(np.float32)
    w1[8:] += noise * perturb * np.linalg.norm(w1[8:], axis=1, keepdims=True) / 4
    return chain("linear", w1, b1, rng(20).standard_normal((5, 12)).astype(np.float32), (16, 16))


def test_ratio_merges_the_closest_neurons_first():
    graph = near_duplicates(1e-3)
    after, result = merged(graph, ratio=4 / 12)
    assert after.values["first"].shape == (16, 8)
    rows = neuron_rows(after.values["first.weight.merged"].data, after.values["first.bias.merged"].data)
    original = neuron_rows(graph.values["first.weight"].data, graph.values["first.bias"].data)
    # Every merged neuron sits at one of the 8 distinct filters, one each.
    gaps = np.linalg.norm(rows[:, None, :] - original[None, :8, :], axis=2)
    nearest = gaps.argmin(axis=1)
    assert sorted(nearest) == list(range(8))
    assert (gaps.min(axis=1) < 1e-2 * np.linalg.norm(original[:8], axis=1)[nearest]).all()
    expected = run(graph, torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))[0].numpy()
    actual = run(after, torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))[0].numpy()
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 1e-2


def test_threshold_decides_which_near_duplicates_merge():
    graph = near_duplicates(1e-3)
    assert not merged(graph)[1].modified  # the default threshold only takes exact multiples
    assert merged(graph, threshold=1e-2)[0].values["first"].shape == (16, 8)


def test_no_duplicates_means_not_modified():
    graph = near_duplicates(0.5)
    result = merge_similar_neurons()(graph)
    before = str(graph)
    assert not result.modified and str(result.graph) == before
    assert not any(note.startswith("removed") for note in result.notes)


# ---- what blocks a merge ---------------------------------------------------------------------


def blocked(builder):
    """Duplicated linear filters followed by whatever `builder(graph, value)` adds."""
    base = rng(21).standard_normal((3, 4)).astype(np.float32)
    w1, b1 = with_duplicates(base, np.zeros(3, np.float32), {3: (0, 1.0)})
    graph = Graph("blocked")
    x = graph.add_input("x", (2, 4))
    first = graph.add_node("linear", [x, graph.add_constant("first.weight", w1),
                                      graph.add_constant("first.bias", b1)], name="first")
    graph.outputs = builder(graph, first.output)
    graph.verify()
    text = str(graph)
    result = merge_similar_neurons(layers=("first",))(graph)
    assert not result.modified and str(graph) == text
    return result.notes


def linear(graph, value, name, out=4):
    weight = graph.add_constant(f"{name}.weight", np.ones((out, value.shape[-1]), np.float32))
    return graph.add_node("linear", [value, weight], name=name).output


def test_a_branch_blocks_merging():
    def build(graph, value):
        relu = graph.add_node("relu", [value], name="relu").output
        return [linear(graph, relu, "left"), linear(graph, relu, "right")]
    assert blocked(build) == [
        "node %first (linear) not merged: %relu has 2 users (%left (linear), %right (linear)); "
        "a branch, residual add or concat would see the merged channels too"]


def test_a_residual_add_blocks_merging():
    def build(graph, value):
        relu = graph.add_node("relu", [value], name="relu").output
        return [graph.add_node("add", [relu, graph.inputs[0]], name="residual").output]
    assert blocked(build) == ["node %first (linear) not merged: node %residual (add) is in the way; "
                              "only ReLU, pooling, mean and flatten that keep channels apart are "
                              "positively homogeneous and channel-preserving"]


def test_an_unfolded_batch_norm_blocks_merging():
    def build(graph, value):
        params = [graph.add_constant(f"bn.{n}", np.ones(4, np.float32))
                  for n in ("weight", "bias", "mean", "var")]
        normed = graph.add_node("batch_norm", [value, *params], name="bn").output
        return [linear(graph, normed, "second")]
    assert blocked(build) == ["node %first (linear) not merged: batch_norm %bn is in the way; "
                              "run fold_batchnorm first"]


def test_relu6_blocks_merging():
    def build(graph, value):
        clipped = graph.add_node("clamp", [value], {"min": 0.0, "max": 6.0}, name="relu6").output
        return [linear(graph, clipped, "second")]
    assert blocked(build)[0].startswith("node %first (linear) not merged: node %relu6 (clamp) is "
                                        "in the way")


def test_flatten_that_mixes_channels_with_space_blocks_merging():
    base = rng(24).standard_normal((2, 3, 3, 3)).astype(np.float32)
    w1, b1 = with_duplicates(base, np.zeros(2, np.float32), {2: (0, 1.0)})
    graph = chain("conv2d", w1, b1, np.ones((2, 3 * 4 * 4), np.float32), (1, 3, 4, 4),
                  ("relu", ("flatten", {"start_dim": 1})), CONV, next_op="linear")
    result = merge_similar_neurons()(graph)
    assert not result.modified
    assert result.notes[0].startswith("node %first (conv2d) not merged: node %mid1 (flatten) is in "
                                      "the way")


def test_a_graph_output_blocks_merging():
    assert blocked(lambda graph, value: [value]) == [
        "node %first (linear) not merged: %first is a graph output"]


def test_a_depthwise_consumer_blocks_merging():
    base = rng(22).standard_normal((2, 3, 3, 3)).astype(np.float32)
    w1, b1 = with_duplicates(base, np.zeros(2, np.float32), {2: (0, 1.0)})
    graph = chain("conv2d", w1, b1, np.ones((3, 1, 3, 3), np.float32), (1, 3, 5, 5), ("relu",),
                  CONV, {**CONV, "groups": 3})
    result = merge_similar_neurons(layers=("first",))(graph)
    assert not result.modified
    assert result.notes == ["node %first (conv2d) not merged: the next layer: node %second (conv2d) "
                            "has groups=3 (grouped or depthwise)"]


# ---- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"threshold": 0.1, "ratio": 0.2}, "takes threshold= or ratio=, not both"),
    ({"ratio": 1.0}, r"ratio must be in \[0, 1\), got 1.0"),
    ({"threshold": -0.1}, r"threshold is a distance between unit vectors, in \[0, 2\]"),
    ({"ignore": "first"}, "ignore must be a tuple of names"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        merge_similar_neurons(**options)


def test_an_unknown_layer_is_an_error_and_the_graph_is_untouched():
    graph = conv_with_duplicates()
    text = str(graph)
    with pytest.raises(PassError, match=r"no layer is named 'frist'; did you mean 'first'"):
        merge_similar_neurons(layers=("frist",))(graph)
    assert str(graph) == text


# ---- the math ------------------------------------------------------------------------------------


def test_distances_ignore_positive_scale_and_keep_zero_rows_apart():
    rows = np.array([[1.0, 2.0], [3.0, 6.0], [-1.0, -2.0], [0.0, 0.0]])
    distances = direction_distances(rows)
    assert distances[0, 1] == pytest.approx(0.0, abs=1e-7)
    assert distances[0, 2] == pytest.approx(2.0)  # a negative multiple is not mergeable
    assert (distances[3] == 2.0).all()


def test_clusters_never_chain_beyond_the_threshold():
    """Directions 0.1 rad apart along an arc: single linkage at 0.15 would chain all nine;
    complete linkage keeps every cluster's diameter within 0.15."""
    angles = 0.1 * np.arange(9)
    rows = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    clusters = cluster_neurons(rows, threshold=0.15)
    distances = direction_distances(rows)
    assert len(clusters) > 1
    for cluster in clusters:
        assert distances[np.ix_(cluster, cluster)].max() <= 0.15


def test_target_clusters_and_zero_rows():
    rows = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.0, 0.0], [0.02, 1.0]])
    assert [c.tolist() for c in cluster_neurons(rows, target_clusters=2)] == [[0, 1], [2, 4]]
    assert [c.tolist() for c in cluster_neurons(rows, threshold=0.0)] == [[0], [1], [2], [4]]
    with pytest.raises(ValueError, match="exactly one of threshold and target_clusters"):
        cluster_neurons(rows)


def test_merge_neurons_is_exact_for_positive_multiples():
    weight = np.array([[1.0, 2.0], [2.0, 4.0], [0.0, 1.0]], np.float32)
    bias = np.array([0.5, 1.0, -1.0], np.float32)
    next_weight = np.array([[1.0, 10.0, 100.0]], np.float32)
    new_weight, new_bias, new_next = merge_neurons(weight, bias, next_weight,
                                                   [np.array([0, 1]), np.array([2])])
    x = rng(23).standard_normal((2, 50))
    expected = next_weight @ np.maximum(weight @ x + bias[:, None], 0)
    actual = new_next @ np.maximum(new_weight @ x + new_bias[:, None], 0)
    np.testing.assert_allclose(actual, expected, rtol=1e-6)
    np.testing.assert_allclose(new_weight[0], [1.5, 3.0])  # the average filter
