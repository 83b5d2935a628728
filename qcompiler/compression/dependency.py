"""Dependency groups: which tensor slices must shrink together when channels go.

Removing output channel c of a conv also removes row c of the batch norm after
it, channel c of every tensor it flows through, and input channel c of each layer
that reads it; through a residual add it reaches the other branch's layer, through
a concat it lands at an offset, through a flatten it becomes H*W input features of
a linear layer. This module computes those couplings as plain data, after the
dependency graph of Torch-Pruning (Fang et al. 2023, "DepGraph: Towards Any
Structural Pruning"), but at the level of single channels:

- A *slot* is a (value, axes) pair: the channel axis of a tensor (`axes=(1,)` for
  NCHW, the last axis for linear features), or several axes read as one flattened
  axis (`(1, 3)` for attention heads x head size after a permute).
- Each op links positions of its input slots to positions of its output slots or
  of its weights: an elementwise op links equal positions, concat adds an offset,
  flatten links channel c to the H*W features it becomes, a conv links its input
  channels to axis 1 of its weight (a *reader*) and its output channels to axis 0
  (a *producer*), a depthwise conv ties input and output channels.
- The connected components of all links are the removable units ("channels"); a
  *group* gathers the channels that touch exactly the same slots, e.g. the 16
  channels of a residual stream, or the 4 heads of an attention layer (the head
  axis of the scores ties query, key and value features head by head).

A group cannot be pruned, with the reasons recorded, when a slot of it reaches a
graph output or input, an op the analysis does not know, or an op for which
removing a channel is not the same as zeroing it: a reduction over the channel
axis (mean, softmax, layer_norm's statistics), a grouped (not depthwise) conv,
padding or resizing along the channel axis; a layer that reads the channels
spread over several axes; channels that own parts of a multi-axis slot which
would not come off as whole slices (half an attention head). A group with no
producing layer (channels of a graph input) cannot be pruned either.

`dependency_groups(graph)` returns the groups; `print(group)` shows its members:

    group layers.0.query: 4 channels, prunable
      value                          axes  role   node                    channel i at
      layers.0.query.weight          0     out    layers.0.query          8i + j (j < 8)
      layers.0.softmax               1     value  layers.0.softmax        i
      layers.0.attention_out.weight  1     in     layers.0.attention_out  8i + j (j < 8)

The slot and link data structure is in `qcompiler.compression.dependency_links`, the rule of
each op in `qcompiler.compression.dependency_rules`; grouping and printing are here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcompiler.compression.dependency_links import Analysis
from qcompiler.compression.dependency_rules import rule_for
from qcompiler.ir import Graph

# Roles of constant members whose slices create a channel (zeroing them zeroes the channel).
PRODUCER_ROLES = ("out", "depthwise", "embedding")
# Roles of constant members that read the channel (their slices multiply it).
READER_ROLES = ("in",)


@dataclass(frozen=True, eq=False)
class Member:
    """One slot of a group: `positions[i]` are the flattened positions, along `axes`
    of `value`, that belong to channel i of the group."""

    value: str
    axes: tuple[int, ...]
    role: str  # out, in, depthwise, embedding, bias, bn_weight, ..., operand, value
    node: str  # the node the role refers to (for a value: its producer)
    # (channels, width) array, or a tuple of arrays when channels differ in width.
    positions: np.ndarray | tuple[np.ndarray, ...]
    sizes: tuple[int, ...]  # the sizes of `axes`

    @property
    def is_constant(self) -> bool:
        return self.role != "value"

    def describe_positions(self) -> str:
        return _describe_positions(self.positions)

    def positions_of(self, channels) -> np.ndarray:
        """The flattened positions along `axes` of these channels of the group."""
        return np.concatenate([np.asarray(self.positions[c]) for c in channels])

    def zeroed(self, data: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """A copy of `data` (this member's constant) with the slices at `positions`
        (flattened over `axes`, see `positions_of`) set to zero."""
        rest = [a for a in range(data.ndim) if a not in self.axes]
        moved = np.transpose(data, (*self.axes, *rest))
        flat = moved.reshape(int(np.prod(self.sizes)), -1).copy()
        flat[positions] = 0
        return np.ascontiguousarray(np.transpose(flat.reshape(moved.shape),
                                                 np.argsort((*self.axes, *rest))))


@dataclass(frozen=True, eq=False)
class Group:
    """Channels that must be removed together, and every slice that shrinks with them."""

    name: str
    members: tuple[Member, ...]
    reasons: tuple[str, ...] = ()  # why the group cannot be pruned; empty if it can
    num_channels: int = field(default=0)

    @property
    def prunable(self) -> bool:
        return not self.reasons

    def members_with_role(self, *roles: str) -> list[Member]:
        return [m for m in self.members if m.role in roles]

    def width(self) -> int:
        """Positions per channel in the first producer (1 for conv channels, head size for heads)."""
        producers = self.members_with_role(*PRODUCER_ROLES) or list(self.members)
        return len(producers[0].positions[0])

    def __str__(self) -> str:
        more = f" (and {len(self.reasons) - 1} more reasons)" if len(self.reasons) > 1 else ""
        state = "prunable" if self.prunable else f"not prunable: {self.reasons[0]}{more}"
        rows = [("value", "axes", "role", "node", "channel i at")]
        rows += [(m.value, ",".join(map(str, m.axes)), m.role, m.node, m.describe_positions())
                 for m in self.members]
        widths = [max(len(row[k]) for row in rows) for k in range(4)]
        lines = [f"group {self.name}: {self.num_channels} channels, {state}"]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                         + "  " + row[4])
        return "\n".join(lines)


def dependency_groups(graph: Graph) -> list[Group]:
    """The channel groups of `graph`, in the order of their first slot in the graph."""
    analysis = Analysis(graph)
    analysis.run(rule_for)
    slots = analysis.slots
    if not slots:
        return []
    labels = analysis.components()
    sizes = np.array([s.size for s in slots])
    slot_of = np.repeat(np.arange(len(slots)), sizes)

    # The slots each channel (component) touches; channels touching the same slots form a group.
    combined = np.sort(labels * len(slots) + slot_of)
    combined = combined[np.r_[True, combined[1:] != combined[:-1]]]
    pairs = np.stack([combined // len(slots), combined % len(slots)], axis=1)
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    by_signature: dict[tuple[int, ...], list[int]] = {}
    for label, touched in zip(pairs[starts, 0], np.split(pairs[:, 1], starts[1:]), strict=True):
        by_signature.setdefault(tuple(touched.tolist()), []).append(int(label))

    # Positions of each channel within each slot: a (channels, width) array when every channel
    # has the same number of positions in the slot (the usual case), else one array per channel.
    rows_by_slot: dict[int, tuple[dict[int, int], object]] = {}
    for slot in slots:
        own = labels[slot.base:slot.base + slot.size]
        order = np.argsort(own, kind="stable")
        unique, counts = np.unique(own, return_counts=True)
        row_of = {int(label): row for row, label in enumerate(unique)}
        if (counts == counts[0]).all():
            rows_by_slot[slot.index] = (row_of, order.reshape(len(unique), counts[0]))
        else:
            rows_by_slot[slot.index] = (row_of, np.split(order, np.cumsum(counts)[:-1]))

    def positions(slot_index: int, channels: list[int]):
        row_of, table = rows_by_slot[slot_index]
        rows = [row_of[label] for label in channels]
        return table[rows] if isinstance(table, np.ndarray) else tuple(table[r] for r in rows)

    groups, names = [], set()
    for signature, channels in sorted(by_signature.items()):
        first = positions(signature[0], channels)
        lowest = first.min(axis=1) if isinstance(first, np.ndarray) else [p.min() for p in first]
        channels = [channels[k] for k in np.argsort(lowest, kind="stable")]
        members = tuple(Member(slots[s].value.name, slots[s].axes, slots[s].role, slots[s].node,
                               positions(s, channels), slots[s].sizes) for s in signature)
        reasons = list(dict.fromkeys(r for s in signature for r in slots[s].reasons))
        reasons += [f"the channels cover parts of axes {list(m.axes)} of %{m.value} that do not "
                    "come off as whole slices" for m in members if not _whole_slices(m)]
        producers = [m for m in members if m.role in PRODUCER_ROLES]
        if not producers and not reasons:
            reasons.append("no layer produces these channels (they come from a constant or input)")
        name = _group_name(producers[0] if producers else members[0], names)
        groups.append(Group(name, members, tuple(reasons), len(channels)))
    return groups


def _whole_slices(member: Member) -> bool:
    """True if removing any set of channels leaves a box: along one axis each channel owns
    some indices, and at those indices every position of the other axes (whole heads)."""
    if len(member.axes) == 1:
        return True
    components = np.unravel_index(np.arange(int(np.prod(member.sizes))), member.sizes)
    for k in range(len(member.axes)):
        others = int(np.prod(member.sizes)) // member.sizes[k]
        if all(len(p) == len(np.unique(components[k][np.asarray(p)])) * others
               for p in member.positions):
            return True
    return False


def _group_name(member: Member, taken: set[str]) -> str:
    covered = np.sort(np.concatenate(member.positions))
    name = member.node or member.value
    if len(covered) != int(np.prod(member.sizes)):
        cuts = np.flatnonzero(np.diff(covered) != 1) + 1
        runs = [f"{run[0]}:{run[-1] + 1}" for run in np.split(covered, cuts)]
        name += "[" + ",".join(runs) + "]"
    base, counter = name, 2
    while name in taken:
        name, counter = f"{base}#{counter}", counter + 1
    taken.add(name)
    return name


def _arithmetic(values: np.ndarray) -> int | None:
    """The common step of an arithmetic sequence (0 for one element), else None."""
    if len(values) < 2:
        return 0
    steps = np.diff(values)
    return int(steps[0]) if (steps == steps[0]).all() else None


def _describe_positions(positions: tuple[np.ndarray, ...]) -> str:
    """A formula for the positions of channel i, e.g. `16 + i`, `49i + j (j < 49)`."""
    length = len(positions[0])
    if any(len(p) != length for p in positions):
        return "irregular: " + "; ".join(str(p.tolist()) for p in positions[:2]) + " ..."
    starts = np.array([p[0] for p in positions])
    step_i = _arithmetic(starts)
    steps_j = [_arithmetic(p) for p in positions]
    step_j = steps_j[0]
    if step_i is None or step_j is None or any(s != step_j for s in steps_j):
        return "irregular: " + "; ".join(str(p.tolist()) for p in positions[:2]) + " ..."
    terms = []
    if starts[0]:
        terms.append(str(int(starts[0])))
    if len(positions) > 1:
        terms.append("i" if step_i == 1 else f"{step_i}i")
    if length > 1:
        terms.append("j" if step_j == 1 else f"{step_j}j")
    text = " + ".join(terms) or "0"
    return text + (f" (j < {length})" if length > 1 else "")
