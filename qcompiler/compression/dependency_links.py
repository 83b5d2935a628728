"""Slots and links: the data structure behind `qcompiler.compression.dependency`.

`Analysis.run(rule_for)` walks the graph once in topological order, applying the
rule of each op (`qcompiler.compression.dependency_rules`). A slot is a
(value, axes) pair whose positions are the row-major flattened indices over its
axes (taken in ascending order). A rule links positions by *keys*: two positions
are tied when they carry the same key (for an elementwise op the key is the
position itself; for a concat input, the position plus the input's offset; for a
reshape, the element's index in the output). Links become edges between global
position ids, and `components()` labels the connected components.

A value gets its slots from its producer's rule (a layer's output channels, or
what flows in from its inputs); a rule that finds an input axis coupled to a
channel axis but not tracked (a graph input added to a conv output, a constant
bias tensor) creates a slot for it there: for a constant it is a member that
shrinks, for anything else a blocked slot, since nothing upstream could shrink.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.ops import attrs_with_defaults


@dataclass(eq=False)
class Slot:
    index: int
    value: Value
    axes: tuple[int, ...]
    sizes: tuple[int, ...]
    base: int  # global id of position 0
    role: str
    node: str
    reasons: list[str] = field(default_factory=list)
    _grid: dict | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.sizes, dtype=np.int64))

    def component(self, axis: int) -> np.ndarray:
        """The index along `axis` of every position of the slot."""
        if self._grid is None:
            self._grid = dict(zip(self.axes, np.unravel_index(np.arange(self.size), self.sizes),
                                  strict=True))
        return self._grid[axis]


@dataclass
class Contribution:
    """Positions `source_positions` of `source` tie to the positions of an output slot whose
    components on `target_axes` equal `keys` (one row per source position, one column per axis)."""

    source: Slot
    source_positions: np.ndarray
    keys: np.ndarray
    output: Value
    target_axes: tuple[int, ...]


def merged_axes(axis_sets: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Merge overlapping axis sets (one tensor holds disjoint slots)."""
    merged: list[set[int]] = []
    for axes in axis_sets:
        current = set(axes)
        for other in [m for m in merged if m & current]:
            merged.remove(other)
            current |= other
        merged.append(current)
    return [tuple(sorted(m)) for m in merged]


