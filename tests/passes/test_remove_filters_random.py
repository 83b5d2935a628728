"""remove_filters on random graphs: removing channels equals zeroing the layers' input columns
that read them (no compensation), and equals zeroing their filters (exact compensation), whatever
ops lie between producer and reader."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import run
from strategies import graphs, random_inputs
from test_remove_filters import conv, random_masks, zeroed_graph

from qcompiler.compression.dependency import PRODUCER_ROLES, dependency_groups
from qcompiler.ir import Graph
from qcompiler.passes import remove_filters


def read_outputs(graph: Graph) -> Graph:
    """Feed every graph output into a linear reader (after a flatten), so that its channels have
    a layer that reads them instead of being fixed by the graph's output."""
    outputs = []
    for k, value in enumerate(graph.outputs):
        flat = graph.add_node("flatten", [value], {"start_dim": 1}, name=f"reader{k}.flat").output
        weight = np.random.default_rng(k).normal(0, 0.3, (3, flat.shape[1]))
        outputs.append(graph.add_node("linear", [flat, graph.add_constant(f"reader{k}.weight", weight)],
                                      name=f"reader{k}").output)
    graph.outputs = outputs
    return graph


@st.composite
def channel_networks(draw) -> Graph:
    """Random CNNs made of the structures that couple channels: convs (dense, depthwise with
    multiplier, grouped), batch norms, activations, residual adds and per-channel scales, concat
    (of layers or constants), split and slice along channels, padded pooling."""
    g = Graph()
    x = g.add_input("x", (2, draw(st.integers(1, 3)), 5, 5))
    pool = [conv(g, x, draw(st.integers(2, 6)), "conv0", seed=0)]
    for i in range(1, draw(st.integers(2, 8))):
        v = pool[-1] if draw(st.booleans()) else draw(st.sampled_from(pool))
        channels = v.shape[1]
        kind = draw(st.sampled_from(["conv", "conv", "depthwise", "grouped", "bn", "act", "add",
                                     "scale", "concat", "split", "slice", "pool"]))
        if kind == "conv":
            kernel = draw(st.sampled_from([1, 3]))
            out = [conv(g, v, draw(st.integers(1, 6)), f"conv{i}", kernel, kernel // 2,
                        draw(st.booleans()), seed=i)]
        elif kind in ("depthwise", "grouped"):
            groups = channels if kind == "depthwise" else 2
            if channels % groups or groups == 1:
                continue
            weight = g.add_constant(f"conv{i}.weight", np.random.default_rng(i).normal(
                0, 0.4, (groups * draw(st.integers(1, 2)), channels // groups, 3, 3)))
            bias = g.add_constant(f"conv{i}.bias", np.full(weight.shape[0], 0.3))
            attrs = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": groups}
            out = [g.add_node("conv2d", [v, weight, bias], attrs, name=f"conv{i}").output]
        elif kind == "bn":
            generator = np.random.default_rng(i)
            params = [g.add_constant(f"bn{i}.{name}", generator.uniform(low, high, channels))
                      for name, low, high in [("weight", 0.5, 1.5), ("bias", -1, 1), ("mean", -1, 1),
                                              ("var", 0.5, 2)]]
            out = [g.add_node("batch_norm", [v, *params], name=f"bn{i}").output]
        elif kind == "act":
            op, attrs = draw(st.sampled_from([("relu", {}), ("clamp", {"min": 0.0, "max": 6.0}),
                                              ("gelu", {})]))
            out = [g.add_node(op, [v], attrs).output]
        elif kind in ("add", "scale"):
            partners = [p for p in pool if p.shape == v.shape and p is not v]
            if kind == "add" and partners:
                other = draw(st.sampled_from(partners))
            else:
                scale = np.random.default_rng(i).uniform(0.5, 2, (1, channels, 1, 1))
                other = g.add_constant(f"scale{i}", scale)
            out = [g.add_node(draw(st.sampled_from(["add", "mul"])), [v, other]).output]
        elif kind == "concat":
            partners = [p for p in pool if p is not v]
            other = draw(st.sampled_from(partners)) if partners and draw(st.booleans()) else \
                g.add_constant(f"part{i}", np.full((2, draw(st.integers(1, 2)), 5, 5), 0.5))
            out = [g.add_node("concat", draw(st.permutations([v, other])), {"dim": 1}).output]
        elif kind == "split":
            if channels < 2:
                continue
            cut = draw(st.integers(1, channels - 1))
            out = list(g.add_node("split", [v], {"axis": 1, "sizes": [cut, channels - cut]}).outputs)
        elif kind == "slice":
            start = draw(st.integers(0, channels - 1))
            end = draw(st.integers(start + 1, channels))
            out = [g.add_node("slice", [v], {"axis": 1, "start": start, "end": end}).output]
        else:  # padded pooling that keeps a constant channel constant
            op, attrs = draw(st.sampled_from([
                ("max_pool2d", {"dilation": [1, 1]}), ("avg_pool2d", {"count_include_pad": False})]))
            attrs.update(kernel_size=[3, 3], stride=[1, 1], padding=[1, 1])
            out = [g.add_node(op, [v], attrs).output]
        pool.extend(out)
    unused = [v for v in pool if not v.users and v is not pool[-1]]
    g.outputs = [pool[-1], *unused[:1]]
    return read_outputs(g)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=channel_networks(), seed=st.integers(0, 2**16))
def test_random_networks_equal_the_original_with_channels_zeroed(graph, seed):
    """Removal equals zeroing the removed channels' input columns in every layer that reads
    them (no compensation), and equals zeroing their filters (with exact compensation)."""
    groups = dependency_groups(graph)
    masks = random_masks(groups, seed)
    inputs = random_inputs(graph, seed)
    for compensate, roles in ((False, ("in",)), (True, PRODUCER_ROLES)):
        small = graph.copy()
        result = remove_filters(masks=masks, compensate_bias=compensate, exact_borders=True)(small)
        small.verify()
        assert result.modified == bool(masks)
        expected = run(zeroed_graph(graph, groups, masks, roles=roles), *inputs)
        for got, want in zip(run(small, *inputs), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(max_nodes=8, qparams=False, special_floats=False), seed=st.integers(0, 2**16))
def test_random_ir_graphs_equal_the_original_with_reader_columns_zeroed(graph, seed):
    """The same on the IR's generic random graphs (reshapes, transposes, layer norms, means...)."""
    graph = read_outputs(graph) if all(len(v.shape) >= 2 for v in graph.outputs) else graph
    groups = dependency_groups(graph)
    masks = random_masks(groups, seed)
    small = graph.copy()
    result = remove_filters(masks=masks, compensate_bias=False)(small)
    small.verify()
    assert result.modified == bool(masks)
    inputs = random_inputs(graph, seed)
    expected = run(zeroed_graph(graph, groups, masks, roles=("in",)), *inputs)
    for got, want in zip(run(small, *inputs), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
