"""The IR core: verify() catches each broken invariant, and the mutation API keeps them."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import assert_same_structure, graphs

from qcompiler.errors import VerificationError
from qcompiler.ir import Graph, Node, QParams, Value, structurally_equal


def _small_graph() -> Graph:
    """x -> conv(w, b) -> relu -> softmax, plus a split with two outputs that feed an add."""
    graph = Graph("small")
    x = graph.add_input("x", (1, 2, 4, 4))
    w = graph.add_constant("conv.weight", np.ones((4, 2, 3, 3), np.float32))
    b = graph.add_constant("conv.bias", np.zeros(4, np.float32))
    conv = graph.add_node("conv2d", [x, w, b], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]},
                          name="conv").output
    relu = graph.add_node("relu", [conv]).output
    soft = graph.add_node("softmax", [relu], {"dim": 1}).output
    left, right = graph.add_node("split", [soft], {"axis": 1, "sizes": [2, 2]}, name="half").outputs
    graph.outputs = [graph.add_node("add", [left, right], name="sum").output]
    return graph.verify()


# ---- verify() catches each broken invariant ----------------------------------------


def _wrong_shape(g):
    g.values["relu"].shape = (1, 4, 4, 5)


def _unknown_op(g):
    g.nodes[1].op = "frobnicate"


def _missing_attr(g):
    del g.nodes[2].attrs["dim"]


def _unknown_attr(g):
    g.nodes[1].attrs["slope"] = 0.1


def _out_of_order(g):
    relu = g.nodes[1]
    g.create_node("sigmoid", [relu.output], ["early"], [((1, 4, 4, 4), "f32")], before=g.nodes[0])


def _bad_arity(g):
    relu = g.nodes[1]
    relu.inputs.append(g.values["conv.bias"])
    g.values["conv.bias"].users.append(relu)


def _user_missing(g):
    g.values["conv"].users.clear()


def _stray_user(g):
    g.values["x"].users.append(g.nodes[1])


def _user_not_in_graph(g):
    g.values["x"].users.append(Node("relu", [g.values["x"]], [Value("ghost", (1, 2, 4, 4))]))


def _constant_shape(g):
    g.values["conv.bias"].data = np.zeros(5, np.float32)


def _constant_dtype(g):
    g.values["conv.bias"].data = np.zeros(4, np.int32)


def _constant_odd_dtype(g):
    g.values["conv.bias"].data = np.zeros(4, np.complex64)


def _constant_with_producer(g):
    g.values["conv.bias"].producer = g.nodes[0]


def _undefined_output(g):
    g.outputs = [Value("nowhere", (1,))]


def _duplicate_name(g):
    g.nodes[1].outputs[0].name = "conv"


def _bad_dtype(g):
    g.values["x"].dtype = "f8"


def _qparams_per_tensor_with_vector(g):
    g.values["x"].qparams = QParams([0.1, 0.2], [0, 0])


def _qparams_axis_out_of_range(g):
    g.values["x"].qparams = QParams([0.1], [0], axis=4)


def _qparams_channel_count(g):
    g.values["conv.weight"].qparams = QParams([0.1, 0.2, 0.3], [0], axis=0)


def _qparams_zero_points(g):
    g.values["conv.weight"].qparams = QParams([0.1] * 4, [0, 0], axis=0)


def _produced_input(g):
    g.inputs.append(g.values["relu"])


@pytest.mark.parametrize("break_graph, message", [
    (_wrong_shape, r"node %relu \(relu\): outputs are recorded as \[\(\(1, 4, 4, 5\), 'f32'\)\] but the op "
                   r"gives \[\(\(1, 4, 4, 4\), 'f32'\)\]"),
    (_unknown_op, r"node %relu \(frobnicate\): unknown op 'frobnicate'; the \d+ IR ops are listed in "
                  r"qcompiler\.ir\.ops\.OPS"),
    (_missing_attr, r"node %softmax \(softmax\): op 'softmax' needs attribute 'dim'"),
    (_unknown_attr, r"node %relu \(relu\): op 'relu' has no attribute\(s\) \['slope'\]"),
    (_out_of_order, r"node %early \(sigmoid\) uses %relu before it is defined \(graph not topologically"),
    (_bad_arity, r"node %relu \(relu\): op 'relu' takes 1..1 inputs, got 2"),
    (_user_missing, r"node %relu \(relu\) is missing from users of %conv"),
    (_stray_user, r"users of %x list node %relu \(relu\) 1 time\(s\) but it reads the value 0 time\(s\)"),
    (_user_not_in_graph, r"%x lists a user that is not in the graph: <Node %ghost = relu>"),
    (_constant_shape, r"constant %conv.bias data does not match f32\[4\]: the array is f32\[5\]"),
    (_constant_dtype, r"constant %conv.bias data does not match f32\[4\]: the array is i32\[4\]"),
    (_constant_odd_dtype, r"constant %conv.bias data does not match f32\[4\]: the array is complex64\[4\]"),
    (_constant_with_producer, r"constant %conv.bias has a producer"),
    (_undefined_output, r"graph output %nowhere is not defined"),
    (_duplicate_name, r"value name %conv is not unique or not registered"),
    (_bad_dtype, r"%x has unknown dtype 'f8'"),
    (_qparams_per_tensor_with_vector, r"per-tensor qparams of %x have 2 scales; set axis"),
    (_qparams_axis_out_of_range, r"qparams axis 4 is out of range for %x: f32\[1,2,4,4\]"),
    (_qparams_channel_count, r"per-channel qparams of %conv.weight have 3 scales but axis 0 of "
                             r"f32\[4,2,3,3\] has 4 channels"),
    (_qparams_zero_points, r"qparams of %conv.weight have 4 scales but 2 zero points"),
    (_produced_input, r"graph input %relu must not be a constant or produced"),
])
def test_verify_names_each_broken_invariant(break_graph, message):
    graph = _small_graph()
    break_graph(graph)
    with pytest.raises(VerificationError, match=r"graph small failed verification:\n(.|\n)*" + message):
        graph.verify()


def test_verify_accepts_per_channel_qparams_with_one_zero_point():
    graph = _small_graph()
    graph.values["conv.weight"].qparams = QParams([0.1, 0.2, 0.3, 0.4], 0, axis=0, narrow_range=True)
    graph.values["x"].qparams = QParams(0.02, 128, signed=False)
    graph.verify()


def test_verify_lists_every_problem_up_to_twenty():
    graph = Graph("many")
    x = graph.add_input("x", (2,))
    for _ in range(25):
        graph.add_node("relu", [x]).output.shape = (3,)
    graph.outputs = [x]
    with pytest.raises(VerificationError, match=r"relu_19 \(relu\): outputs(.|\n)*\.\.\. and 5 more") as info:
        graph.verify()
    assert str(info.value).count("outputs are recorded as") == 20


def test_memoized_inference_does_not_hide_a_node_that_differs():
    # Three identical relus and two means: the memo must not vouch for the odd one out.
    graph = Graph()
    v = graph.add_input("x", (2, 3))
    for _ in range(3):
        v = graph.add_node("relu", [v]).output
    graph.add_node("mean", [v], {"dim": [1]})
    last = graph.add_node("mean", [v], {"dim": [1]})
    graph.outputs = [last.output]
    graph.verify()
    graph.nodes[2].output.shape = (3, 2)
    with pytest.raises(VerificationError, match=r"node %relu_2 \(relu\): outputs are recorded as"):
        graph.verify()
    graph.nodes[2].output.shape = (2, 3)
    last.attrs["dim"] = [0]
    message = r"node %mean_1 \(mean\): outputs are recorded as \[\(\(2,\), 'f32'\)\] but the op gives"
    with pytest.raises(VerificationError, match=message + r" \[\(\(3,\), 'f32'\)\]"):
        graph.verify()


# ---- mutation API --------------------------------------------------------------------


def test_add_node_before_inserts_in_place():
    graph = _small_graph()
    relu = graph.nodes[1]
    scaled = graph.add_node("mul", [graph.values["conv"], graph.values["conv"]], name="square", before=relu)
    relu.replace_input(graph.values["conv"], scaled.output)
    assert [n.name for n in graph] == ["conv", "square", "relu", "softmax", "half", "sum"]
    assert [n.name for n in graph.reversed()] == ["sum", "half", "softmax", "relu", "square", "conv"]
    assert len(graph) == 6 and graph.values["conv"].users == [scaled, scaled]
    graph.verify()


def test_insert_before_a_node_of_another_graph_is_refused():
    graph, other = _small_graph(), _small_graph()
    with pytest.raises(ValueError, match=r"cannot insert before node %relu \(relu\): it is not in graph sm"):
        graph.add_node("relu", [graph.values["x"]], before=other.nodes[1])
    assert len(other) == 5
    other.verify()


def test_remove_node_refuses_while_outputs_are_used():
    graph = _small_graph()
    with pytest.raises(ValueError, match=r"cannot remove node %relu \(relu\): output %relu is still used"):
        graph.remove_node(graph.nodes[1])
    with pytest.raises(ValueError, match=r"cannot remove node %sum \(add\): output %sum is still used"):
        graph.remove_node(graph.nodes[-1])  # a graph output counts as a use
    graph.verify()


def test_remove_node_unlinks_it_and_its_outputs():
    graph = _small_graph()
    softmax = graph.nodes[2]
    graph.replace_all_uses(softmax.output, graph.values["relu"])
    graph.remove_node(softmax)
    assert [n.name for n in graph] == ["conv", "relu", "half", "sum"] and len(graph) == 4
    assert "softmax" not in graph.values and softmax.graph is None
    assert graph.values["relu"].users == [graph.nodes[2]]
    graph.verify()


def test_remove_node_of_another_graph_is_refused():
    graph, other = _small_graph(), _small_graph()
    other.outputs = []
    with pytest.raises(ValueError, match=r"cannot remove node %sum \(add\): it is not in graph small"):
        graph.remove_node(other.nodes[-1])
    assert len(graph) == 5 and len(other) == 5


def test_nodes_can_be_removed_while_iterating():
    graph = Graph()
    v = graph.add_input("x", (3,))
    for _ in range(4):
        v = graph.add_node("sigmoid", [graph.add_node("relu", [v]).output]).output
    graph.outputs = [v]
    for node in graph:
        if node.op == "relu":
            graph.replace_all_uses(node.output, node.inputs[0])
            graph.remove_node(node)
    assert [n.op for n in graph] == ["sigmoid"] * 4 and len(graph) == 4
    graph.verify()


def test_replace_all_uses_rewires_every_use_and_the_graph_outputs():
    graph = Graph()
    x = graph.add_input("x", (3,))
    old = graph.add_node("relu", [x]).output
    twice = graph.add_node("add", [old, old]).output
    new = graph.add_node("sigmoid", [x], before=twice.producer).output
    graph.outputs = [old, twice]
    graph.replace_all_uses(old, new)
    assert twice.producer.inputs == [new, new] and old.users == [] and new.users == [twice.producer] * 2
    assert graph.outputs == [new, twice]
    graph.remove_node(old.producer)
    graph.verify()


def test_replace_all_uses_with_a_value_computed_from_the_old_one():
    # Inserting `q = f(x)` after x and sending x's other users to q must not loop q onto itself.
    graph = _small_graph()
    conv = graph.values["conv"]
    quant = graph.add_node("clamp", [conv], {"min": -1.0, "max": 1.0}, before=graph.nodes[1])
    graph.replace_all_uses(conv, quant.output)
    assert quant.inputs == [conv] and conv.users == [quant] and graph.nodes[2].inputs == [quant.output]
    graph.verify()


def test_unique_names():
    graph = Graph()
    x = graph.add_input("x", (2,))
    assert graph.add_input("x", (2,)).name == "x_1"
    names = [graph.add_node("relu", [x]).name for _ in range(3)]
    assert names == ["relu", "relu_1", "relu_2"]
    assert graph.add_node("relu", [x], name="x").name == "x_2"
    assert graph.add_node("split", [x], {"axis": 0, "sizes": [1, 1]}, name="s").outputs[1].name == "s.1"
    assert graph.add_constant("", np.zeros(1)).name == "v"


def test_copy_is_independent_of_the_original():
    original = _small_graph()
    original.values["x"].qparams = QParams(0.1, 0)
    before = str(original)
    clone = original.copy()
    assert str(clone) == before and structurally_equal(clone, original)
    assert_same_structure(original, clone)
    # Mutate the copy in every way a pass might.
    clone.nodes[0].attrs["padding"][0] = 0
    clone.nodes[2].attrs["dim"] = 2
    clone.values["x"].qparams = None
    clone.values["relu"].shape = (9,)
    softmax = clone.nodes[2]
    clone.replace_all_uses(softmax.output, clone.values["relu"])
    clone.remove_node(softmax)
    clone.add_node("relu", [clone.values["x"]], name="extra")
    clone.outputs.append(clone.values["extra"])
    assert str(original) == before
    original.verify()
    assert all(n.graph is original for n in original) and all(n.graph is clone for n in clone)
    assert not any(u.graph is clone for v in original.values.values() for u in v.users)


@settings(max_examples=25, deadline=None)
@given(graphs())
def test_copy_of_random_graphs_is_structurally_equal(graph):
    clone = graph.copy()
    assert_same_structure(graph, clone)
    clone.verify()


def test_to_networkx_edges_and_node_kinds():
    graph = _small_graph()
    fc_weight = graph.add_constant("fc.w", np.ones((3, 4), np.float32))
    graph.add_node("linear", [graph.values["x"], fc_weight, None], name="fc")
    view = graph.to_networkx()
    kinds = {name: data["kind"] for name, data in view.nodes(data=True)}
    assert kinds == {"x": "input", "conv.weight": "constant", "conv.bias": "constant", "fc.w": "constant",
                     "conv": "node", "relu": "node", "softmax": "node", "half": "node", "sum": "node",
                     "fc": "node"}
    assert view.nodes["half"]["op"] == "split" and view.nodes["half"]["node"] is graph.nodes[3]
    edges = {(a, b): (d["value"], d["index"]) for a, b, d in view.edges(data=True)}
    assert edges == {
        ("x", "conv"): ("x", 0), ("conv.weight", "conv"): ("conv.weight", 1),
        ("conv.bias", "conv"): ("conv.bias", 2), ("conv", "relu"): ("conv", 0),
        ("relu", "softmax"): ("relu", 0), ("softmax", "half"): ("softmax", 0),
        # Both split outputs feed the add: one DiGraph edge; its data is the last input's.
        ("half", "sum"): ("half.1", 1),
        ("x", "fc"): ("x", 0), ("fc.w", "fc"): ("fc.w", 1),  # the absent bias has no edge
    }


def test_remove_unused_constants_keeps_used_and_output_constants():
    graph = _small_graph()
    graph.add_constant("orphan", np.zeros(3))
    kept = graph.add_constant("returned", np.zeros(3))
    graph.outputs.append(kept)
    assert graph.remove_unused_constants() == 1
    assert {v.name for v in graph.constants} == {"conv.weight", "conv.bias", "returned"}
    graph.verify()


# ---- performance: the linked list keeps edits O(1); inference is memoized -------------


def _chain(length: int) -> Graph:
    graph = Graph("chain")
    v = graph.add_input("x", (1, 8))
    weight = graph.add_constant("w", np.eye(8, dtype=np.float32))
    for index in range(length):
        v = graph.add_node(("linear", "relu", "layer_norm", "clamp")[index % 4],
                           [v, weight] if index % 4 == 0 else [v],
                           {"normalized_shape": [8]} if index % 4 == 2 else
                           {"min": 0.0, "max": 6.0} if index % 4 == 3 else {}).output
    graph.outputs = [v]
    return graph


def test_building_editing_and_verifying_a_2000_node_chain_is_fast():
    start = time.perf_counter()
    graph = _chain(2000)
    graph.verify()
    for node in graph:  # insert before every node, then remove every inserted node
        if node.op == "relu":
            graph.create_node("sigmoid", [node.inputs[0]], ["probe"], [((1, 8), "f32")], before=node)
    assert len(graph) == 2500
    for node in graph:
        if node.op == "sigmoid":
            graph.remove_node(node)
    graph.verify()
    elapsed = time.perf_counter() - start
    # Generous for 2 shared cores (about 0.3 s of CPU when measured). Without the
    # inference memo, meta-tensor inference alone costs 0.1-4 ms a node.
    assert elapsed < 8.0, f"2000-node chain took {elapsed:.1f} s"
    assert len(graph) == 2000
