"""Hypothesis strategies for random valid IR graphs, and an exact structural comparison.

`graphs()` draws a `Graph` built only through the public API (`add_input`,
`add_constant`, `add_node`), so shape inference is the real one and every
drawn graph passes `verify()`. The graphs are chains and DAGs over a pool of
available values: conv2d (groups, stride, padding), linear, relu, clamp, gelu,
add/mul with numpy broadcasting, concat, split (multi-output), reshape,
flatten, transpose, pooling, batch_norm, layer_norm, softmax, mean and resize;
with absent optional inputs (both trailing and `_` in the middle), small
constants (printed inline) and large ones (printed as digests), attributes of
every literal kind (floats such as 1e-5, None, strings, lists, bools), odd but
legal value names, and optionally quantization parameters (per tensor and per
channel) on some values.

`assert_same_structure(a, b)` compares two graphs object by object, not through
their text, so it also catches a printer that drops information.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from qcompiler.errors import VerificationError
from qcompiler.ir import BATCH, Dim, Graph, QParams, Value
from qcompiler.ir.dims import shape_at
from qcompiler.ir.ops import TORCH_DTYPES

# Names as the text form allows them (see `qcompiler.ir.text._NAME`), dots and slashes included.
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:/\-]{0,12}", fullmatch=True)
# Floats that must survive printing exactly: tiny, huge, negative zero, infinities.
attr_floats = st.one_of(
    st.sampled_from([1e-5, 1e-3, 0.1, -0.0, 6.0, 1e-30, 3.4e38, float("inf"), float("-inf")]),
    st.floats(allow_nan=False),
)
float32s = st.floats(width=32, allow_nan=True, allow_infinity=True)
# For graphs that will be run: torch refuses a clamp bound a float32 cannot hold.
runnable_floats = st.one_of(st.sampled_from([1e-5, 0.0, -0.0, 6.0]), st.floats(-1e6, 1e6))
SMALL = 16  # qcompiler.ir.text.INLINE_LIMIT: constants up to this size print inline


def _maybe_name(draw) -> str | None:
    return draw(st.one_of(st.none(), names))


def _constant(draw, graph: Graph, base: str, shape, special_floats: bool, positive=False) -> Value:
    """A float32 constant; small ones sometimes hold special values (nan, inf, -0.0, denormals)."""
    numel = int(np.prod(shape))
    if special_floats and not positive and numel <= SMALL and draw(st.booleans()):
        data = np.array(draw(st.lists(float32s, min_size=numel, max_size=numel)), np.float32)
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        data = rng.standard_normal(numel).astype(np.float32)
        if positive:
            data = np.abs(data) + np.float32(0.5)
    return graph.add_constant(draw(names) if draw(st.booleans()) else base, data.reshape(shape))


def _bias_inputs(draw, graph, base, size, special_floats) -> list:
    """Optional trailing bias: absent entirely, written as `_`, or a constant."""
    choice = draw(st.sampled_from(["absent", "none", "constant"]))
    if choice == "absent":
        return []
    if choice == "none":
        return [None]
    return [_constant(draw, graph, base, (size,), special_floats)]


def _broadcast_partner_shape(draw, shape) -> tuple[int, ...]:
    """A constant's shape that broadcasts against `shape`: a suffix of it with some dims set to 1
    (the symbolic batch always: constants have concrete shapes)."""
    keep = draw(st.integers(0, len(shape)))
    suffix = shape[len(shape) - keep:]
    return tuple(1 if isinstance(d, Dim) or draw(st.booleans()) else d for d in suffix)


def _build_op(draw, graph: Graph, pool: list[Value], x: Value, special_floats: bool):
    """Draw one op that accepts `x` (and maybe other pool values); return (op, inputs, attrs)."""
    rank, shape = len(x.shape), x.shape
    static = [isinstance(d, int) for d in shape]  # the symbolic batch N is not
    ops = ["relu", "clamp", "gelu", "add", "softmax", "concat", "transpose", "mean", "reshape"]
    if static[-1]:  # ops whose weights or attributes hold the last dimension
        ops += ["linear", "layer_norm"]
    if any(static):
        ops += ["split"]
    if rank >= 2:
        ops += ["flatten"] + (["batch_norm"] if static[1] else [])
    if rank == 4 and all(static[1:]):  # conv2d listed thrice: image ops would otherwise be rare
        ops += ["conv2d"] * 3 + ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "resize"]
    op = draw(st.sampled_from(ops))
    const = lambda base, s, **kw: _constant(draw, graph, base, s, special_floats, **kw)  # noqa: E731
    dim = lambda: draw(st.integers(-rank, rank - 1))  # noqa: E731
    if op == "relu":
        return op, [x], {}
    if op == "clamp":
        low, high = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
        bounds = attr_floats if special_floats else runnable_floats
        attrs = {"min": draw(bounds) if low else None, "max": draw(bounds) if high else None}
        return op, [x], attrs
    if op == "gelu":
        return op, [x], draw(st.sampled_from([{}, {"approximate": "tanh"}, {"approximate": "none"}]))
    if op == "add":
        op = draw(st.sampled_from(["add", "mul"]))
        partners = [v for v in pool if _broadcastable(v.shape, shape)]
        if draw(st.booleans()):
            other = draw(st.sampled_from(partners))
        else:
            other = const("addend", _broadcast_partner_shape(draw, shape))
        return op, draw(st.permutations([x, other])), {}
    if op == "linear":
        out = draw(st.integers(1, 6))
        weight = const("weight", (out, shape[-1]))
        return op, [x, weight, *_bias_inputs(draw, graph, "bias", out, special_floats)], {}
    if op == "softmax":
        return op, [x], {"dim": dim()}
    if op == "concat":
        axis = dim()
        same = [v for v in pool if len(v.shape) == rank and all(
            a == b for i, (a, b) in enumerate(zip(v.shape, shape, strict=True)) if i != axis % rank)]
        others = draw(st.lists(st.sampled_from(same), max_size=2))
        if draw(st.booleans()) and all(static[:axis % rank] + static[axis % rank + 1:]):
            extra = list(shape)
            extra[axis] = draw(st.integers(1, 3))
            others.append(const("part", tuple(extra)))
        return op, [x, *others], {"dim": axis}
    if op == "split":
        axis = draw(st.sampled_from([a for a in range(rank) if static[a]]))
        total = shape[axis]
        cuts = sorted(draw(st.sets(st.integers(1, max(total - 1, 1)), max_size=2)))
        cuts = [c for c in cuts if c < total]
        edges = [0, *cuts, total]
        return op, [x], {"axis": axis, "sizes": [b - a for a, b in zip(edges, edges[1:], strict=False)]}
    if op == "reshape":  # attributes write the symbolic batch as -1
        written = [d if isinstance(d, int) else -1 for d in shape]
        targets = [[-1], written[::-1]]
        if static[0]:
            targets.append([shape[0], -1])
        elif all(static[1:]):
            targets.append([-1, int(np.prod(shape[1:]))])
        return op, [x], {"shape": draw(st.sampled_from(targets))}
    if op == "transpose":
        return op, [x], {"dim0": dim(), "dim1": dim()}
    if op == "layer_norm":
        trailing = next((i for i, s in enumerate(reversed(static)) if not s), rank)
        count = draw(st.integers(1, min(2, trailing)))
        normalized = list(shape[rank - count:])
        weight = const("ln.weight", tuple(normalized)) if draw(st.booleans()) else None
        bias = const("ln.bias", tuple(normalized)) if draw(st.booleans()) else None
        inputs = [x, weight, bias]
        while inputs[-1] is None and draw(st.booleans()):  # trailing absences may be dropped
            inputs.pop()
        attrs = {"normalized_shape": normalized}
        if draw(st.booleans()):
            attrs["eps"] = draw(st.sampled_from([1e-5, 1e-6, 0.001]))
        return op, inputs, attrs
    if op == "mean":
        dims = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
        return op, [x], {"dim": dims, "keepdim": draw(st.booleans())}
    if op == "batch_norm":
        channels = shape[1]
        stats = [const("bn.weight", (channels,)), const("bn.bias", (channels,)),
                 const("bn.mean", (channels,)), const("bn.var", (channels,), positive=True)]
        attrs = {"eps": draw(st.sampled_from([1e-5, 1e-3]))} if draw(st.booleans()) else {}
        return op, [x, *stats], attrs
    if op == "flatten":
        return op, [x], {"start_dim": draw(st.integers(0, rank - 1))}
    if op == "conv2d":
        channels, height, width = shape[1], shape[2], shape[3]
        groups = draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
        out = groups * draw(st.integers(1, 2))
        kernel = draw(st.sampled_from([k for k in (1, 3) if k <= min(height, width) or k == 1]))
        pad = draw(st.sampled_from([0, kernel // 2]))
        weight = const("conv.weight", (out, channels // groups, kernel, kernel))
        attrs = {"stride": [draw(st.integers(1, 2))] * 2, "padding": [pad, pad], "dilation": [1, 1]}
        if groups != 1 or draw(st.booleans()):
            attrs["groups"] = groups
        return op, [x, weight, *_bias_inputs(draw, graph, "conv.bias", out, special_floats)], attrs
    if op in ("max_pool2d", "avg_pool2d"):
        kernel = draw(st.integers(1, min(shape[2], shape[3], 3)))
        attrs = {"kernel_size": [kernel, kernel], "stride": [draw(st.integers(1, 2))] * 2,
                 "padding": [kernel // 2] * 2}
        if op == "max_pool2d":
            attrs["dilation"] = [1, 1]
        else:
            attrs["count_include_pad"] = draw(st.booleans())
        if draw(st.booleans()):
            attrs["ceil_mode"] = draw(st.booleans())
        return op, [x], attrs
    if op == "adaptive_avg_pool2d":
        return op, [x], {"output_size": [draw(st.integers(1, 2)), draw(st.integers(1, 2))]}
    assert op == "resize"
    size = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    mode, align = draw(st.sampled_from([("nearest", None), ("bilinear", False), ("bilinear", True)]))
    return op, [x], {"size": size, "mode": mode, "align_corners": align}


def _broadcastable(a, b) -> bool:
    """numpy broadcasting, where a symbolic dimension only meets itself or 1."""
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b), strict=False))


def _qparams(draw, value: Value) -> QParams:
    axes = [a for a, d in enumerate(value.shape) if isinstance(d, int)]  # not along the batch
    per_channel = bool(axes) and draw(st.booleans())
    axis = draw(st.sampled_from(axes)) if per_channel else None
    channels = value.shape[axis] if per_channel else 1
    scales = draw(st.lists(st.floats(2.0**-20, 10.0, width=32), min_size=channels, max_size=channels))
    zero_points = draw(st.lists(st.integers(-128, 127), min_size=channels, max_size=channels))
    return QParams(np.array(scales, np.float32), np.array(zero_points, np.int32),
                   bits=draw(st.sampled_from([4, 8])), signed=draw(st.booleans()), axis=axis,
                   narrow_range=draw(st.booleans()))


@st.composite
def graphs(draw, max_nodes: int = 8, qparams: bool = True, special_floats: bool = True,
           batch: bool = False) -> Graph:
    """A random valid graph. `special_floats=False` keeps constant data finite (for running it);
    `batch=True` gives every input the symbolic batch N as dimension 0."""
    graph = Graph(draw(names) if draw(st.booleans()) else "main")
    pool: list[Value] = []
    for index in range(draw(st.integers(1, 2))):
        rank = draw(st.sampled_from([2, 3, 4, 4]))
        first = BATCH if batch else draw(st.integers(1, 2))
        shape = [first] + [draw(st.integers(1, 5)) for _ in range(rank - 1)]
        pool.append(graph.add_input(draw(names) if draw(st.booleans()) else f"x{index}", shape))
    nodes = 0
    for _ in range(draw(st.integers(1, max_nodes))):
        # Mostly extend the newest value (chains); sometimes reach back (DAGs). Scalars
        # (a mean over every dim) can be outputs or addends but feed no op here.
        tensors = [v for v in pool if v.shape]
        x = tensors[-1] if draw(st.booleans()) else draw(st.sampled_from(tensors))
        before = set(graph.values)
        op, inputs, attrs = _build_op(draw, graph, pool, x, special_floats)
        try:
            node = graph.add_node(op, inputs, attrs, name=_maybe_name(draw))
        except VerificationError:
            # The drawn attributes do not fit this input (e.g. a pooling window that is
            # too big once strided); drop the constants made for it and draw again.
            for name in set(graph.values) - before:
                graph.remove_value(graph.values[name])
            continue
        nodes += 1
        pool.extend(node.outputs)
    if nodes == 0:  # make sure there is at least one node
        pool.append(graph.add_node("relu", [pool[-1]]).output)
    produced = [v for v in pool if v.producer is not None]
    outputs = draw(st.lists(st.sampled_from(pool), min_size=0, max_size=2, unique_by=id))
    graph.outputs = [produced[-1]] + [v for v in outputs if v is not produced[-1]]
    if draw(st.booleans()):  # an unused constant of another dtype, for the dense printer
        dtype = draw(st.sampled_from([np.int8, np.uint8, np.int32, np.int64, np.float16, np.bool_]))
        data = np.arange(draw(st.integers(0, 20))).astype(dtype)
        graph.add_constant("table", data)
    if qparams:
        for value in list(graph.values.values()):
            if draw(st.integers(0, 3)) == 0:
                value.qparams = _qparams(draw, value)
    return graph.verify()


def random_inputs(graph: Graph, seed: int = 0, batch: int = 2) -> list[torch.Tensor]:
    """Seeded random tensors for the graph inputs (floats only), the symbolic batch at `batch`."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape_at(v.shape, batch), generator=generator, dtype=TORCH_DTYPES[v.dtype])
            for v in graph.inputs]


