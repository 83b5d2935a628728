"""The inputs of linear layers: which layers share one, what calibration data puts in it,
and rescaling its channels without changing the function.

Shared by the passes that move per-input-channel scales between an activation and the
weights that read it: SmoothQuant (`qc.passes.migrate_activation_scales`) and AWQ
(`qc.passes.quantize_weights_grouped(method="awq")`).

    groups = linear_input_groups(graph)              # [(value, [linear, ...]), ...]
    stats = record_linear_inputs(graph, batches, [v for v, _ in groups], hessian=False)
    how = divide_input_channels(graph, value, linears, scales)   # x / s, W * s

`divide_input_channels` makes `x / s` where x is produced, so that the layers read it
with no extra op where possible:
- x is a layer_norm output: the division folds into its gamma and beta
  (LN(x; g, b) / s = LN(x; g / s, b / s)). If anything else reads the layer_norm's output
  too (a post-LN transformer's residual add), the layers get a copy of the layer_norm with
  the folded parameters (a layer_norm is cheap next to the layers it feeds);
- otherwise, with `allow_mul`, an explicit `mul` by the constant 1 / s in front of the
  layers (AWQ's ScaledActivation, Lin et al. 2024, sec. 3.3: used after GELU); without it,
  the group is left alone and None is returned.
The weights of every layer in the group are then multiplied column-wise by s, so the graph
computes the same function (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.edit import optional_input, replace_constant
from qcompiler.ir.evaluate import Evaluator


def linear_input_groups(graph: Graph) -> list[tuple[Value, list[Node]]]:
    """Each float activation read (as input 0) by linear layers with float constant [out, in]
    weights that nothing else shares, with those layers, in graph order."""
    groups: dict[int, tuple[Value, list[Node]]] = {}
    for node in graph:
        if node.op != "linear" or len(node.inputs) < 2:
            continue
        x, weight = node.inputs[0], node.inputs[1]
        if x.dtype != "f32" or x.is_constant or not weight.is_constant or weight.dtype != "f32" \
                or len(weight.users) != 1 or weight.qparams is not None:
            continue
        groups.setdefault(id(x), (x, []))[1].append(node)
    return list(groups.values())


@dataclass
class InputStatistics:
    """Per input channel over every token of the calibration data: max |x|, mean |x|, and
    (if asked) the sum of x x^T (GPTQ's Hessian is 2 / tokens times it), in float64."""

    abs_max: np.ndarray
    abs_sum: np.ndarray
    tokens: int
    gram: np.ndarray | None

    @property
    def abs_mean(self) -> np.ndarray:
        return self.abs_sum / max(self.tokens, 1)


class _Recorder(Evaluator):
    def __init__(self, graph: Graph, values: Sequence[Value], hessian: bool):
        super().__init__(graph)
        self.watched = {id(v): v for v in values}
        self.hessian = hessian
        self.stats: dict[str, InputStatistics] = {}
        self.mask: torch.Tensor | None = None  # the current batch's real tokens

    def store(self, value: Value, result) -> None:
        super().store(value, result)
        if id(value) not in self.watched:
            return
        for tensor in (result if isinstance(result, list) else [result]):
            rows = tensor.detach().to(torch.float64).reshape(-1, tensor.shape[-1]).numpy()
            if self.mask is not None and tuple(tensor.shape[:-1]) == tuple(self.mask.shape):
                rows = rows[self.mask.reshape(-1).numpy()]
            stats = self.stats.get(value.name)
            if stats is None:
                channels = rows.shape[1]
                stats = self.stats[value.name] = InputStatistics(
                    np.zeros(channels), np.zeros(channels), 0,
                    np.zeros((channels, channels)) if self.hessian else None)
            magnitude = np.abs(rows)
            stats.abs_max = np.maximum(stats.abs_max, magnitude.max(axis=0))
            stats.abs_sum += magnitude.sum(axis=0)
            stats.tokens += rows.shape[0]
            if stats.gram is not None:
                stats.gram += rows.T @ rows


def record_linear_inputs(graph: Graph, batches: Sequence[Sequence[torch.Tensor]],
                         values: Sequence[Value], *, hessian: bool = False,
                         token_mask: int | None = None) -> dict[str, InputStatistics]:
    """Statistics of each value in `values` (by name) over the graph run on `batches`
    (checked input tensors, `qcompiler.ir.evaluate.input_batches`), one batch at a time.
    `token_mask` is the index of the graph input that marks real tokens (an attention
    mask, nonzero = real, [batch, tokens]): the rows of a value whose leading dimensions are
    that shape are counted only where it is nonzero, so padding does not weigh on the
    statistics (values of other shapes count every row)."""
    recorder = _Recorder(graph, values, hessian)
    for batch in batches:
        recorder.mask = None if token_mask is None else batch[token_mask] != 0
        recorder.run([batch], wanted=list(values))
    return recorder.stats


def find_token_mask(graph: Graph) -> int | None:
    """The index of the graph input that is an attention mask: an integer or bool input of
    rank 2 whose name says `mask`; None if there is none."""
    for index, value in enumerate(graph.inputs):
        if "mask" in value.name.lower() and len(value.shape) == 2 and value.dtype in (
                "i64", "i32", "i16", "i8", "u8", "bool"):
            return index
    return None


def divide_input_channels(graph: Graph, value: Value, linears: Sequence[Node], scales: np.ndarray,
                          *, allow_mul: bool = False) -> str | None:
    """Make `linears` read value / scales (channel-wise on the last axis) and multiply their
    weight columns by scales; how it was done, in words, or None if it was not (see the
    module docstring)."""
    scales = np.asarray(scales, np.float64)
    producer = value.producer
    reason = None
    if producer is not None and producer.op == "layer_norm" and _folds_into(producer, scales):
        reason = _fold_into_layer_norm(graph, producer, linears, scales)
    elif allow_mul:
        inverse = graph.add_constant(graph.unique_name(f"{value.name}.inverse_scale"),
                                     (1.0 / scales).astype(np.float32))
        mul = graph.add_node("mul", [value, inverse], name=graph.unique_name(f"{value.name}.scaled"),
                             before=_first(graph, linears), source=linears[0].source)
        for linear in linears:
            linear.replace_input(value, mul.output)
        reason = f"divided by %{mul.name}"
    if reason is None:
        return None
    for linear in linears:
        weight = linear.inputs[1]
        data = (weight.data.astype(np.float64) * scales[None, :]).astype(np.float32)
        replace_constant(graph, linear, 1, data, graph.unique_name(weight.name))
    return reason


def _folds_into(layer_norm: Node, scales: np.ndarray) -> bool:
    shape = layer_norm.attrs.get("normalized_shape")
    return shape is not None and len(shape) == 1 and shape[0] == scales.size and all(
        v is None or v.is_constant for v in (optional_input(layer_norm, 1), optional_input(layer_norm, 2)))


def _fold_into_layer_norm(graph: Graph, layer_norm: Node, linears: Sequence[Node], scales) -> str:
    channels = scales.size
    gamma, beta = optional_input(layer_norm, 1), optional_input(layer_norm, 2)
    gamma_data = np.ones(channels) if gamma is None else gamma.data.astype(np.float64)
    beta_data = np.zeros(channels) if beta is None else beta.data.astype(np.float64)
    output = layer_norm.output
    others = [user for user in output.users if user not in linears] or output in graph.outputs
    target = layer_norm
    if others:  # the residual path still reads the unscaled layer_norm
        following = graph.nodes[graph.nodes.index(layer_norm) + 1]
        target = graph.add_node("layer_norm", [layer_norm.inputs[0], gamma, beta], dict(layer_norm.attrs),
                                name=graph.unique_name(f"{layer_norm.name}.smoothed"),
                                before=following, source=layer_norm.source)
        for linear in linears:
            linear.replace_input(output, target.output)
    for index, data, label in ((1, gamma_data, "weight"), (2, beta_data, "bias")):
        replace_constant(graph, target, index, (data / scales).astype(np.float32),
                         graph.unique_name(f"{target.name}.{label}"))
    return (f"folded into a copy of %{layer_norm.name} (%{target.name})" if others
            else f"folded into %{layer_norm.name}")


def _first(graph: Graph, nodes: Sequence[Node]) -> Node:
    members = {id(node) for node in nodes}
    return next(node for node in graph if id(node) in members)
