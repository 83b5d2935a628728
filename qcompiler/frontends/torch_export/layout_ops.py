"""Data-movement aten ops (views, slicing, split/concat, pad, resize) mapped onto the IR.

Part of the handler table of `qcompiler.frontends.torch_export.ops` (see there for the handler
interface). Shapes that torch.export already knows (the output of a view, the
pieces of a split, the size of a resize) are read from the node's recorded
output (`ctx.out_shape`), so the IR gets static shapes without re-deriving
torch's rules.
"""

from __future__ import annotations

from qcompiler.ir import Dim


def first_argument(args):
    return next(iter(args.values()))


def target_shape(ctx, shape) -> list[int]:
    """A reshape's `shape` attribute: the symbolic batch dimension is written -1 (the IR's
    attributes hold no symbols; `qcompiler.ir.dims`)."""
    if sum(isinstance(d, Dim) for d in shape) > 1:
        ctx.unsupported(f"it reshapes to {list(map(str, shape))}, with the batch size in two "
                        "dimensions")
    return [-1 if isinstance(d, Dim) else int(d) for d in shape]


def _fixed_axis(ctx, x, axis: int, what: str) -> int:
    """The size of `axis`, which must not be the symbolic batch for `what`."""
    size = ctx.shape(x)[axis]
    if isinstance(size, Dim):
        ctx.batch_dependent(f"{what} along the batch dimension ({size}) has no IR form at an "
                            "unknown batch size")
    return size


def _reshape(ctx, args):
    x = first_argument(args)
    if ctx.shape(x) == ctx.out_shape:
        return x
    return ctx.emit("reshape", [x], {"shape": target_shape(ctx, ctx.out_shape)})


def _flatten(ctx, args):
    x = args["self"]
    if ctx.shape(x) == ctx.out_shape:
        return x
    return ctx.emit("flatten", [x], {"start_dim": int(args["start_dim"]), "end_dim": int(args["end_dim"])})


def _permute(ctx, args):
    rank = len(ctx.shape(args["self"]))
    return ctx.emit("permute", [args["self"]], {"dims": [int(d) % rank for d in args["dims"]]})


def _transpose(ctx, args):
    rank = len(ctx.shape(args["self"]))
    names = ("dim0", "dim1") if "dim0" in args else ("axis0", "axis1")
    dim0, dim1 = (int(args[n]) % rank for n in names)
    return ctx.emit("transpose", [args["self"]], {"dim0": dim0, "dim1": dim1})


def _movedim(ctx, args):
    rank = len(ctx.shape(args["self"]))
    sources, targets = args["source"], args["destination"]
    sources = [int(s) % rank for s in (sources if isinstance(sources, (list, tuple)) else [sources])]
    targets = [int(t) % rank for t in (targets if isinstance(targets, (list, tuple)) else [targets])]
    order: list[int | None] = [None] * rank
    for source, target in zip(sources, targets, strict=True):
        order[target] = source
    rest = iter(d for d in range(rank) if d not in sources)
    return ctx.emit("permute", [args["self"]], {"dims": [next(rest) if d is None else d for d in order]})


def _concat(ctx, args):
    tensors = list(args["tensors"])
    return ctx.emit("concat", tensors, {"dim": int(args["dim"]) % len(ctx.out_shape)})


def _stack(ctx, args):
    dim = int(args["dim"]) % len(ctx.out_shape)
    pieces = []
    for x in args["tensors"]:
        shape = list(ctx.shape(x))
        pieces.append(ctx.emit("reshape", [x], {"shape": target_shape(ctx, shape[:dim] + [1] + shape[dim:])},
                               part="unsqueeze"))
    return ctx.emit("concat", pieces, {"dim": dim})


def _split(ctx, args):
    """split / split_with_sizes / chunk / unbind: piece sizes come from the recorded outputs."""
    x = args["self"]
    rank = len(ctx.shape(x))
    axis = int(args["dim"]) % rank
    keep_dim = len(ctx.out_shapes[0]) == rank  # unbind drops the split axis
    sizes = [shape[axis] if keep_dim else 1 for shape in ctx.out_shapes]
    if len(sizes) > 1:
        _fixed_axis(ctx, x, axis, "splitting")
    pieces = (x,) if len(sizes) == 1 else ctx.emit("split", [x], {"axis": axis, "sizes": sizes})
    if keep_dim:
        return tuple(pieces)
    return tuple(ctx.emit("reshape", [p], {"shape": target_shape(ctx, s)}, part=f"squeeze{i}")
                 for i, (p, s) in enumerate(zip(pieces, ctx.out_shapes, strict=True)))


def _slice_piece(ctx, x, axis, start, end, step=1):
    if isinstance(ctx.shape(x)[axis], Dim) and start in (0, None) and step == 1 \
            and (end is None or end >= 2**62):  # x[:, ...] with the batch kept whole
        return x
    size = _fixed_axis(ctx, x, axis, "slicing")
    start, end, step = slice(start, end, step).indices(size)
    if (start, end, step) == (0, size, 1):
        return x
    return ctx.emit("slice", [x], {"axis": axis, "start": start, "end": end, "step": step})