def _same_literal(a, b) -> bool:
    """Attribute equality that keeps 1, 1.0 and True apart and treats tuples as lists."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_literal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return repr(a) == repr(b)  # exact, and -0.0 != 0.0
    return type(a) is type(b) and a == b


def _canonical_bytes(array: np.ndarray) -> bytes:
    """Array bytes with every NaN made the same NaN (the text form does not keep NaN payloads)."""
    if array.dtype.kind == "f":
        array = np.where(np.isnan(array), np.array(np.nan, array.dtype), array)
    return np.ascontiguousarray(array).tobytes()


def _assert_same_value(a: Value, b: Value) -> None:
    assert (a.name, a.shape, a.dtype) == (b.name, b.shape, b.dtype), (a, b)
    assert a.qparams == b.qparams, (a.name, a.qparams, b.qparams)
    assert (a.data is None) == (b.data is None), a.name
    if a.data is not None:
        assert a.data.dtype == b.data.dtype and _canonical_bytes(a.data) == _canonical_bytes(b.data), a.name


def assert_same_structure(a: Graph, b: Graph) -> None:
    """Assert two graphs agree in every object: names, types, qparams, data, ops, attrs, wiring."""
    assert a.name == b.name
    assert [v.name for v in a.inputs] == [v.name for v in b.inputs]
    for x, y in zip(a.inputs, b.inputs, strict=True):
        _assert_same_value(x, y)
    assert [v.name for v in a.constants] == [v.name for v in b.constants]
    for x, y in zip(a.constants, b.constants, strict=True):
        _assert_same_value(x, y)
    assert len(a) == len(b)
    for m, n in zip(a, b, strict=True):
        assert m.op == n.op, (m, n)
        assert [v and v.name for v in m.inputs] == [v and v.name for v in n.inputs], m
        assert sorted(m.attrs) == sorted(n.attrs), (m, m.attrs, n.attrs)
        for key in m.attrs:
            assert _same_literal(m.attrs[key], n.attrs[key]), (m, key, m.attrs[key], n.attrs[key])
        for x, y in zip(m.outputs, n.outputs, strict=True):
            _assert_same_value(x, y)
    assert [v.name for v in a.outputs] == [v.name for v in b.outputs]
