"""I-BERT integer softmax and layer_norm (spec section 15): the vectorised numpy arithmetic
(what the interpreter and the torch semantics run) equals a Python-integer reference element
for element (hypothesis), the integer square root is exact, and both approximate the float
ops closely (the property that makes them worth using)."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.backends import interpreter_ops
from qcompiler.ir import integer_ops
from qcompiler.numerics import ibert
from qcompiler.numerics.fixed_point import quantize_multiplier


def softmax_setup(scale, length, output_scale=1 / 255):
    constants = ibert.exp_constants(scale)
    bits = ibert.exp_fraction_bits(constants, length)
    m0, shift = quantize_multiplier(2.0 ** -bits / output_scale)
    return constants, bits, m0, shift


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 3), length=st.integers(1, 24),
       scale=st.sampled_from([1e-3, 4e-3, 0.02, 0.1]), wide=st.booleans())
def test_integer_softmax_equals_the_python_reference(seed, rows, length, scale, wide):
    low, high = (-32768, 32767) if wide else (-128, 127)
    q = np.random.default_rng(seed).integers(low, high + 1, size=(rows, length))
    constants, bits, m0, shift = softmax_setup(scale, length)
    got = ibert.integer_softmax(q, -1, constants, bits, m0, shift, 0, 0, 255)
    want = [ibert.reference_softmax(row, constants, bits, m0, shift, 0, 0, 255) for row in q]
    np.testing.assert_array_equal(got, np.array(want))
    kernel = interpreter_ops.qsoftmax(q.astype(np.int16), dim=-1, exp_ln2=constants[0], exp_b=constants[1],
                                      exp_c=constants[2], fraction_bits=bits, multiplier=m0, shift=shift,
                                      output_zero_point=0, output_min=0, output_max=255, output_dtype="u8")
    semantics = integer_ops.qsoftmax(torch.from_numpy(q.astype(np.int16)), dim=-1, exp_ln2=constants[0],
                                     exp_b=constants[1], exp_c=constants[2], fraction_bits=bits,
                                     multiplier=m0, shift=shift, output_zero_point=0, output_min=0,
                                     output_max=255, output_dtype="u8")
    np.testing.assert_array_equal(kernel, got)
    np.testing.assert_array_equal(semantics.numpy(), got)


def test_integer_softmax_approximates_softmax():
    scale = 1e-3
    q = np.random.default_rng(0).integers(-8000, 8000, size=(64, 32))
    constants, bits, m0, shift = softmax_setup(scale, 32, 1 / 65535)
    got = ibert.integer_softmax(q, -1, constants, bits, m0, shift, 0, 0, 65535) / 65535
    want = torch.softmax(torch.from_numpy(q * scale), -1).numpy()
    assert np.abs(got - want).max() < 5e-3


@given(v=st.integers(0, 2**62))
def test_isqrt_is_exact(v):
    assert ibert.isqrt(np.array([v]))[0] == math.isqrt(v)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 3), channels=st.integers(2, 24),
       wide=st.booleans(), affine=st.booleans())
def test_integer_layer_norm_equals_the_python_reference(seed, rows, channels, wide, affine):
    generator = np.random.default_rng(seed)
    low, high = (-32768, 32767) if wide else (0, 255)
    q = generator.integers(low, high + 1, size=(rows, channels))
    gamma = generator.normal(size=channels) if affine else np.ones(channels)
    beta = generator.normal(size=channels) if affine else None
    k, b, shift, eps_q = ibert.layer_norm_params(1e-2, gamma, beta, 0.05, channels, 1e-5)
    got = ibert.integer_layer_norm(q, k, b, shift, eps_q, 0, -128, 127)
    want = [ibert.reference_layer_norm(row, k, b, shift, eps_q, 0, -128, 127) for row in q]
    np.testing.assert_array_equal(got, np.array(want))
    kernel = interpreter_ops.qlayer_norm(q.astype(np.int16), k, b, shift, eps_q=eps_q, output_zero_point=0,
                                         output_min=-128, output_max=127, output_dtype="i8")
    np.testing.assert_array_equal(kernel, got)


def test_integer_layer_norm_approximates_layer_norm():
    generator = np.random.default_rng(1)
    q = generator.integers(-30000, 30000, size=(16, 384))
    gamma, beta = generator.normal(size=384), generator.normal(size=384) * 0.1
    k, b, shift, eps_q = ibert.layer_norm_params(1e-3, gamma, beta, 1e-3, 384, 1e-12)
    got = ibert.integer_layer_norm(q, k, b, shift, eps_q, 0, -32768, 32767) * 1e-3
    want = torch.nn.functional.layer_norm(torch.from_numpy(q * 1e-3), (384,), torch.from_numpy(gamma),
                                          torch.from_numpy(beta), 1e-12).numpy()
    assert np.abs(got - want).max() < 3e-3
