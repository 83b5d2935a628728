"""remove_filters: the smaller graph computes what the original computes with the removed
channels' filters zeroed (the constant those channels still carry being folded into the next
layer's bias), on residual adds, depthwise convs, concat/split and attention heads; ratio,
round_to, scope and the criteria are honoured; errors leave the graph untouched."""

import copy

import numpy as np
import pytest
import torch
from oracles import run
from strategies import random_inputs

import qcompiler as qc
from qcompiler.analysis.cost import cost
from qcompiler.compression.dependency import PRODUCER_ROLES, Group, dependency_groups
from qcompiler.errors import PassError
from qcompiler.examples import models
from qcompiler.frontends.torch_export.capture import trace
from qcompiler.ir import BATCH, Graph, QParams, Value
from qcompiler.numerics.importance import kept_count
from qcompiler.passes import remove_filters


def random_masks(groups: list[Group], seed: int = 0) -> dict[str, np.ndarray]:
    """Remove about a third of the channels (at least one) of every prunable group."""
    generator = np.random.default_rng(seed)
    masks = {}
    for group in groups:
        if group.prunable and group.num_channels > 1:
            mask = np.ones(group.num_channels, bool)
            mask[generator.choice(group.num_channels, max(1, group.num_channels // 3), replace=False)] = False
            masks[group.name] = mask
    return masks


def zero_slices(array: np.ndarray, axes, positions) -> np.ndarray:
    """A copy of `array` with the given positions (flattened over `axes`) set to zero."""
    rest = [a for a in range(array.ndim) if a not in axes]
    moved = np.transpose(array, (*axes, *rest)).copy()
    flat = moved.reshape(int(np.prod([array.shape[a] for a in axes])), -1)
    flat[np.asarray(positions)] = 0
    return np.transpose(flat.reshape(moved.shape), np.argsort((*axes, *rest)))


def zeroed_module(model, groups, masks, roles=PRODUCER_ROLES):
    """The torch model with the slices of the removed channels zeroed (filters by default)."""
    zeroed = copy.deepcopy(model)
    state = zeroed.state_dict()
    for group in groups:
        if group.name in masks:
            removed = np.flatnonzero(~masks[group.name])
            for m in group.members_with_role(*roles):
                positions = np.concatenate([m.positions[c] for c in removed])
                state[m.value].copy_(torch.from_numpy(zero_slices(state[m.value].numpy(), m.axes,
                                                                  positions)))
    return zeroed


def check_against_zeroed_model(model, inputs, exact_borders=False, seed=0, graph=None):
    graph = trace(model, inputs) if graph is None else graph
    groups = dependency_groups(graph)
    masks = random_masks(groups, seed)
    small = graph.copy()
    result = remove_filters(masks=masks, exact_borders=exact_borders)(small)
    small.verify()
    assert result.modified
    with torch.no_grad():
        expected = zeroed_module(model, groups, masks)(*inputs)
    torch.testing.assert_close(run(small, *inputs)[0], expected, rtol=1e-5, atol=1e-5)
    assert cost(small).macs < 0.8 * cost(graph).macs
    return graph, small, groups, masks


@pytest.fixture(scope="module")
def resnet():
    return models.resnet_style()


@pytest.fixture(scope="module")
def resnet_graph(resnet):
    return trace(*resnet)  # traced once; tests run the pass on copies


def test_resnet_style_equals_zeroed_filters_across_residual_adds(resnet, resnet_graph):
    graph, small, groups, masks = check_against_zeroed_model(*resnet, exact_borders=True,
                                                             graph=resnet_graph.copy())
    stream = next(g for g in groups if g.name == "conv1")
    kept = int(masks["conv1"].sum())
    for name in ("relu", "layers.0.add", "layers.1.add", "layers.1.relu_1"):
        assert small.values[name].shape == (BATCH, kept, 32, 32)
    assert small.values["layers.2.downsample.0.weight"].shape[1] == kept
    assert stream.prunable


def test_mobilenet_v2_equals_zeroed_filters_through_depthwise_convs():
    # Every reader in MobileNetV2 is a 1x1 conv or the classifier: no padding, so the bias
    # compensation is exact without the border correction.
    graph, small, groups, masks = check_against_zeroed_model(*models.mobilenet_v2(resolution=32))
    dw = small.nodes[[n.name for n in small.nodes].index("features.2.conv.1.0")]
    assert dw.attrs["groups"] == dw.inputs[0].shape[1] == int(masks["features.2.conv.0.0"].sum())
    assert not any(n.op == "add" and n.name.endswith("border_add") for n in small)


def test_bert_style_heads_and_mlp_equal_zeroed_filters():
    graph, small, groups, masks = check_against_zeroed_model(*models.bert_style())
    heads = int(masks["layers.0.query"].sum())
    for name in ("layers.0.reshape", "layers.0.reshape_1", "layers.0.reshape_2"):
        assert small.values[name].shape == (BATCH, 16, heads, 8)
    assert small.values["layers.0.softmax"].shape == (BATCH, heads, 16, 16)
    reshape_back = next(n for n in small if n.name == "layers.0.reshape_3")
    assert reshape_back.attrs["shape"] == [-1, 16, heads * 8]
    assert small.values["layers.0.gelu"].shape[-1] == int(masks["layers.0.intermediate"].sum())


# ---- hand-built graphs ---------------------------------------------------------------------


def conv(g: Graph, x: Value, out: int, name: str, kernel=3, padding=1, bias=True, seed=0) -> Value:
    generator = np.random.default_rng(seed)
    weight = g.add_constant(f"{name}.weight", generator.normal(0, 0.4, (out, x.shape[1], kernel, kernel)))
    b = g.add_constant(f"{name}.bias", generator.normal(0, 0.5, out)) if bias else None
    attrs = {"stride": [1, 1], "padding": [padding] * 2, "dilation": [1, 1], "groups": 1}
    return g.add_node("conv2d", [x, weight, b], attrs, name=name).output


def zeroed_graph(graph: Graph, groups, masks, roles=PRODUCER_ROLES) -> Graph:
    zeroed = graph.copy()
    for group in groups:
        if group.name in masks:
            removed = np.flatnonzero(~np.asarray(masks[group.name]))
            for m in group.members_with_role(*roles):
                value = zeroed.values[m.value]
                value.data = zero_slices(value.data, m.axes,
                                         np.concatenate([m.positions[c] for c in removed]))
    return zeroed


def test_concat_and_split_offsets():
    g = Graph()
    x = g.add_input("x", (2, 3, 5, 5))
    a = g.add_node("relu", [conv(g, x, 6, "a", kernel=1, padding=0, seed=1)]).output
    b = g.add_node("relu", [conv(g, x, 10, "b", kernel=1, padding=0, seed=2)]).output
    cat = g.add_node("concat", [a, b], {"dim": 1}, name="cat").output
    parts = g.add_node("split", [cat], {"axis": 1, "sizes": [4, 12]}, name="parts")
    g.outputs = [conv(g, parts.outputs[0], 2, "p", kernel=1, padding=0, seed=3),
                 conv(g, parts.outputs[1], 2, "q", kernel=1, padding=0, seed=4)]
    groups = dependency_groups(g)
    assert {grp.name for grp in groups if grp.prunable} == {"a[0:4]", "a[4:6]", "b"}
    masks = {"a[0:4]": [True, False, True, False], "a[4:6]": [False, True],
             "b": [True] * 3 + [False] * 4 + [True] * 3}
    small = g.copy()
    remove_filters(masks=masks)(small)
    small.verify()
    assert next(n for n in small if n.name == "parts").attrs["sizes"] == [2, 1 + 6]
    assert small.values["cat"].shape == (2, 9, 5, 5)
    inputs = random_inputs(g)
    for got, want in zip(run(small, *inputs), run(zeroed_graph(g, groups, masks), *inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def two_conv_graph(padding: int) -> Graph:
    g = Graph()
    x = g.add_input("x", (2, 3, 8, 8))
    hidden = g.add_node("relu", [conv(g, x, 6, "conv1", seed=5)], name="relu").output
    g.outputs = [conv(g, hidden, 4, "conv2", padding=padding, seed=6)]
    return g


def test_bias_compensation_is_exact_in_the_interior_and_with_exact_borders():
    g = two_conv_graph(padding=1)
    groups = dependency_groups(g)
    masks = {"conv1": [True, False, True, False, False, True]}
    inputs = random_inputs(g, seed=1)
    want = run(zeroed_graph(g, groups, masks), *inputs)[0]
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))

    folded = g.copy()
    notes = remove_filters(masks=masks)(folded).notes
    got = run(folded, *inputs)[0]
    torch.testing.assert_close(got[interior], want[interior], rtol=1e-5, atol=1e-5)
    assert (got - want).abs().max() > 1e-3  # zero padding: border taps saw 0, not the constant
    assert any("exact away from the borders only" in note for note in notes)

    exact = g.copy()
    remove_filters(masks=masks, exact_borders=True)(exact)
    exact.verify()
    assert [n.name for n in exact if n.op == "add"] == ["conv2.border_add"]
    torch.testing.assert_close(run(exact, *inputs)[0], want, rtol=1e-5, atol=1e-5)

    # Without compensation, removal equals zeroing the readers' input columns instead.
    plain = g.copy()
    remove_filters(masks=masks, compensate_bias=False)(plain)
    columns_zeroed = zeroed_graph(g, groups, masks, roles=("in",))
    torch.testing.assert_close(run(plain, *inputs)[0], run(columns_zeroed, *inputs)[0],
                               rtol=1e-5, atol=1e-5)
    assert (run(plain, *inputs)[0] - want)[interior].abs().max() > 1e-3


def test_compensation_creates_a_bias_for_a_reader_without_one():
    g = Graph()
    x = g.add_input("x", (2, 3, 4, 4))
    hidden = g.add_node("relu", [conv(g, x, 4, "conv1", seed=7)]).output
    g.outputs = [conv(g, hidden, 3, "conv2", kernel=1, padding=0, bias=False, seed=8)]
    groups = dependency_groups(g)
    masks = {"conv1": [False, True, True, False]}
    small = g.copy()
    remove_filters(masks=masks)(small)
    assert small.nodes[-1].inputs[2].name == "conv2.bias"
    inputs = random_inputs(g)
    torch.testing.assert_close(run(small, *inputs)[0], run(zeroed_graph(g, groups, masks), *inputs)[0],
                               rtol=1e-5, atol=1e-5)


# ---- ratio, round_to, scope ------------------------------------------------------------------


def conv_channel_counts(g: Graph) -> dict[str, int]:
    return {n.name: n.inputs[1].shape[0] for n in g if n.op == "conv2d"}


def test_local_ratio_and_round_to(resnet_graph):
    graph = resnet_graph.copy()
    prunable = [grp for grp in dependency_groups(graph) if grp.prunable]
    for round_to in (None, 8):
        small = graph.copy()
        result = remove_filters(ratio=0.3, round_to=round_to)(small)
        small.verify()
        counts = conv_channel_counts(small)
        for group in prunable:
            producer = group.members_with_role("out")[0].node
            assert counts[producer] == kept_count(group.num_channels, 0.3, 1, round_to)
            assert round_to is None or counts[producer] % round_to == 0
        assert sum("removed" in note for note in result.notes) == len(prunable)


def test_global_scope_removes_the_ratio_of_all_channels(resnet_graph):
    graph = resnet_graph.copy()
    prunable = [grp for grp in dependency_groups(graph) if grp.prunable]
    total = sum(grp.num_channels for grp in prunable)
    small = graph.copy()
    remove_filters(ratio=0.3, scope="global", criterion="l2")(small)
    small.verify()
    counts = conv_channel_counts(small)
    kept = sum(counts[grp.members_with_role("out")[0].node] for grp in prunable)
    assert total - kept == round(0.3 * total)


def test_nothing_to_remove_means_unmodified(resnet_graph):
    graph = resnet_graph.copy()
    before = str(graph)
    assert remove_filters(ratio=0.0)(graph).modified is False
    masks = {grp.name: np.ones(grp.num_channels, bool) for grp in dependency_groups(graph)}
    assert remove_filters(masks=masks)(graph).modified is False
    assert str(graph) == before


def test_ignored_layers_keep_their_channels(resnet_graph):
    graph = resnet_graph.copy()
    small = graph.copy()
    remove_filters(ratio=0.5, ignored_layers=("layers.0.conv1", "layers.4"))(small)
    counts, original = conv_channel_counts(small), conv_channel_counts(graph)
    for name in ("layers.0.conv1", "layers.4.conv1", "layers.5.conv2"):  # layers.4 is in the stream
        assert counts[name] == original[name]
    assert counts["layers.1.conv1"] < original["layers.1.conv1"]


def test_runs_in_a_pipeline(resnet_graph):
    graph = resnet_graph.copy()
    small, records = qc.Pipeline([remove_filters(ratio=0.25)]).run_with_report(graph)
    assert records[0].name == "remove_filters" and records[0].modified
    assert cost(small).params < cost(graph).params


# ---- criteria -----------------------------------------------------------------------------------


def criterion_graph() -> tuple[Graph, int]:
    """conv1 (4 channels) -> bn -> relu -> conv2, where channel 2 is the weakest by every
    criterion: small filter, small gamma, negative pre-activation (ReLU output 0), small reader
    columns, and a filter at the centre of the others (the geometric median)."""
    g = Graph()
    x = g.add_input("x", (2, 3, 6, 6))
    generator = np.random.default_rng(9)
    w1 = generator.normal(0, 1, (4, 3, 3, 3))
    w1[2] = (w1[0] + w1[1] + w1[3]) / 3 * 0.01
    conv1 = g.add_node("conv2d", [x, g.add_constant("conv1.weight", w1)],
                       {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}, name="conv1")
    gamma, beta = np.array([1.0, 1.2, 0.05, 0.9]), np.array([0.5, 0.5, -5.0, 0.5])
    bn = g.add_node("batch_norm", [conv1.output, g.add_constant("bn.weight", gamma),
                                   g.add_constant("bn.bias", beta), g.add_constant("bn.mean", np.zeros(4)),
                                   g.add_constant("bn.var", np.ones(4))], name="bn")
    relu = g.add_node("relu", [bn.output], name="relu")
    w2 = generator.normal(0, 1, (5, 4, 1, 1))
    w2[:, 2] *= 0.01
    g.outputs = [g.add_node("conv2d", [relu.output, g.add_constant("conv2.weight", w2)],
                            {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1]}, name="conv2").output]
    return g, 2


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "bn_scale", "activation", "quantization"])
def test_each_criterion_removes_the_weakest_channel(criterion):
    g, weakest = criterion_graph()
    calibration = [torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    original = g.values["conv1.weight"].data
    remove_filters(ratio=0.25, criterion=criterion, calibration_data=calibration)(g)
    g.verify()
    kept_rows = g.values["conv1.weight"].data
    expected = np.delete(original, weakest, axis=0)
    np.testing.assert_array_equal(kept_rows, expected)


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 2])
def test_ratio_outside_zero_one_is_rejected(ratio):
    with pytest.raises(ValueError, match=r"remove_filters: ratio must be in \[0, 1\), got"):
        remove_filters(ratio=ratio)


