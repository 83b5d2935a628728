"""Channel importance for structured pruning: one score per channel of each dependency group
(`qcompiler.compression.dependency`), larger is more important, by the criteria of `remove_filters`:

- "l1", "l2": norms of each channel's filter rows in every producer and reader weight
  (Li et al. 2017);
- "fpgm": distance to the geometric median of the filters (He et al. 2019);
- "bn_scale": |gamma| of the group's batch norms (Liu et al. 2017, network slimming);
- "activation": mean |activation| of the channel where the next layer reads it, over
  calibration data;
- "quantization": the angle between each kernel and its quantized version, scored through
  the next layer's kernels that read the channel (`importance.quantization_aware_scores`);
  "quantization_binary" / "_ternary" / "_power_of_two" take the angle to the binary,
  ternary or power-of-two kernel instead (pruning binary networks);
- "obd", "taylor": the weight saliencies of `qcompiler.compression.saliency` (Optimal Brain
  Damage, LeCun et al. 1990; first-order Taylor, Molchanov et al. 2019) over calibration
  data, summed over each channel's filter rows in every producer and reader weight (the
  loss increase of removing the channel, to first and second order, with the interactions
  between its weights dropped as OBD drops them).

Per-member scores are divided by their maximum and summed over the group
(`importance.aggregate`), so members of different sizes weigh alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qcompiler.compression import saliency
from qcompiler.compression.dependency import PRODUCER_ROLES, READER_ROLES, Group, Member
from qcompiler.errors import OptionError, PassError
from qcompiler.ir import Graph
from qcompiler.ir.evaluate import evaluate, input_batches
from qcompiler.numerics import importance

# "quantization_binary" etc.: the angle to the low-bit version (binary networks).
LOW_BIT_CRITERIA = {"quantization_binary": "binary", "quantization_ternary": "ternary",
                    "quantization_power_of_two": "power_of_two"}
CRITERIA = ("l1", "l2", "fpgm", "bn_scale", "activation", "quantization", *LOW_BIT_CRITERIA,
            *saliency.CRITERIA)
NEEDS_DATA = ("activation", *saliency.CRITERIA)
_WEIGHT_CRITERIA = {"l1": importance.l1_norms, "l2": importance.l2_norms,
                    "fpgm": importance.geometric_median_distances}


def channel_scores(graph: Graph, groups: Sequence[Group], criterion: str = "l1",
                   calibration_data: Sequence | None = None) -> dict[str, np.ndarray]:
    """The importance of each channel of each group (group name -> one score per channel,
    larger is more important), exactly as `remove_filters` ranks them: per member weight
    the criterion's score, each divided by its maximum and summed over the group
    (`importance.aggregate`). "activation" needs `calibration_data` (read once for all
    groups); "bn_scale" needs a batch norm in each group."""
    if criterion not in CRITERIA:
        raise OptionError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion in NEEDS_DATA and not calibration_data:
        raise OptionError(f"criterion {criterion!r} needs calibration_data")
    activations = _activation_means(graph, list(groups), calibration_data) \
        if criterion == "activation" else {}
    if criterion in saliency.CRITERIA:
        return _saliency_scores(graph, groups, criterion, calibration_data)
    return {g.name: _group_scores(graph, g, criterion, activations) for g in groups}


def _saliency_scores(graph: Graph, groups: Sequence[Group], criterion: str, data) -> dict[str, np.ndarray]:
    """Per channel: the weight saliencies of its rows in the group's producer and reader
    weights, summed (per member, then `importance.aggregate`)."""
    members = {g.name: [m for m in g.members_with_role(*PRODUCER_ROLES, *READER_ROLES)
                        if graph.values[m.value].is_constant] for g in groups}
    weights = list({m.value: graph.values[m.value] for ms in members.values() for m in ms}.values())
    scores = saliency.weight_saliency(graph, weights, criterion, data)
    return {g.name: importance.aggregate([_channel_rows(scores[m.value], m).sum(axis=1)
                                          for m in members[g.name]]) for g in groups}


def _group_scores(graph: Graph, group: Group, criterion: str, activations: dict) -> np.ndarray:
    def rows(member: Member) -> np.ndarray:
        return _channel_rows(graph.values[member.value].data, member)

    producers = group.members_with_role(*PRODUCER_ROLES)
    readers = group.members_with_role(*READER_ROLES)
    if criterion in _WEIGHT_CRITERIA:
        score = _WEIGHT_CRITERIA[criterion]
        return importance.aggregate([score(rows(m)) for m in producers + readers])
    if criterion == "bn_scale":
        gammas = group.members_with_role("bn_weight")
        if not gammas:
            raise PassError(f"remove_filters: criterion 'bn_scale' needs a batch_norm in group "
                            f"{group.name}, which has none (run remove_filters before "
                            "fold_batchnorm, or choose another criterion)")
        return importance.aggregate([importance.batchnorm_scales(rows(m)).sum(axis=1)
                                     for m in gammas])
    if criterion == "quantization" or criterion in LOW_BIT_CRITERIA:
        return importance.quantization_aware_scores([rows(m) for m in producers],
                                                    [rows(m) for m in readers],
                                                    scheme=LOW_BIT_CRITERIA.get(criterion, "int8"))
    return importance.aggregate([[activations[(m.value, m.axes)][np.asarray(p)].mean()
                                  for p in m.positions] for m in _read_values(graph, group)])


def _channel_rows(data: np.ndarray, member: Member) -> np.ndarray:
    """One row per channel of the group: the slices at the channel's positions, concatenated.
    Channels with fewer positions than others (irregular couplings) are padded with zeros,
    which leaves L1 and L2 norms unchanged."""
    rest = [a for a in range(data.ndim) if a not in member.axes]
    per_position = np.transpose(data, (*member.axes, *rest)).reshape(int(np.prod(member.sizes)), -1)
    rows = [per_position[np.asarray(p)].reshape(-1) for p in member.positions]
    width = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r))) for r in rows])


def _read_values(graph: Graph, group: Group) -> list[Member]:
    """Value members that a reader layer of the group takes as input (what the next layer sees);
    all value members if no reader reads one of them directly."""
    values = group.members_with_role("value")
    reader_nodes = {m.node for m in group.members_with_role(*READER_ROLES)}
    inputs = {node.inputs[0].name for node in graph if node.name in reader_nodes}
    return [m for m in values if m.value in inputs] or values


def _activation_means(graph: Graph, groups: list[Group], batches) -> dict:
    wanted = {(m.value, m.axes) for g in groups for m in _read_values(graph, g)}
    sums: dict = {}
    batches = input_batches(batches, graph)
    names = sorted({name for name, _ in wanted})
    for batch in batches:
        arrays = evaluate(graph, batch, [graph.values[name] for name in names])
        values = {name: array.numpy() for name, array in zip(names, arrays, strict=True)}
        for name, axes in wanted:
            x = np.abs(values[name].astype(np.float64))
            rest = [a for a in range(x.ndim) if a not in axes]
            x = np.transpose(x, (*axes, *rest)).reshape(int(np.prod([x.shape[a] for a in axes])), -1)
            sums[(name, axes)] = sums.get((name, axes), 0) + x.mean(axis=1)
    return {key: total / len(batches) for key, total in sums.items()}
