"""Import rules for the ONNX ops that move data or pool it: shapes, reshapes, slicing,
concatenation, padding, resizing, pooling and reductions (see `op_rules.py`).

The IR takes shapes as attributes, with -1 where the symbolic batch goes
(`qcompiler.ir.dims`); a target shape holding the batch as a `Dim` (from `Shape`) is
written that way here.
"""

from __future__ import annotations

import math

import numpy as np

from qcompiler.frontends.onnx.importer import Importer, QuantizedConstant
from qcompiler.ir import Value
from qcompiler.ir.dims import Dim


def _attr(imp: Importer, key: str, default=None):
    value = imp.node.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


def _attr_shape(imp: Importer, dims: list, source: Value) -> list[int]:
    """A target shape as an IR attribute: the symbolic dim becomes -1; a -1 beside it is
    solved from the static sizes (`[N, -1]` of `[N, 4, 6, 6]` is `[-1, 144]`)."""
    symbolic = [d for d in dims if isinstance(d, Dim)]
    if symbolic and -1 in dims:
        static_in, factor_in = _static_size(source.shape)
        static_out, factor_out = _static_size([d for d in dims if d != -1])
        known = static_out * factor_out
        if len(symbolic) == 1 and known and (static_in * factor_in) % known == 0:
            dims = [(static_in * factor_in) // known if d == -1 else d for d in dims]
    written = [-1 if isinstance(d, Dim) else int(d) for d in dims]
    if written.count(-1) > 1:
        raise imp.unsupported(
            f"a target shape {[str(d) for d in dims]} for {source.type_str} with "
            "more than one inferred dimension"
        )
    return written


def _static_size(dims) -> tuple[int, int]:
    """(product of the static dims, product of the symbolic dims' factors)."""
    static, factor = 1, 1
    for d in dims:
        if isinstance(d, Dim):
            factor *= d.factor
        else:
            static *= int(d)
    return static, factor


def not_foldable(name: str):
    def rule(imp: Importer) -> None:
        raise imp.unsupported(
            f"{name} is imported only on tensors known at import time "
            "(initializers, constants, shapes), not on activations"
        )

    return rule


# ---- shapes ---------------------------------------------------------------------------------------


def shape(imp: Importer) -> None:
    item = imp.entry(imp.node.inputs[0])
    dims = list(item.shape) if isinstance(item, Value | np.ndarray) else list(item.integers.shape)
    start, end = _attr(imp, "start", 0), _attr(imp, "end", None)
    dims = dims[start:end]
    array = (
        np.array(dims, dtype=object) if any(isinstance(d, Dim) for d in dims) else np.asarray(dims, np.int64)
    )
    imp.set_output(0, array)


def reshape(imp: Importer) -> None:
    x = imp.value(0)
    target = imp.ints(1)
    if not _attr(imp, "allowzero", 0):
        target = [x.shape[i] if not isinstance(d, Dim) and d == 0 else d for i, d in enumerate(target)]
    imp.set_output(0, imp.emit("reshape", [x], {"shape": _attr_shape(imp, target, x)}))


def _reshape_to(imp: Importer, x: Value, dims: list) -> Value:
    return imp.emit("reshape", [x], {"shape": _attr_shape(imp, dims, x)})


def _product(dims) -> object:
    result = 1
    for d in dims:
        result = (
            d * result
            if isinstance(d, Dim)
            else (result * int(d) if not isinstance(result, Dim) else result * int(d))
        )
    return result


def flatten(imp: Importer) -> None:
    x = imp.value(0)
    axis = int(_attr(imp, "axis", 1)) % (len(x.shape) + 1)
    if axis == 1 and len(x.shape) >= 2:
        imp.set_output(0, imp.emit("flatten", [x], {"start_dim": 1, "end_dim": -1}))
        return
    imp.set_output(0, _reshape_to(imp, x, [_product(x.shape[:axis]), _product(x.shape[axis:])]))


def squeeze(imp: Importer) -> None:
    x = imp.value(0)
    axes = _axes(imp, 1, len(x.shape))
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    imp.set_output(0, _reshape_to(imp, x, [d for i, d in enumerate(x.shape) if i not in axes]))


def unsqueeze(imp: Importer) -> None:
    x = imp.value(0)
    raw = _attr(imp, "axes")
    raw = raw if raw is not None else imp.ints(1)
    rank = len(x.shape) + len(raw)
    dims = list(x.shape)
    for axis in sorted(int(a) % rank for a in raw):
        dims.insert(axis, 1)
    imp.set_output(0, _reshape_to(imp, x, dims))


def transpose(imp: Importer) -> None:
    x = imp.value(0)
    perm = _attr(imp, "perm") or list(reversed(range(len(x.shape))))
    imp.set_output(0, imp.emit("permute", [x], {"dims": [int(p) for p in perm]}))


def concat(imp: Importer) -> None:
    values = [imp.value(i) for i in range(len(imp.node.inputs))]
    axis = int(_attr(imp, "axis")) % len(values[0].shape)
    imp.set_output(0, imp.emit("concat", values, {"dim": axis}))


def split(imp: Importer) -> None:
    x = imp.value(0)
    axis = int(_attr(imp, "axis", 0)) % len(x.shape)
    size = x.shape[axis]
    if isinstance(size, Dim):
        raise imp.unsupported("Split along the symbolic batch axis")
    sizes = _attr(imp, "split") or (imp.ints(1, required=False) if len(imp.node.inputs) > 1 else None)
    count = len(imp.node.outputs)
    if not sizes:
        chunk = math.ceil(size / count)
        sizes = [min(chunk, size - i * chunk) for i in range(count)]
    if sum(sizes) != size or any(s <= 0 for s in sizes):
        raise imp.fail(f"split sizes {list(sizes)} do not add up to the axis size {size}")
    results = imp.emit("split", [x], {"axis": axis, "sizes": [int(s) for s in sizes]}, outputs=count)
    results = results if isinstance(results, list) else [results]
    for index, value in enumerate(results):
        imp.set_output(index, value)


def slice_(imp: Importer) -> None:
    x = imp.value(0)
    starts, ends = imp.ints(1), imp.ints(2)
    axes = imp.ints(3, required=False) or list(range(len(starts)))
    steps = imp.ints(4, required=False) or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = int(axis) % len(x.shape)
        size = x.shape[axis]
        if step <= 0:
            raise imp.unsupported(f"Slice with step {step} (positive steps are imported)")
        if isinstance(size, Dim):
            if start == 0 and end >= (1 << 62):
                continue
            raise imp.unsupported("Slice along the symbolic batch axis")
        start = max(start + size, 0) if start < 0 else min(start, size)
        end = max(end + size, 0) if end < 0 else min(end, size)
        if (start, end, step) == (0, size, 1):
            continue
        x = imp.emit(
            "slice",
            [x],
            {"axis": axis, "start": start, "end": max(end, start), "step": step},
            tag=f"axis{axis}",
        )
    imp.set_output(0, x)


def gather(imp: Importer) -> None:
    data = imp.entry(imp.node.inputs[0])
    axis = int(_attr(imp, "axis", 0))
    if isinstance(data, np.ndarray | QuantizedConstant) and axis == 0:  # a lookup table
        table = imp.value(0)
        imp.set_output(0, imp.emit("embedding", [imp.value(1), table]))
        return
    x = imp.value(0)
    axis %= len(x.shape)
    indices = imp.constant(1)
    flat = (
        [int(i) % int(x.shape[axis]) for i in indices.reshape(-1)]
        if not isinstance(x.shape[axis], Dim)
        else None
    )
    if flat is None or flat != list(range(flat[0], flat[0] + len(flat))):
        raise imp.unsupported("Gather of an activation with indices that are not a constant contiguous range")
    taken = imp.emit(
        "slice", [x], {"axis": axis, "start": flat[0], "end": flat[0] + len(flat), "step": 1}, tag="take"
    )
    if indices.ndim == 0:
        taken = _reshape_to(imp, taken, [d for i, d in enumerate(x.shape) if i != axis])
    imp.set_output(0, taken)


def expand(imp: Importer) -> None:
    x = imp.value(0)
    target = imp.ints(1)
    rank = max(len(target), len(x.shape))
    padded_x = [1] * (rank - len(x.shape)) + list(x.shape)
    padded_t = [1] * (rank - len(target)) + list(target)
    dims = [a if not isinstance(b, Dim) and b == 1 else b for a, b in zip(padded_x, padded_t, strict=True)]
    attr = [-1 if isinstance(d, Dim) else int(d) for d in dims]
    imp.set_output(0, imp.emit("expand", [x], {"shape": attr}))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def pad(imp: Importer) -> None:
    x = imp.value(0)
    rank = len(x.shape)
    mode = _attr(imp, "mode", "constant")
    if mode not in _PAD_MODES:
        raise imp.unsupported(f"Pad mode '{mode}' (constant, reflect and edge are imported)")
    pads = list(_attr(imp, "pads") or []) if imp.opset < 11 else imp.ints(1)
    value = (
        float(_attr(imp, "value", 0.0))
        if imp.opset < 11
        else (
            float(imp.constant(2, required=False).reshape(-1)[0])
            if len(imp.node.inputs) > 2 and imp.node.inputs[2].name
            else 0.0
        )
    )
    axes = imp.ints(3, required=False) if len(imp.node.inputs) > 3 else None
    axes = [int(a) % rank for a in axes] if axes else list(range(rank))
    if len(pads) != 2 * len(axes) or any(p < 0 for p in pads):
        raise imp.unsupported(f"pads {pads} (non-negative, two per axis, are imported)")
    begins, ends = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begins[axis], ends[axis] = pads[i], pads[i + len(axes)]
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):
        torch_pads += [begins[axis], ends[axis]]
    while torch_pads and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    imp.set_output(0, imp.emit("pad", [x], {"pads": torch_pads, "mode": _PAD_MODES[mode], "value": value}))