@pytest.mark.parametrize("options, message", [
    ({"criterion": "l3"}, "unknown criterion 'l3'; choose one of l1, l2, fpgm, bn_scale"),
    ({"scope": "layer"}, "scope must be 'local' or 'global'"),
    ({"round_to": 0}, "round_to must be a positive int"),
    ({"ignored_layers": "conv1"}, "ignored_layers must be a tuple of names"),
    ({"criterion": "activation"}, "criterion 'activation' needs calibration_data"),
    ({"compensate_with": "mean"}, "compensate_with='mean' needs calibration_data"),
    ({"compensate_with": "median"}, "compensate_with must be one of constant, mean, got 'median'"),
])
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        remove_filters(**options)


def test_a_graph_in_place_of_options_is_explained():
    with pytest.raises(TypeError, match=r"remove_filters takes options, not a graph"):
        remove_filters(two_conv_graph(1))


def graph_errors():
    g = Graph()
    x = g.add_input("x", (1, 3, 4, 4))
    single = g.add_node("relu", [conv(g, x, 1, "single")]).output
    g.outputs = [conv(g, conv(g, single, 4, "wide"), 2, "head")]
    return g


@pytest.mark.parametrize("options, message", [
    ({"ratio": 0.6}, r"ratio 0.6 would remove every channel of group single \(1 channels\); lower "
                     "the ratio or add its layers to ignored_layers"),
    ({"ignored_layers": ("wid",)}, r"ignored_layers names 'wid', but no layer or weight has that "
                                   "name; did you mean wide"),
    ({"masks": {"wdie": [True] * 4}}, r"no dependency group is named 'wdie'; did you mean wide"),
    ({"masks": {"wide": [True] * 3}}, r"the mask for group wide has shape \[3\]; the group has 4"),
    ({"masks": {"head": [True, False]}}, r"group head cannot be pruned: %head is a graph output"),
    ({"masks": {"wide": [False] * 4}}, r"the mask for group wide removes every channel"),
    ({"criterion": "bn_scale"}, r"criterion 'bn_scale' needs a batch_norm in group single"),
])
def test_errors_leave_the_graph_untouched(options, message):
    g = graph_errors()
    before = str(g)
    with pytest.raises(PassError, match=message):
        remove_filters(**options)(g)
    assert str(g) == before


def test_quantized_weights_are_refused():
    g = graph_errors()
    g.values["wide.weight"].qparams = QParams(scale=np.full(4, 0.1), zero_point=np.zeros(4), axis=0)
    before = str(g)
    with pytest.raises(PassError, match=r"%wide.weight \(in group wide\) carries quantization "
                                        "parameters; remove filters before quantizing"):
        remove_filters(masks={"wide": [True, False, True, True]})(g)
    assert str(g) == before
