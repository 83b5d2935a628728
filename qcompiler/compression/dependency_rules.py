"""How each op couples channel positions: the rules behind `qcompiler.compression.dependency`.

A rule `rule(analysis, node, attrs)` reads the slots of the node's inputs and
either moves them to its outputs (`Analysis.moved` + `emit`: elementwise ops keep
positions, permute renumbers axes, concat adds the input's offset, split and
slice keep a window, reshape maps each element to its new place), ties them to
weights (`Analysis.join`: a conv's output channels to axis 0 of its weight, its
input channels to axis 1), or blocks them with the reason (a reduction over the
channel axis, a grouped conv, an op without a rule).
"""

from __future__ import annotations

import numpy as np

from qcompiler.compression.dependency_links import Analysis, Contribution, Slot, merged_axes
from qcompiler.ir import Dim, Node, Value
from qcompiler.ir.dims import shape_at
from qcompiler.ir.ops import OPS

_POOL_SPATIAL = {"max_pool2d": 2, "avg_pool2d": 2, "adaptive_avg_pool2d": 2, "max_pool1d": 1,
                 "avg_pool1d": 1, "adaptive_avg_pool1d": 1}


def rule_for(op: str):
    """The rule of `op`, or None; ops of the activation category are elementwise, those of
    the binary category broadcast."""
    rule = _RULES.get(op)
    if rule is None and op in OPS:
        return {"activation": _elementwise, "binary": _binary}.get(OPS[op].category)
    return rule


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _pass_through(a: Analysis, node: Node, blocked_axes: set[int], reason: str) -> None:
    """Slots of input 0 keep their axes; slots on `blocked_axes` are blocked and stop."""
    x, out = node.inputs[0], node.output
    contributions = []
    for slot in a.tracked(x):
        if set(slot.axes) & blocked_axes:
            a.block(slot, reason)
        else:
            contributions.append(a.moved(slot, out, {ax: ax for ax in slot.axes}))
    a.emit(contributions)


def _elementwise(a: Analysis, node: Node, attrs: dict) -> None:
    _pass_through(a, node, set(), "")


def _softmax(a: Analysis, node: Node, attrs: dict) -> None:
    dim = _axis(attrs["dim"], len(node.output.shape))
    _pass_through(a, node, {dim}, f"softmax %{node.name} normalises over the channel axis")


def _pool(a: Analysis, node: Node, attrs: dict) -> None:
    rank = len(node.inputs[0].shape)
    spatial = set(range(rank - _POOL_SPATIAL[node.op], rank))
    _pass_through(a, node, spatial, f"{node.op} %{node.name} pools along the channel axis")


