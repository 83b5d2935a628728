"""Turn the batch norms that could not be folded into depthwise 1x1 convolutions.

    %r = relu(%conv)                              %r = relu(%conv)
    %z = batch_norm(%r, %g, %B, %m, %v)    ->     %z = conv2d(%r, %z.weight, %z.bias) {groups=C}

A batch norm after a ReLU (CREPE-style pitch CNNs put it there), after a pooling layer or
on a graph input has no layer to fold into (`fold_batchnorm`). At inference it is still the
per-channel affine map `scale[c] * x[c] + shift[c]` (`qcompiler.numerics.batchnorm`), which
is exactly a depthwise convolution with a 1x1 kernel: weight `scale` as `[C, 1, 1, 1]`
(`[C, 1, 1]` for conv1d), bias `shift`, `groups = C`. As a conv it quantizes and lowers like
every other layer (per-channel weights, int32 bias, spec sections 1-3): one weight per
channel quantizes to +-127 exactly, so the integer form loses only the output rounding. A
batch norm on a [N, C] input (BatchNorm1d after a linear layer) becomes a conv1d between two
reshapes.

Requires: constant statistics and affine parameters, running_var + eps > 0; inputs of rank
2, 3 or 4 (others are left, with a note). Run after `fold_batchnorm` (what folds should
fold: it costs nothing at run time) and after cross-layer equalization (which does not
pass through a batch norm, and should see the graph it was designed for); before
`insert_fake_quant`. Preserves: the function (to float32 rounding: the conv computes
`x * scale + shift` rather than `(x - mean) / sqrt(var + eps) * gamma + beta`), shapes,
dtypes, and the batch norm's node and output names. Works in place.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Graph, Node
from qcompiler.ir.edit import remove_if_unused, rename_value
from qcompiler.ir.ops import attrs_with_defaults
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics.batchnorm import batchnorm_scale_shift


def convert_batchnorm_to_conv(graph: Graph) -> PassResult:
    converted, notes = [], []
    for node in graph.nodes:
        if node.op != "batch_norm":
            continue
        reason = _why_not(node)
        if reason is not None:
            notes.append(f"batch_norm %{node.name} left in place: {reason}")
            continue
        _convert(graph, node)
        converted.append(f"%{node.name}")
    if converted:
        notes.insert(0, f"{len(converted)} batch norm(s) that could not fold became depthwise 1x1 "
                        f"convolutions: {', '.join(converted)}")
    return PassResult(graph, bool(converted), notes)


convert_batchnorm_to_conv.in_place = True  # rewrites the graph it is given


def _why_not(bn: Node) -> str | None:
    x = bn.inputs[0]
    if len(x.shape) not in (2, 3, 4):
        return f"its input is {len(x.shape)}-D; depthwise convolutions take 2-D to 4-D inputs"
    if x.dtype != "f32":
        return f"its input is {x.dtype}, not f32"
    gamma, beta, mean, var = bn.inputs[1:5]
    for role, value in (("weight", gamma), ("bias", beta), ("running_mean", mean),
                        ("running_var", var)):
        if value is None:
            if role.startswith("running"):
                return f"it has no {role}"
            continue
        if not value.is_constant:
            return f"its {role} %{value.name} is not a constant"
    if ((var.data.astype(np.float64) + _eps(bn)) <= 0).any():
        return "running_var + eps is not positive in every channel"
    return None


def _convert(graph: Graph, bn: Node) -> None:
    x, gamma, beta, mean, var = bn.inputs
    scale, shift = batchnorm_scale_shift(None if gamma is None else gamma.data,
                                         None if beta is None else beta.data, mean.data, var.data,
                                         _eps(bn))
    channels, rank = x.shape[1], len(x.shape)
    spatial = 2 if rank == 4 else 1
    name = bn.name
    weight = graph.add_constant(graph.unique_name(f"{name}.weight"),
                                scale.astype(np.float32).reshape(channels, 1, *[1] * spatial))
    bias = graph.add_constant(graph.unique_name(f"{name}.bias"), shift.astype(np.float32))
    source = x
    if rank == 2:  # [N, C] -> [N, C, 1] for conv1d, and back after it
        source = graph.add_node("reshape", [x], {"shape": [-1, channels, 1]},
                                name=graph.unique_name(f"{name}.unsqueeze"), before=bn,
                                source=bn.source).output
    attrs = {"stride": [1] * spatial, "padding": [0] * spatial, "dilation": [1] * spatial,
             "groups": channels}
    conv = graph.add_node(f"conv{spatial}d", [source, weight, bias], attrs,
                          name=graph.unique_name(f"{name}.conv"), before=bn, source=bn.source)
    result = conv.output
    if rank == 2:
        result = graph.add_node("reshape", [result], {"shape": [-1, channels]},
                                name=graph.unique_name(f"{name}.squeeze"), before=bn,
                                source=bn.source).output
    result.qparams = bn.output.qparams
    graph.replace_all_uses(bn.output, result)
    graph.remove_node(bn)
    # The converted layer (a node is named after its output) takes over the batch norm's
    # name, so data-free statistics and a QuantConfig naming it keep working.
    rename_value(graph, result, name)
    for old in (gamma, beta, mean, var):
        if old is not None:
            remove_if_unused(graph, old)


def _eps(bn: Node) -> float:
    return attrs_with_defaults("batch_norm", bn.attrs)["eps"]
