"""ONNX ops computed at import time with numpy, when every input is known then (initializers,
Constant nodes, shapes): the shape arithmetic exporters write around Reshape, and small
constant transforms of weights. Arrays may hold the symbolic batch (`Dim` entries in an
object array, from `Shape`); an op that cannot compute with it (`N + 1`) is not folded,
and its IR rule then says that a shape holding the batch is read as data.

No fold allocates more than `FOLD_LIMIT` elements: the output size is bounded before the
op runs (ConstantOfShape, Expand, Range, Tile are the ops that can grow).
"""

from __future__ import annotations

import math

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.frontends.onnx.importer import Importer, QuantizedConstant

FOLD_LIMIT = 1 << 24

_NUMPY_DTYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
}


def _axes(imp: Importer, arrays, index: int, rank: int):
    """An axes list from the attribute (older opsets) or input `index` (newer ones)."""
    axes = imp.node.attrs.get("axes")
    if axes is None and len(arrays) > index and arrays[index] is not None:
        axes = [int(a) for a in arrays[index].reshape(-1)]
    return None if axes is None else [int(a) % rank for a in axes]


def _limit(imp: Importer, count: float) -> None:
    if count > FOLD_LIMIT:
        raise imp.fail(
            f"would make a constant of {int(count)} elements at import time, more than "
            f"{FOLD_LIMIT}; refused rather than allocated"
        )


def _gather(imp, a):
    data, indices = a[0], a[1].astype(np.int64) if a[1].dtype != object else a[1]
    axis = int(imp.node.attrs.get("axis", 0)) % max(data.ndim, 1)
    return np.take(data, indices, axis=axis)


def _unsqueeze(imp, a):
    x, axes = a[0], imp.node.attrs.get("axes")
    if axes is None:
        axes = [int(v) for v in a[1].reshape(-1)]
    rank = x.ndim + len(axes)
    for axis in sorted(int(v) % rank for v in axes):
        x = np.expand_dims(x, axis)
    return x


def _squeeze(imp, a):
    x = a[0]
    axes = _axes(imp, a, 1, x.ndim)
    return np.squeeze(x, axis=tuple(axes) if axes is not None else None)


def _slice(imp, a):
    x = a[0]
    if imp.opset < 10:
        raise ValueError("opset < 10 Slice")
    starts, ends = a[1].reshape(-1), a[2].reshape(-1)
    axes = a[3].reshape(-1) if len(a) > 3 and a[3] is not None else np.arange(len(starts))
    steps = a[4].reshape(-1) if len(a) > 4 and a[4] is not None else np.ones(len(starts), np.int64)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if int(step) == 0:
            raise ValueError("a zero Slice step")
        index[int(axis) % x.ndim] = slice(int(start), int(end), int(step))
    return x[tuple(index)]


def _reshape(imp, a):
    x, shape = a[0], [int(d) for d in a[1].reshape(-1)]
    shape = [
        x.shape[i] if d == 0 and not imp.node.attrs.get("allowzero", 0) else d for i, d in enumerate(shape)
    ]
    return x.reshape(shape)


