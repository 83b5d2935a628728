"""Every integer op of the interpreter equals a slow, obviously-correct reference written with
Python integers and loops (docs/integer-spec.md), and so does the op's torch semantics in
`qcompiler.ir.ops` (what shape inference and `qc.to_torch` run). Sizes are tiny so that the
loops are fast; hypothesis draws shapes, scales, zero points, strides, padding and groups."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompiler.backends.interpreter_ops import KERNELS
from qcompiler.ir.ops import run_op
from qcompiler.numerics.fixed_point import quantize_multiplier

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RANGES = {"u8": (0, 255), "i8": (-128, 127)}
NUMPY = {"u8": np.uint8, "i8": np.int8, "i32": np.int32}


# ---- the Python-integer reference ------------------------------------------------------------


def requantize_one(acc: int, m0: int, shift: int, zero_point: int, low: int, high: int) -> int:
    """Spec section 3 on one Python int: round half up, once, then clamp."""
    t = 31 + shift
    return min(max(((acc * m0 + (1 << (t - 1))) >> t) + zero_point, low), high)


def conv_reference(x, w, bias, m0, shift, stride, padding, dilation, groups, zx, out):
    """Spatially n-dimensional convolution by loops: padded positions hold z_x, so skipping
    them (they add (z_x - z_x) * w = 0) is the definition."""
    x, w = x.astype(object), w.astype(object)
    batch, channels = x.shape[:2]
    out_channels, per_group = w.shape[:2]
    kernel = w.shape[2:]
    sizes = x.shape[2:]
    outs = [(sizes[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
            for i in range(len(sizes))]
    result = np.zeros((batch, out_channels, *outs), np.int64)
    for n, o in itertools.product(range(batch), range(out_channels)):
        group = o // (out_channels // groups)
        for position in itertools.product(*[range(s) for s in outs]):
            acc = int(bias[o])
            for c in range(per_group):
                for k in itertools.product(*[range(s) for s in kernel]):
                    source = [position[i] * stride[i] - padding[i] + k[i] * dilation[i]
                              for i in range(len(sizes))]
                    if all(0 <= source[i] < sizes[i] for i in range(len(sizes))):
                        value = x[(n, group * per_group + c, *source)]
                        acc += (int(value) - zx) * int(w[(o, c, *k)])
            result[(n, o, *position)] = requantize_one(acc, int(m0[o]), int(shift[o]), *out)
    return result


def broadcast_pairs(shape_a, shape_b):
    """(output index, index into a, index into b) under numpy broadcasting, by hand."""
    rank = max(len(shape_a), len(shape_b))
    a = (1,) * (rank - len(shape_a)) + tuple(shape_a)
    b = (1,) * (rank - len(shape_b)) + tuple(shape_b)
    out = tuple(max(p, q) for p, q in zip(a, b, strict=True))
    for index in itertools.product(*[range(s) for s in out]):
        ia = tuple(i if s > 1 else 0 for i, s in zip(index, a, strict=True))[rank - len(shape_a):]
        ib = tuple(i if s > 1 else 0 for i, s in zip(index, b, strict=True))[rank - len(shape_b):]
        yield index, ia, ib


# ---- drawing parameters --------------------------------------------------------------------------


@st.composite
def output_params(draw):
    """Output zero point, clamp inside the dtype's range (a fused activation), dtype."""
    dtype = draw(st.sampled_from(["u8", "i8"]))
    qmin, qmax = RANGES[dtype]
    zero_point = draw(st.integers(qmin, qmax))
    low = draw(st.sampled_from([qmin, max(qmin, zero_point)]))
    high = draw(st.sampled_from([qmax, draw(st.integers(low, qmax))]))
    return {"output_zero_point": zero_point, "output_min": low, "output_max": high,
            "output_dtype": dtype}


def _out_tuple(params):
    return (params["output_zero_point"], params["output_min"], params["output_max"])


multipliers = st.floats(2.0 ** -14, 2.0).map(quantize_multiplier)


def int_array(draw, shape, dtype):
    low, high = RANGES[dtype]
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(low, high + 1, size=shape).astype(NUMPY[dtype])