def resize(imp: Importer) -> None:
    x = imp.value(0)
    rank = len(x.shape)
    sizes = imp.ints(3, required=False) if len(imp.node.inputs) > 3 else None
    scales = imp.constant(2, required=False) if len(imp.node.inputs) > 2 else None
    if sizes:
        out = [int(s) for s in sizes[2:]]
    elif scales is not None and scales.size == rank:
        if list(scales[:2]) != [1.0, 1.0]:
            raise imp.unsupported("Resize of the batch or channel axes")
        out = [int(math.floor(int(d) * float(s))) for d, s in zip(x.shape[2:], scales[2:], strict=True)]
    else:
        raise imp.unsupported("Resize needs constant sizes or scales")
    mode = _attr(imp, "mode", "nearest")
    transform = _attr(imp, "coordinate_transformation_mode", "half_pixel")
    if mode == "nearest":
        if transform != "asymmetric" or _attr(imp, "nearest_mode", "round_prefer_floor") != "floor":
            raise imp.unsupported(
                f"nearest Resize with coordinate_transformation_mode={transform} and "
                f"nearest_mode={_attr(imp, 'nearest_mode', 'round_prefer_floor')} "
                "(torch's asymmetric / floor is imported)"
            )
        attrs = {"size": out, "mode": "nearest", "align_corners": None}
    elif mode == "linear":
        if transform not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise imp.unsupported(f"linear Resize with coordinate_transformation_mode={transform}")
        attrs = {
            "size": out,
            "mode": "bilinear" if rank == 4 else "linear",
            "align_corners": transform == "align_corners",
        }
    else:
        raise imp.unsupported(f"Resize mode '{mode}' (nearest and linear are imported)")
    imp.set_output(0, imp.emit("resize", [x], attrs))


