"""Merge near-duplicate neurons of a layer into one, moving their weight to the next layer.

    %y = conv2d(%x, %w, %b)      C channels          %y = conv2d(%x, %w', %b')    C' < C
    %r = relu(%y)                               ->   %r = relu(%y)
    %z = conv2d(%r, %v, %c)                          %z = conv2d(%r, %v', %c)

Data-free, after Yvinec et al. 2021, "RED: Looking for Redundancies for Data-Free
Structured Compression of Deep Neural Networks". Neurons whose filters (bias
included) point the same way are clustered; each cluster becomes one neuron, its
filter the average, and the next layer's input weights of the cluster are summed
(scaled by each filter's norm over the average norm, which is exact for filters
that are positive multiples of each other). Neurons whose filter and bias are all
zero always output 0 and are dropped. The math is in
`qcompiler.numerics.similarity`.

Options: `threshold` (the largest direction distance |f_i/|f_i| - f_j/|f_j||
within a cluster; the default 1e-6 merges only exact duplicates and multiples,
which preserves the function), or `ratio` (remove that fraction of each layer's
neurons, merging the closest first); `layers` and `ignore` select producers by
name (exact or fnmatch patterns, as in `decompose_low_rank`).

Matched: a linear, conv1d or conv2d layer (groups=1) whose output reaches the
data input of exactly one linear / conv layer (groups=1, same channel axis)
through only positively homogeneous, channel-preserving ops: ReLU
(`relu`, `clamp(min=0)`), max / average pooling, `mean` over non-channel axes, and
`flatten` that keeps the channel axis intact (as after global pooling). That is
what makes a(l z) = l a(z) hold for every op on the way.

Blocked, with the reason in `PassResult.notes`: a tensor on the way with more
than one user or that is a graph output (a branch, a residual add or a concat
would see the merged channels too); a batch norm on the way (run
`fold_batchnorm` first); any other op, including ReLU6, GELU and the other
activations that are not positively homogeneous; grouped or depthwise layers;
non-constant or quantized weights or biases.

Requires: batch norms folded. Preserves: node names and the function when every
cluster holds exact positive multiples (the default threshold); otherwise the
function changes by the merging error. Changes: the shapes of the producer's
output and of the ops on the way (fewer channels). New constants are named
`<old>.merged`; old ones go when nothing else uses them.

Known limits: clustering is quadratic in a layer's neuron count (fine to a few
thousand); conv_transpose2d and matmul are not handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcompiler.errors import OptionError
from qcompiler.ir import Graph, Node
from qcompiler.ir.edit import (
    input_channel_axis,
    is_relu_like,
    optional_input,
    output_channel_axis,
    replace_constant,
    require_float_graph,
    select_layers,
    why_not_float_constant,
)
from qcompiler.ir.ops import OPS, OUT_IN_WEIGHTED_OPS, infer_types
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics.similarity import cluster_neurons, merge_neurons, neuron_rows

_DEFAULT_THRESHOLD = 1e-6


@dataclass(frozen=True)
class merge_similar_neurons:  # lower case: with its options it reads like a function call
    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    threshold: float | None = None
    ratio: float | None = None
    layers: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        if self.threshold is not None and self.ratio is not None:
            raise OptionError("merge_similar_neurons takes threshold= or ratio=, not both")
        if self.threshold is not None and not 0.0 <= self.threshold <= 2.0:
            raise OptionError(f"threshold is a distance between unit vectors, in [0, 2]; "
                              f"got {self.threshold}")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise OptionError(f"ratio must be in [0, 1), got {self.ratio}")
        for option in ("layers", "ignore"):
            if isinstance(getattr(self, option), str):
                raise OptionError(f"{option} must be a tuple of names, got a string")

    def __call__(self, graph: Graph) -> PassResult:
        require_float_graph(graph, "merge_similar_neurons")
        notes: list[str] = []
        producers = select_layers(graph, OUT_IN_WEIGHTED_OPS, self.layers, self.ignore,
                                  "merge_similar_neurons")
        # Matching reads the graph only; a failing match leaves nothing half done.
        total = 0
        for producer in producers:
            found = _find_consumer(graph, producer)
            if isinstance(found, str):
                notes.append(f"{producer.describe()} not merged: {found}")
                continue
            consumer, path = found
            removed = self._merge(graph, producer, path, consumer, notes)
            total += removed
        if total:
            notes.insert(0, f"removed {total} neuron(s) in all")
        return PassResult(graph, total > 0, notes)

    def _merge(self, graph: Graph, producer: Node, path: list[Node], consumer: Node,
               notes: list[str]) -> int:
        weight, bias = producer.inputs[1], optional_input(producer, 2)
        rows = neuron_rows(weight.data, None if bias is None else bias.data)
        count = rows.shape[0]
        live = int((np.linalg.norm(rows, axis=1) > 0).sum())
        if self.ratio is not None:
            target = max(1, min(live, count - round(self.ratio * count)))
            clusters = cluster_neurons(rows, target_clusters=target)
        else:
            threshold = _DEFAULT_THRESHOLD if self.threshold is None else self.threshold
            clusters = cluster_neurons(rows, threshold=threshold)
        if not clusters:  # every neuron is dead; keep one so the shapes stay valid
            clusters = [np.array([0])]
            new_weight = np.zeros_like(weight.data[:1])
            new_bias = None if bias is None else np.zeros_like(bias.data[:1])
            new_next = np.zeros_like(consumer.inputs[1].data[:, :1])
        else:
            new_weight, new_bias, new_next = merge_neurons(
                weight.data, None if bias is None else bias.data, consumer.inputs[1].data, clusters)
        removed = count - len(clusters)
        if removed == 0:
            return 0
        replace_constant(graph, producer, 1, new_weight, f"{weight.name}.merged")
        if bias is not None:
            replace_constant(graph, producer, 2, new_bias, f"{bias.name}.merged")
        for node in (producer, *path):  # fewer channels from here to the consumer
            for value, (shape, _) in zip(node.outputs, infer_types(node.op, node.inputs, node.attrs),
                                         strict=True):
                value.shape = shape
        replace_constant(graph, consumer, 1, new_next, f"{consumer.inputs[1].name}.merged")
        merged = sum(len(c) - 1 for c in clusters)
        notes.append(f"{producer.describe()}: {count} -> {len(clusters)} neurons "
                     f"({merged} merged into similar ones, {count - live} all-zero dropped); "
                     f"%{consumer.name} input weights summed accordingly")
        return removed


def _next_channel_axis(node: Node, axis: int) -> int | None:
    """The channel axis after a positively homogeneous, channel-preserving op; None if
    `node` is not one."""
    if is_relu_like(node) or OPS[node.op].homogeneous:
        return axis
    ndim = len(node.inputs[0].shape)
    if node.op == "mean":
        dims = node.attrs["dim"]
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % ndim for d in dims]
        if axis in dims:
            return None
        keepdim = node.attrs.get("keepdim", False)
        return axis if keepdim else axis - sum(d < axis for d in dims)
    if node.op == "flatten":
        start = node.attrs.get("start_dim", 0) % ndim
        end = node.attrs.get("end_dim", -1) % ndim
        shape = node.inputs[0].shape
        if axis < start:
            return axis
        if axis > end:
            return axis - (end - start)
        # The channel axis is folded in: fine only if every other folded axis has size 1.
        others = [shape[d] for d in range(start, end + 1) if d != axis]
        return start if all(size == 1 for size in others) else None
    return None


def _find_consumer(graph: Graph, producer: Node) -> tuple[Node, list[Node]] | str:
    """(consumer, ops in between) if the producer's neurons can be merged, else the reason."""
    reason = _why_not_rewritable(producer)
    if reason is not None:
        return reason
    value, path = producer.output, []
    axis = output_channel_axis(producer)
    while True:
        if value in graph.outputs:
            return f"%{value.name} is a graph output"
        if len(value.users) != 1:
            if not value.users:
                return f"%{value.name} is not used"
            users = ", ".join(f"%{u.name} ({u.op})" for u in value.users)
            return (f"%{value.name} has {len(value.users)} users ({users}); a branch, residual "
                    "add or concat would see the merged channels too")
        user = value.users[0]
        if user.op in OUT_IN_WEIGHTED_OPS:
            if user.inputs[0] is not value or any(v is value for v in user.inputs[1:]):
                return f"%{value.name} is a weight or bias of {user.describe()}, not its data input"
            if input_channel_axis(user) != axis:
                return (f"{user.describe()} reads its input channels on another axis than the "
                        f"one %{producer.name}'s neurons are on")
            reason = _why_not_rewritable(user)
            return (user, path) if reason is None else f"the next layer: {reason}"
        if user.op == "batch_norm":
            return f"batch_norm %{user.name} is in the way; run fold_batchnorm first"
        next_axis = _next_channel_axis(user, axis)
        if next_axis is None:
            return (f"{user.describe()} is in the way; only ReLU, pooling, mean and flatten that "
                    "keep channels apart are positively homogeneous and channel-preserving")
        axis = next_axis
        path.append(user)
        value = user.output


def _why_not_rewritable(layer: Node) -> str | None:
    if layer.op != "linear" and layer.attrs.get("groups", 1) != 1:
        return f"{layer.describe()} has groups={layer.attrs['groups']} (grouped or depthwise)"
    # New constants replace the old ones for these two layers only: sharing is no obstacle.
    for role, value in (("weight", layer.inputs[1]), ("bias", optional_input(layer, 2))):
        problem = None if value is None else why_not_float_constant(value, "merge")
        if problem is not None:
            return f"the {role} %{value.name} of {layer.describe()} {problem}"
    return None