def check_both(op, arrays, attrs, expected):
    """The numpy kernel and the torch semantics both equal the reference exactly."""
    kernel = KERNELS[op](*arrays, **attrs)
    np.testing.assert_array_equal(kernel.astype(np.int64), expected)
    assert kernel.dtype == NUMPY[attrs.get("output_dtype", "u8")] or "output_dtype" not in attrs
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    semantics = run_op(op, tensors, attrs)[0].numpy()
    np.testing.assert_array_equal(semantics.astype(np.int64), expected)
    assert semantics.dtype == kernel.dtype


# ---- accumulating ops --------------------------------------------------------------------------


@st.composite
def conv_cases(draw, spatial):
    groups = draw(st.sampled_from([1, 2]))
    per_group = draw(st.integers(1, 2))
    out_per_group = draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(spatial)]
    dilation = [draw(st.integers(1, 2)) for _ in range(spatial)]
    padding = [draw(st.integers(0, 2)) for _ in range(spatial)]
    stride = [draw(st.integers(1, 2)) for _ in range(spatial)]
    sizes = [draw(st.integers(dilation[i] * (kernel[i] - 1) + 1, 5)) for i in range(spatial)]
    in_dtype = draw(st.sampled_from(["u8", "i8"]))
    x = int_array(draw, (draw(st.integers(1, 2)), groups * per_group, *sizes), in_dtype)
    out_channels = groups * out_per_group
    w = np.random.default_rng(draw(st.integers(0, 2**32))).integers(
        -127, 128, (out_channels, per_group, *kernel)).astype(np.int8)
    bias = np.array(draw(st.lists(st.integers(-2**20, 2**20), min_size=out_channels,
                                  max_size=out_channels)), np.int32)
    pairs = [draw(multipliers) for _ in range(out_channels)]
    m0 = np.array([p[0] for p in pairs], np.int32)
    shift = np.array([p[1] for p in pairs], np.int32)
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
             "input_zero_point": draw(st.integers(*RANGES[in_dtype])), **draw(output_params())}
    return x, w, bias, m0, shift, attrs


@SETTINGS
@given(conv_cases(2))
def test_qconv2d_matches_the_python_reference(case):
    x, w, bias, m0, shift, attrs = case
    expected = conv_reference(x, w, bias, m0, shift, attrs["stride"], attrs["padding"],
                              attrs["dilation"], attrs["groups"], attrs["input_zero_point"],
                              _out_tuple(attrs))
    check_both("qconv2d", [x, w, bias, m0, shift], attrs, expected)


@SETTINGS
@given(conv_cases(1))
def test_qconv1d_matches_the_python_reference(case):
    x, w, bias, m0, shift, attrs = case
    expected = conv_reference(x, w, bias, m0, shift, attrs["stride"], attrs["padding"],
                              attrs["dilation"], attrs["groups"], attrs["input_zero_point"],
                              _out_tuple(attrs))
    check_both("qconv1d", [x, w, bias, m0, shift], attrs, expected)


@SETTINGS
@given(st.data())
def test_qlinear_matches_the_python_reference(data):
    draw = data.draw
    lead = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    features, outputs = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    in_dtype = draw(st.sampled_from(["u8", "i8"]))
    x = int_array(draw, (*lead, features), in_dtype)
    w = np.random.default_rng(draw(st.integers(0, 2**32))).integers(-127, 128, (outputs, features)
                                                                      ).astype(np.int8)
    bias = np.random.default_rng(draw(st.integers(0, 2**32))).integers(-2**20, 2**20, outputs
                                                                         ).astype(np.int32)
    pairs = [draw(multipliers) for _ in range(outputs)]
    m0, shift = np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)
    attrs = {"input_zero_point": draw(st.integers(*RANGES[in_dtype])), **draw(output_params())}
    expected = np.zeros((*lead, outputs), np.int64)
    for index in itertools.product(*[range(s) for s in lead]):
        for o in range(outputs):
            acc = int(bias[o]) + sum((int(x[(*index, k)]) - attrs["input_zero_point"]) * int(w[o, k])
                                     for k in range(features))
            expected[(*index, o)] = requantize_one(acc, int(m0[o]), int(shift[o]), *_out_tuple(attrs))
    check_both("qlinear", [x, w, bias, m0, shift], attrs, expected)


