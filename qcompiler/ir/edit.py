"""The graph-editing library: the small reads, writes and matches that passes share.

Reading a layer (a conv or linear node: data input 0, weight 1, optional bias 2):
`optional_input`, `layer_bias` (the float bias, behind a `fake_quant_bias` if any),
`output_channel_axis`, `input_channel_axis`.

Writing. Constants are never modified in place, because `Graph.copy` shares their
arrays: a rewrite makes a new constant and drops the old one once nothing reads it.
`set_optional_input`, `replace_constant`, `set_layer_bias`, `remove_if_unused`,
`rename_value` (a replacement takes over the name of what it replaces, so the rest of
the graph reads the same in text form).

Matching: `single_user_chain` (nodes that follow a value one after another, each the
only reader of the value before it), `moves_values_only`, `is_relu_like`, `is_relu6`,
`why_not_float_constant` and `why_not_private` (why a weight may not be rewritten, in
words for a pass's notes).

Selecting layers by name: `layer_names`, `select_layers`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

import numpy as np

from qcompiler.errors import PassError
from qcompiler.ir import ops
from qcompiler.ir.dtypes import FLOAT_DTYPES
from qcompiler.ir.graph import Graph, Node, Value

# ---- reading a layer ---------------------------------------------------------------------------


def optional_input(node: Node, index: int) -> Value | None:
    """Input `index` of `node`, or None when it is absent (missing or None)."""
    return node.inputs[index] if len(node.inputs) > index else None


def layer_bias(layer: Node) -> Value | None:
    """The float bias of a weighted layer (its input 2), looking through a fake_quant_bias."""
    bias = optional_input(layer, 2)
    if bias is not None and bias.producer is not None and bias.producer.op == "fake_quant_bias":
        return bias.producer.inputs[0]
    return bias


def output_channel_axis(layer: Node) -> int:
    """The axis of a weighted layer's output that holds its output channels. The weight's
    axes after the two channel axes are the output's trailing spatial axes, and the channels
    come just before them: axis 1 of a batched convolution, the last axis of linear."""
    return len(layer.output.shape) - (len(layer.inputs[1].shape) - 1)


def input_channel_axis(layer: Node) -> int:
    """The axis of a layer's data input that holds the channels its weight reads: axis 1 of
    a batched convolution, the last axis of linear and matmul."""
    return len(layer.inputs[0].shape) - (len(layer.inputs[1].shape) - 1)


# ---- writing ---------------------------------------------------------------------------------


def set_optional_input(node: Node, index: int, value: Value) -> None:
    """Fill the absent optional input `index` of `node` with `value`."""
    if optional_input(node, index) is not None:
        raise ValueError(f"{node.describe()} already has input {index} "
                         f"(%{node.inputs[index].name})")
    while len(node.inputs) <= index:
        node.inputs.append(None)
    node.inputs[index] = value
    value.users.append(node)


def remove_if_unused(graph: Graph, value: Value) -> None:
    """Remove `value` from the graph if no node reads it and it is no graph input or output."""
    if not value.users and value not in graph.outputs and value not in graph.inputs:
        graph.remove_value(value)


def replace_constant(graph: Graph, node: Node, index: int, data: np.ndarray, name: str) -> Value:
    """Make a new constant `name` holding `data` the input `index` of `node` (filling it if it
    is absent); the value it replaces is removed if nothing else reads it."""
    new = graph.add_constant(name, data)
    old = optional_input(node, index)
    if old is None:
        set_optional_input(node, index, new)
    else:
        node.replace_input(old, new)
        remove_if_unused(graph, old)
    return new


def set_layer_bias(graph: Graph, layer: Node, bias: Value) -> None:
    """Make the float constant `bias` the bias of `layer`: behind the layer's fake_quant_bias
    when it has one, else its input 2. The old float bias is removed if nothing else reads it.
    (A layer that gains a bias here gets no fake_quant_bias; where its quantization calls for
    one, `qcompiler.quantization.quantizers.quantize_layer_bias` adds it.)"""
    old = layer_bias(layer)
    if old is None:
        set_optional_input(layer, 2, bias)
        return
    holder = layer.inputs[2].producer if layer.inputs[2] is not old else layer
    holder.replace_input(old, bias)
    if old.is_constant:
        remove_if_unused(graph, old)


def rename_value(graph: Graph, value: Value, name: str) -> None:
    """Give `value` the name `name`, which no value of `graph` may hold."""
    if name in graph.values:
        raise ValueError(f"cannot rename %{value.name} to %{name}: the name is taken")
    del graph.values[value.name]
    value.name = name
    graph.values[name] = value


# ---- matching -----------------------------------------------------------------------------------


def single_user_chain(graph: Graph, value: Value, accept: Callable[[Node], bool]
                      ) -> tuple[list[Node], Value]:
    """The nodes that follow `value` one after another while `accept` takes them, each the
    only user of the value before it (which is not a graph output) and reading it as input
    0; and the last value reached (`value` itself when no node follows)."""
    chain: list[Node] = []
    while value not in graph.outputs and len(value.users) == 1:
        user = value.users[0]
        if user.inputs[0] is not value or not accept(user):
            break
        chain.append(user)
        value = user.output
    return chain, value


def moves_values_only(node: Node) -> bool:
    """True if `node` only moves values of its input 0 (the op table's `moves_values`), so
    it keeps the input's quantization exactly."""
    return ops.moves_values_only(node.op, node.attrs)


def _number_equals(value, number: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == number


def is_relu_like(node: Node) -> bool:
    """relu, or clamp(min=0) without an upper bound."""
    return node.op == "relu" or (node.op == "clamp" and _number_equals(node.attrs.get("min"), 0)
                                 and node.attrs.get("max") is None)


def is_relu6(node: Node) -> bool:
    return node.op == "clamp" and _number_equals(node.attrs.get("min"), 0) \
        and _number_equals(node.attrs.get("max"), 6)


def why_not_float_constant(value: Value, before_quantizing: str) -> str | None:
    """None if `value` is a float constant without quantization parameters; else what it is,
    in words that follow its name in a note ("%w is not a constant"). `before_quantizing`
    names the step to run before quantization ("equalize" -> "...; equalize before
    quantizing")."""
    if not value.is_constant:
        return "is not a constant"
    if value.dtype not in FLOAT_DTYPES:
        return f"is {value.dtype}, not a float"
    if value.qparams is not None:
        return f"is quantized; {before_quantizing} before quantizing"
    return None


def why_not_private(graph: Graph, value: Value, owner: Node, before_quantizing: str) -> str | None:
    """`why_not_float_constant`, and then whether another node (or a graph output) reads
    `value` too, so that rewriting it for `owner` would change them as well."""
    problem = why_not_float_constant(value, before_quantizing)
    if problem is not None:
        return problem
    others = dict.fromkeys(f"%{user.name}" for user in value.users if user is not owner)
    if others or value in graph.outputs:
        return "is shared with " + (", ".join(others) or "a graph output")
    return None


# ---- selecting layers by name ---------------------------------------------------------------------


def graph_stage(graph: Graph) -> str:
    """"integer" (from qc.lower_to_integer), "fake-quant" (from qc.quantize) or "float"."""
    categories = {ops.OPS[node.op].category for node in graph}
    return "integer" if "integer" in categories else "fake-quant" if "quant" in categories else "float"


def require_float_graph(graph: Graph, pass_name: str) -> None:
    """Raise PassError if `graph` is quantized (fake_quant or integer ops): the compression
    passes rewrite float weights, and on a quantized graph they would find nothing they may
    change and silently do nothing."""
    quantized = [node for node in graph if ops.OPS[node.op].category in ("quant", "integer")]
    if quantized:
        raise PassError(f"{pass_name} rewrites float graphs, but graph {graph.name} is quantized "
                        f"({len(quantized)} quantization or integer nodes, e.g. "
                        f"{quantized[0].describe()}): run {pass_name} on the float graph, then "
                        "quantize the result (qc.quantize)")


def layer_names(node: Node) -> list[str]:
    """The names a layer answers to: its node name, its weight's name, and that name
    without a trailing `.weight` (the torch module path)."""
    names = [node.name]
    weight = optional_input(node, 1)
    if weight is not None:
        names.append(weight.name)
        if weight.name.endswith(".weight"):
            names.append(weight.name[: -len(".weight")])
    return names


def select_layers(graph: Graph, op_names: Iterable[str], layers: Iterable[str] | None,
                  ignore: Iterable[str], scope: str) -> list[Node]:
    """The nodes with an op in `op_names` that match `layers` (all if None) and not `ignore`.

    Names are exact or fnmatch patterns (`layers.*.conv1`). A name that matches no
    weighted layer raises PassError with close names suggested; a name in `layers`
    that matches only layers outside `op_names` raises PassError naming their op.
    """
    # A set of op names is listed in a fixed order in messages.
    op_names = tuple(op_names) if isinstance(op_names, (list, tuple)) else tuple(sorted(op_names))
    weighted = [node for node in graph if node.op in ops.WEIGHTED_OPS]
    known = sorted({name for node in weighted for name in layer_names(node)})

    def matches(node: Node, pattern: str) -> bool:
        return any(fnmatchcase(name, pattern) for name in layer_names(node))

    for pattern in (*(layers or ()), *ignore):
        if not any(matches(node, pattern) for node in weighted):
            close = difflib.get_close_matches(pattern, known, n=3, cutoff=0.6)
            hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close
                    else f"the layers are named like {', '.join(known[:5]) or '(none)'}")
            raise PassError(f"no layer is named {pattern!r}; {hint}")
    for pattern in layers or ():
        if not any(matches(node, pattern) for node in weighted if node.op in op_names):
            found = sorted({node.op for node in weighted if matches(node, pattern)})
            raise PassError(f"layer {pattern!r} is {', '.join(found)}; {scope} applies to "
                            f"{', '.join(op_names)} layers")
    return [node for node in weighted if node.op in op_names
            and (layers is None or any(matches(node, p) for p in layers))
            and not any(matches(node, p) for p in ignore)]