# ---- pooling and reductions -----------------------------------------------------------------------


def _same_pads(imp: Importer, sizes, kernel, strides, dilations) -> list[int]:
    mode = _attr(imp, "auto_pad", "NOTSET")
    spatial = len(kernel)
    if mode in ("NOTSET", ""):
        return list(_attr(imp, "pads", [0] * 2 * spatial))
    if mode == "VALID":
        return [0] * 2 * spatial
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        if isinstance(size, Dim):
            raise imp.unsupported("auto_pad on a symbolic spatial size")
        out = math.ceil(int(size) / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - int(size), 0)
        small = total // 2
        begins.append(small if mode == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def conv_padding(imp: Importer, x: Value, weight: Value, strides, dilations) -> tuple[Value, list[int]]:
    """A convolution's symmetric padding; an asymmetric one becomes a zero pad node before it."""
    kernel = [int(k) for k in weight.shape[2:]]
    pads = _same_pads(imp, x.shape[2:], kernel, strides, dilations)
    spatial = len(kernel)
    begins, ends = pads[:spatial], pads[spatial:]
    if begins == ends:
        return x, begins
    torch_pads: list[int] = []
    for axis in reversed(range(spatial)):
        torch_pads += [begins[axis], ends[axis]]
    padded = imp.emit("pad", [x], {"pads": torch_pads, "mode": "constant", "value": 0.0}, tag="pad")
    return padded, [0] * spatial


def pool(kind: str):
    def rule(imp: Importer) -> None:
        x = imp.value(0)
        if len(imp.node.outputs) > 1 and imp.node.outputs[1].name:
            raise imp.unsupported("MaxPool's indices output is not imported")
        kernel = [int(k) for k in _attr(imp, "kernel_shape")]
        spatial = len(kernel)
        if spatial not in (1, 2):
            raise imp.unsupported(f"{spatial}-D pooling (1-D and 2-D are imported)")
        strides = list(_attr(imp, "strides", [1] * spatial))
        dilations = list(_attr(imp, "dilations", [1] * spatial))
        pads = _same_pads(imp, x.shape[2:], kernel, strides, dilations)
        if pads[:spatial] != pads[spatial:]:
            raise imp.unsupported(f"asymmetric pooling pads {pads}")
        attrs = {
            "kernel_size": kernel,
            "stride": strides,
            "padding": pads[:spatial],
            "ceil_mode": bool(_attr(imp, "ceil_mode", 0)),
        }
        if kind == "max":
            attrs["dilation"] = dilations
        else:
            if dilations != [1] * spatial:
                raise imp.unsupported("dilated average pooling")
            attrs["count_include_pad"] = bool(_attr(imp, "count_include_pad", 0))
        imp.set_output(0, imp.emit(f"{kind}_pool{spatial}d", [x], attrs))

    return rule


def global_average_pool(imp: Importer) -> None:
    x = imp.value(0)
    spatial = len(x.shape) - 2
    if spatial not in (1, 2):
        raise imp.unsupported(f"GlobalAveragePool over {spatial} spatial axes")
    imp.set_output(0, imp.emit(f"adaptive_avg_pool{spatial}d", [x], {"output_size": [1] * spatial}))


def global_max_pool(imp: Importer) -> None:
    x = imp.value(0)
    imp.set_output(0, imp.emit("amax", [x], {"dim": list(range(2, len(x.shape))), "keepdim": True}))


def _axes(imp: Importer, index: int, rank: int) -> list[int] | None:
    axes = _attr(imp, "axes")
    if axes is None and len(imp.node.inputs) > index and imp.node.inputs[index].name:
        axes = imp.ints(index)
    return None if axes is None else [int(a) % rank for a in axes]


def reduce(ir_op: str, **extra):
    def rule(imp: Importer) -> None:
        x = imp.value(0)
        axes = _axes(imp, 1, len(x.shape))
        if not axes:
            if _attr(imp, "noop_with_empty_axes", 0):
                imp.set_output(0, x)
                return
            axes = list(range(len(x.shape)))
        imp.set_output(
            0, imp.emit(ir_op, [x], {"dim": axes, "keepdim": bool(_attr(imp, "keepdims", 1)), **extra})
        )

    return rule


def argmax(imp: Importer) -> None:
    if _attr(imp, "select_last_index", 0):
        raise imp.unsupported("ArgMax with select_last_index=1 (torch takes the first maximum)")
    x = imp.value(0)
    imp.set_output(
        0,
        imp.emit(
            "argmax",
            [x],
            {"dim": int(_attr(imp, "axis", 0)) % len(x.shape), "keepdim": bool(_attr(imp, "keepdims", 1))},
        ),
    )


RULES = {
    "Shape": shape,
    "Reshape": reshape,
    "Flatten": flatten,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Transpose": transpose,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "Expand": expand,
    "Pad": pad,
    "Resize": resize,
    "MaxPool": pool("max"),
    "AveragePool": pool("avg"),
    "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool,
    "ReduceMean": reduce("mean"),
    "ReduceSum": reduce("sum"),
    "ReduceMax": reduce("amax"),
    "ReduceMin": reduce("amin"),
    "ReduceL2": reduce("vector_norm", ord=2.0),
    "ReduceL1": reduce("vector_norm", ord=1.0),
    "ArgMax": argmax,
}