@SETTINGS
@given(st.data())
def test_qmatmul_matches_the_python_reference(data):
    draw = data.draw
    batch = draw(st.lists(st.integers(1, 2), max_size=2))
    rows, inner, cols = (draw(st.integers(1, 4)) for _ in range(3))
    a_dtype, b_dtype = draw(st.sampled_from(["u8", "i8"])), draw(st.sampled_from(["u8", "i8"]))
    a, b = int_array(draw, (*batch, rows, inner), a_dtype), int_array(draw, (*batch, inner, cols), b_dtype)
    m0, shift = draw(multipliers)
    attrs = {"a_zero_point": draw(st.integers(*RANGES[a_dtype])),
             "b_zero_point": draw(st.integers(*RANGES[b_dtype])), "multiplier": m0, "shift": shift,
             **draw(output_params())}
    expected = np.zeros((*batch, rows, cols), np.int64)
    for index in itertools.product(*[range(s) for s in batch]):
        for i, j in itertools.product(range(rows), range(cols)):
            acc = sum((int(a[(*index, i, k)]) - attrs["a_zero_point"])
                      * (int(b[(*index, k, j)]) - attrs["b_zero_point"]) for k in range(inner))
            expected[(*index, i, j)] = requantize_one(acc, m0, shift, *_out_tuple(attrs))
    check_both("qmatmul", [a, b], attrs, expected)


@st.composite
def broadcast_shapes(draw):
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    other = [1 if draw(st.booleans()) else d for d in shape[len(shape) - draw(st.integers(0, len(shape))):]]
    return (shape, other) if draw(st.booleans()) else (other, shape)


@SETTINGS
@given(st.data())
def test_qadd_matches_the_python_reference(data):
    draw = data.draw
    shape_a, shape_b = draw(broadcast_shapes())
    a_dtype, b_dtype = draw(st.sampled_from(["u8", "i8"])), draw(st.sampled_from(["u8", "i8"]))
    a, b = int_array(draw, shape_a, a_dtype), int_array(draw, shape_b, b_dtype)
    ka, shift = draw(multipliers)
    # Kb shares the shift: any value up to Ka's magnitude, negative for a subtraction.
    kb = draw(st.integers(-ka, ka))
    za, zb = draw(st.integers(*RANGES[a_dtype])), draw(st.integers(*RANGES[b_dtype]))
    attrs = {"a_zero_point": za, "a_multiplier": ka, "b_zero_point": zb, "b_multiplier": kb,
             "shift": shift, **draw(output_params())}
    zero_point, low, high = _out_tuple(attrs)
    t = 31 + shift
    out_shape = np.broadcast_shapes(a.shape, b.shape)
    expected = np.zeros(out_shape, np.int64)
    for index, ia, ib in broadcast_pairs(a.shape, b.shape):
        p = (int(a[ia]) - za) * ka + (int(b[ib]) - zb) * kb
        expected[index] = min(max(((p + (1 << (t - 1))) >> t) + zero_point, low), high)
    check_both("qadd", [a, b], attrs, expected)


@SETTINGS
@given(st.data())
def test_qmul_matches_the_python_reference(data):
    draw = data.draw
    shape_a, shape_b = draw(broadcast_shapes())
    a_dtype, b_dtype = draw(st.sampled_from(["u8", "i8"])), draw(st.sampled_from(["u8", "i8"]))
    a, b = int_array(draw, shape_a, a_dtype), int_array(draw, shape_b, b_dtype)
    m0, shift = draw(multipliers)
    za, zb = draw(st.integers(*RANGES[a_dtype])), draw(st.integers(*RANGES[b_dtype]))
    attrs = {"a_zero_point": za, "b_zero_point": zb, "multiplier": m0, "shift": shift,
             **draw(output_params())}
    expected = np.zeros(np.broadcast_shapes(a.shape, b.shape), np.int64)
    for index, ia, ib in broadcast_pairs(a.shape, b.shape):
        expected[index] = requantize_one((int(a[ia]) - za) * (int(b[ib]) - zb), m0, shift,
                                         *_out_tuple(attrs))
    check_both("qmul", [a, b], attrs, expected)


