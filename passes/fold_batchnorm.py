"""Fold inference-mode batch norms into the convolution or linear layer before them.

    %y = conv2d(%x, %w, %b?)            %y = conv2d(%x, %w', %b')
    %z = batch_norm(%y, %g, %B, %m, %v)  ->   (uses of %z now use %y)

with `w' = w * scale`, `b' = b * scale + shift` per output channel (the math and
its references are in `qcompiler.numerics.batchnorm`; Jacob et al. 2018,
sec. 3.2). Producers handled: conv1d, conv2d, conv_transpose2d (any groups) and
linear; a chain conv -> BN -> BN folds both.

Requires: nothing beyond a valid graph. A batch norm that cannot be folded is
left in place and `PassResult.notes` says which one and why:
- its input is not the output of one of those layers (a graph input, a ReLU...);
- the layer's output has other users, or is a graph output (they would see the
  normalised values too);
- the layer's weight is shared with another node (folding would untie shared
  parameters and store a second copy of the weight);
- the layer's weight or bias, or the BN's statistics or affine parameters, are
  not constants, or the layer's weight carries quantization parameters (fold
  before quantizing);
- batch norm normalises axis 1, but the layer's output channels are on another
  axis (linear on a 3-D input, an unbatched convolution);
- running_var + eps is not positive in some channel.

Preserves: the function (to float32 rounding), every value's shape and dtype,
and the layer's node and output name; the BN output's quantization parameters
move to the layer's output. New weight and bias constants are created (named
`<old>.folded`); constants are never modified in place, because `Graph.copy`
shares arrays between copies. Old weights, biases and BN parameters that nothing
else uses are removed.

Known limits: a BN before a layer (BN -> conv) is not folded into the layer
after it; a BN separated from its layer by a reshape or by a channel-preserving
op is not folded.
"""

from __future__ import annotations

from qcompiler.ir import Graph, Node
from qcompiler.ir.edit import (
    optional_input,
    remove_if_unused,
    replace_constant,
    why_not_float_constant,
    why_not_private,
)
from qcompiler.ir.ops import WEIGHTED_OPS, attrs_with_defaults
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics.batchnorm import batchnorm_scale_shift, fold_batchnorm_into_weights


def fold_batchnorm(graph: Graph) -> PassResult:
    folded = 0
    notes: list[str] = []
    for node in graph:
        if node.op != "batch_norm":
            continue
        reason = _why_not_foldable(graph, node)
        if reason is not None:
            notes.append(f"batch_norm %{node.name} left in place: {reason}")
            continue
        _fold(graph, node)
        folded += 1
    return PassResult(graph, folded > 0, notes)


fold_batchnorm.in_place = True  # rewrites the graph it is given


def _why_not_foldable(graph: Graph, bn: Node) -> str | None:
    """None if `bn` can be folded into the layer before it, else the reason in words."""
    source = bn.inputs[0]
    layer = source.producer
    if layer is None:
        kind = "a constant" if source.is_constant else "a graph input"
        return f"its input %{source.name} is {kind}, not the output of a conv or linear layer"
    if layer.op not in WEIGHTED_OPS:
        return (f"its input %{source.name} comes from {layer.op}, not from "
                f"{', '.join(sorted(WEIGHTED_OPS))}")
    others = [user for user in source.users if user is not bn]
    if others:
        names = ", ".join(f"%{user.name}" for user in others)
        return f"the output %{source.name} of {layer.op} is also used by {names}"
    if source in graph.outputs:
        return f"the output %{source.name} of {layer.op} is also a graph output"
    # The weight's axes after [C_out, C_in] (or [C_in, C_out]) are the spatial axes of the
    # output, and the output channels are the axis just before them.
    channel_axis = len(source.shape) - (len(layer.inputs[1].shape) - 1)
    if channel_axis != 1:
        return (f"batch_norm normalises axis 1 but the output channels of {layer.op} "
                f"%{layer.name} are on axis {channel_axis} (shape {list(source.shape)})")

    weight, bias = layer.inputs[1], optional_input(layer, 2)
    for role, value in (("weight", weight), ("bias", bias)):
        problem = None if value is None else why_not_float_constant(value, "fold batch norms")
        if problem is not None:
            return f"the {role} %{value.name} of {layer.op} %{layer.name} {problem}"
    # A new bias is made for this layer, so only the weight must be its own.
    shared = why_not_private(graph, weight, layer, "fold batch norms")
    if shared is not None:
        return f"the weight %{weight.name} of %{layer.name} {shared}; folding would untie the shared weight"

    gamma, beta, mean, var = bn.inputs[1:5]
    for role, value in (("weight", gamma), ("bias", beta), ("running_mean", mean),
                        ("running_var", var)):
        if role.startswith("running") and value is None:
            return f"it has no {role} (batch statistics cannot be folded)"
        if value is not None and not value.is_constant:
            return f"its {role} %{value.name} is not a constant"
    if ((var.data.astype("float64") + _eps(bn)) <= 0).any():
        return "running_var + eps is not positive in every channel"
    return None


def _fold(graph: Graph, bn: Node) -> None:
    source = bn.inputs[0]
    layer = source.producer
    weight, bias = layer.inputs[1], optional_input(layer, 2)
    gamma, beta, mean, var = bn.inputs[1:5]

    scale, shift = batchnorm_scale_shift(
        None if gamma is None else gamma.data, None if beta is None else beta.data,
        mean.data, var.data, _eps(bn))
    new_weight_data, new_bias_data = fold_batchnorm_into_weights(
        weight.data, None if bias is None else bias.data, scale, shift,
        transposed=layer.op == "conv_transpose2d", groups=layer.attrs.get("groups", 1))

    replace_constant(graph, layer, 1, new_weight_data, f"{weight.name}.folded")
    replace_constant(graph, layer, 2, new_bias_data,
                     f"{bias.name}.folded" if bias is not None else f"{layer.name}.bias.folded")

    if source.qparams is None:
        source.qparams = bn.outputs[0].qparams
    graph.replace_all_uses(bn.outputs[0], source)
    graph.remove_node(bn)
    for old in (gamma, beta, mean, var):
        if old is not None:
            remove_if_unused(graph, old)


def _eps(bn: Node) -> float:
    return attrs_with_defaults("batch_norm", bn.attrs)["eps"]

