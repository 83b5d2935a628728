"""Remove nodes whose results never reach a graph output, and unused constants.

Liveness is computed backwards from the graph outputs in one reverse sweep
(Aho et al., *Compilers*, 2nd ed., sec. 8.5): a node is live when any of its
outputs is a graph output or an input of a live node. IR ops have no side
effects, so a node that is not live can go.

Requires: nothing beyond a valid graph. Preserves: the function, and every
remaining node, value, name and graph input. Graph inputs are never removed,
even when unused, because they are the graph's calling convention.

Known limits: a multi-output node (split) is kept whole while any one of its
outputs is live.
"""

from __future__ import annotations

from qcompiler.ir import Graph
from qcompiler.ir.pipeline import PassResult


def eliminate_dead_code(graph: Graph) -> PassResult:
    live = {id(v) for v in graph.outputs}
    removed_nodes = 0
    # In reverse topological order every user of a node is decided before the
    # node itself, so a dead node's users are already gone when it is removed.
    for node in graph.reversed():
        if any(id(v) in live for v in node.outputs):
            live.update(id(v) for v in node.inputs if v is not None)
        else:
            graph.remove_node(node)
            removed_nodes += 1
    removed_constants = graph.remove_unused_constants()
    notes = []
    if removed_nodes or removed_constants:
        notes.append(f"removed {removed_nodes} nodes and {removed_constants} constants")
    return PassResult(graph, removed_nodes + removed_constants > 0, notes)


eliminate_dead_code.in_place = True  # rewrites the graph it is given