@SETTINGS
@given(st.data())
def test_requantize_matches_the_python_reference(data):
    draw = data.draw
    dtype = draw(st.sampled_from(["u8", "i8"]))
    x = int_array(draw, draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)), dtype)
    m0, shift = draw(st.floats(2.0 ** -8, 2.0 ** 8).map(quantize_multiplier))
    attrs = {"input_zero_point": draw(st.integers(*RANGES[dtype])), "multiplier": m0,
             "shift": shift, **draw(output_params())}
    expected = np.vectorize(lambda v: requantize_one(int(v) - attrs["input_zero_point"], m0, shift,
                                                     *_out_tuple(attrs)), otypes=[np.int64])(x)
    check_both("requantize", [x], attrs, expected)


# ---- pooling and reductions ----------------------------------------------------------------------


@st.composite
def pool_cases(draw, spatial):
    kernel = [draw(st.integers(1, 3)) for _ in range(spatial)]
    stride = [draw(st.integers(1, 3)) for _ in range(spatial)]
    padding = [draw(st.integers(0, k // 2)) for k in kernel]  # torch allows up to half a kernel
    sizes = [draw(st.integers(kernel[i], 6)) for i in range(spatial)]
    dtype = draw(st.sampled_from(["u8", "i8"]))
    x = int_array(draw, (draw(st.integers(1, 2)), draw(st.integers(1, 2)), *sizes), dtype)
    return x, dtype, kernel, stride, padding, draw(st.booleans())


def _windows(size, kernel, stride, padding, dilation, count):
    """Start of each of `count` windows and the in-range positions it covers."""
    for o in range(count):
        start = o * stride - padding
        yield start, [start + k * dilation for k in range(kernel)
                      if 0 <= start + k * dilation < size]


@SETTINGS
@given(st.data())
def test_qmax_pool_matches_the_python_reference(data):
    spatial = data.draw(st.sampled_from([1, 2]))
    x, dtype, kernel, stride, padding, ceil_mode = data.draw(pool_cases(spatial))
    dilation = [data.draw(st.integers(1, 2)) if x.shape[2 + i] >= 2 * kernel[i] else 1
                for i in range(spatial)]
    attrs = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation,
             "ceil_mode": ceil_mode}
    pool = torch.nn.functional.max_pool2d if spatial == 2 else torch.nn.functional.max_pool1d
    out_shape = pool(torch.zeros(x.shape), kernel, stride, padding, dilation, ceil_mode).shape
    expected = np.zeros(out_shape, np.int64)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        per_dim = [list(_windows(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i],
                                 out_shape[2 + i])) for i in range(spatial)]
        for position in itertools.product(*[range(s) for s in out_shape[2:]]):
            covered = [per_dim[i][position[i]][1] for i in range(spatial)]
            expected[(n, c, *position)] = max(int(x[(n, c, *p)]) for p in itertools.product(*covered))
    op = f"qmax_pool{spatial}d"
    result = KERNELS[op](x, **attrs)
    np.testing.assert_array_equal(result.astype(np.int64), expected)
    assert result.dtype == x.dtype
    semantics = run_op(op, [torch.from_numpy(x)], attrs)[0].numpy()
    np.testing.assert_array_equal(semantics, result)


@SETTINGS
@given(st.data())
def test_qavg_pool_matches_the_python_reference(data):
    """Sum of (x - z_x) over the in-range part of each window, divided (by the multiplier
    for that count) by torch's divisor: the full window clipped at the padding's far edge
    when padding counts, else the in-range elements only."""
    from qcompiler.numerics.integer_params import average_multipliers

    spatial = data.draw(st.sampled_from([1, 2]))
    x, dtype, kernel, stride, padding, ceil_mode = data.draw(pool_cases(spatial))
    include_pad = data.draw(st.booleans())
    input_scale, output_scale = data.draw(st.floats(0.01, 1.0)), data.draw(st.floats(0.01, 1.0))
    table_m, table_s = average_multipliers(input_scale, output_scale, math.prod(kernel))
    zx = data.draw(st.integers(*RANGES[dtype]))
    attrs = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode,
             "count_include_pad": include_pad, "input_zero_point": zx, "multipliers": table_m,
             "shifts": table_s, **data.draw(output_params())}
    pool = torch.nn.functional.avg_pool2d if spatial == 2 else torch.nn.functional.avg_pool1d
    out_shape = pool(torch.zeros(x.shape), kernel, stride, padding, ceil_mode).shape
    expected = np.zeros(out_shape, np.int64)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        per_dim = [list(_windows(x.shape[2 + i], kernel[i], stride[i], padding[i], 1,
                                 out_shape[2 + i])) for i in range(spatial)]
        for position in itertools.product(*[range(s) for s in out_shape[2:]]):
            windows = [per_dim[i][position[i]] for i in range(spatial)]
            acc = sum(int(x[(n, c, *p)]) - zx for p in itertools.product(*[w[1] for w in windows]))
            if include_pad:
                count = math.prod(min(start + kernel[i], x.shape[2 + i] + padding[i]) - start
                                  for i, (start, _) in enumerate(windows))
            else:
                count = math.prod(len(covered) for _, covered in windows)
            expected[(n, c, *position)] = requantize_one(acc, table_m[count - 1], table_s[count - 1],
                                                         *_out_tuple(attrs))
    check_both(f"qavg_pool{spatial}d", [x], attrs, expected)