def _flatten(imp, a):
    x = a[0]
    axis = int(imp.node.attrs.get("axis", 1)) % (x.ndim + 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _transpose(imp, a):
    perm = imp.node.attrs.get("perm")
    return np.transpose(a[0], perm)


def _cast(imp, a):
    to = int(imp.node.attrs["to"])
    if a[0].dtype == object:
        if to != 7:
            raise ValueError("a symbolic shape cast to a non-int64 type")
        return a[0]
    return a[0].astype(_NUMPY_DTYPES[to])


def _binary(function):
    def fold_binary(imp, a):
        result = function(a[0], a[1])
        if a[0].dtype != object and a[1].dtype != object:
            result = np.asarray(result).astype(np.result_type(a[0].dtype, a[1].dtype))
        return result

    return fold_binary


def _divide(x, y):
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        return np.trunc(x / y).astype(np.result_type(x, y))
    return x / y


def _concat(imp, a):
    return np.concatenate([np.atleast_1d(x) for x in a], axis=int(imp.node.attrs.get("axis", 0)))


def _range(imp, a):
    start, limit, delta = (x.reshape(-1)[0] for x in a)
    if delta == 0:
        raise ValueError("a zero Range step")
    _limit(imp, max(math.ceil((limit - start) / delta), 0))
    return np.arange(start, limit, delta, dtype=a[0].dtype)


def _constant_of_shape(imp, a):
    shape = [int(d) for d in a[0].reshape(-1)]
    if any(d < 0 for d in shape):
        raise imp.fail(f"ConstantOfShape with a negative dimension {shape}")
    _limit(imp, float(np.prod(shape, dtype=np.float64)))
    value = imp.node.attrs.get("value")
    fill = np.asarray(imp._constant_array(value)).reshape(-1)[0] if value is not None else np.float32(0)
    return np.full(shape, fill, dtype=np.asarray(fill).dtype)


def _expand(imp, a):
    shape = [int(d) for d in a[1].reshape(-1)]
    target = np.broadcast_shapes(a[0].shape, tuple(max(d, 1) for d in shape))
    _limit(imp, float(np.prod(target, dtype=np.float64)))
    return np.broadcast_to(a[0], target).copy()


def _tile(imp, a):
    repeats = [int(r) for r in a[1].reshape(-1)]
    _limit(imp, float(np.prod(repeats, dtype=np.float64)) * a[0].size)
    return np.tile(a[0], repeats)


def _where(imp, a):
    return np.where(a[0], a[1], a[2])


def _reduce(function):
    def fold_reduce(imp, a):
        axes = _axes(imp, a, 1, a[0].ndim)
        keep = bool(imp.node.attrs.get("keepdims", 1))
        return function(a[0], axis=None if axes is None else tuple(axes), keepdims=keep)

    return fold_reduce


FOLDERS = {
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Cast": _cast,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_divide),
    "Equal": _binary(np.equal),
    "Less": _binary(np.less),
    "Greater": _binary(np.greater),
    "Min": _binary(np.minimum),
    "Max": _binary(np.maximum),
    "Concat": _concat,
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Tile": _tile,
    "Where": _where,
    "Neg": lambda imp, a: -a[0],
    "Sqrt": lambda imp, a: np.sqrt(a[0]),
    "Not": lambda imp, a: np.logical_not(a[0]),
    "Floor": lambda imp, a: np.floor(a[0]),
    "Ceil": lambda imp, a: np.ceil(a[0]),
    "Abs": lambda imp, a: np.abs(a[0]),
    "ReduceProd": _reduce(np.prod),
    "ReduceSum": _reduce(np.sum),
    "ReduceMax": _reduce(np.max),
    "ReduceMin": _reduce(np.min),
}
FOLDED = frozenset(FOLDERS)


def fold(imp: Importer) -> bool:
    """Compute the current node with numpy if every input is known; whether it did."""
    arrays = []
    for tensor in imp.node.inputs:
        item = imp.entry(tensor)
        if isinstance(item, QuantizedConstant):
            item = item.real
        if item is not None and not isinstance(item, np.ndarray):
            return False
        arrays.append(item)
    if not arrays or arrays[0] is None:
        return False
    if sum(x.size for x in arrays if x is not None) > FOLD_LIMIT:
        return False
    try:
        with np.errstate(all="ignore"):
            result = FOLDERS[imp.node.op](imp, arrays)
    except QCompilerError:
        raise
    except (
        TypeError,
        ValueError,
        IndexError,
        KeyError,
        ZeroDivisionError,
        OverflowError,
        AttributeError,
        np.exceptions.AxisError,
    ):
        return False  # the IR rule takes the node, and says what it cannot do
    imp.set_output(0, np.asarray(result))
    return True