def _slice(ctx, args):
    x = args["self"]
    axis = int(args["dim"]) % len(ctx.shape(x))
    return _slice_piece(ctx, x, axis, args["start"], args["end"], int(args["step"]))


def _narrow(ctx, args):
    x = args["self"]
    axis = int(args["dim"]) % len(ctx.shape(x))
    start = int(args["start"]) % _fixed_axis(ctx, x, axis, "narrowing")
    return _slice_piece(ctx, x, axis, start, start + int(args["length"]))


def _select(ctx, args):
    x = args["self"]
    axis = int(args["dim"]) % len(ctx.shape(x))
    index = int(args["index"]) % _fixed_axis(ctx, x, axis, "selecting")
    piece = ctx.emit("slice", [x], {"axis": axis, "start": index, "end": index + 1, "step": 1},
                     part="slice")
    return ctx.emit("reshape", [piece], {"shape": target_shape(ctx, ctx.out_shape)})


def _scatter(ctx, args):
    """slice_scatter/select_scatter (what functionalization makes of `x[:, 0] += 1`): the kept
    parts of the base concatenated around the written piece."""
    base, piece = args["self"], args["src"]
    rank = len(ctx.shape(base))
    axis = int(args["dim"]) % rank
    if ctx.shape(piece) == ctx.shape(base) and "index" not in args:
        return piece  # the whole base written (z[:, 0] += 1 writes z[:] on the batch axis)
    size = _fixed_axis(ctx, base, axis, "assigning to a slice")
    if "index" in args:  # select_scatter: the piece lacks the axis
        start = int(args["index"]) % size
        end, step = start + 1, 1
        shape = list(ctx.shape(piece))
        piece = ctx.emit("reshape", [piece], {"shape": target_shape(ctx, shape[:axis] + [1] + shape[axis:])},
                         part="unsqueeze")
    else:
        start, end, step = slice(args["start"], args["end"], args["step"]).indices(size)
    if step != 1:
        ctx.unsupported("a strided slice assignment has no IR equivalent")
    parts = [_slice_piece(ctx, base, axis, 0, start)] if start > 0 else []
    parts.append(piece)
    if end < size:
        parts.append(_slice_piece(ctx, base, axis, end, size))
    return parts[0] if len(parts) == 1 else ctx.emit("concat", parts, {"dim": axis})


def _pad(mode):
    def handler(ctx, args):
        pads = [int(p) for p in (args.get("pad") or args.get("padding"))]
        chosen = args.get("mode", mode) or "constant"
        value = args.get("value")
        return ctx.emit("pad", [args["self"]], {"pads": pads, "mode": chosen,
                                                "value": 0.0 if value is None else float(value)})
    return handler


def _resize(mode):
    def handler(ctx, args):
        x = first_argument(args)
        in_size, out_size = ctx.shape(x)[2:], ctx.out_shape[2:]
        scales = args.get("scale_factors") or [args.get(k) for k in ("scales", "scales_h", "scales_w")
                                                if args.get(k) is not None]
        # With scale_factor (and recompute_scale_factor unset) torch samples with the given
        # scale, which differs from size-based sampling unless out/in is exactly that scale.
        if scales and any(abs(o / i - s) > 1e-9 for o, i, s in zip(out_size, in_size, scales, strict=True)):
            ctx.unsupported(f"scale_factor {list(scales)} is not exactly output/input size "
                            f"{list(out_size)}/{list(in_size)}; pass size=... or "
                            "recompute_scale_factor=True to F.interpolate")
        align = args.get("align_corners") if mode not in ("nearest", "nearest-exact") else None
        return ctx.emit("resize", [x], {"size": list(out_size), "mode": mode, "align_corners": align})
    return handler


def _table():
    table = {}

    def add(names, handler):
        for name in names.split():
            table[name] = handler

    add("view reshape _unsafe_view unsqueeze squeeze unflatten view_as reshape_as", _reshape)
    add("flatten", _flatten)
    add("permute", _permute)
    add("transpose swapaxes swapdims", _transpose)
    add("movedim", _movedim)
    add("cat concat", _concat)
    add("stack", _stack)
    add("split split_with_sizes chunk unbind unsafe_split", _split)
    add("slice", _slice)
    add("narrow", _narrow)
    add("select", _select)
    add("slice_scatter select_scatter", _scatter)
    add("pad", _pad("constant"))
    add("constant_pad_nd", _pad("constant"))
    add("reflection_pad1d reflection_pad2d", _pad("reflect"))
    add("replication_pad1d replication_pad2d", _pad("replicate"))
    add("upsample_nearest1d upsample_nearest2d", _resize("nearest"))
    add("_upsample_nearest_exact1d _upsample_nearest_exact2d", _resize("nearest-exact"))
    add("upsample_linear1d", _resize("linear"))
    add("upsample_bilinear2d", _resize("bilinear"))
    add("upsample_bicubic2d", _resize("bicubic"))
    return table


LAYOUT_HANDLERS = _table()