@SETTINGS
@given(st.data())
def test_qmean_matches_the_python_reference(data):
    draw = data.draw
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    dtype = draw(st.sampled_from(["u8", "i8"]))
    x = int_array(draw, shape, dtype)
    dims = sorted(draw(st.sets(st.integers(0, len(shape) - 1), min_size=1)))
    keepdim = draw(st.booleans())
    m0, shift = draw(multipliers)
    zx = draw(st.integers(*RANGES[dtype]))
    attrs = {"dim": dims, "keepdim": keepdim, "input_zero_point": zx, "multiplier": m0,
             "shift": shift, **draw(output_params())}
    kept = [d for d in range(len(shape)) if d not in dims]
    out = np.zeros([shape[d] for d in kept], np.int64)
    for index in itertools.product(*[range(shape[d]) for d in kept]):
        acc = 0
        for reduced in itertools.product(*[range(shape[d]) for d in dims]):
            full = [0] * len(shape)
            for d, i in zip(kept, index, strict=True):
                full[d] = i
            for d, i in zip(dims, reduced, strict=True):
                full[d] = i
            acc += int(x[tuple(full)]) - zx
        out[index] = requantize_one(acc, m0, shift, *_out_tuple(attrs))
    expected = out.reshape([1 if d in dims else shape[d] for d in range(len(shape))]) if keepdim else out
    check_both("qmean", [x], attrs, expected)


# ---- lookups, concat, boundary and data movement --------------------------------------------------


@SETTINGS
@given(st.data())
def test_qlookup_matches_the_python_reference(data):
    in_dtype, out_dtype = data.draw(st.sampled_from(["u8", "i8"])), data.draw(st.sampled_from(["u8", "i8"]))
    x = int_array(data.draw, data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)), in_dtype)
    table = int_array(data.draw, (256,), out_dtype)
    low = RANGES[in_dtype][0]
    expected = np.vectorize(lambda v: int(table[int(v) - low]), otypes=[np.int64])(x)
    result = KERNELS["qlookup"](x, table, input_min=low)
    np.testing.assert_array_equal(result.astype(np.int64), expected)
    assert result.dtype == table.dtype
    semantics = run_op("qlookup", [torch.from_numpy(x), torch.from_numpy(table)], {"input_min": low})
    np.testing.assert_array_equal(semantics[0].numpy(), result)


@SETTINGS
@given(st.data())
def test_per_channel_qlookup_matches_the_python_reference(data):
    """One table row per channel along `axis` (PReLU with a slope per channel)."""
    draw = data.draw
    in_dtype, out_dtype = draw(st.sampled_from(["u8", "i8"])), draw(st.sampled_from(["u8", "i8"]))
    shape = draw(st.lists(st.integers(1, 4), min_size=2, max_size=4))
    axis = draw(st.integers(0, len(shape) - 1))
    x = int_array(draw, shape, in_dtype)
    table = int_array(draw, (shape[axis], 256), out_dtype)
    low = RANGES[in_dtype][0]
    expected = np.zeros(shape, np.int64)
    for index in itertools.product(*[range(s) for s in shape]):
        expected[index] = int(table[index[axis], int(x[index]) - low])
    attrs = {"input_min": low, "axis": axis}
    result = KERNELS["qlookup"](x, table, **attrs)
    np.testing.assert_array_equal(result.astype(np.int64), expected)
    assert result.dtype == table.dtype
    semantics = run_op("qlookup", [torch.from_numpy(x), torch.from_numpy(table)], attrs)[0].numpy()
    np.testing.assert_array_equal(semantics, result)


