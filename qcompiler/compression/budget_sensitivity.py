"""Sensitivity of a network's output to compressing one layer or channel group alone.

`measure_sensitivity(graph, calibration_data, method, criterion)` compresses each
*unit* by itself to a few settings and records the output error on the calibration
data against the untouched graph. A unit is

- for `method="remove_filters"`: a prunable dependency group (`qcompiler.compression.dependency`);
  its settings are numbers of channels kept, the channels removed first being the
  least important by `criterion`, ranked exactly as `remove_filters` ranks them;
- for `method="decompose_low_rank"`: a layer that pass can decompose (linear by SVD,
  conv by the channel method, `groups=1`); its settings are ranks, from the largest
  rank whose factors take fewer MACs than the layer down.

This is the per-layer sensitivity analysis of Li et al. 2017 ("Pruning Filters for
Efficient ConvNets", section 4.1), with the output error in place of accuracy so
that no labels are needed.

Nothing is rewritten while measuring: a setting is simulated by running the graph
(`qcompiler.ir.evaluate`) with some of its constants replaced.
Removing channels is simulated by zeroing their filters (every producer slice of
the group); `remove_filters` with bias compensation `"constant"` computes exactly
that function, away from the borders of zero-padded convolutions (see its
docstring). With `compensation="mean"` (the channel's calibration mean folded into
the reader's bias, Evci et al. 2018) the reader layers' columns of the removed
channels are zeroed as well and the response to the means is added to their
biases (a reader without a bias is given a zero one in the module first), which is
what `remove_filters(compensate_with="mean")` computes, borders included. A rank is
simulated by the truncated-SVD weight, which the two factors of the channel and SVD
decompositions multiply out to (Eckart and Young 1936: the best rank-r weight).

Errors: `"relative_l2"` is |y' - y| / |y| over all outputs and calibration inputs;
`"kl"` the mean KL(softmax(y) || softmax(y')) over rows of a single [N, classes]
output (`qcompiler.analysis.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qcompiler.analysis import metrics
from qcompiler.analysis.cost import node_macs
from qcompiler.compression import channel_surgery as surgery
from qcompiler.compression.channel_scores import channel_scores
from qcompiler.compression.dependency import PRODUCER_ROLES, READER_ROLES, Group, dependency_groups
from qcompiler.errors import OptionError
from qcompiler.ir import Graph, Node
from qcompiler.ir.dims import shape_at
from qcompiler.ir.edit import (
    input_channel_axis,
    optional_input,
    output_channel_axis,
    set_layer_bias,
    why_not_float_constant,
)
from qcompiler.ir.evaluate import Evaluator, input_batches
from qcompiler.ir.ops import OUT_IN_WEIGHTED_OPS
from qcompiler.numerics import low_rank

METHODS = ("remove_filters", "decompose_low_rank")
ERRORS = ("relative_l2", "kl")
DEFAULT_FRACTIONS = (0.125, 0.25, 0.5, 0.75)


@dataclass(frozen=True)
class UnitSensitivity:
    """The output error when this unit alone is compressed to each measured setting."""

    name: str  # the group name, or the layer's node name
    kind: str  # "channels" (a dependency group) or "rank" (a layer)
    size: int  # the group's channel count, or the layer's full rank
    measured: tuple[int, ...]  # channels kept / ranks measured, largest first
    errors: tuple[float, ...]  # the error at each measured setting
    removal_order: tuple[int, ...] = ()  # groups: channels, least important first

    def additive_error_at(self, kept: int, kind: str) -> float:
        """The additive form (see `additive`) of the error at `kept` channels (or rank),
        linearly interpolated between the measured settings, 0 at the unit's full size.
        The additive form is interpolated because it grows about linearly with the
        channels removed: each channel adds its own uncorrelated noise."""
        xs = np.array([*self.measured[::-1], self.size], np.float64)
        ys = np.array([*(additive(e, kind) for e in self.errors[::-1]), 0.0], np.float64)
        return float(np.interp(kept, xs, ys))


@dataclass(frozen=True)
class Sensitivity:
    """Per-unit sensitivities of one graph, for one method, criterion and error kind."""

    method: str
    criterion: str | None
    error: str
    units: tuple[UnitSensitivity, ...]
    calibration_count: int  # calibration inputs the errors were measured on
    compensation: str | None = None  # remove_filters' compensate_with that was simulated

    def __str__(self) -> str:
        what = self.method + (f" (criterion {self.criterion})" if self.criterion else "")
        lines = [f"sensitivity of the output ({self.error}, {self.calibration_count} calibration "
                 f"inputs) to {what}, one unit at a time:"]
        for unit in self.units:
            points = ", ".join(f"{k}: {e:.3g}" for k, e in zip(unit.measured, unit.errors, strict=True))
            label = "channels kept" if unit.kind == "channels" else "rank"
            lines.append(f"  {unit.name} ({unit.size}) {label} -> error  {points}")
        return "\n".join(lines)


# ---- running the graph ------------------------------------------------------------------------


def run_batches(graph: Graph, batches: Sequence[Sequence[torch.Tensor]],
                constants: Mapping[str, np.ndarray] | None = None) -> list[tuple[torch.Tensor, ...]]:
    """The graph's outputs on each batch (one tuple per batch), with the constants named in
    `constants` replaced (a compression simulated without rewriting the graph)."""
    evaluator = Evaluator(graph, constants=constants)
    return [tuple(per_batch[0] for per_batch in evaluator.run([batch])) for batch in batches]


def output_error(reference: Sequence[tuple], outputs: Sequence[tuple], kind: str) -> float:
    """The error of `outputs` against `reference` (lists of per-batch output tuples)."""
    if kind == "relative_l2":
        pairs = [(r, o) for ref, out in zip(reference, outputs, strict=True)
                 for r, o in zip(ref, out, strict=True)]
        noise = sum(float((o.double() - r.double()).square().sum()) for r, o in pairs)
        signal = sum(float(r.double().square().sum()) for ref in reference for r in ref)
        return math.sqrt(noise / signal) if signal > 0 else math.sqrt(noise)
    if kind == "kl":
        if any(len(ref) != 1 or ref[0].dim() != 2 for ref in reference):
            raise OptionError("error='kl' needs a graph with one [N, classes] output; use 'relative_l2'")
        return metrics.mean_kl_divergence(torch.cat([ref[0] for ref in reference]),
                                          torch.cat([out[0] for out in outputs]))
    raise OptionError(f"unknown error {kind!r}; choose one of {', '.join(ERRORS)}")


def additive(error: float, kind: str) -> float:
    """The form of an error that adds over independent perturbations: squared relative
    errors add (their noises are uncorrelated), KL divergences add to first order."""
    return error * error if kind == "relative_l2" else error


# ---- units ------------------------------------------------------------------------------------


def prunable_groups(graph: Graph) -> list[Group]:
    return [g for g in dependency_groups(graph) if g.prunable and g.num_channels > 1]


def removal_orders(graph: Graph, groups: Sequence[Group], criterion: str,
                   batches: Sequence[tuple]) -> dict[str, np.ndarray]:
    """Each group's channels, least important first, as `remove_filters` ranks them
    (its `channel_scores`), so that the channels this search removes are the ones the
    criterion names."""
    scores = channel_scores(graph, groups, criterion, batches)
    return {g.name: np.argsort(scores[g.name], kind="stable") for g in groups}


def with_reader_biases(graph: Graph, groups: Sequence[Group]) -> Graph:
    """A copy of `graph` in which every reader layer of `groups` has a bias of its own
    (conv/linear without one get zeros; a matmul gets an `add` of zeros after it), so
    that a compensation can be simulated by changing a constant. Same function."""
    graph = graph.copy()
    readers = {m.node for g in groups for m in g.members_with_role(*READER_ROLES)}
    for node in [n for n in graph if n.name in readers]:
        channels = node.output.shape[output_channel_axis(node)]
        zeros = np.zeros(channels, graph.values[node.inputs[1].name].data.dtype)
        if node.op == "matmul":
            constant = graph.add_constant(f"{node.name}.simulated_bias", zeros)
            users = list(node.output.users)
            added = graph.add_node("add", [node.output, constant], name=f"{node.name}.simulated_add",
                                   before=node._next)
            for user in users:
                user.replace_input(node.output, added.output)
            graph.outputs = [added.output if v is node.output else v for v in graph.outputs]
        elif optional_input(node, 2) is None:
            set_layer_bias(graph, node, graph.add_constant(f"{node.name}.simulated_bias", zeros))
    return graph.verify()


def reader_bias(graph: Graph, node_name: str) -> str:
    """The constant `with_reader_biases` gave (or left) reader `node_name` as its bias."""
    node = next(n for n in graph if n.name == node_name)
    return f"{node_name}.simulated_bias" if node.op == "matmul" else node.inputs[2].name


def decomposable_layers(graph: Graph) -> list[Node]:
    """Layers `decompose_low_rank(method="auto")` can decompose (see its docstring)."""
    layers = []
    for node in graph:
        weight = node.inputs[1] if node.op in OUT_IN_WEIGHTED_OPS else None
        if (weight is not None and why_not_float_constant(weight, "decompose") is None
                and node.attrs.get("groups", 1) == 1):
            layers.append(node)
    return layers


def channel_rank_macs(node: Node, rank: int) -> int:
    """MACs of `node` decomposed at `rank` by the channel method (or SVD); per sample, as
    `node_macs` counts a symbolic batch."""
    weight = node.inputs[1].shape
    positions = math.prod(shape_at(node.output.shape, 1)) // weight[0]
    return low_rank.channel_decomposition_macs(weight, positions, rank)


def fewer_macs_rank(node: Node) -> int:
    """The largest rank whose decomposition takes fewer MACs than the layer (0 if none)."""
    per_rank = channel_rank_macs(node, 1)
    full = low_rank.channel_full_rank(node.inputs[1].shape)
    return min(full, (node_macs(node) - 1) // per_rank)


# ---- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A unit the search may compress, and the settings its sensitivity is measured at."""

    name: str
    kind: str  # "channels" or "rank"
    size: int  # channels, or full rank
    measured: tuple[int, ...]  # channels kept / ranks to measure, largest first
    source: Group | Node


