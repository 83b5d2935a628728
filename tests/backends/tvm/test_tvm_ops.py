"""Every integer op compiled by the TVM backend equals the numpy interpreter bit for bit
(docs/integer-spec.md; the oracle of DESIGN.md): hypothesis draws shapes, zero points,
per-channel multipliers and shifts, strides, padding, dilation, groups, fused clamps and
dtypes; deterministic cases cover the rounding rule's edges (ties, extreme shifts,
saturation) and the quantize boundary's float32 ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("tvm")

from tvm_cases import (  # noqa: E402  (after the skip)
    HOST_WEIGHTS,
    RANGES,
    SETTINGS,
    OpCase,
    assert_exact,
    graph_of,
    int_array,
    multipliers,
    output_params,
    per_channel,
)

from qcompiler.numerics.integer_params import average_multipliers  # noqa: E402


@st.composite
def conv_case(draw, spatial: int):
    groups = draw(st.sampled_from([1, 2, 3]))
    per_group, out_per_group = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(spatial)]
    dilation = [draw(st.integers(1, 2)) for _ in range(spatial)]
    padding = [draw(st.integers(0, 2)) for _ in range(spatial)]
    stride = [draw(st.integers(1, 2)) for _ in range(spatial)]
    sizes = [draw(st.integers(dilation[i] * (kernel[i] - 1) + 1, 6)) for i in range(spatial)]
    dtype = draw(st.sampled_from(["u8", "i8"]))
    x = int_array(draw, (draw(st.integers(1, 2)), groups * per_group, *sizes), dtype)
    channels = groups * out_per_group
    weight = np.random.default_rng(draw(st.integers(0, 2**32))).integers(
        *HOST_WEIGHTS, (channels, per_group, *kernel), endpoint=True).astype(np.int8)
    bias = np.array(draw(st.lists(st.integers(-2**20, 2**20), min_size=channels, max_size=channels)),
                    np.int32)
    m0, shift = per_channel(draw, channels)
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
             "input_zero_point": draw(st.integers(*RANGES[dtype])), **draw(output_params())}
    return OpCase(f"qconv{spatial}d", [x], [None, weight, bias, m0, shift], attrs)


@st.composite
def linear_case(draw):
    lead = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    features, outputs = draw(st.integers(1, 40)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(["u8", "i8"]))
    x = int_array(draw, (*lead, features), dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    weight = rng.integers(*HOST_WEIGHTS, (outputs, features), endpoint=True).astype(np.int8)
    bias = rng.integers(-2**20, 2**20, outputs).astype(np.int32)
    m0, shift = per_channel(draw, outputs)
    attrs = {"input_zero_point": draw(st.integers(*RANGES[dtype])), **draw(output_params())}
    return OpCase("qlinear", [x], [None, weight, bias, m0, shift], attrs)


@SETTINGS
@given(conv_case(2), conv_case(2), conv_case(1), linear_case())
def test_weighted_ops_are_exact(conv2d, second_conv2d, conv1d, linear):
    assert_exact(*graph_of([conv2d, second_conv2d, conv1d, linear]))


@st.composite
def broadcast_shapes(draw):
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    other = [1 if draw(st.booleans()) else d for d in shape[len(shape) - draw(st.integers(0, len(shape))):]]
    return (shape, other) if draw(st.booleans()) else (other, shape)


@st.composite
def binary_case(draw, op: str):
    shape_a, shape_b = draw(broadcast_shapes())
    a_dtype, b_dtype = draw(st.sampled_from(["u8", "i8"])), draw(st.sampled_from(["u8", "i8"]))
    a, b = int_array(draw, shape_a, a_dtype), int_array(draw, shape_b, b_dtype)
    zero_points = {"a_zero_point": draw(st.integers(*RANGES[a_dtype])),
                   "b_zero_point": draw(st.integers(*RANGES[b_dtype]))}
    m0, shift = draw(multipliers)
    if op == "qadd":  # Kb shares the shift; negative for a subtraction
        attrs = {"a_multiplier": m0, "b_multiplier": draw(st.integers(-m0, m0)), "shift": shift}
    else:
        attrs = {"multiplier": m0, "shift": shift}
    return OpCase(op, [a, b], [None, None], {**zero_points, **attrs, **draw(output_params())})


@st.composite
def unary_case(draw):
    dtype = draw(st.sampled_from(["u8", "i8"]))
    x = int_array(draw, draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)), dtype)
    op = draw(st.sampled_from(["requantize", "qlookup", "dequantize"]))
    if op == "qlookup":
        table = int_array(draw, (256,), draw(st.sampled_from(["u8", "i8"])))
        return OpCase(op, [x], [None, table], {"input_min": RANGES[dtype][0]})
    zero_point = draw(st.integers(*RANGES[dtype]))
    if op == "dequantize":
        return OpCase(op, [x], [None], {"scale": float(np.float32(draw(st.floats(1e-4, 10.0)))),
                                        "zero_point": zero_point})
    m0, shift = draw(multipliers)
    return OpCase(op, [x], [None], {"input_zero_point": zero_point, "multiplier": m0, "shift": shift,
                                    **draw(output_params())})


@st.composite
def quantize_case(draw):
    dtype = draw(st.sampled_from(["u8", "i8"]))
    qmin, qmax = RANGES[dtype]
    scale = float(np.float32(draw(st.floats(1e-3, 10.0))))
    values = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=24))
    x = np.array(values, np.float32).reshape(1, -1)
    return OpCase("quantize", [x], [None], {"scale": scale, "zero_point": draw(st.integers(qmin, qmax)),
                                            "qmin": qmin, "qmax": qmax, "dtype": dtype})


@SETTINGS
@given(binary_case("qadd"), binary_case("qmul"), unary_case(), unary_case(), quantize_case())
def test_elementwise_ops_are_exact(qadd, qmul, first, second, quantize):
    assert_exact(*graph_of([qadd, qmul, first, second, quantize]))


@st.composite
def pool_case(draw, kind: str):
    spatial = draw(st.sampled_from([1, 2]))
    kernel = [draw(st.integers(1, 3)) for _ in range(spatial)]
    stride = [draw(st.integers(1, 3)) for _ in range(spatial)]
    padding = [draw(st.integers(0, k // 2)) for k in kernel]  # torch allows up to half a kernel
    sizes = [draw(st.integers(kernel[i], 6)) for i in range(spatial)]
    dtype = draw(st.sampled_from(["u8", "i8"]))
    x = int_array(draw, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *sizes), dtype)
    attrs = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": draw(st.booleans())}
    if kind == "max":
        attrs["dilation"] = [draw(st.integers(1, 2)) if sizes[i] >= 2 * kernel[i] else 1
                             for i in range(spatial)]
        return OpCase(f"qmax_pool{spatial}d", [x], [None], attrs)
    table_m, table_s = average_multipliers(draw(st.floats(0.01, 1.0)), draw(st.floats(0.01, 1.0)),
                                           math.prod(kernel))
    attrs.update(count_include_pad=draw(st.booleans()), multipliers=table_m, shifts=table_s,
                 input_zero_point=draw(st.integers(*RANGES[dtype])), **draw(output_params()))
    return OpCase(f"qavg_pool{spatial}d", [x], [None], attrs)


@st.composite
def mean_case(draw):
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    dtype = draw(st.sampled_from(["u8", "i8"]))
    dims = sorted(draw(st.sets(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=1)) |
                  draw(st.sets(st.integers(0, len(shape) - 1), max_size=2)), key=lambda d: d % len(shape))
    dims = sorted({d % len(shape) for d in dims})
    m0, shift = draw(multipliers)
    attrs = {"dim": dims, "keepdim": draw(st.booleans()),
             "input_zero_point": draw(st.integers(*RANGES[dtype])), "multiplier": m0, "shift": shift,
             **draw(output_params())}
    return OpCase("qmean", [int_array(draw, shape, dtype)], [None], attrs)


@SETTINGS
@given(pool_case("max"), pool_case("max"), pool_case("avg"), pool_case("avg"), mean_case())
def test_pooling_ops_are_exact(max_pool, second_max_pool, avg_pool, second_avg_pool, mean):
    assert_exact(*graph_of([max_pool, second_max_pool, avg_pool, second_avg_pool, mean]))


@st.composite
def matmul_case(draw):
    batch = draw(st.lists(st.integers(1, 3), max_size=2))
    a_batch = [1 if draw(st.booleans()) else d for d in batch]  # numpy batch broadcasting
    rows, inner, cols = (draw(st.integers(1, 5)) for _ in range(3))
    a_dtype, b_dtype = draw(st.sampled_from(["u8", "i8"])), draw(st.sampled_from(["u8", "i8"]))
    a, b = int_array(draw, (*a_batch, rows, inner), a_dtype), int_array(draw, (*batch, inner, cols), b_dtype)
    m0, shift = draw(multipliers)
    return OpCase("qmatmul", [a, b], [None, None],
                  {"a_zero_point": draw(st.integers(*RANGES[a_dtype])),
                   "b_zero_point": draw(st.integers(*RANGES[b_dtype])), "multiplier": m0,
                   "shift": shift, **draw(output_params())})


@st.composite
def movement_case(draw):
    """Data movement on an integer tensor of rank 3: each op the lowering handles."""
    dtype = draw(st.sampled_from(["u8", "i8"]))
    shape = [draw(st.integers(1, 4)) for _ in range(3)]
    x = int_array(draw, shape, dtype)
    op = draw(st.sampled_from(["qconcat", "reshape", "flatten", "permute", "transpose", "slice",
                               "split", "pad"]))
    if op == "qconcat":
        other = int_array(draw, [shape[0], draw(st.integers(1, 3)), shape[2]], dtype)
        return OpCase(op, [x, other], [None, None], {"dim": draw(st.sampled_from([1, -2]))})
    if op == "reshape":
        return OpCase(op, [x], [None], {"shape": [shape[0], -1]})
    if op == "flatten":
        return OpCase(op, [x], [None], {"start_dim": draw(st.integers(0, 1)), "end_dim": -1})
    if op == "permute":
        return OpCase(op, [x], [None], {"dims": draw(st.permutations([0, 1, 2]))})
    if op == "transpose":
        return OpCase(op, [x], [None], {"dim0": draw(st.integers(-3, 2)), "dim1": draw(st.integers(0, 2))})
    if op == "slice":
        axis = draw(st.integers(0, 2))
        size = shape[axis]
        return OpCase(op, [x], [None], {"axis": axis, "start": draw(st.integers(-size, size - 1)),
                                        "end": draw(st.integers(-size, 2 * size)),
                                        "step": draw(st.integers(1, 2))})
    if op == "split":
        return OpCase(op, [x], [None], {"axis": 2, "sizes": draw(st.integers(1, shape[2]))})
    mode = draw(st.sampled_from(["constant", "reflect", "replicate", "circular"]))
    limit = 0 if mode == "reflect" and shape[2] == 1 else (shape[2] - 1 if mode == "reflect" else 2)
    limit = min(limit, shape[2]) if mode == "circular" else limit
    pads = [draw(st.integers(0, limit)), draw(st.integers(0, limit))]
    return OpCase(op, [x], [None], {"pads": pads, "mode": mode,
                                    "value": float(draw(st.integers(*RANGES[dtype])))})


@SETTINGS
@given(matmul_case(), matmul_case(), movement_case(), movement_case(), movement_case())
def test_qmatmul_and_data_movement_are_exact(matmul, second_matmul, first, second, third):
    try:
        graph, inputs = graph_of([matmul, second_matmul, first, second, third])
    except Exception as error:  # a drawn slice can be empty, which the IR refuses
        pytest.skip(f"not a valid graph: {error}")
    assert_exact(graph, inputs)


def test_requantize_rounding_edges_are_exact():
    """Ties round up (toward +infinity) once, for every total shift 1..62, at the extremes of
    int32 accumulators and of M0, with saturation on both sides."""
    accumulators = np.array([0, 1, -1, 2, -2, 3, -3, 2**31 - 1, -2**31, 2**30, -2**30, 12345, -12345],
                            np.int32).reshape(1, -1)
    cases = []
    for t in (1, 2, 3, 16, 31, 32, 45, 61, 62):
        for m0 in (2**30, 2**31 - 1, 1518500250):
            for dtype, zero_point in (("i8", 0), ("u8", 128)):
                low, high = RANGES[dtype]
                cases.append(OpCase("requantize", [accumulators], [None],
                                    {"input_zero_point": 0, "multiplier": m0, "shift": t - 31,
                                     "output_zero_point": zero_point, "output_min": low,
                                     "output_max": high, "output_dtype": dtype}))
    assert_exact(*graph_of(cases))


def test_quantize_rounds_float32_ties_half_to_even():
    """x * float32(1 / scale) landing exactly on k + 0.5 rounds to the even neighbour; the
    product is float32 (the boundary rule of spec 10), not x / scale."""
    scale = 0.125  # a power of two: x * 8 is exact, so every k + 0.5 is a tie
    ties = (np.arange(-40, 40, dtype=np.float32) + np.float32(0.5)) * np.float32(scale)
    # 0.1 and friends: x * (1 / s) and x / s differ by an ulp for some of these.
    # (The interpreter refuses non-finite inputs, so the extremes are finite.)
    awkward = np.float32([0.1, 0.3, 0.7, 1.1, 2.675, -0.35, 1e-8, -1e9, 1e9, 3e38, -3e38])
    cases = [OpCase("quantize", [ties.reshape(1, -1)], [None],
                    {"scale": scale, "zero_point": zero_point, "qmin": 0, "qmax": 255, "dtype": "u8"})
             for zero_point in (0, 1, 128)]
    cases += [OpCase("quantize", [awkward.reshape(1, -1)], [None],
                     {"scale": float(np.float32(scale)), "zero_point": 3, "qmin": -128, "qmax": 127,
                      "dtype": "i8"}) for scale in (0.1, 0.7, 0.003, 3.0)]
    assert_exact(*graph_of(cases))


def test_weighted_ops_without_the_folded_zero_point_are_exact():
    """Where `sum x * w` plus the folded bias could leave int32, the kernels subtract the zero
    point from every operand instead (spec 2 as written): a bias near -2**31 forces it."""
    from qcompiler.backends.tvm.kernels import prepare_weighted

    weight = np.full((2, 4), HOST_WEIGHTS[1], np.int8)
    bias = np.array([-2**31 + 50_000, 5], np.int32)
    assert not prepare_weighted(weight, bias, 0, "u8").fold_zero_point
    assert prepare_weighted(weight, np.zeros(2, np.int32), 0, "u8").fold_zero_point
    x = np.array([[0, 255, 17, 255], [255, 255, 255, 255]], np.uint8)
    output = {"output_zero_point": 0, "output_min": -128, "output_max": 127, "output_dtype": "i8"}
    linear = OpCase("qlinear", [x], [None, weight, bias, np.full(2, 1 << 30, np.int32),
                                     np.full(2, -1, np.int32)], {"input_zero_point": 0, **output})
    conv = OpCase("qconv1d", [x.reshape(1, 2, 4)], [None, weight.reshape(2, 2, 2), bias,
                                                    np.full(2, 1 << 30, np.int32), np.full(2, 20, np.int32)],
                  {"stride": [1], "padding": [1], "dilation": [1], "groups": 1, "input_zero_point": 0,
                   **output})
    assert_exact(*graph_of([linear, conv]))