@SETTINGS
@given(st.data())
def test_bool_tables_are_gathers_too(data):
    """A comparison or cast of a quantized value is a table of bools (spec section 16)."""
    x = int_array(data.draw, data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)), "u8")
    table = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).integers(0, 2, 256) > 0
    result = KERNELS["qlookup"](x, table, input_min=0)
    assert result.dtype == np.bool_
    assert result.tolist() == np.vectorize(lambda v: bool(table[int(v)]))(x).tolist()


_INTEGER_OPS = ["cast", "eq", "ne", "gt", "ge", "lt", "le", "logical_and", "logical_or",
                "logical_not", "where", "amax", "amin", "argmax", "expand"]


@SETTINGS
@given(st.sampled_from(_INTEGER_OPS), st.sampled_from(["u8", "i8"]), st.data())
def test_ops_on_integers_and_masks_match_torch(op, dtype, data):
    """The ops that run on integers and bools as they are (masks, selection, extremes; spec
    section 16) compute what their torch semantics compute, dtype included."""
    shape = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    a, b = int_array(data.draw, shape, dtype), int_array(data.draw, shape, dtype)
    mask = int_array(data.draw, shape, "u8") > 127
    rank = len(shape)
    attrs = {}
    if op == "cast":
        arrays, attrs = [a], {"dtype": data.draw(st.sampled_from(["bool", "i64", "i32", "u8", "i8"]))}
    elif op in ("logical_and", "logical_or"):
        arrays = [mask, a > b]
    elif op == "logical_not":
        arrays = [mask]
    elif op == "where":
        arrays = [mask, a, b]
    elif op in ("amax", "amin"):
        dims = sorted(data.draw(st.sets(st.integers(0, rank - 1), min_size=1)))
        arrays, attrs = [a], {"dim": dims, "keepdim": data.draw(st.booleans())}
    elif op == "argmax":
        arrays = [a]
        attrs = {"dim": data.draw(st.integers(0, rank - 1)), "keepdim": data.draw(st.booleans())}
    elif op == "expand":
        arrays, attrs = [a[..., :1]], {"shape": [2, *shape]}
    else:
        arrays = [a, b]
    result = KERNELS[op](*arrays, **attrs)
    expected = run_op(op, [torch.from_numpy(np.ascontiguousarray(v)) for v in arrays], attrs)[0].numpy()
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == expected.dtype


def test_qconcat_copies_its_inputs_in_order():
    a = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    b = np.arange(6, 9, dtype=np.uint8).reshape(1, 1, 3)
    result = KERNELS["qconcat"](a, b, dim=1)
    assert result.tolist() == [[[0, 1, 2], [3, 4, 5], [6, 7, 8]]]
    assert result.dtype == np.uint8


@SETTINGS
@given(st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=20), st.floats(1e-3, 10.0),
       st.sampled_from(["u8", "i8"]), st.data())
def test_quantize_and_dequantize_match_the_python_reference(values, scale, dtype, data):
    """Spec 10: clamp(round_half_even(x * float32(1 / scale)) + z) in float32, and back."""
    qmin, qmax = RANGES[dtype]
    zero_point = data.draw(st.integers(qmin, qmax))
    scale = float(np.float32(scale))
    x = np.array(values, np.float32)
    inverse = np.float32(1.0) / np.float32(scale)
    expected = [min(max(round(float(np.float32(v * inverse))) + zero_point, qmin), qmax) for v in x]
    attrs = {"scale": scale, "zero_point": zero_point, "qmin": qmin, "qmax": qmax, "dtype": dtype}
    q = KERNELS["quantize"](x, **attrs)
    assert q.tolist() == expected and q.dtype == NUMPY[dtype]
    np.testing.assert_array_equal(run_op("quantize", [torch.from_numpy(x)], attrs)[0].numpy(), q)
    real = KERNELS["dequantize"](q, scale=scale, zero_point=zero_point)
    assert real.tolist() == [float(np.float32(np.float32(v - zero_point) * np.float32(scale)))
                             for v in expected]
    torch_real = run_op("dequantize", [torch.from_numpy(q)], {"scale": scale, "zero_point": zero_point})
    np.testing.assert_array_equal(torch_real[0].numpy(), real)


