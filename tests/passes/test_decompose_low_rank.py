"""decompose_low_rank: exact at full rank, error falling with rank, ranks as asked, fewer MACs."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import run

import qcompiler as qc
from qcompiler.errors import PassError
from qcompiler.examples.models import ResNetStyle, digits_cnn, pretrained_weights_path
from qcompiler.frontends.torch_export.capture import trace
from qcompiler.ir import Graph, QParams, structurally_equal
from qcompiler.numerics import low_rank
from qcompiler.passes import decompose_low_rank


def single_layer(op, weight, x_shape, attrs=None, bias=True, seed=0) -> Graph:
    graph = Graph("single")
    x = graph.add_input("x", x_shape)
    w = graph.add_constant("layer.weight", weight)
    b = graph.add_constant("layer.bias", np.random.default_rng(seed).standard_normal(
        weight.shape[0]).astype(np.float32)) if bias else None
    graph.outputs = [graph.add_node(op, [x, w, b], attrs or {}, name="layer").output]
    return graph.verify()


def conv_attrs(stride=1, padding=0, dilation=1, dims=2):
    def listed(v):
        return v if isinstance(v, (list, str)) else [v] * dims
    return {"stride": listed(stride), "padding": listed(padding), "dilation": listed(dilation),
            "groups": 1}


def relative_error(graph_after: Graph, graph_before: Graph, inputs) -> float:
    expected = run(graph_before, *inputs)[0].numpy()
    return float(np.linalg.norm(run(graph_after, *inputs)[0].numpy() - expected) / np.linalg.norm(expected))


def seeded_inputs(graph: Graph, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(v.shape, generator=generator) for v in graph.inputs]


def decomposed(graph: Graph, **options):
    result = decompose_low_rank(**options)(graph.copy())
    return result.graph.verify(), result


def weight(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


FULL = {"rank": 1.0, "require_fewer_macs": False}

# (op, weight shape, input shape, attrs, method)
FULL_RANK_CASES = {
    "linear 3-D input": ("linear", (6, 12), (2, 5, 12), {}, "svd"),
    "channel stride/pad/dilation": ("conv2d", (8, 5, 3, 3), (2, 5, 13, 11),
                                    conv_attrs(2, 2, 2), "channel"),
    "spatial asymmetric": ("conv2d", (7, 4, 3, 5), (2, 4, 12, 14),
                           conv_attrs([2, 1], [1, 3], [1, 2]), "spatial"),
    "spatial padding same": ("conv2d", (6, 4, 3, 3), (1, 4, 9, 9),
                             conv_attrs(1, "same", 2), "spatial"),
    "tucker2 stride/pad": ("conv2d", (8, 6, 3, 3), (2, 6, 10, 10), conv_attrs(2, 1, 1), "tucker2"),
    "conv1d channel": ("conv1d", (8, 5, 3), (2, 5, 20), conv_attrs(2, 2, 2, dims=1), "channel"),
    "conv1d tucker2": ("conv1d", (8, 5, 3), (2, 5, 20), conv_attrs(1, 1, 1, dims=1), "tucker2"),
}


@pytest.mark.parametrize("case", FULL_RANK_CASES)
def test_full_rank_decomposition_reproduces_the_layer(case):
    op, shape, x_shape, attrs, method = FULL_RANK_CASES[case]
    graph = single_layer(op, weight(shape), x_shape, attrs)
    after, result = decomposed(graph, method=method, **FULL)
    assert result.modified
    assert [n.op for n in after].count(op) == (3 if method == "tucker2" else 2)
    assert after.outputs[0].name == "layer"  # the last factor keeps the layer's output name
    assert "layer.weight" not in after.values
    for seed in range(3):
        assert relative_error(after, graph, seeded_inputs(graph, seed)) < 1e-5


@settings(max_examples=25, deadline=None)
@given(kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       method=st.sampled_from(["spatial", "channel", "tucker2"]))
def test_full_rank_carries_any_stride_padding_dilation(kernel, stride, padding, dilation, method):
    attrs = {"stride": list(stride), "padding": list(padding), "dilation": list(dilation), "groups": 1}
    graph = single_layer("conv2d", weight((5, 3, *kernel)), (1, 3, 11, 9), attrs)
    after, _ = decomposed(graph, method=method, **FULL)
    assert relative_error(after, graph, seeded_inputs(graph)) < 1e-5


def test_factor_attributes_split_stride_padding_dilation_for_spatial():
    attrs = conv_attrs([2, 3], [1, 2], [3, 1])
    graph = single_layer("conv2d", weight((4, 2, 3, 3)), (1, 2, 16, 16), attrs)
    after, _ = decomposed(graph, method="spatial", **FULL)
    vertical, horizontal = after.nodes
    assert vertical.attrs == {"stride": [2, 1], "padding": [1, 0], "dilation": [3, 1], "groups": 1}
    assert horizontal.attrs == {"stride": [1, 3], "padding": [0, 2], "dilation": [1, 1], "groups": 1}
    assert vertical.inputs[1].shape[2:] == (3, 1) and horizontal.inputs[1].shape[2:] == (1, 3)
    assert vertical.inputs[2:] in ([], [None]) and horizontal.inputs[2].name == "layer.bias"


# ---- rank against error, on trained weights --------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet_state():
    path = pretrained_weights_path()
    if path is None:
        pytest.skip("the pretrained MobileNetV2 weights are not installed")
    return torch.load(path, map_location="cpu", weights_only=True)


def test_error_falls_as_rank_rises_on_a_pretrained_linear_layer(mobilenet_state):
    """A MobileNetV2 projection layer (960 -> 320, a 1 x 1 conv) as a linear layer."""
    w = mobilenet_state["features.17.conv.2.weight"].numpy()[:, :, 0, 0]
    graph = single_layer("linear", w, (64, 960))
    # Post-ReLU6 activations are non-negative.
    features = [torch.rand(64, 960, generator=torch.Generator().manual_seed(0)) * 3]
    errors = [relative_error(decomposed(graph, rank=r, require_fewer_macs=False)[0],
                             graph, features) for r in (8, 32, 96, 192, 320)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-5


def test_error_falls_as_rank_rises_on_the_pretrained_classifier(mobilenet_state):
    classifier = single_layer("linear", mobilenet_state["classifier.1.weight"].numpy(), (16, 1280))
    classifier.values["layer.bias"].data = mobilenet_state["classifier.1.bias"].numpy()
    features = [torch.rand(16, 1280, generator=torch.Generator().manual_seed(0)) * 3]
    errors = [relative_error(decomposed(classifier, rank=r, require_fewer_macs=False)[0],
                             classifier, features) for r in (16, 128, 512, 1000)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-5


@pytest.mark.parametrize("method", ["channel", "tucker2"])
def test_error_falls_as_rank_rises_on_a_pretrained_pointwise_conv(mobilenet_state, method):
    pointwise = mobilenet_state["features.17.conv.2.weight"].numpy()  # 960 -> 320, 1 x 1
    graph = single_layer("conv2d", pointwise, (1, 960, 7, 7), conv_attrs(), bias=False)
    inputs = [torch.rand(1, 960, 7, 7, generator=torch.Generator().manual_seed(1)) * 3]
    errors = [relative_error(decomposed(graph, method=method, rank=r, require_fewer_macs=False)[0],
                             graph, inputs) for r in (0.05, 0.2, 0.5, 0.8)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors


@settings(max_examples=10, deadline=None)
@given(ranks=st.lists(st.integers(1, 16), min_size=2, max_size=2, unique=True).map(sorted),
       method=st.sampled_from(["spatial", "channel"]))
def test_weight_error_falls_as_rank_rises_on_a_resnet_conv(ranks, method):
    """Eckart-Young makes the weight error monotone in the rank; checked on the graph's
    own factors of a resnet_style 3 x 3 conv (16 -> 16; full rank 16 for the channel
    method, 48 for spatial)."""
    torch.manual_seed(0)
    conv = ResNetStyle().layers[1].conv1.weight.detach().numpy()
    graph = single_layer("conv2d", conv, (1, 16, 8, 8), conv_attrs(1, 1, 1), bias=False)
    errors = []
    for rank in ranks:
        after, _ = decomposed(graph, method=method, rank=rank, require_fewer_macs=False)
        factors = [n.inputs[1].data for n in after]
        rebuild = low_rank.spatial_reconstruct if method == "spatial" else low_rank.channel_reconstruct
        errors.append(np.linalg.norm(rebuild(*factors) - conv))
    assert errors[1] <= errors[0] * (1 + 1e-6)


# ---- choosing the rank ----------------------------------------------------------------------


def test_energy_picks_the_smallest_rank_keeping_it(mobilenet_state):
    w = mobilenet_state["features.17.conv.2.weight"].numpy()[:, :, 0, 0]
    graph = single_layer("linear", w, (1, 960))
    after, result = decomposed(graph, energy=0.9)
    rank = after.nodes[0].inputs[1].shape[0]
    values = low_rank.singular_values(w)
    assert low_rank.retained_energy(values, rank) >= 0.9 > low_rank.retained_energy(values, rank - 1)
    assert f"at rank {rank}" in result.notes[0]


def mlp(seed=0) -> Graph:
    """Three linear layers: one nearly rank 4, two with flat spectra."""
    rng = np.random.default_rng(seed)
    graph = Graph("mlp")
    x = graph.add_input("x", (4, 64))
    nearly_low_rank = (rng.standard_normal((64, 4)) @ rng.standard_normal((4, 64))
                       + 0.01 * rng.standard_normal((64, 64)))
    for index, w in enumerate([nearly_low_rank, rng.standard_normal((64, 64)),
                               rng.standard_normal((32, 64))]):
        layer = graph.add_node("linear", [x, graph.add_constant(f"fc{index}.weight", w.astype(np.float32)),
                                          graph.add_constant(f"fc{index}.bias", np.zeros(w.shape[0]))],
                               name=f"fc{index}")
        x = graph.add_node("relu", [layer.output], name=f"relu{index}").output
    graph.outputs = [x]
    return graph.verify()


def test_global_mac_target_is_met_and_spent_on_the_redundant_layer():
    graph = mlp()
    after, result = decomposed(graph, target_macs_ratio=0.5)
    # Met, and not overshot by much: the last rank cut saves just enough.
    assert 0.45 * qc.cost(graph).macs <= qc.cost(after).macs <= 0.5 * qc.cost(graph).macs
    ranks = {n.name: n.inputs[1].shape[0] for n in after if n.name.endswith("factor1")}
    assert ranks["fc0.factor1"] <= 4  # the nearly rank-4 layer is cut first and hardest
    assert relative_error(after, graph, seeded_inputs(graph)) < 0.8


def test_per_layer_mac_target_holds_for_each_layer():
    graph = mlp()
    after, result = decomposed(graph, target_macs_ratio=0.4, budget="per_layer")
    before = {row.name: row.macs for row in qc.cost(graph).per_node if row.op == "linear"}
    after_macs = {}
    for row in qc.cost(after).per_node:
        if row.op == "linear":
            layer = row.name.split(".")[0]
            after_macs[layer] = after_macs.get(layer, 0) + row.macs
    assert set(after_macs) == set(before)
    for layer, macs in before.items():
        assert after_macs[layer] <= 0.4 * macs, layer


def first_factor_ranks(graph: Graph) -> dict[str, int]:
    return {n.name.split(".")[0]: n.inputs[1].shape[0] for n in graph if n.name.endswith("factor1")}


def test_round_to_keeps_chosen_ranks_at_multiples():
    graph = mlp()
    # Energy ranks are rounded up: at least the energy asked for, at a multiple of 8.
    plain = first_factor_ranks(decomposed(graph, energy=0.6, require_fewer_macs=False)[0])
    rounded = first_factor_ranks(decomposed(graph, energy=0.6, round_to=8, require_fewer_macs=False)[0])
    assert rounded == {layer: -(-rank // 8) * 8 for layer, rank in plain.items()}
    assert any(rank % 8 for rank in plain.values())  # the rounding did something
    # A MAC target is met with ranks at multiples only.
    after, _ = decomposed(graph, target_macs_ratio=0.5, round_to=8)
    assert qc.cost(after).macs <= 0.5 * qc.cost(graph).macs
    assert first_factor_ranks(after) and all(r % 8 == 0 for r in first_factor_ranks(after).values())
    after, _ = decomposed(graph, target_macs_ratio=0.4, budget="per_layer", round_to=8)
    assert first_factor_ranks(after) and all(r % 8 == 0 for r in first_factor_ranks(after).values())
    # A fraction is rounded; an int rank is taken as given.
    assert first_factor_ranks(decomposed(graph, rank=0.1, round_to=8)[0]) == {"fc0": 8, "fc1": 8, "fc2": 8}
    assert first_factor_ranks(decomposed(graph, rank=3, round_to=8)[0]) == {"fc0": 3, "fc1": 3, "fc2": 3}


def test_round_to_never_exceeds_a_modes_full_rank():
    graph = single_layer("conv2d", weight((12, 6, 3, 3)), (1, 6, 8, 8), conv_attrs(1, 1))
    after, _ = decomposed(graph, energy=0.5, method="tucker2", round_to=8, require_fewer_macs=False)
    core = next(n for n in after if n.name.endswith("factor2"))
    # Tucker-2 modes: 12 output and 6 input channels; 6 < 8 stays at its full rank.
    assert core.inputs[1].shape[1] == 6 and core.inputs[1].shape[0] in (8, 12)


def test_ranks_that_save_nothing_are_skipped_with_a_note():
    graph = single_layer("linear", weight((6, 8)), (1, 8))
    result = decompose_low_rank(rank=1.0)(graph.copy())
    assert not result.modified
    assert structurally_equal(result.graph, graph)
    assert result.notes == ["node %layer (linear) not decomposed: svd at rank 6 would take 84 MACs, "
                            "not fewer than 48"]


def test_decomposing_a_captured_model_lowers_its_macs():
    model, inputs = digits_cnn()
    graph = qc.Pipeline([qc.passes.fold_batchnorm]).run(trace(model, inputs))
    after = qc.Pipeline([decompose_low_rank(rank=0.25)]).run(graph)
    _, records = qc.Pipeline([decompose_low_rank(rank=0.25)]).run_with_report(graph)
    notes = records[0].notes
    assert qc.cost(after).macs < qc.cost(graph).macs
    assert any("groups=16; grouped and depthwise convolutions are not decomposed" in n for n in notes)
    assert any(n.startswith("node %classifier (linear) at ") and "decomposed by svd" in n
               for n in notes), notes
    expected = model(*inputs).detach().numpy()
    assert run(after, *inputs)[0].shape == expected.shape


# ---- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"rank": 0}, "rank must be at least 1, got 0"),
    ({"rank": 1.5}, r"a fractional rank must be in \(0, 1\], got 1.5"),
    ({"energy": 0.0}, r"energy must be in \(0, 1\], got 0.0"),
    ({"energy": 1.2}, r"energy must be in \(0, 1\], got 1.2"),
    ({"target_macs_ratio": 1.0}, r"target_macs_ratio must be in \(0, 1\), got 1.0"),
    ({}, "needs exactly one of rank=, energy= or target_macs_ratio=; got none"),
    ({"rank": 2, "energy": 0.5}, r"got \['rank', 'energy'\]"),
    ({"rank": 2, "method": "cp"}, "unknown method 'cp'; choose one of auto, svd, channel"),
    ({"rank": 2, "budget": "total"}, "budget must be 'global' or 'per_layer'"),
    ({"rank": 2, "layers": "fc"}, "layers must be a tuple of names, got the string 'fc'"),
    ({"rank": 2, "round_to": 0},
     r"round_to must be a positive int \(ranks are kept at multiples of it\), got 0"),
    ({"rank": 2, "round_to": 8.0}, "round_to must be a positive int .*got 8.0"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        decompose_low_rank(**options)


def test_a_rank_above_full_rank_is_an_error_and_leaves_the_graph_alone():
    graph = mlp()
    before = str(graph)
    with pytest.raises(PassError, match=r"node %fc2 \(linear\): rank 48 is above the full rank 32 "
                                        r"of its svd decomposition \(full rank 32\)"):
        decompose_low_rank(rank=48)(graph)
    assert str(graph) == before


def test_an_unknown_layer_name_is_an_error_with_close_names():
    graph = mlp()
    before = str(graph)
    with pytest.raises(PassError, match=r"no layer is named 'fc_1'; did you mean 'fc1'"):
        decompose_low_rank(rank=2, layers=("fc_1",))(graph)
    with pytest.raises(PassError, match=r"no layer is named 'fc9'"):
        decompose_low_rank(rank=2, ignore=("fc9",))(graph)
    assert str(graph) == before


def test_a_named_layer_the_method_cannot_take_is_an_error():
    with pytest.raises(PassError, match="layer 'fc1' is linear; method 'spatial' applies to conv2d"):
        decompose_low_rank(rank=2, method="spatial", layers=("fc1",))(mlp())


def test_layers_and_ignore_select_by_name_and_pattern():
    graph = mlp()
    only, _ = decomposed(graph, rank=2, layers=("fc*",), ignore=("fc1.weight",))
    assert sorted(n.name for n in only if n.op == "linear") == [
        "fc0", "fc0.factor1", "fc1", "fc2", "fc2.factor1"]


def test_layers_it_cannot_decompose_are_noted_and_not_touched():
    graph = Graph("skips")
    x = graph.add_input("x", (1, 4, 8, 8))
    depthwise = graph.add_node("conv2d", [x, graph.add_constant("dw.weight", weight((4, 1, 3, 3)))],
                               conv_attrs(1, 1) | {"groups": 4}, name="dw")
    dynamic = graph.add_input("w", (4, 4, 3, 3))
    conv = graph.add_node("conv2d", [depthwise.output, dynamic], conv_attrs(1, 1), name="dynamic")
    quantized = graph.add_constant("q.weight", weight((4, 4, 3, 3)))
    quantized.qparams = QParams(np.float32(0.1), np.int32(0))
    last = graph.add_node("conv2d", [conv.output, quantized], conv_attrs(1, 1), name="q")
    graph.outputs = [last.output]
    before = str(graph.verify())
    result = decompose_low_rank(rank=1)(graph)
    assert not result.modified and str(graph) == before
    assert result.notes == [
        "node %dw (conv2d) not decomposed: it has groups=4; grouped and depthwise convolutions "
        "are not decomposed",
        "node %dynamic (conv2d) not decomposed: its weight %w is not a constant",
        "node %q (conv2d) not decomposed: its weight %q.weight is quantized; decompose before "
        "quantizing",
    ]
