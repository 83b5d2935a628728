"""Dependency groups on each structure that couples channels: chains, residual adds, concat,
split, slice, depthwise and grouped convs, flatten -> linear, attention heads; and the
reasons a group cannot be pruned."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import graphs

from qcompiler.compression.dependency import Group, Member, dependency_groups
from qcompiler.examples import models
from qcompiler.frontends.torch_export.capture import trace
from qcompiler.ir import Graph, Value


def conv(g: Graph, x: Value, out: int, name: str, kernel=3, groups=1, bias=False, padding=1) -> Value:
    generator = np.random.default_rng(len(g.values))
    weight = g.add_constant(f"{name}.weight",
                            generator.normal(size=(out, x.shape[1] // groups, kernel, kernel)))
    b = g.add_constant(f"{name}.bias", generator.normal(size=out)) if bias else None
    attrs = {"stride": [1, 1], "padding": [padding] * 2, "dilation": [1, 1], "groups": groups}
    return g.add_node("conv2d", [x, weight, b], attrs, name=name).output


def linear(g: Graph, x: Value, out: int, name: str) -> Value:
    weight = g.add_constant(f"{name}.weight", np.random.default_rng(3).normal(size=(out, x.shape[-1])))
    return g.add_node("linear", [x, weight], name=name).output


def batch_norm(g: Graph, x: Value, name: str) -> Value:
    c = x.shape[1]
    params = [g.add_constant(f"{name}.{p}", np.full(c, 0.5 + k)) for k, p in
              enumerate(["weight", "bias", "running_mean", "running_var"])]
    return g.add_node("batch_norm", [x, *params], name=name).output


def group_named(groups: list[Group], name: str) -> Group:
    found = [g for g in groups if g.name == name]
    assert found, f"no group {name}; groups: {[g.name for g in groups]}"
    return found[0]


def member(group: Group, value: str, axes=None) -> Member:
    found = [m for m in group.members if m.value == value and (axes is None or m.axes == axes)]
    assert len(found) == 1, f"{value} in group {group.name}: {[m.value for m in group.members]}"
    return found[0]


def roles(group: Group) -> set[tuple[str, tuple, str]]:
    return {(m.value, m.axes, m.role) for m in group.members}


def test_conv_batchnorm_relu_conv_chain():
    g = Graph()
    x = g.add_input("x", (1, 3, 6, 6))
    y = g.add_node("relu", [batch_norm(g, conv(g, x, 8, "conv1"), "bn")], name="relu").output
    g.outputs = [conv(g, y, 4, "conv2")]
    groups = dependency_groups(g)
    first = group_named(groups, "conv1")
    assert first.prunable and first.num_channels == 8 and first.width() == 1
    assert roles(first) == {
        ("conv1", (1,), "value"), ("conv1.weight", (0,), "out"), ("bn", (1,), "value"),
        ("bn.weight", (0,), "bn_weight"), ("bn.bias", (0,), "bn_bias"),
        ("bn.running_mean", (0,), "bn_mean"), ("bn.running_var", (0,), "bn_var"),
        ("relu", (1,), "value"), ("conv2.weight", (1,), "in")}
    assert all(m.describe_positions() == "i" for m in first.members)
    last = group_named(groups, "conv2")
    assert not last.prunable and last.reasons == ("%conv2 is a graph output",)
    # The input's channels are not tracked at all: conv1's input axis belongs to no group.
    assert not any(m.value == "conv1.weight" and m.axes == (1,) for grp in groups for m in grp.members)


def test_residual_add_puts_both_branches_in_one_group():
    g = Graph()
    x = g.add_input("x", (1, 3, 5, 5))
    trunk = g.add_node("relu", [conv(g, x, 8, "stem")], name="trunk").output
    branch = conv(g, g.add_node("relu", [conv(g, trunk, 4, "inner")]).output, 8, "expand")
    added = g.add_node("add", [trunk, branch], name="add").output
    g.outputs = [conv(g, added, 2, "head")]
    stream = group_named(dependency_groups(g), "stem")
    assert stream.prunable
    assert {("stem.weight", (0,), "out"), ("expand.weight", (0,), "out"), ("add", (1,), "value"),
            ("inner.weight", (1,), "in"), ("head.weight", (1,), "in")} <= roles(stream)


def test_concat_maps_each_input_to_an_offset():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    cat = g.add_node("concat", [conv(g, x, 8, "a"), conv(g, x, 6, "b")], {"dim": 1}, name="cat")
    g.outputs = [conv(g, cat.output, 2, "c")]
    groups = dependency_groups(g)
    a, b = group_named(groups, "a"), group_named(groups, "b")
    assert (a.num_channels, b.num_channels) == (8, 6)
    assert member(a, "cat").describe_positions() == "i"
    assert member(b, "cat").describe_positions() == "8 + i"
    assert member(b, "c.weight").describe_positions() == "8 + i"
    assert member(b, "c.weight").role == "in"


def test_split_and_slice_cut_a_group_into_windows():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    parts = g.add_node("split", [conv(g, x, 16, "conv")], {"axis": 1, "sizes": [4, 12]}, name="parts")
    window = g.add_node("slice", [parts.outputs[1]], {"axis": 1, "start": 2, "end": 10}, name="window")
    g.outputs = [conv(g, parts.outputs[0], 2, "p"), conv(g, window.output, 2, "q")]
    groups = {grp.name: grp for grp in dependency_groups(g)}
    assert {"conv[0:4]", "conv[6:14]", "conv[4:6,14:16]"} <= set(groups)
    assert member(groups["conv[6:14]"], "conv.weight").describe_positions() == "6 + i"
    assert member(groups["conv[6:14]"], "window").describe_positions() == "i"
    assert member(groups["conv[6:14]"], "parts.1").describe_positions() == "2 + i"
    # Channels the slice drops reach no reader: removing them is free, so they form a group too.
    dead = groups["conv[4:6,14:16]"]
    assert dead.prunable and {m.role for m in dead.members} == {"out", "value"}


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_ties_input_and_output_channels(multiplier):
    g = Graph()
    x = g.add_input("x", (1, 3, 5, 5))
    dw = conv(g, conv(g, x, 4, "expand"), 4 * multiplier, "dw", groups=4, bias=True)
    g.outputs = [conv(g, dw, 2, "project", kernel=1, padding=0)]
    group = group_named(dependency_groups(g), "expand")
    assert group.prunable and group.num_channels == 4
    filters = member(group, "dw.weight")
    assert filters.role == "depthwise"
    expected = "i" if multiplier == 1 else "2i + j (j < 2)"
    assert filters.describe_positions() == expected
    assert member(group, "dw.bias").describe_positions() == expected
    assert member(group, "project.weight").describe_positions() == expected


def test_grouped_conv_blocks_its_input_and_output_groups():
    g = Graph()
    x = g.add_input("x", (1, 3, 5, 5))
    grouped = conv(g, conv(g, x, 8, "first"), 8, "grouped", groups=2)
    g.outputs = [conv(g, grouped, 2, "last")]
    groups = dependency_groups(g)
    for name in ("first", "grouped"):
        group = group_named(groups, name)
        assert not group.prunable
        assert "conv2d %grouped has groups=2" in group.reasons[0]


@pytest.mark.parametrize("channels_last, expected", [(False, "9i + j (j < 9)"), (True, "i + 4j (j < 9)")])
def test_flatten_maps_a_channel_to_its_spatial_features(channels_last, expected):
    g = Graph()
    x = g.add_input("x", (2, 3, 3, 3))
    y = conv(g, x, 4, "conv")
    if channels_last:
        y = g.add_node("permute", [y], {"dims": [0, 2, 3, 1]}).output
    flat = g.add_node("flatten", [y], {"start_dim": 1}, name="flat").output
    g.outputs = [linear(g, flat, 5, "fc")]
    group = group_named(dependency_groups(g), "conv")
    assert group.prunable and group.num_channels == 4
    assert member(group, "fc.weight").describe_positions() == expected
    assert member(group, "flat").describe_positions() == expected


def test_linear_to_linear():
    g = Graph()
    x = g.add_input("x", (2, 7, 5))
    hidden = g.add_node("gelu", [linear(g, x, 12, "up")]).output
    g.outputs = [linear(g, hidden, 5, "down")]
    group = group_named(dependency_groups(g), "up")
    assert group.prunable and group.num_channels == 12
    assert (("down.weight", (1,), "in")) in roles(group)


def test_bert_style_heads_and_mlp_hidden_size():
    model, inputs = models.bert_style()
    groups = {grp.name: grp for grp in dependency_groups(trace(model, inputs))}
    heads = groups["layers.0.query"]
    assert heads.prunable and heads.num_channels == 4 and heads.width() == 8
    for linear_name in ("query", "key", "value"):
        assert member(heads, f"layers.0.{linear_name}.weight").role == "out"
    assert member(heads, "layers.0.attention_out.weight").describe_positions() == "8i + j (j < 8)"
    assert member(heads, "layers.0.softmax").describe_positions() == "i"  # the head axis of scores
    mlp = groups["layers.0.intermediate"]
    assert mlp.prunable and mlp.num_channels == 128
    assert ("layers.0.output.weight", (1,), "in") in roles(mlp)
    hidden = groups["word_embeddings"]
    assert not hidden.prunable and "layer_norm %embedding_norm normalises over the channels" in \
        hidden.reasons[0]
    assert not groups["classifier"].prunable


def test_reshape_that_spreads_channels_over_two_axes_blocks_a_reader():
    g = Graph()
    x = g.add_input("x", (1, 3, 2, 2))
    mixed = g.add_node("reshape", [conv(g, x, 4, "conv")], {"shape": [1, 2, 8]}, name="mixed")
    g.outputs = [linear(g, mixed.output, 3, "fc")]
    group = group_named(dependency_groups(g), "conv")
    # Channel c lands on elements 4c..4c+3 of the (2, 8) block: half a row, so it cannot come off
    # as a slice either.
    assert group.reasons[0] == "linear %fc reads channels spread over several axes"
    assert group.reasons[1] == ("the channels cover parts of axes [1, 2] of %mixed that do not come "
                                "off as whole slices")


@pytest.mark.parametrize("kernel, stride, padding, blocked", [
    (1, 2, 0, True),   # output position j reads input position 2j
    (3, 1, 1, True),   # each output position mixes three input positions
    (1, 1, 0, False),  # pointwise: position k stays position k
])
def test_a_conv_over_linear_features_on_a_spatial_axis(kernel, stride, padding, blocked):
    """A linear on the last axis of [N, C, H, W] makes W its feature axis; a conv that reads
    W spatially keeps positions in place only when it is pointwise (a strided 1x1 conv once
    let removal keep positions 0, 1, 2 of the conv's output for input positions 0, 1, 2)."""
    g = Graph()
    x = g.add_input("x", (1, 1, 1, 6))
    features = linear(g, x, 5, "fc")
    weight = g.add_constant("conv.weight", np.full((1, 1, kernel, kernel), 0.5))
    attrs = {"stride": [stride] * 2, "padding": [padding] * 2, "dilation": [1, 1], "groups": 1}
    mixed = g.add_node("conv2d", [features, weight], attrs, name="conv").output
    g.outputs = [linear(g, g.add_node("flatten", [mixed], {"start_dim": 1}).output, 3, "reader")]
    group = group_named(dependency_groups(g), "fc")
    if blocked:
        assert group.reasons == ("conv2d %conv convolves along the channel axis (a spatial axis)",)
    else:
        assert group.prunable and member(group, "reader.weight").role == "in"


@pytest.mark.parametrize("op, attrs, reason", [
    ("mean", {"dim": [1], "keepdim": True}, "mean %reduce averages over the channel axis"),
    ("softmax", {"dim": 1}, "softmax %reduce normalises over the channel axis"),
])
def test_reductions_over_channels_block(op, attrs, reason):
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    reduced = g.add_node(op, [conv(g, x, 4, "conv")], attrs, name="reduce").output
    g.outputs = [g.add_node("relu", [reduced]).output]
    assert group_named(dependency_groups(g), "conv").reasons == (reason,)


def test_channels_added_to_a_graph_input_cannot_shrink():
    g = Graph()
    x = g.add_input("x", (1, 4, 4, 4))
    summed = g.add_node("add", [x, conv(g, x, 4, "conv")], name="sum").output
    g.outputs = [conv(g, summed, 2, "next")]
    assert group_named(dependency_groups(g), "conv").reasons == ("%x is a graph input",)


def test_per_channel_constant_operand_is_a_member():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    scale = g.add_constant("scale", np.ones((1, 6, 1, 1)))
    scaled = g.add_node("mul", [conv(g, x, 6, "first"), scale], name="scaled").output
    g.outputs = [conv(g, scaled, 2, "last")]
    assert ("scale", (1,), "operand") in roles(group_named(dependency_groups(g), "first"))


def test_a_shared_weight_ties_the_channels_of_both_its_uses():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    left = conv(g, conv(g, x, 4, "t"), 6, "p")
    right = g.add_node("conv2d", [conv(g, x, 4, "u"), g.values["p.weight"]], left.producer.attrs,
                       name="q").output
    g.outputs = [conv(g, g.add_node("add", [left, right], name="sum").output, 2, "last")]
    groups = dependency_groups(g)
    inputs = group_named(groups, "t")  # both read by the shared columns: removed together
    assert {("t.weight", (0,), "out"), ("u.weight", (0,), "out"), ("p.weight", (1,), "in")} \
        <= roles(inputs)
    outputs = group_named(groups, "p")
    assert {("p", (1,), "value"), ("q", (1,), "value"), ("p.weight", (0,), "out")} <= roles(outputs)


def test_printout_is_a_table_of_members():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    g.outputs = [conv(g, conv(g, x, 8, "conv1"), 4, "conv2")]
    first, last = dependency_groups(g)
    lines = str(first).splitlines()
    assert lines[0] == "group conv1: 8 channels, prunable"
    assert lines[1].split() == ["value", "axes", "role", "node", "channel", "i", "at"]
    assert lines[3].split() == ["conv1.weight", "0", "out", "conv1", "i"]
    assert lines[4].split() == ["conv2.weight", "1", "in", "conv2", "i"]
    assert str(last).splitlines()[0] == \
        "group conv2: 4 channels, not prunable: %conv2 is a graph output"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(max_nodes=10, qparams=False, special_floats=False))
def test_groups_partition_every_tracked_channel_position(graph):
    """On random graphs: no crash, and each (value, axes, position) is in exactly one group."""
    seen: dict[tuple, int] = {}
    for group in dependency_groups(graph):
        assert group.num_channels > 0
        for m in group.members:
            assert all(len(p) > 0 for p in m.positions)
            for position in np.concatenate(m.positions).tolist():
                key = (m.value, m.axes, position)
                assert key not in seen, f"{key} in two groups"
                seen[key] = 1
    sizes = {}
    for (value, axes, _), _ in seen.items():
        sizes[(value, axes)] = sizes.get((value, axes), 0) + 1
    for (value, axes), count in sizes.items():
        assert count == int(np.prod([graph.values[value].shape[a] for a in axes]))
