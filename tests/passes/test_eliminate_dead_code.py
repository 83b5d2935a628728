"""eliminate_dead_code: exactly the nodes and constants that cannot reach a graph
output go; the function and everything live stay the same."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import run

from qcompiler.ir import Graph
from qcompiler.ir.text import parse
from qcompiler.passes import eliminate_dead_code


def check_rewrite(before: str, expected: str, modified: bool = True):
    g = parse(before)
    result = eliminate_dead_code(g)
    g.verify()
    assert str(g) == str(parse(expected))
    assert result.modified is modified
    assert eliminate_dead_code(g).modified is False


def test_dead_chain_and_its_constant_go():
    check_rewrite(
        """
        graph main(%x: f32[2,4]) {
          %scale = const dense<[2.0, 2.0, 2.0, 2.0]> : f32[4]
          %unused = const dense<[1.0]> : f32[1]
          %y = relu(%x) : f32[2,4]
          %dead1 = mul(%y, %scale) : f32[2,4]
          %dead2 = sigmoid(%dead1) : f32[2,4]
          return %y
        }
        """,
        """
        graph main(%x: f32[2,4]) {
          %y = relu(%x) : f32[2,4]
          return %y
        }
        """)


def test_a_split_with_one_live_output_is_kept_whole():
    check_rewrite(
        """
        graph main(%x: f32[2,4]) {
          %a, %b = split(%x) {axis=1, sizes=[2, 2]} : f32[2,2], f32[2,2]
          %dead = tanh(%b) : f32[2,2]
          %y = relu(%a) : f32[2,2]
          return %y
        }
        """,
        """
        graph main(%x: f32[2,4]) {
          %a, %b = split(%x) {axis=1, sizes=[2, 2]} : f32[2,2], f32[2,2]
          %y = relu(%a) : f32[2,2]
          return %y
        }
        """)


def test_unused_graph_inputs_and_constant_outputs_stay():
    text = """
        graph main(%x: f32[2], %unused_input: f32[3]) {
          %c = const dense<[1.0, 2.0]> : f32[2]
          %y = add(%x, %c) : f32[2]
          return %y, %c
        }
        """
    check_rewrite(text, text, modified=False)


def test_a_dead_node_that_uses_a_live_value_goes():
    check_rewrite(
        """
        graph main(%x: f32[3]) {
          %y = relu(%x) : f32[3]
          %side = tanh(%y) : f32[3]
          %z = sigmoid(%y) : f32[3]
          return %z
        }
        """,
        """
        graph main(%x: f32[3]) {
          %y = relu(%x) : f32[3]
          %z = sigmoid(%y) : f32[3]
          return %z
        }
        """)


def test_notes_count_what_was_removed():
    g = parse("""
        graph main(%x: f32[3]) {
          %c = const dense<[1.0]> : f32[1]
          %dead = mul(%x, %c) : f32[3]
          return %x
        }
        """)
    assert eliminate_dead_code(g).notes == ["removed 1 nodes and 1 constants"]
    assert len(g) == 0 and g.constants == []


UNARY = ["relu", "tanh", "sigmoid"]
BINARY = ["add", "mul", "sub"]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_graphs_keep_their_function_and_lose_exactly_the_dead_nodes(data):
    """Random DAGs of elementwise ops with random outputs: after DCE every node reaches
    an output, the outputs compute the same values, and every live node survived."""
    g = Graph()
    values = [g.add_input("x", (4,)), g.add_constant("c", np.linspace(-1, 1, 4))]
    for _ in range(data.draw(st.integers(1, 12), label="nodes")):
        if data.draw(st.booleans(), label="binary"):
            op = data.draw(st.sampled_from(BINARY))
            args = [data.draw(st.sampled_from(values)), data.draw(st.sampled_from(values))]
        else:
            op, args = data.draw(st.sampled_from(UNARY)), [data.draw(st.sampled_from(values))]
        values.append(g.add_node(op, args).output)
    produced = values[2:]
    g.outputs = data.draw(st.lists(st.sampled_from(produced), min_size=1, max_size=3, unique=True))

    reachable = _reaches_outputs(g)
    before = g.copy()
    result = eliminate_dead_code(g)
    g.verify()
    assert {node.name for node in g} == reachable
    assert result.modified == (len(before) != len(g) or len(before.constants) != len(g.constants))
    x = torch.linspace(-2, 2, 4)
    for a, b in zip(run(before, x), run(g, x), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def _reaches_outputs(g: Graph) -> set[str]:
    """Names of the nodes with a path to a graph output, found forwards (independently of
    the pass's backward sweep) with networkx."""
    import networkx as nx

    graph = g.to_networkx()
    sinks = {v.producer.name for v in g.outputs if v.producer is not None}
    return {node.name for node in g
            if any(node.name == sink or nx.has_path(graph, node.name, sink) for sink in sinks)}
