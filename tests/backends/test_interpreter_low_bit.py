"""The XNOR-popcount and shift kernels (docs/integer-spec.md, section 13) equal a reference
written with Python integers and loops, and so does the ops' torch semantics; binary and
power-of-two graphs lower to them and agree bit for bit with fake-quant simulation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcompiler as qc
from qcompiler.backends import interpreter
from qcompiler.backends.interpreter_low_bit import KERNELS
from qcompiler.examples.models import digits_cnn
from qcompiler.ir.ops import run_op
from qcompiler.numerics import low_bit
from qcompiler.numerics.fixed_point import quantize_multiplier

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OUTPUT = {"output_zero_point": 3, "output_min": -128, "output_max": 127, "output_dtype": "i8"}


def reference(x, weight, bias, m0, shift, stride, padding, dilation, groups, zx):
    """Convolution by loops on Python ints (padded positions skipped: they hold z_x), then
    spec section 3 on each accumulator."""
    batch, _, *sizes = x.shape
    out_channels, per_group, *kernel = weight.shape
    outs = [(sizes[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
            for i in range(2)]
    result = np.zeros((batch, out_channels, *outs), np.int64)
    for n, o, i, j in itertools.product(range(batch), range(out_channels), *map(range, outs)):
        group = o // (out_channels // groups)
        acc = int(bias[o])
        for c, ki, kj in itertools.product(range(per_group), *map(range, kernel)):
            r = i * stride[0] - padding[0] + ki * dilation[0]
            s = j * stride[1] - padding[1] + kj * dilation[1]
            if 0 <= r < sizes[0] and 0 <= s < sizes[1]:
                acc += (int(x[n, group * per_group + c, r, s]) - zx) * int(weight[o, c, ki, kj])
        t = 31 + int(shift[o])
        scaled = ((acc * int(m0[o]) + (1 << (t - 1))) >> t) + OUTPUT["output_zero_point"]
        result[n, o, i, j] = min(max(scaled, OUTPUT["output_min"]), OUTPUT["output_max"])
    return result


@st.composite
def cases(draw, binary: bool):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups, per_group, out_per_group = draw(st.sampled_from([1, 2])), draw(st.integers(1, 3)), \
        draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(2)]
    attrs = {"stride": [draw(st.integers(1, 2)) for _ in range(2)],
             "padding": [draw(st.integers(0, 2)) for _ in range(2)],
             "dilation": [draw(st.integers(1, 2)) for _ in range(2)], "groups": groups}
    sizes = [draw(st.integers(attrs["dilation"][i] * (kernel[i] - 1) + 1, 6)) for i in range(2)]
    zx = draw(st.integers(-5, 5))
    shape = (out_per_group * groups, per_group, *kernel)
    if binary:
        x = (zx + rng.choice([-1, 1], (2, groups * per_group, *sizes))).astype(np.int8)
        weight = rng.choice([-1, 1], shape) << draw(st.integers(0, 6))
    else:
        x = rng.integers(-128, 128, (2, groups * per_group, *sizes)).astype(np.int8)
        weight = rng.choice([0, 1, -1], shape) << rng.integers(0, 7, shape)
    channels = shape[0]
    bias = rng.integers(-5000, 5000, channels).astype(np.int32)
    m0, shift = zip(*[quantize_multiplier(float(m)) for m in rng.uniform(1e-4, 0.5, channels)],
                    strict=True)
    return x, weight, bias, np.array(m0, np.int32), np.array(shift, np.int32), attrs, zx


def _check(op, arrays, attrs, expected):
    kernel = KERNELS[op](*arrays, **attrs)
    np.testing.assert_array_equal(kernel.astype(np.int64), expected)
    semantics = run_op(op, [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays], attrs)[0]
    np.testing.assert_array_equal(semantics.numpy().astype(np.int64), expected)


@SETTINGS
@given(cases(binary=True))
def test_xnor_conv2d_equals_python_integers(case):
    x, weight, bias, m0, shift, attrs, zx = case
    expected = reference(x, weight, bias, m0, shift, attrs["stride"], attrs["padding"],
                         attrs["dilation"], attrs["groups"], zx)
    bits = low_bit.pack_signs(weight)
    magnitude = int(np.abs(weight).max())
    attrs = {**attrs, "weight_shape": list(weight.shape), "weight_shift": magnitude.bit_length() - 1,
             "input_zero_point": zx, **OUTPUT}
    _check("qxnor_conv2d", [x, bits, bias, m0, shift], attrs, expected)


@SETTINGS
@given(cases(binary=False))
def test_shift_conv2d_equals_python_integers(case):
    x, weight, bias, m0, shift, attrs, zx = case
    expected = reference(x, weight, bias, m0, shift, attrs["stride"], attrs["padding"],
                         attrs["dilation"], attrs["groups"], zx)
    codes = low_bit.shift_codes(weight)
    _check("qshift_conv2d", [x, codes, bias, m0, shift], {**attrs, "input_zero_point": zx, **OUTPUT},
           expected)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 19), st.integers(1, 4), st.booleans())
def test_linear_kernels_equal_python_integers(seed, features, out_features, binary):
    rng = np.random.default_rng(seed)
    zx = int(rng.integers(-3, 4))
    if binary:
        x = (zx + rng.choice([-1, 1], (3, features))).astype(np.int8)
        weight = rng.choice([-1, 1], (out_features, features)) << int(rng.integers(0, 5))
    else:
        x = rng.integers(-128, 128, (3, features)).astype(np.int8)
        shape = (out_features, features)
        weight = rng.choice([0, 1, -1], shape) << rng.integers(0, 7, shape)
    bias = rng.integers(-5000, 5000, out_features).astype(np.int32)
    m0, shift = (np.full(out_features, v, np.int32) for v in quantize_multiplier(0.01))
    as_conv = reference(x[:, :, None, None], weight[:, :, None, None], bias, m0, shift, [1, 1],
                        [0, 0], [1, 1], 1, zx)[:, :, 0, 0]
    if binary:
        attrs = {"weight_shape": list(weight.shape),
                 "weight_shift": int(np.abs(weight).max()).bit_length() - 1}
        _check("qxnor_linear", [x, low_bit.pack_signs(weight), bias, m0, shift],
               {**attrs, "input_zero_point": zx, **OUTPUT}, as_conv)
    else:
        _check("qshift_linear", [x, low_bit.shift_codes(weight), bias, m0, shift],
               {"input_zero_point": zx, **OUTPUT}, as_conv)


def test_xnor_refuses_an_input_that_is_not_plus_minus_one():
    x = np.array([[0, 2, -1]], np.int8)
    weight = np.array([[1, -1, 1]])
    with pytest.raises(ValueError, match=r"XNOR layer needs inputs of \+-1 around its zero point 0, "
                                         r"got offsets \[0, 2\]"):
        KERNELS["qxnor_linear"](x, low_bit.pack_signs(weight), np.zeros(1, np.int32),
                                np.array([1 << 30], np.int32), np.array([0], np.int32),
                                weight_shape=[1, 3], weight_shift=0, input_zero_point=0, **OUTPUT)


# ---- lowering: from the low-bit fake-quant graph to the integer ops --------------------------------


def _lowered(scheme: str, binary_activations: bool, seed: int = 0):
    model, example = digits_cnn(batch=8, seed=seed)
    graph = qc.trace(model, example)
    keep = ("features.0.0", "classifier")
    if binary_activations:
        qc.passes.binarize_activations(ignore=keep)(graph)
    ignore = keep if binary_activations else ()
    qc.passes.quantize_weights_low_bit(scheme=scheme, bits=4, ignore=ignore)(graph)
    generator = torch.Generator().manual_seed(seed)
    quantized = qc.quantize(graph, [torch.randn(8, 1, 8, 8, generator=generator) for _ in range(3)])
    return quantized, qc.lower_to_integer(quantized)


@pytest.mark.parametrize("scheme, binary_activations, expected", [
    ("binary", True, {"qconv2d", "qxnor_conv2d", "qlinear"}),
    ("power_of_two", False, {"qshift_conv2d", "qshift_linear"}),
    ("ternary", False, {"qshift_conv2d", "qshift_linear"}),
])
def test_low_bit_graphs_lower_to_xnor_and_shift_ops_bit_exact_with_simulation(
        scheme, binary_activations, expected):
    quantized, integer = _lowered(scheme, binary_activations)
    assert {n.op for n in integer if n.op.startswith("q") and n.op != "quantize"} >= expected
    layers = {n.op for n in integer if "conv" in n.op or "linear" in n.op}
    assert layers == expected
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    simulated = qc.to_torch(quantized, exact=True)(x).detach().numpy()
    np.testing.assert_array_equal(interpreter.run(integer, x.numpy()), simulated)


def test_xnor_layer_sees_sign_bits_and_the_exact_weight_grid():
    quantized, integer = _lowered("binary", True)
    xnor = next(n for n in integer if n.op == "qxnor_conv2d")
    assert xnor.inputs[1].dtype == "u8" and xnor.attrs["weight_shift"] == 6  # +-64: 2^6 <= 127
    weights = {n.inputs[0].name: n for n in quantized if n.op == "fake_quant" and n.inputs[0].is_constant}
    assert any(np.array_equal(n.output.qparams.scale * 64,
                              np.abs(n.inputs[0].data).reshape(len(n.output.qparams.scale), -1).max(1))
               for n in weights.values())
    signs = [n for n in quantized if n.op == "fake_quant" and n.inputs[0].producer is not None
             and n.inputs[0].producer.op == "sign"]
    # Scale 1, zero point in the middle: the integers are z +- 1 (uint8 activations: z = 1).
    assert signs and all(float(n.output.qparams.scale[0]) == 1.0
                         and int(n.output.qparams.zero_point[0]) == (0 if n.output.qparams.signed else 1)
                         for n in signs)


def test_cost_model_prices_xnor_and_shift_layers_without_multiplies():
    from qcompiler.analysis.cost import arithmetic

    _, integer = _lowered("binary", True)
    xnor = next(n for n in integer if n.op == "qxnor_conv2d" and n.attrs["groups"] == 1)
    products = int(np.prod(xnor.attrs["weight_shape"][1:]))
    outputs = int(np.prod(xnor.output.shape[1:]))
    macs, adds, mults = arithmetic(xnor)
    # XNOR, popcount, accumulate per 64 products, the bias add, then requantization (4 + 1).
    assert (macs, adds, mults) == (0, 3 * -(-products // 64) * outputs + outputs + 4 * outputs, outputs)
    _, shifted = _lowered("power_of_two", False)
    shift = next(n for n in shifted if n.op == "qshift_linear")
    nonzero = np.count_nonzero(shift.inputs[1].data)
    macs, adds, mults = arithmetic(shift)
    outputs = int(np.prod(shift.output.shape[1:]))
    assert macs == 0 and adds == 2 * nonzero + outputs + 4 * outputs and mults == outputs
