"""Structured pruning: physically remove the least important channels of each dependency group.

    %y = conv2d(%x, %w1)  [C channels]        %y = conv2d(%x, %w1[keep])        [C' < C]
    %r = relu(%y)                      ->     %r = relu(%y)
    %z = conv2d(%r, %w2, %b2)                 %z = conv2d(%r, %w2[:, keep], %b2 + compensation)

Channels are removed by dependency group (`qcompiler.compression.dependency`, after DepGraph,
Fang et al. 2023): a group is every slice that must shrink together (the conv's
filters, its batch norm, the next layers' input channels, the other branches of
a residual add, the offsets of a concat, the H*W features a flatten makes, the
query/key/value features of an attention head). Groups that reach a graph output
or an op that cannot lose channels are left alone and listed in the notes.

Which channels: `criterion` scores each channel of a group (`qcompiler.numerics.
importance`: "l1", "l2", "fpgm", "bn_scale", "activation" (needs
`calibration_data`), "quantization"; the saliencies "obd" (Optimal Brain Damage) and
"taylor" (first-order Taylor), which need labelled or unlabelled `calibration_data` and a
graph with one [N, classes] output), as the sum over the group's weights of that
weight's scores divided by their maximum. `scope="local"` removes `ratio` of every
group; `scope="global"` ranks all channels of all groups together by those
normalised scores and removes the lowest `ratio` of them (so a group whose
channels all matter loses fewer). `round_to` keeps a multiple of that many
elements along each shrunk axis: the channel block of the kernels that will run
the model (16 for torch's AVX2 convolutions; see `qc.search_budget`). `ignored_layers`
names layers (node names, weight names or module prefixes such as "layers.0")
whose channels must stay. `masks` (group name -> boolean keep mask over the
group's channels) removes exactly the given channels and nothing else, ignoring
ratio and criterion.

Bias compensation (`compensate_bias=True`): a removed channel is replaced, where
the next (reader) layer reads it, by a constant c_k, folded into the reader's
bias, b2[o] += sum_k sum_taps W2[o, k, taps] c_k (a bias is created if the reader
has none). Which constant (`compensate_with`):

- `"constant"` (default): the value the channel carries when its *filters* are
  zeroed (every producer slice of the group set to 0): such a channel is not
  silent, it still carries act(BN(bias)). The function after removal then equals
  the original network with those filters zeroed.
- `"mean"`: the channel's mean over `calibration_data`, measured at the reader's
  input on the unpruned graph ("mean replacement", Evci et al. 2018, "Mean
  Replacement Pruning"). In a network with batch norms the zeroed-filter constant
  act(BN(0)) = act(beta - gamma * mu / sigma) can lie far from anything the
  channel ever carries (mu, the mean of the conv's output, is arbitrary), while the
  mean is the best constant in the least-squares sense: what remains of the error
  is the channel's variation around its mean. On the pretrained MobileNetV2 this
  halves the output error of removing 10% of a single group.

Either fold is exact for linear layers and for convs without padding. With zero
padding, taps outside the image see 0 instead of c_k, so the fold is exact only
away from the borders; `exact_borders=True` adds the position-dependent border
correction as an `add` of a (1, C, H, W) constant after such a conv, making
removal exact everywhere at the cost of that add. The "constant" constants are
measured by running the graph once with the filters zeroed (graph inputs set to
zero: the removed channels do not depend on them).

Requires: constant weights (run before quantization). `bn_scale` needs batch norms
not yet folded (run before `fold_batchnorm`). Preserves: node names, value names
(constants get new, smaller arrays under the same name), dtypes; changes shapes
along pruned axes and the function (by the removed channels). Errors, raised
before the graph is touched: a ratio outside [0, 1) or other bad option
(ValueError, at construction); a ratio or mask that would remove every channel of
a group; an unknown name in `ignored_layers` or `masks` (close names suggested);
a mask for a group that cannot be pruned; a criterion the group cannot support;
a member weight that carries quantization parameters.

Known limits: grouped (non-depthwise) convs, layer_norm'ed features (the hidden
size of a transformer) and channels reduced by mean/softmax are not pruned (see
the notes); the border correction covers the reader conv's own padding, not
padded pooling between producer and reader; in global scope, scores of different
groups are compared after per-group normalisation only.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from qcompiler.compression import channel_surgery as surgery
from qcompiler.compression.channel_scores import CRITERIA, NEEDS_DATA, channel_scores
from qcompiler.compression.dependency import PRODUCER_ROLES, READER_ROLES, Group, Member, dependency_groups
from qcompiler.errors import OptionError, PassError
from qcompiler.ir import Graph, Node
from qcompiler.ir.dims import shape_at
from qcompiler.ir.edit import input_channel_axis, optional_input, require_float_graph, set_optional_input
from qcompiler.ir.evaluate import evaluate
from qcompiler.ir.ops import TORCH_DTYPES
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics import importance


@dataclass(frozen=True)
class remove_filters:  # lower case: with its options it reads like a function call
    """The configured filter-removal pass (see the module docstring)."""

    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    ratio: float = 0.3
    criterion: str = "l1"
    scope: str = "local"
    round_to: int | None = None
    ignored_layers: tuple[str, ...] = ()
    masks: Mapping[str, Sequence[bool]] | None = None
    calibration_data: Sequence | None = None
    compensate_bias: bool = True
    compensate_with: str = "constant"
    exact_borders: bool = False

    def __post_init__(self):
        if isinstance(self.ratio, Graph):
            raise OptionError("remove_filters takes options, not a graph: run remove_filters()(graph), "
                            "or put remove_filters(ratio=...) in a Pipeline")
        if not (isinstance(self.ratio, (int, float)) and 0 <= self.ratio < 1):
            raise OptionError(f"remove_filters: ratio must be in [0, 1), got {self.ratio!r}")
        if self.criterion not in CRITERIA:
            raise OptionError(f"remove_filters: unknown criterion {self.criterion!r}; "
                              f"choose one of {', '.join(CRITERIA)}")
        if self.scope not in ("local", "global"):
            raise OptionError(f"remove_filters: scope must be 'local' or 'global', got {self.scope!r}")
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise OptionError(f"remove_filters: round_to must be a positive int, got {self.round_to!r}")
        if isinstance(self.ignored_layers, str):
            raise OptionError("remove_filters: ignored_layers must be a tuple of names, got the "
                              f"string {self.ignored_layers!r}")
        if self.criterion in NEEDS_DATA and self.masks is None and not self.calibration_data:
            raise OptionError(f"remove_filters: criterion {self.criterion!r} needs calibration_data")
        if self.compensate_with not in surgery.COMPENSATIONS:
            raise OptionError(f"remove_filters: compensate_with must be one of "
                              f"{', '.join(surgery.COMPENSATIONS)}, got {self.compensate_with!r}")
        if self.compensate_bias and self.compensate_with == "mean" and not self.calibration_data:
            raise OptionError("remove_filters: compensate_with='mean' needs calibration_data (the "
                              "channel means are measured on it)")

    def __call__(self, graph: Graph) -> PassResult:
        require_float_graph(graph, "remove_filters")
        groups = dependency_groups(graph)
        notes = [f"group {g.name} ({g.num_channels} channels) not pruned: {g.reasons[0]}"
                 for g in groups if not g.prunable]
        removed = self._chosen(graph, groups) if self.masks is not None else \
            self._selected(graph, groups)
        removed = {name: channels for name, channels in removed.items() if len(channels)}
        if not removed:
            return PassResult(graph, False, notes)
        _check_not_quantized(graph, [g for g in groups if g.name in removed])
        plan = surgery.removal_plan(groups, removed)
        kept = surgery.kept_indices(graph, plan)
        # Everything above only reads the graph; from here on it changes.
        if self.compensate_bias:
            mean_data = self.calibration_data if self.compensate_with == "mean" else None
            notes += _compensate(graph, groups, removed, kept, self.exact_borders, mean_data)
        surgery.shrink(graph, kept)
        by_name = {g.name: g for g in groups}
        notes += [f"removed {len(c)} of {by_name[n].num_channels} channels of group {n}"
                  for n, c in removed.items()]
        return PassResult(graph, True, notes)

    # ---- which channels --------------------------------------------------------------------

    def _chosen(self, graph: Graph, groups: list[Group]) -> dict[str, np.ndarray]:
        by_name = {g.name: g for g in groups}
        removed = {}
        for name, mask in self.masks.items():
            if name not in by_name:
                raise PassError(f"remove_filters: no dependency group is named {name!r}"
                                f"{_suggest(name, by_name)}")
            group = by_name[name]
            mask = np.asarray(mask, bool)
            if mask.shape != (group.num_channels,):
                raise PassError(f"remove_filters: the mask for group {name} has shape "
                                f"{list(mask.shape)}; the group has {group.num_channels} channels")
            if not mask.all() and not group.prunable:
                raise PassError(f"remove_filters: group {name} cannot be pruned: "
                                + "; ".join(group.reasons))
            if not mask.any():
                raise PassError(f"remove_filters: the mask for group {name} removes every channel")
            removed[name] = np.flatnonzero(~mask)
        return removed

    def _selected(self, graph: Graph, groups: list[Group]) -> dict[str, np.ndarray]:
        ignored = _ignored_matcher(graph, self.ignored_layers)
        candidates = [g for g in groups if g.prunable
                      and not any(ignored(m.node) or ignored(m.value) for m in g.members)]
        if self.ratio == 0 or not candidates:
            return {}
        scores = channel_scores(graph, candidates, self.criterion, self.calibration_data)
        if self.scope == "local":
            keep = {g.name: importance.kept_count(g.num_channels, self.ratio, g.width(), self.round_to)
                    for g in candidates}
        else:
            normalised = np.concatenate([importance.aggregate([scores[g.name]]) for g in candidates])
            owner = np.repeat(np.arange(len(candidates)), [g.num_channels for g in candidates])
            lowest = importance.lowest(normalised, int(round(self.ratio * len(normalised))))
            counts = np.bincount(owner[lowest], minlength=len(candidates))
            keep = {g.name: importance.rounded_kept(g.num_channels, g.num_channels - int(count),
                                                    g.width(), self.round_to)
                    for g, count in zip(candidates, counts, strict=True)}
        for g in candidates:
            if keep[g.name] <= 0:
                raise PassError(f"remove_filters: ratio {self.ratio} would remove every channel of "
                                f"group {g.name} ({g.num_channels} channels); lower the ratio or "
                                "add its layers to ignored_layers")
        return {g.name: importance.lowest(scores[g.name], g.num_channels - keep[g.name])
                for g in candidates}


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _ignored_matcher(graph: Graph, names: Sequence[str]):
    """A predicate on node/value names; unknown names raise with suggestions."""
    nodes = [node.name for node in graph]
    known = set(nodes) | set(graph.values)
    for name in names:
        if name not in known and not any(n.startswith(name + ".") for n in known):
            raise PassError(f"remove_filters: ignored_layers names {name!r}, but no layer or weight "
                            f"has that name{_suggest(name, nodes)}")
    return lambda name: any(name == n or name.startswith(n + ".") for n in names)


def _check_not_quantized(graph: Graph, groups: list[Group]) -> None:
    """Weights with any quantization parameters, or values quantized per channel along a pruned
    axis, would need their parameters sliced and re-derived: refuse them."""
    for group in groups:
        for m in group.members:
            qparams = graph.values[m.value].qparams
            if qparams is not None and (m.is_constant or qparams.axis in m.axes):
                raise PassError(f"remove_filters: %{m.value} (in group {group.name}) carries "
                                "quantization parameters; remove filters before quantizing")


# ---- bias compensation -----------------------------------------------------------------------


def _compensate(graph: Graph, groups: list[Group], removed: dict[str, np.ndarray],
                kept: surgery.Kept, exact_borders: bool, mean_data=None) -> list[str]:
    """Fold a constant for each removed channel into the reader layers' biases: the value it
    carries with its filters zeroed, or (`mean_data` given) its mean over those inputs."""
    zeroed = graph.copy()
    readers: dict[str, tuple[Member, list[np.ndarray]]] = {}
    for group in groups:
        channels = removed.get(group.name)
        if channels is None:
            continue
        for member in group.members_with_role(*PRODUCER_ROLES):
            value = zeroed.values[member.value]
            value.data = member.zeroed(value.data, member.positions_of(channels))
        for member in group.members_with_role(*READER_ROLES):
            readers.setdefault(member.node, (member, []))[1].append(member.positions_of(channels))
    if not readers:
        return []
    nodes = {node.name: node for node in graph if node.name in readers}
    read = {name: node.inputs[0].name for name, node in nodes.items()}  # before adds are inserted
    notes: list[str] = []
    if mean_data is not None:
        # Measured on the graph as given: nothing has been changed yet.
        means = surgery.channel_means(graph, {read[n]: input_channel_axis(nodes[n]) for n in nodes},
                                      mean_data)
        for name, (member, positions) in readers.items():
            positions = np.concatenate(positions)
            notes += _fold_into_reader(graph, nodes[name], member, positions,
                                       means[read[name]][positions], kept, exact_borders)
        return notes
    # One sample: a zero input's channels are the same in every sample.
    inputs = [torch.zeros(shape_at(v.shape, 1), dtype=TORCH_DTYPES[v.dtype]) for v in graph.inputs]
    names = sorted(set(read.values()))
    values = {name: array.numpy() for name, array in
              zip(names, evaluate(zeroed, inputs, [zeroed.values[n] for n in names]), strict=True)}
    for name, (member, positions) in readers.items():
        positions = np.concatenate(positions)
        x = np.moveaxis(values[read[name]].astype(np.float64), input_channel_axis(nodes[name]), 0)
        per_channel = x[positions].reshape(len(positions), -1)
        constants = per_channel.mean(axis=1)
        spread = (per_channel.max(axis=1) - per_channel.min(axis=1)).max()
        if spread > 1e-4 * (1 + np.abs(constants).max()):
            notes.append(f"the removed input channels of %{name} are not constant (spread "
                         f"{spread:.3g}, e.g. padded pooling on the way); compensated with their mean")
        notes += _fold_into_reader(graph, nodes[name], member, positions, constants, kept,
                                   exact_borders)
    return notes


def _fold_into_reader(graph: Graph, node: Node, member: Member, positions: np.ndarray,
                      constants: np.ndarray, kept: surgery.Kept, exact_borders: bool) -> list[str]:
    """Add to `node`'s bias what its removed input channels (at `positions`, holding
    `constants`) contributed."""
    if np.abs(constants).max() <= 1e-12:
        return []  # the removed channels carried zeros (e.g. ReLU of a negative bias)
    notes: list[str] = []
    weight = node.inputs[1].data
    sliced = np.take(weight, positions, axis=member.axes[0])
    bias_delta, border = surgery.constant_channel_response(node.op, sliced, constants, node.attrs,
                                                           node.inputs[0].shape)
    out_axis = 1 if node.op.startswith("conv") else len(node.output.shape) - 1
    out_kept = kept.get(node.output.name, {}).get(out_axis)
    if node.op == "matmul":  # no bias input: add the constant after it
        _add_after(graph, node, bias_delta.astype(weight.dtype), "bias", kept, out_kept, 0)
        return notes
    bias = optional_input(node, 2)
    new_bias = (np.zeros(len(bias_delta)) if bias is None else bias.data) + bias_delta
    new_bias = new_bias.astype(weight.dtype)
    if bias is not None and bias.users == [node] and bias not in graph.outputs:
        bias.data = new_bias
    else:  # no bias yet, or one shared with another node: give this node its own
        created = graph.add_constant(f"{node.name}.bias" if bias is None else f"{bias.name}.compensated",
                                     new_bias)
        if bias is None:
            set_optional_input(node, 2, created)
        else:
            node.replace_input(bias, created)
        if out_kept is not None:
            kept[created.name] = {0: out_kept}
    if border is None:
        return notes
    if not exact_borders:
        return notes + [f"bias compensation of %{node.name} is exact away from the borders only "
                        "(zero padding); exact_borders=True adds the border correction"]
    _add_after(graph, node, border.astype(weight.dtype), "border", kept, out_kept, 1)
    return notes


def _add_after(graph: Graph, node: Node, data: np.ndarray, what: str, kept: surgery.Kept,
               out_kept: np.ndarray | None, channel_axis: int) -> None:
    """Insert `%y.<what>_add = add(%y, const)` right after `node`, for every user of %y."""
    output = node.output
    users = list(output.users)
    constant = graph.add_constant(f"{node.name}.{what}", data)
    added = graph.add_node("add", [output, constant], name=f"{node.name}.{what}_add",
                           before=node._next, source=node.source)
    for user in users:
        user.replace_input(output, added.output)
    graph.outputs = [added.output if v is output else v for v in graph.outputs]
    if out_kept is not None:
        kept[constant.name] = {channel_axis: out_kept}
    if output.name in kept:
        kept[added.output.name] = dict(kept[output.name])