class Analysis:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.slots: list[Slot] = []
        self.by_value: dict[str, list[Slot]] = {}
        self.total = 0
        self._edges: list[tuple[np.ndarray, np.ndarray]] = []
        self._outputs = {id(v) for v in graph.outputs}
        self._inputs = {id(v) for v in graph.inputs}

    # ---- slots and links -----------------------------------------------------------------

    def slot(self, value: Value, axes, role: str = "value", node: str = "") -> Slot:
        axes = tuple(sorted(axes))
        for existing in self.by_value.get(value.name, []):
            if existing.axes == axes:
                return existing
        if not value.is_constant:
            role, node = "value", value.producer.name if value.producer is not None else ""
        slot = Slot(len(self.slots), value, axes, tuple(value.shape[a] for a in axes), self.total,
                    role, node)
        self.total += slot.size
        self.slots.append(slot)
        self.by_value.setdefault(value.name, []).append(slot)
        if id(value) in self._outputs:
            slot.reasons.append(f"%{value.name} is a graph output")
        if id(value) in self._inputs:
            slot.reasons.append(f"%{value.name} is a graph input")
        return slot

    def tracked(self, value: Value | None) -> list[Slot]:
        return [] if value is None else list(self.by_value.get(value.name, []))

    def covering(self, value: Value, axes) -> Slot | None:
        return next((s for s in self.tracked(value) if set(s.axes) & set(axes)), None)

    def operand(self, value: Value, axes, role: str, node: Node) -> Slot:
        """The slot of an input that a rule couples to a channel axis: a member for a
        constant, the tracked slot if there is one, else a blocked slot."""
        if not value.is_constant:
            found = self.covering(value, axes)
            if found is not None:
                return found
        slot = self.slot(value, axes, role, node.name)
        if not value.is_constant and not slot.reasons:
            slot.reasons.append(f"%{value.name} carries these channels into %{node.name} ({node.op}) "
                                "but is not produced by a layer the analysis follows")
        return slot

    def block(self, slot: Slot, reason: str) -> None:
        if reason not in slot.reasons:
            slot.reasons.append(reason)

    def link(self, a: Slot, positions_a, keys_a, b: Slot, positions_b, keys_b) -> None:
        """Tie every position of `a` to every position of `b` with an equal key."""
        na = len(positions_a)
        if na == 0 or len(positions_b) == 0:
            return
        keys = np.concatenate([np.asarray(keys_a).reshape(na, -1),
                               np.asarray(keys_b).reshape(len(positions_b), -1)])
        # One integer per key row (np.unique over rows is slow).
        low = keys.min(axis=0) if keys.shape[1] else np.zeros(0, np.int64)
        span = (keys.max(axis=0) - low + 1) if keys.shape[1] else np.zeros(0, np.int64)
        flat = np.ravel_multi_index(tuple((keys - low).T), tuple(span)) if keys.shape[1] \
            else np.zeros(len(keys), np.int64)
        _, inverse = np.unique(flat, return_inverse=True)
        key_a, key_b = inverse[:na], inverse[na:]
        # Star-shaped edges: each position to the first position of the other side with its key;
        # this connects exactly what all pairs would, with linearly many edges.
        first_a, first_b = np.full(inverse.max() + 1, -1), np.full(inverse.max() + 1, -1)
        unique, index = np.unique(key_a, return_index=True)
        first_a[unique] = np.asarray(positions_a)[index]
        unique, index = np.unique(key_b, return_index=True)
        first_b[unique] = np.asarray(positions_b)[index]
        hit = first_b[key_a] >= 0
        self._edges.append((a.base + np.asarray(positions_a)[hit], b.base + first_b[key_a[hit]]))
        hit = first_a[key_b] >= 0
        self._edges.append((a.base + first_a[key_b[hit]], b.base + np.asarray(positions_b)[hit]))

    def join(self, a: Slot, axes_a, b: Slot, axes_b) -> None:
        """Tie positions of `a` and `b` whose indices along the paired axes agree."""
        keys_a = np.stack([a.component(x) for x in axes_a], axis=1) if axes_a else None
        keys_b = np.stack([b.component(x) for x in axes_b], axis=1) if axes_b else None
        if keys_a is None:
            keys_a, keys_b = np.zeros((a.size, 0), np.int64), np.zeros((b.size, 0), np.int64)
        self.link(a, np.arange(a.size), keys_a, b, np.arange(b.size), keys_b)

    def moved(self, slot: Slot, output: Value, axis_map: dict[int, int], shift=None) -> Contribution:
        """A contribution moving axis a of `slot` to axis axis_map[a] of `output` (index + shift[a])."""
        shift = shift or {}
        pairs = sorted((axis_map[a], a) for a in slot.axes if a in axis_map)
        keys = np.stack([slot.component(a) + shift.get(a, 0) for _, a in pairs], axis=1) \
            if pairs else np.zeros((slot.size, 0), np.int64)
        return Contribution(slot, np.arange(slot.size), keys, output, tuple(o for o, _ in pairs))

    def emit(self, contributions: list[Contribution]) -> None:
        """Create the output slots the contributions need and link them."""
        by_output: dict[str, list[Contribution]] = {}
        for c in contributions:
            if c.target_axes:
                by_output.setdefault(c.output.name, []).append(c)
        for group in by_output.values():
            output = group[0].output
            targets = [self.slot(output, axes) for axes in merged_axes([c.target_axes for c in group])]
            for c in group:
                target = next(t for t in targets if set(c.target_axes) <= set(t.axes))
                keys = np.stack([target.component(a) for a in c.target_axes], axis=1)
                self.link(c.source, c.source_positions, c.keys, target, np.arange(target.size), keys)

    def components(self) -> np.ndarray:
        """Connected-component label (smallest member id) of every global position."""
        labels = np.arange(self.total)
        if not self._edges:
            return labels
        u = np.concatenate([e[0] for e in self._edges])
        v = np.concatenate([e[1] for e in self._edges])
        while True:
            ru, rv = labels[u], labels[v]
            differ = ru != rv
            if not differ.any():
                return labels
            # Hook the larger root under the smaller one, then compress paths fully.
            np.minimum.at(labels, np.maximum(ru, rv)[differ], np.minimum(ru, rv)[differ])
            while True:
                jumped = labels[labels]
                if np.array_equal(jumped, labels):
                    break
                labels = jumped

    # ---- the walk ------------------------------------------------------------------------

    def run(self, rule_for: Callable[[str], Callable | None]) -> None:
        """Apply `rule_for(op)(analysis, node, attrs)` to every node; an op without a rule
        blocks the slots it reads."""
        for node in self.graph:
            rule = rule_for(node.op)
            if rule is None:
                for value in node.inputs:
                    for slot in self.tracked(value):
                        self.block(slot, f"%{node.name} ({node.op}) is an op the dependency "
                                         "analysis does not handle")
                continue
            rule(self, node, attrs_with_defaults(node.op, node.attrs))