def _pad(a: Analysis, node: Node, attrs: dict) -> None:
    rank, pads = len(node.inputs[0].shape), attrs["pads"]
    padded = {rank - 1 - k // 2 for k, p in enumerate(pads) if p}
    _pass_through(a, node, padded, f"pad %{node.name} pads the channel axis")


def _resize(a: Analysis, node: Node, attrs: dict) -> None:
    spatial = set(range(2, len(node.inputs[0].shape)))
    _pass_through(a, node, spatial, f"resize %{node.name} resizes the channel axis")


def _mean(a: Analysis, node: Node, attrs: dict) -> None:
    x, out = node.inputs[0], node.output
    dims = attrs["dim"] if isinstance(attrs["dim"], (list, tuple)) else [attrs["dim"]]
    reduced = {_axis(d, len(x.shape)) for d in dims}
    keep = [ax for ax in range(len(x.shape)) if attrs["keepdim"] or ax not in reduced]
    contributions = []
    for slot in a.tracked(x):
        if set(slot.axes) & reduced:
            a.block(slot, f"mean %{node.name} averages over the channel axis")
        else:
            contributions.append(a.moved(slot, out, {ax: keep.index(ax) for ax in slot.axes}))
    a.emit(contributions)


def _permute(a: Analysis, node: Node, attrs: dict) -> None:
    rank = len(node.output.shape)
    if node.op == "permute":
        dims = [_axis(d, rank) for d in attrs["dims"]]
    else:
        dims = list(range(rank))
        d0, d1 = _axis(attrs["dim0"], rank), _axis(attrs["dim1"], rank)
        dims[d0], dims[d1] = dims[d1], dims[d0]
    a.emit([a.moved(s, node.output, {ax: dims.index(ax) for ax in s.axes})
            for s in a.tracked(node.inputs[0])])


def _binary(a: Analysis, node: Node, attrs: dict) -> None:
    out = node.output
    rank = len(out.shape)

    def full_axes(value: Value) -> dict[int, int]:  # input axis -> output axis, not broadcast
        shift = rank - len(value.shape)
        return {ax: ax + shift for ax in range(len(value.shape))
                if value.shape[ax] == out.shape[ax + shift]}

    contributions = []
    for value in node.inputs:
        full = full_axes(value)
        for slot in a.tracked(value):
            contributions.append(a.moved(slot, out, full))
    for axes in merged_axes([c.target_axes for c in contributions if c.target_axes]):
        for value in node.inputs:
            full = full_axes(value)
            back = [ax for ax, o in full.items() if o in axes
                    and (isinstance(out.shape[o], Dim) or out.shape[o] > 1)]
            if back and a.covering(value, back) is None:
                slot = a.operand(value, back, "operand", node)
                contributions.append(a.moved(slot, out, full))
    a.emit(contributions)


def _concat(a: Analysis, node: Node, attrs: dict) -> None:
    out = node.output
    dim = _axis(attrs["dim"], len(out.shape))
    along_batch = isinstance(out.shape[dim], Dim)  # no channels run along it
    contributions, offset = [], 0
    for value in node.inputs:
        for slot in a.tracked(value):
            if dim in slot.axes and slot.axes != (dim,):
                a.block(slot, f"concat %{node.name} joins along an axis this slot shares with others")
                continue
            contributions.append(a.moved(slot, out, {ax: ax for ax in slot.axes},
                                         {} if along_batch else {dim: offset}))
        if along_batch:
            continue
        if a.covering(value, (dim,)) is None:
            # Its part of the output must shrink with whatever the output's channels are tied
            # to (a depthwise conv after the concat): a constant shrinks too, anything else blocks.
            slot = a.operand(value, (dim,), "operand", node)
            contributions.append(a.moved(slot, out, {dim: dim}, {dim: offset}))
        offset += value.shape[dim]
    # Slots off the concat axis are shared by every input (concat along H keeps channels).
    for axes in merged_axes([c.target_axes for c in contributions if dim not in c.target_axes]):
        for value in node.inputs:
            if a.covering(value, axes) is None:
                slot = a.operand(value, axes, "operand", node)
                contributions.append(a.moved(slot, out, {ax: ax for ax in axes}))
    a.emit(contributions)


def _split(a: Analysis, node: Node, attrs: dict) -> None:
    x = node.inputs[0]
    axis = _axis(attrs["axis"], len(x.shape))
    sizes = attrs["sizes"]
    sizes = [sizes] * len(node.outputs) if isinstance(sizes, int) else list(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    contributions = []
    for slot in a.tracked(x):
        for out, start, size in zip(node.outputs, starts, sizes, strict=True):
            contributions.append(_window(a, node, slot, out, axis, int(start), int(start) + size, 1))
    a.emit([c for c in contributions if c is not None])


def _slice(a: Analysis, node: Node, attrs: dict) -> None:
    x = node.inputs[0]
    axis = _axis(attrs["axis"], len(x.shape))
    size = shape_at(x.shape, _PAIRING_BATCH)[axis]  # channel slots never run along the batch
    start, end, step = slice(attrs["start"], attrs["end"], attrs["step"]).indices(size)
    a.emit([c for c in (_window(a, node, slot, node.output, axis, start, end, step)
                        for slot in a.tracked(x)) if c is not None])


def _window(a: Analysis, node: Node, slot: Slot, out: Value, axis: int, start: int, end: int,
            step: int) -> Contribution | None:
    if axis not in slot.axes:
        return a.moved(slot, out, {ax: ax for ax in slot.axes})
    if slot.axes != (axis,) or step != 1:
        a.block(slot, f"{node.op} %{node.name} takes a strided or multi-axis part of the channels")
        return None
    inside = np.flatnonzero((slot.component(axis) >= start) & (slot.component(axis) < end))
    return Contribution(slot, inside, (slot.component(axis)[inside] - start)[:, None], out, (axis,))


def reshape_blocks(in_shape, out_shape) -> list[tuple[list[int], list[int]]]:
    """Pair runs of input axes with runs of output axes holding the same elements."""
    blocks, i, j = [], 0, 0
    while i < len(in_shape) or j < len(out_shape):
        if i < len(in_shape) and in_shape[i] == 1:
            blocks.append(([i], []))
            i += 1
        elif j < len(out_shape) and out_shape[j] == 1:
            blocks.append(([], [j]))
            j += 1
        else:
            ins, outs, a, b = [i], [j], in_shape[i], out_shape[j]
            i, j = i + 1, j + 1
            while a != b:
                if a < b:
                    ins.append(i)
                    a, i = a * in_shape[i], i + 1
                else:
                    outs.append(j)
                    b, j = b * out_shape[j], j + 1
            blocks.append((ins, outs))
    return blocks


# The batch size at which a reshape's axis runs are paired: a prime no channel count shares,
# so the runs found hold at every batch size.
_PAIRING_BATCH = 1_000_003


def _reshape(a: Analysis, node: Node, attrs: dict) -> None:
    x, out = node.inputs[0], node.output
    blocks = reshape_blocks(shape_at(x.shape, _PAIRING_BATCH), shape_at(out.shape, _PAIRING_BATCH))
    contributions = []
    for slot in a.tracked(x):
        touched = [b for b in blocks if set(b[0]) & set(slot.axes)]
        if any(not outs for _, outs in touched):
            a.block(slot, f"{node.op} %{node.name} drops the channel axis")
            continue
        if any(isinstance(x.shape[ax], Dim) for ins, _ in touched for ax in ins) or any(
                isinstance(out.shape[o], Dim) for _, outs in touched for o in outs):
            a.block(slot, f"{node.op} %{node.name} merges the channel axis with the batch")
            continue
        in_axes = sorted(ax for ins, _ in touched for ax in ins)
        elements = dict(zip(in_axes, np.indices([x.shape[ax] for ax in in_axes]).reshape(
            len(in_axes), -1), strict=True))
        positions = np.ravel_multi_index([elements[ax] for ax in slot.axes], slot.sizes)
        columns = {}
        for ins, outs in touched:
            flat = np.ravel_multi_index([elements[ax] for ax in ins], [x.shape[ax] for ax in ins])
            columns.update(zip(outs, np.unravel_index(flat, [out.shape[o] for o in outs]),
                               strict=True))
        target_axes = tuple(sorted(columns))
        keys = np.stack([columns[o] for o in target_axes], axis=1)
        contributions.append(Contribution(slot, positions, keys, out, target_axes))
    a.emit(contributions)


def _batch_norm(a: Analysis, node: Node, attrs: dict) -> None:
    x, out = node.inputs[0], node.output
    _pass_through(a, node, set(), "")
    channel = a.covering(x, (1,))
    if channel is None:
        return
    if channel.axes != (1,):
        a.block(channel, f"batch_norm %{node.name} normalises one axis of a multi-axis slot")
        return
    target = a.covering(out, (1,))
    for role, param in zip(("bn_weight", "bn_bias", "bn_mean", "bn_var"), node.inputs[1:],
                           strict=True):
        if param is not None:
            a.join(target, (1,), a.operand(param, (0,), role, node), (0,))


def _layer_norm(a: Analysis, node: Node, attrs: dict) -> None:
    x = node.inputs[0]
    rank, count = len(x.shape), len(attrs["normalized_shape"])
    normalized = set(range(rank - count, rank))
    contributions = []
    for slot in a.tracked(x):
        if set(slot.axes) & normalized:
            a.block(slot, f"layer_norm %{node.name} normalises over the channels: removing one "
                          "changes the mean and variance of the others")
        contributions.append(a.moved(slot, node.output, {ax: ax for ax in slot.axes}))
    a.emit(contributions)
    for target in a.tracked(node.output):
        inner = [ax for ax in target.axes if ax in normalized]
        for param in node.inputs[1:]:
            if param is not None and inner:
                shifted = [ax - (rank - count) for ax in inner]
                a.join(target, inner, a.operand(param, shifted, "ln_param", node), shifted)


def _weighted(a: Analysis, node: Node, attrs: dict) -> None:
    """conv1d/conv2d/conv_transpose2d/linear: output channels from weight rows, input
    channels read by weight columns; a depthwise conv ties input and output channels."""
    x, weight = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.output
    linear = node.op == "linear"
    in_axis = len(x.shape) - 1 if linear else 1
    out_axis = len(out.shape) - 1 if linear else 1
    groups = 1 if linear else attrs["groups"]
    w_out, w_in = (1, 0) if node.op == "conv_transpose2d" else (0, 1)
    channels_in = x.shape[in_axis]
    depthwise = groups > 1 and groups == channels_in and node.op != "conv_transpose2d"
    if not linear and len(x.shape) != len(weight.shape):
        for slot in a.tracked(x):
            a.block(slot, f"%{node.name} is an unbatched {node.op}")
        return

    produced = a.slot(out, (out_axis,))
    filters = a.operand(weight, (w_out,), "depthwise" if depthwise else "out", node)
    a.join(produced, (out_axis,), filters, (w_out,))
    if bias is not None:
        a.join(produced, (out_axis,), a.operand(bias, (0,), "bias", node), (0,))
    # Position k of a spatial axis stays position k only through a pointwise convolution.
    pointwise = linear or (all(k == 1 for k in weight.shape[2:])
                           and all(v == 1 for v in attrs.get("stride", ()))
                           and not any(attrs.get("padding", ()))
                           and not any(attrs.get("output_padding", ())))
    contributions = []
    for slot in a.tracked(x):
        if in_axis not in slot.axes and not pointwise and any(ax >= 2 for ax in slot.axes):
            a.block(slot, f"{node.op} %{node.name} convolves along the channel axis (a spatial axis)")
        elif in_axis not in slot.axes:  # linear on [N, C, L]: other axes pass through
            contributions.append(a.moved(slot, out, {ax: ax for ax in slot.axes}))
        elif slot.axes != (in_axis,):
            a.block(slot, f"{node.op} %{node.name} reads channels spread over several axes")
    a.emit(contributions)
    if groups > 1 and not depthwise:
        reason = (f"{node.op} %{node.name} has groups={groups}: removing channels needs the same "
                  "count from every group, which is not supported")
        a.block(produced, reason)
        if a.covering(x, (in_axis,)) is not None:
            a.block(a.covering(x, (in_axis,)), reason)
        return
    if depthwise:
        source = a.operand(x, (1,), "value", node)
        if source.axes != (1,):
            a.block(produced, f"depthwise {node.op} %{node.name} reads a multi-axis slot")
            return
        multiplier = out.shape[1] // channels_in
        positions = np.repeat(np.arange(channels_in), multiplier)
        keys = positions * multiplier + np.tile(np.arange(multiplier), channels_in)
        a.link(source, positions, keys[:, None], produced, np.arange(produced.size),
               produced.component(1)[:, None])
        return
    reader = a.covering(x, (in_axis,))
    if reader is not None and reader.axes == (in_axis,):
        a.join(reader, (in_axis,), a.operand(weight, (w_in,), "in", node), (w_in,))


def _matmul(a: Analysis, node: Node, attrs: dict) -> None:
    left, right = node.inputs
    out = node.output
    rank = len(out.shape)
    if len(left.shape) < 2 or len(right.shape) < 2:
        for value in (left, right):
            for slot in a.tracked(value):
                a.block(slot, f"matmul %{node.name} with a vector operand is not handled")
        return
    if right.is_constant and len(right.shape) == 2:  # x @ W: a linear layer without bias
        produced = a.slot(out, (rank - 1,))
        a.join(produced, (rank - 1,), a.operand(right, (1,), "out", node), (1,))
        contributions = []
        for slot in a.tracked(left):
            if slot.axes == (len(left.shape) - 1,):
                a.join(slot, slot.axes, a.operand(right, (0,), "in", node), (0,))
            elif len(left.shape) - 1 in slot.axes:
                a.block(slot, f"matmul %{node.name} reads channels spread over several axes")
            else:
                contributions.append(a.moved(slot, out, {ax: ax for ax in slot.axes}))
        a.emit(contributions)
        return

    def names(value: Value, side: int) -> dict[int, str]:
        n, shift = len(value.shape), rank - len(value.shape)
        named = {n - 2: "M" if side == 0 else "K", n - 1: "K" if side == 0 else "N"}
        named.update({ax: f"B{ax + shift}" for ax in range(n - 2)
                      if value.shape[ax] == out.shape[ax + shift]})
        return named

    out_axis = {"M": rank - 2, "N": rank - 1, **{f"B{ax}": ax for ax in range(rank - 2)}}
    named = [names(left, 0), names(right, 1)]
    contributions = []
    for side, value in enumerate((left, right)):
        other, other_value = named[1 - side], (right, left)[1 - side]
        for slot in a.tracked(value):
            own = {named[side][ax]: ax for ax in slot.axes if ax in named[side]}
            contributions.append(a.moved(slot, out, {ax: out_axis[name] for name, ax in own.items()
                                                     if name in out_axis}))
            shared = [name for name in own if name in other.values()]
            if not shared:
                continue
            inverse = {name: ax for ax, name in other.items()}
            partner = a.operand(other_value, [inverse[name] for name in shared], "in", node)
            common = [name for name in shared if inverse[name] in partner.axes]
            a.join(slot, [own[nm] for nm in common], partner, [inverse[nm] for nm in common])
    a.emit(contributions)


def _embedding(a: Analysis, node: Node, attrs: dict) -> None:
    table, out = node.inputs[1], node.output
    last = len(out.shape) - 1
    a.join(a.slot(out, (last,)), (last,), a.operand(table, (1,), "embedding", node), (1,))


_RULES = {
    **{op: _pool for op in _POOL_SPATIAL},
    "softmax": _softmax, "pad": _pad, "resize": _resize, "mean": _mean,
    "permute": _permute, "transpose": _permute, "concat": _concat, "split": _split,
    "slice": _slice, "reshape": _reshape, "flatten": _reshape, "batch_norm": _batch_norm,
    "layer_norm": _layer_norm, "conv1d": _weighted, "conv2d": _weighted,
    "conv_transpose2d": _weighted, "linear": _weighted, "matmul": _matmul,
    "embedding": _embedding,
}
