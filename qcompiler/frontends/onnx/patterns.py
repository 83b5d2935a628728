"""Activations ONNX spells as several ops, recognised after import and made one IR op again:

    x * sigmoid(x)                          -> silu(x)
    x * tanh(softplus(x))                   -> mish(x)
    (x * (erf(x / sqrt 2) + 1)) * 0.5       -> gelu(x)     (also x * (1 / sqrt 2) for the division)

Opset 17 has none of these ops (Gelu is opset 20, Mish 18), so torch.onnx and our own
export write the formulas. As one op each is quantized once and lowered to one lookup
table (docs/integer-spec.md, section 9), as a graph captured from torch is; left as
formulas, PTQ would put a quantizer after every step. A rule matches only where every
intermediate value has the one user the formula gives it, so nothing else reads a value
that disappears.

After the rewrites, each fake_quant's rounding is set from its producer again (half up after
an op that requantizes), since the producer may now be the recognised activation.
"""

from __future__ import annotations

import math

import numpy as np

from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.ops import OPS


def _only_user(value: Value) -> Node | None:
    return value.users[0] if len(value.users) == 1 and value.producer is not None else None


def _scalar(value: Value | None) -> float | None:
    if value is None or not value.is_constant or value.data.size != 1:
        return None
    return float(np.asarray(value.data).reshape(-1)[0])


def _other(node: Node, value: Value) -> Value | None:
    """The input of a two-input node that is not `value` (None if both or neither are)."""
    first, second = node.inputs
    if first is value and second is not value:
        return second
    if second is value and first is not value:
        return first
    return None


def _times_x(graph: Graph, inner: Node, x: Value) -> Node | None:
    """The node `x * inner` (either order), where inner's output has only that user."""
    user = _only_user(inner.output)
    if user is not None and user.op == "mul" and _other(user, inner.output) is x:
        return user
    return None


def _silu(graph: Graph, node: Node) -> tuple[Node, Value] | None:
    if node.op != "sigmoid":
        return None
    x = node.inputs[0]
    product = _times_x(graph, node, x)
    return (product, x) if product is not None else None


def _mish(graph: Graph, node: Node) -> tuple[Node, Value] | None:
    if node.op != "softplus" or node.attrs.get("beta", 1.0) != 1.0:
        return None
    x = node.inputs[0]
    tanh = _only_user(node.output)
    if tanh is None or tanh.op != "tanh":
        return None
    product = _times_x(graph, tanh, x)
    return (product, x) if product is not None else None


def _gelu(graph: Graph, node: Node) -> tuple[Node, Value] | None:
    if node.op not in ("div", "mul"):
        return None
    x = node.inputs[0]
    divisor = _scalar(node.inputs[1])
    if divisor is None or not math.isclose(
        divisor if node.op == "div" else 1 / divisor, math.sqrt(2), rel_tol=1e-6
    ):
        return None
    erf = _only_user(node.output)
    if erf is None or erf.op != "erf":
        return None
    plus_one = _only_user(erf.output)
    if plus_one is None or plus_one.op != "add" or _scalar(_other(plus_one, erf.output)) != 1.0:
        return None
    product = _times_x(graph, plus_one, x)
    if product is None:
        return None
    half = _only_user(product.output)
    if half is None or half.op != "mul" or _scalar(_other(half, product.output)) != 0.5:
        return None
    return half, x


_RULES = (("silu", _silu), ("mish", _mish), ("gelu", _gelu))


def recognize_activations(graph: Graph) -> int:
    """Rewrite the formulas above into their ops; returns how many were rewritten."""
    rewritten = 0
    for op, match in _RULES:
        for node in graph.nodes:
            if node.graph is not graph:
                continue  # removed by an earlier rewrite in this sweep
            found = match(graph, node)
            if found is None:
                continue
            last, x = found
            result = graph.add_node(op, [x], name=f"{last.output.name}.{op}", before=last, source=last.source)
            graph.replace_all_uses(last.output, result.output)
            _remove_dead_chain(graph, last)
            rewritten += 1
    if rewritten:
        _reset_rounding(graph)
    return rewritten


def _remove_dead_chain(graph: Graph, node: Node) -> None:
    """Remove `node` and then every producer left without users (the formula's steps)."""
    pending = [node]
    while pending:
        current = pending.pop()
        if current.graph is not graph or any(v.users or v in graph.outputs for v in current.outputs):
            continue
        producers = [v.producer for v in current.inputs if v is not None and v.producer is not None]
        graph.remove_node(current)
        pending.extend(producers)
    graph.remove_unused_constants()


def _reset_rounding(graph: Graph) -> None:
    for node in graph:
        if node.op == "fake_quant" and not node.inputs[0].is_constant:
            producer = node.inputs[0].producer
            requantizing = producer is not None and OPS[producer.op].requantizing
            node.attrs["rounding"] = "half_up" if requantizing else "half_to_even"