@st.composite
def movement_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=2, max_size=4)))
    rank = len(shape)
    op = draw(st.sampled_from(["reshape", "flatten", "permute", "transpose", "slice", "split", "pad",
                               "embedding"]))
    if op == "reshape":
        attrs = {"shape": [-1, shape[-1]]}
    elif op == "flatten":
        start = draw(st.integers(0, rank - 1))
        attrs = {"start_dim": start, "end_dim": draw(st.integers(start, rank - 1))}
    elif op == "permute":
        attrs = {"dims": draw(st.permutations(range(rank)))}
    elif op == "transpose":
        attrs = {"dim0": draw(st.integers(-rank, rank - 1)), "dim1": draw(st.integers(-rank, rank - 1))}
    elif op == "slice":
        axis = draw(st.integers(0, rank - 1))
        start = draw(st.integers(0, shape[axis] - 1))
        attrs = {"axis": axis, "start": start, "end": draw(st.integers(start + 1, shape[axis] + 2)),
                 "step": draw(st.integers(1, 2))}
    elif op == "split":
        axis = draw(st.integers(0, rank - 1))
        first = draw(st.integers(0, shape[axis]))
        attrs = {"axis": axis, "sizes": [first, shape[axis] - first]}
    elif op == "pad":
        mode = draw(st.sampled_from(["constant", "replicate", "reflect", "circular"]))
        if mode == "constant":
            pads = draw(st.lists(st.integers(0, 2), min_size=1, max_size=rank).map(
                lambda p: [w for w in p for _ in range(2)]))
        else:  # torch pads the last dim of 2-D and 3-D tensors in these modes
            limit = shape[-1] - 1 if mode == "reflect" else shape[-1]
            pads = [draw(st.integers(0, min(2, limit))), draw(st.integers(0, min(2, limit)))]
            mode = mode if rank in (2, 3) else "constant"
        attrs = {"pads": pads, "mode": mode, "value": float(draw(st.integers(0, 255)))}
    else:
        attrs = {}
    return shape, op, attrs


@SETTINGS
@given(movement_cases(), st.data())
def test_data_movement_on_integers_matches_torch(case, data):
    """reshape, flatten, permute, transpose, slice, split, pad and embedding run on integer
    tensors exactly as their torch semantics do."""
    shape, op, attrs = case
    x = int_array(data.draw, shape, "u8")
    if op == "embedding":
        indices = np.random.default_rng(0).integers(0, shape[0], (2, 3))
        arrays = [indices, x.reshape(shape[0], -1)]
    else:
        arrays = [x]
    result = KERNELS[op](*arrays, **attrs)
    expected = run_op(op, [torch.from_numpy(a) for a in arrays], attrs)
    results = result if isinstance(result, tuple) else (result,)
    assert len(results) == len(expected)
    for ours, theirs in zip(results, expected, strict=True):
        np.testing.assert_array_equal(ours, theirs.numpy())
        assert ours.dtype == theirs.numpy().dtype


def test_an_accumulator_outside_int32_is_an_error_not_a_wrap():
    from qcompiler.backends.interpreter_ops import AccumulatorOverflowError

    x = np.full((1, 4), 255, np.uint8)
    weight = np.full((1, 4), 127, np.int8)
    bias = np.array([2**31 - 100], np.int32)
    with pytest.raises(AccumulatorOverflowError, match="outside"):
        KERNELS["qlinear"](x, weight, bias, np.array([1 << 30], np.int32), np.array([0], np.int32),
                           input_zero_point=0, output_zero_point=0, output_min=0, output_max=255,
                           output_dtype="u8")
