"""Removing channels from a graph, given the dependency groups (used by `remove_filters`).

- `removal_plan` turns "remove channels {3, 7} of group g" into keep masks for every
  slot of every group member; `kept_indices` checks them (a slot over several axes
  must lose whole rows or columns, e.g. whole heads; no tensor may lose every
  channel) and gives the kept indices per (value, axis).
- `shrink` applies them: constants get new, smaller arrays (the Value keeps its
  name; the old array is not modified, since `Graph.copy` shares arrays); node
  attributes that mention channel counts are rewritten (depthwise `groups`,
  `reshape` shapes, `split` sizes, `slice` bounds, `layer_norm` shapes); then
  every node's output type is inferred again and checked against the plan.
- `constant_channel_response` is the arithmetic of bias compensation: what a
  reader layer adds to its output when input channel k holds the constant c_k
  everywhere (a removed channel whose filter is zero still carries act(bias)).
- `channel_means` averages values per channel over calibration data (the constants of
  mean-replacement compensation), running the graph with `qcompiler.ir.evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from qcompiler.compression.dependency import Group
from qcompiler.errors import PassError
from qcompiler.ir import Graph
from qcompiler.ir.evaluate import evaluate, input_batches
from qcompiler.ir.ops import attrs_with_defaults, infer_types, run_op

# How a removed channel's contribution is replaced in the reader layers' biases (see
# `qcompiler.passes.remove_filters`): the constant it carries with its filters zeroed, or
# its mean over calibration data.
COMPENSATIONS = ("constant", "mean")

# (value name, axes) -> boolean keep mask over the slot's flattened positions.
Plan = dict[tuple[str, tuple[int, ...]], np.ndarray]
# value name -> {axis: kept indices along that axis}.
Kept = dict[str, dict[int, np.ndarray]]


def removal_plan(groups: Sequence[Group], removed: Mapping[str, np.ndarray]) -> Plan:
    plan: Plan = {}
    for group in groups:
        channels = removed.get(group.name)
        if channels is None or len(channels) == 0:
            continue
        for member in group.members:
            key = (member.value, member.axes)
            mask = plan.setdefault(key, np.ones(int(np.prod(member.sizes)), bool))
            mask[member.positions_of(channels)] = False
    return plan


def kept_indices(graph: Graph, plan: Plan) -> Kept:
    """Kept indices per value and axis; a PassError if the plan cannot be applied."""
    kept: Kept = {}
    problems = []
    for (name, axes), mask in plan.items():
        sizes = tuple(graph.values[name].shape[a] for a in axes)
        grid = mask.reshape(sizes)
        per_axis = [np.flatnonzero(grid.any(axis=tuple(k for k in range(len(axes)) if k != j)))
                    for j in range(len(axes))]
        product = np.zeros(sizes, bool)
        product[np.ix_(*per_axis)] = True
        if not np.array_equal(product, grid):
            problems.append(f"the channels removed from %{name} along axes {list(axes)} do not "
                            "form whole slices of each axis (e.g. parts of attention heads)")
        for axis, indices in zip(axes, per_axis, strict=True):
            if len(indices) == 0:
                problems.append(f"every channel of %{name} along axis {axis} would be removed")
            kept.setdefault(name, {})[axis] = indices
    if problems:
        raise PassError("cannot remove these channels: " + "; ".join(problems))
    return kept


def _taken(array: np.ndarray, kept_axes: Mapping[int, np.ndarray]) -> np.ndarray:
    for axis, indices in kept_axes.items():
        array = np.take(array, indices, axis=axis)
    return np.ascontiguousarray(array)


def shrink(graph: Graph, kept: Kept) -> None:
    """Remove the channels not in `kept` everywhere; see the module docstring."""
    old_shapes = {name: value.shape for name, value in graph.values.items()}
    for name, kept_axes in kept.items():
        value = graph.values[name]
        if value.is_constant:
            value.data = _taken(value.data, kept_axes)
            value.shape = tuple(value.data.shape)
    for node in graph:
        _rewrite_attrs(node, kept, old_shapes)
        types = infer_types(node.op, node.inputs, node.attrs)
        for value, (shape, dtype) in zip(node.outputs, types, strict=True):
            expected = list(old_shapes[value.name])
            for axis, indices in kept.get(value.name, {}).items():
                expected[axis] = len(indices)
            if list(shape) != expected or dtype != value.dtype:
                raise PassError(f"internal error: after removing channels, {node.describe()} gives "
                                f"{dtype}{list(shape)} where {value.dtype}{expected} was planned")
            value.shape = tuple(shape)


def _rewrite_attrs(node, kept: Kept, old_shapes) -> None:
    x = node.inputs[0] if node.inputs else None
    input_kept = kept.get(x.name, {}) if x is not None else {}
    attrs = attrs_with_defaults(node.op, node.attrs)
    if node.op in ("conv1d", "conv2d") and 1 < attrs["groups"] == old_shapes[x.name][1]:
        node.attrs["groups"] = x.shape[1]  # depthwise: one group per remaining channel
    elif node.op == "reshape":
        shape = list(attrs["shape"])
        for axis, indices in kept.get(node.output.name, {}).items():
            if shape[axis] != -1:
                shape[axis] = len(indices)
        node.attrs["shape"] = shape
    elif node.op == "split":
        axis = attrs["axis"] % len(x.shape)
        if axis in input_kept:
            sizes = attrs["sizes"]
            sizes = [sizes] * len(node.outputs) if isinstance(sizes, int) else list(sizes)
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            node.attrs["sizes"] = [int(((input_kept[axis] >= lo) & (input_kept[axis] < hi)).sum())
                                   for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    elif node.op == "slice":
        axis = attrs["axis"] % len(x.shape)
        if axis in input_kept:
            start, end, _ = slice(attrs["start"], attrs["end"], attrs["step"]).indices(
                old_shapes[x.name][axis])
            indices = input_kept[axis]
            node.attrs["start"] = int((indices < start).sum())
            node.attrs["end"] = int((indices < end).sum())
    elif node.op == "layer_norm":
        count = len(attrs["normalized_shape"])
        node.attrs["normalized_shape"] = list(x.shape[len(x.shape) - count:])


# ---- bias compensation ---------------------------------------------------------------------


def constant_channel_response(op: str, weight: np.ndarray, constants: np.ndarray, attrs: dict,
                              input_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """What reader layer `op` adds to its output when its input channels (those of
    `weight`, already restricted to the removed ones) hold `constants` everywhere.

    Returns `(bias, border)`: `bias[o]` is the value away from the borders,
    sum_k sum_taps W[o, k, taps] c_k for a conv (for linear, W @ c, exact everywhere).
    `border` is None when the response is the same at every output position, else the
    (1, C_out, *spatial) correction that zero padding makes near the borders, where
    fewer taps land on the image (response = bias + border).
    linear takes weight (out, k); matmul weight (k, out); conv1d/conv2d (out, k, *kernel);
    conv_transpose2d (k, out, *kernel), whose bias part is the mean response.
    """
    weight = np.asarray(weight, np.float64)
    constants = np.asarray(constants, np.float64)
    if op == "linear":
        return weight @ constants, None
    if op == "matmul":
        return constants @ weight, None
    spatial = tuple(input_shape[2:])
    padding = attrs.get("padding", 0)
    if op != "conv_transpose2d" and not any(np.atleast_1d(padding)):
        # Every output position sees a full kernel of constants: the response is uniform.
        return np.einsum("ok...,k->o...", weight, constants).reshape(len(weight), -1).sum(axis=1), None
    probe = torch.from_numpy(np.broadcast_to(constants.reshape(1, -1, *([1] * len(spatial))),
                                             (1, len(constants), *spatial)).copy())
    response = run_op(op, [probe, torch.from_numpy(weight), None], dict(attrs))[0].numpy()
    if op == "conv_transpose2d":
        bias = response.mean(axis=tuple(range(2, response.ndim)))[0]
    else:
        bias = np.einsum("ok...,k->o...", weight, constants).reshape(len(weight), -1).sum(axis=1)
    border = response - bias.reshape(1, -1, *([1] * len(spatial)))
    scale = max(np.abs(response).max(), 1e-30)
    return bias, (border if np.abs(border).max() > 1e-12 * scale else None)


# ---- statistics over calibration data --------------------------------------------------------


def channel_means(graph: Graph, axes: Mapping[str, int], batches) -> dict[str, np.ndarray]:
    """Per value name in `axes`, the mean over `batches` (and over every other axis) of each
    index along that value's channel axis `axes[name]`; float64. Every batch weighs by
    its number of elements."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in input_batches(batches, graph):
        arrays = evaluate(graph, batch, [graph.values[name] for name in axes])
        values = {name: array.numpy() for name, array in zip(axes, arrays, strict=True)}
        for name, axis in axes.items():
            x = np.moveaxis(values[name].astype(np.float64), axis, 0).reshape(values[name].shape[axis], -1)
            sums[name] = sums.get(name, 0.0) + x.sum(axis=1)
            counts[name] = counts.get(name, 0) + x.shape[1]
    return {name: sums[name] / counts[name] for name in axes}