def candidate_units(graph: Graph, method: str, fractions: Sequence[float]) -> list[Candidate]:
    """The units of `method` in `graph`, each with its settings for `fractions` (of the
    channels removed, or of the full rank removed). A layer is a candidate only if some
    rank takes fewer MACs; its largest such rank is always measured."""
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise OptionError(f"fractions must be non-empty and each in (0, 1), got {tuple(fractions)}")
    units = []
    if method == "remove_filters":
        for group in prunable_groups(graph):
            n = group.num_channels
            kept = sorted({n - min(n - 1, max(1, round(f * n))) for f in fractions}, reverse=True)
            units.append(Candidate(group.name, "channels", n, tuple(kept), group))
        return units
    for node in decomposable_layers(graph):
        highest = fewer_macs_rank(node)
        if highest < 1:
            continue
        full = low_rank.channel_full_rank(node.inputs[1].shape)
        ranks = {highest} | {max(1, math.ceil(full * (1 - f))) for f in fractions}
        units.append(Candidate(node.name, "rank", full,
                               tuple(sorted((r for r in ranks if r <= highest), reverse=True)), node))
    return units


def measure_sensitivity(graph: Graph, calibration_data: Iterable, method: str = "remove_filters",
                        criterion: str | None = "l1", fractions: Sequence[float] = DEFAULT_FRACTIONS,
                        error: str = "relative_l2", compensation: str = "mean") -> Sensitivity:
    """Compress each unit alone to each of its settings (`candidate_units`) and measure the
    output error; see the module docstring. `compensation` is the `compensate_with` of
    `remove_filters` whose result is simulated."""
    if error not in ERRORS:
        raise OptionError(f"unknown error {error!r}; choose one of {', '.join(ERRORS)}")
    if compensation not in surgery.COMPENSATIONS:
        raise OptionError(f"unknown compensation {compensation!r}; choose one of "
                          f"{', '.join(surgery.COMPENSATIONS)}")
    candidates = candidate_units(graph, method, fractions)
    batches = input_batches(calibration_data, graph)
    by_mean = method == "remove_filters" and compensation == "mean"
    simulated = with_reader_biases(graph, [c.source for c in candidates]) if by_mean else graph
    reference = run_batches(simulated, batches)

    def error_with(replacements: dict[str, np.ndarray]) -> float:
        return output_error(reference, run_batches(simulated, batches, replacements), error)

    orders = (removal_orders(graph, [c.source for c in candidates], criterion, batches)
              if method == "remove_filters" else {})
    means = {}
    if by_mean:
        nodes = {n.name: n for n in graph}
        reads = {nodes[m.node].inputs[0].name: input_channel_axis(nodes[m.node])
                 for c in candidates for m in c.source.members_with_role(*READER_ROLES)}
        means = surgery.channel_means(graph, reads, batches)

    def removal(unit: Candidate, channels: np.ndarray) -> dict[str, np.ndarray]:
        """The constants that simulate removing `channels` of the unit's group."""
        replaced = {m.value: m.zeroed(graph.values[m.value].data, m.positions_of(channels))
                    for m in unit.source.members_with_role(*PRODUCER_ROLES)}
        if not by_mean:
            return replaced
        for member in unit.source.members_with_role(*READER_ROLES):
            node = next(n for n in simulated if n.name == member.node)
            positions = member.positions_of(channels)
            weight = graph.values[member.value].data
            replaced[member.value] = member.zeroed(replaced.get(member.value, weight), positions)
            bias = reader_bias(simulated, member.node)
            response, _ = surgery.constant_channel_response(
                node.op, np.take(weight, positions, axis=member.axes[0]),
                means[node.inputs[0].name][positions], node.attrs, node.inputs[0].shape)
            base = replaced.get(bias, simulated.values[bias].data)
            replaced[bias] = (base + response).astype(base.dtype)
        return replaced

    units = []
    for unit in candidates:
        if unit.kind == "channels":
            order = orders[unit.name]
            errors = [error_with(removal(unit, order[:unit.size - k])) for k in unit.measured]
            units.append(UnitSensitivity(unit.name, unit.kind, unit.size, unit.measured,
                                         tuple(errors), tuple(int(c) for c in order)))
        else:
            weight = unit.source.inputs[1]
            u, s, vt = low_rank.svd(low_rank.channel_matrix(weight.data))
            errors = [error_with({weight.name: ((u[:, :r] * s[:r]) @ vt[:r]).reshape(
                weight.shape).astype(weight.data.dtype)}) for r in unit.measured]
            units.append(UnitSensitivity(unit.name, unit.kind, unit.size, unit.measured,
                                         tuple(errors)))
    return Sensitivity(method, criterion if method == "remove_filters" else None, error,
                       tuple(units), sum(len(b[0]) for b in batches),
                       compensation if method == "remove_filters" else None)
