"""Op kinds are fields of the op table (`qcompiler.ir.ops.OPS`); the sets passes ask about
are derived from it. These are the sets the passes were written against."""

import pytest

from qcompiler.ir import ops
from qcompiler.ir.ops import OPS, moves_values_only, ops_where


def test_derived_kinds():
    assert ops.WEIGHTED_OPS == {"conv1d", "conv2d", "conv_transpose2d", "linear"}
    assert ops.OUT_IN_WEIGHTED_OPS == {"conv1d", "conv2d", "linear"}
    assert ops.FUSABLE_ACTIVATIONS == {"relu", "clamp"}
    assert ops.LOOKUP_OPS == {"sigmoid", "tanh", "hardswish", "hardsigmoid", "silu", "gelu", "abs",
                              "exp", "log", "erf", "sqrt", "rsqrt", "reciprocal", "mish", "pow",
                              "leaky_relu", "elu", "softplus", "prelu", "sign"}
    assert ops_where(homogeneous=True) == {"relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                                           "max_pool1d", "avg_pool1d", "adaptive_avg_pool1d",
                                           "abs", "leaky_relu"}
    assert ops_where(category="compare") == {"eq", "ne", "gt", "ge", "lt", "le", "logical_and",
                                             "logical_or", "logical_not"}
    assert ops_where(shares_quantization=True) == {"concat", "where"}
    assert ops_where(averages=True) == {"avg_pool2d", "avg_pool1d", "adaptive_avg_pool2d",
                                        "adaptive_avg_pool1d", "mean"}


def test_requantizing_ops_float_and_integer():
    floats = {op for op in ops_where(requantizing=True) if OPS[op].category != "integer"}
    assert floats == {"conv2d", "conv1d", "linear", "matmul", "add", "sub", "mul", "div", "relu",
                      "clamp", "avg_pool2d", "avg_pool1d", "adaptive_avg_pool2d",
                      "adaptive_avg_pool1d", "mean", "sum"}
    assert ops_where(category="integer", requantizing=True) == {
        "qconv2d", "qconv1d", "qlinear", "qmatmul", "qadd", "qmul", "requantize", "qavg_pool2d",
        "qavg_pool1d", "qmean", "qxnor_conv2d", "qxnor_linear", "qshift_conv2d", "qshift_linear",
        "qlinear_grouped"}


def test_weight_axes_and_data_inputs():
    assert {op: OPS[op].weight_out_axis for op in ops.WEIGHTED_OPS} == {
        "conv1d": 0, "conv2d": 0, "linear": 0, "conv_transpose2d": 1}
    assert all(OPS[op].weight_out_axis is None for op in set(OPS) - ops.WEIGHTED_OPS)
    assert {op for op in OPS if OPS[op].data_inputs is not None} == {
        "conv1d", "conv2d", "conv_transpose2d", "linear", "batch_norm", "layer_norm", "embedding",
        "prelu", "where"}
    assert OPS["embedding"].data_inputs == ()


@pytest.mark.parametrize(("op", "attrs", "expected"), [
    ("reshape", {"shape": [1, -1]}, True),
    ("max_pool2d", {"kernel_size": 2, "stride": 2, "padding": 0, "dilation": 1}, True),
    ("pad", {"pads": [1, 1]}, True),  # zeros by default
    ("pad", {"pads": [1, 1], "value": 0.5}, False),
    ("pad", {"pads": [1, 1], "mode": "reflect"}, True),
    ("resize", {"size": [4, 4]}, True),  # nearest by default
    ("resize", {"size": [4, 4], "mode": "bilinear"}, False),
    ("avg_pool2d", {"kernel_size": 2, "stride": 2, "padding": 0}, False),
    ("concat", {"dim": 1}, False),  # moves values, but its inputs must share qparams first
    ("amax", {"dim": [1]}, True),
    ("expand", {"shape": [2, 3]}, True),
    ("where", {}, False),  # selects from two inputs, which must share qparams first
])
def test_moves_values_only(op, attrs, expected):
    assert moves_values_only(op, attrs) is expected
