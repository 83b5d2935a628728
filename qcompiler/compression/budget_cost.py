"""Cost estimates for the budget search: MACs and parameters of a compression plan,
without rewriting the graph.

A conv or linear layer takes (output positions) x (weight elements) MACs (conv:
N*H*W*C_out * C_in/groups * k*k = N*H*W * numel(weight); linear likewise;
conv_transpose2d: input positions * numel(weight)). Removing channels removes whole
rows or columns of weights, so a weight that keeps the fraction f of its positions
along an axis keeps f of its elements and of its layer's MACs; the fractions of
different axes (input channels from one group, output channels from another)
multiply. This is exact for those layers. MACs of other ops (matmul) are held
fixed, as are constants the plan does not touch. Parameters are counted as
`qc.cost` counts them (constants read by nodes, without batch-norm statistics and
one-element literals).

For a layer decomposed at rank r by the channel method (or SVD), the two factors
take r * positions * (C_in*k*k + C_out) MACs and r * (C_in*k*k + C_out) weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qcompiler.analysis.cost import cost, node_macs
from qcompiler.compression.budget_sensitivity import Candidate, channel_rank_macs
from qcompiler.ir import Graph
from qcompiler.ir.ops import WEIGHTED_OPS


class PlanCost:
    """Estimated MACs and parameters of `graph` with each unit at some setting (channels
    kept, or a rank; all start untouched). `set` moves a unit, `saving` says what moving
    it would save, `estimate` gives the current total."""

    def __init__(self, graph: Graph, units: Sequence[Candidate]):
        report = cost(graph)
        self.totals = {"macs": report.macs, "params": report.params}
        self.units = list(units)
        self.kept = [unit.size for unit in units]
        if units and units[0].kind == "rank":
            # Per layer: (MACs, weight elements) undecomposed, and per unit of rank decomposed.
            self.rank_figures = []
            for unit in units:
                weight = unit.source.inputs[1].shape
                self.rank_figures.append((node_macs(unit.source), math.prod(weight),
                                          channel_rank_macs(unit.source, 1),
                                          weight[0] + math.prod(weight[1:])))
            return
        macs_of_node = {row.name: row.macs for row in report.per_node}
        self.macs_per_element: dict[str, float] = {}
        self.is_param: set[str] = set()
        for node in graph:
            for index, value in enumerate(node.inputs):
                if value is None or not value.is_constant:
                    continue
                if value.numel > 1 and not (node.op == "batch_norm" and index >= 3):
                    self.is_param.add(value.name)
                if index == 1 and node.op in WEIGHTED_OPS:
                    self.macs_per_element[value.name] = (self.macs_per_element.get(value.name, 0.0)
                                                         + macs_of_node[node.name] / value.numel)
        self.numel = {v.name: v.numel for v in graph.constants}
        # (value, axes) -> [total positions, positions removed]; per unit: (value, axes, width).
        self.slots: dict[tuple, list[int]] = {}
        self.touches: list[list[tuple[str, tuple, float]]] = []
        for unit in units:
            touches = []
            for member in unit.source.members:
                if member.is_constant:
                    key = (member.value, member.axes)
                    self.slots.setdefault(key, [int(np.prod(member.sizes)), 0])
                    width = float(np.mean([len(p) for p in member.positions]))
                    touches.append((member.value, member.axes, width))
            self.touches.append(touches)
        self.axes_of: dict[str, list[tuple]] = {}
        for value, axes in self.slots:
            self.axes_of.setdefault(value, []).append(axes)

    def _rank_figures(self, index: int, rank: int) -> tuple[int, int]:
        macs, params, macs_per_rank, params_per_rank = self.rank_figures[index]
        if rank >= self.units[index].size:
            return macs, params
        return rank * macs_per_rank, rank * params_per_rank

    def _value_cost(self, name: str) -> tuple[float, float]:
        """(MACs, params) of one constant at the current removals, minus the original."""
        fraction = 1.0
        for axes in self.axes_of[name]:
            total, removed = self.slots[(name, axes)]
            fraction *= max(total - removed, 0) / total
        lost = self.numel[name] * (1.0 - fraction)
        return -lost * self.macs_per_element.get(name, 0.0), -lost * (name in self.is_param)

    def _delta(self, index: int, kept: int) -> dict[str, float]:
        unit = self.units[index]
        if unit.kind == "rank":
            (m0, p0), (m1, p1) = self._rank_figures(index, self.kept[index]), self._rank_figures(index, kept)
            return {"macs": m1 - m0, "params": p1 - p0}
        values = {value for value, _, _ in self.touches[index]}
        before = [self._value_cost(v) for v in values]
        change = kept - self.kept[index]
        for value, axes, width in self.touches[index]:
            self.slots[(value, axes)][1] -= change * width
        after = [self._value_cost(v) for v in values]
        for value, axes, width in self.touches[index]:
            self.slots[(value, axes)][1] += change * width
        return {"macs": sum(a[0] - b[0] for a, b in zip(after, before, strict=True)),
                "params": sum(a[1] - b[1] for a, b in zip(after, before, strict=True))}

    def saving(self, index: int, kept: int, metric: str) -> float:
        return -self._delta(index, kept)["macs" if metric == "latency" else metric]

    def set(self, index: int, kept: int) -> None:
        delta = self._delta(index, kept)
        if self.units[index].kind == "channels":
            for value, axes, width in self.touches[index]:
                self.slots[(value, axes)][1] -= (kept - self.kept[index]) * width
        self.totals = {key: self.totals[key] + delta[key] for key in self.totals}
        self.kept[index] = kept

    def estimate(self, metric: str) -> float:
        return self.totals["macs" if metric == "latency" else metric]
