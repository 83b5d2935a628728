"""The reference interpreter as a whole: it agrees bit for bit with the integer ops' torch
semantics (`qc.to_torch` of the integer graph), strict mode refuses float arithmetic inside
the integer region naming the node, and bad inputs get clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.backends.interpreter import Interpreter, run
from qcompiler.errors import IntegerOnlyError, QCompilerError
from qcompiler.examples.models import digits_cnn
from qcompiler.ir import Graph
from qcompiler.ir.text import parse


@pytest.fixture(scope="module")
def digits_integer_graph():
    model, (x,) = digits_cnn(batch=4)
    torch.manual_seed(0)
    fake_quant = qc.quantize(model, [torch.randn(4, 1, 8, 8) for _ in range(3)], equalize=False,
                             bias_correction=False, progress=False)
    return qc.lower_to_integer(fake_quant), x


def test_interpreter_equals_the_torch_semantics_of_the_integer_ops(digits_integer_graph):
    graph, x = digits_integer_graph
    interpreter = Interpreter(graph)
    ours = interpreter.run(x, keep_values=True)[0]
    module = qc.to_torch(graph, trainable=False)
    with torch.no_grad():
        theirs = module(x).numpy()
    np.testing.assert_array_equal(ours, theirs)
    # Every intermediate integer tensor too (the torch module exposes none; rerun by prefix).
    for node in graph:
        if node.output.dtype in ("u8", "i8"):
            prefix = graph.copy()
            prefix.outputs = [prefix.values[node.output.name]]
            prefix.remove_unused_constants()
            with torch.no_grad():
                expected = qc.to_torch(prefix, trainable=False)(x).numpy()
            np.testing.assert_array_equal(interpreter.env[node.output.name], expected)


def test_the_integer_graph_prints_parses_back_and_runs_the_same(digits_integer_graph):
    graph, x = digits_integer_graph
    constants = {v.name: v.data for v in graph.constants}
    reparsed = parse(str(graph), constants)
    np.testing.assert_array_equal(run(reparsed, x), run(graph, x))


def test_run_takes_numpy_or_torch_and_returns_numpy(digits_integer_graph):
    graph, x = digits_integer_graph
    from_torch, from_numpy = run(graph, x), run(graph, x.numpy())
    assert isinstance(from_torch, np.ndarray) and from_torch.dtype == np.float32
    np.testing.assert_array_equal(from_torch, from_numpy)


def test_wrong_inputs_are_named(digits_integer_graph):
    graph, x = digits_integer_graph
    with pytest.raises(QCompilerError, match=r"takes 1 input\(s\) \(%x: f32\[N,1,8,8\]\), got 2"):
        run(graph, x, x)
    with pytest.raises(QCompilerError, match=r"input %x expects f32\[N,1,8,8\], got float64\[4, 1, 8, 8\]"):
        run(graph, x.numpy().astype(np.float64))


def _float_island_graph() -> Graph:
    """quantize -> dequantize -> softmax -> quantize -> dequantize, as a non-strict lowering
    leaves a softmax."""
    graph = Graph("island")
    x = graph.add_input("x", (2, 4))
    boundary = {"scale": 0.05, "zero_point": 128, "qmin": 0, "qmax": 255, "dtype": "u8"}
    q = graph.add_node("quantize", [x], boundary, name="x.q").output
    d = graph.add_node("dequantize", [q], {"scale": 0.05, "zero_point": 128}, name="x.dq").output
    s = graph.add_node("softmax", [d], {"dim": -1}, name="attention").output
    q2 = graph.add_node("quantize", [s], {**boundary, "scale": 1 / 255, "zero_point": 0},
                        name="attention.q").output
    graph.outputs = [graph.add_node("dequantize", [q2], {"scale": 1 / 255, "zero_point": 0}).output]
    return graph.verify()


def test_strict_mode_refuses_a_float_op_and_names_it():
    with pytest.raises(IntegerOnlyError, match=r"strict mode: node %attention \(softmax\) computes in "
                                               r"float inside the integer region \(%x\.dq: f32"):
        run(_float_island_graph(), np.zeros((2, 4), np.float32))


def test_non_strict_mode_runs_the_float_op_with_its_torch_semantics():
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    y = run(_float_island_graph(), x, strict=False)
    q = np.clip(np.rint(x / np.float32(0.05)) + 128, 0, 255)
    expected = torch.softmax(torch.from_numpy(((q - 128) * np.float32(0.05)).astype(np.float32)), -1)
    expected = np.clip(np.rint(expected.numpy() * np.float32(255)), 0, 255) / np.float32(255)
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_strict_mode_refuses_a_dequantize_quantize_round_trip():
    graph = Graph("round_trip")
    x = graph.add_input("x", (3,))
    boundary = {"scale": 0.1, "zero_point": 0, "qmin": -128, "qmax": 127, "dtype": "i8"}
    q = graph.add_node("quantize", [x], boundary, name="q").output
    d = graph.add_node("dequantize", [q], {"scale": 0.1, "zero_point": 0}, name="dq").output
    q2 = graph.add_node("quantize", [d], {**boundary, "scale": 0.2}, name="requantized").output
    graph.outputs = [q2]
    with pytest.raises(IntegerOnlyError, match=r"%requantized \(quantize\) re-quantizes a dequantized"):
        run(graph, np.zeros(3, np.float32))
    assert run(graph, np.array([0.25, -1.0, 5.0], np.float32), strict=False).tolist() == [1, -5, 25]


def test_strict_mode_refuses_an_op_without_integer_kernel():
    graph = Graph("relu_on_integers")
    x = graph.add_input("x", (3,))
    q = graph.add_node("quantize", [x], {"scale": 0.1, "zero_point": 0, "qmin": -128, "qmax": 127,
                                         "dtype": "i8"}).output
    graph.outputs = [graph.add_node("relu", [q], name="rectify").output]
    with pytest.raises(IntegerOnlyError, match=r"%rectify \(relu\) has no integer kernel"):
        run(graph, np.zeros(3, np.float32))


def test_an_accumulator_overflow_at_run_time_names_the_node():
    graph = Graph("overflow")
    x = graph.add_input("x", (1, 4), "u8")
    constants = [graph.add_constant("w", np.full((1, 4), 127, np.int8)),
                 graph.add_constant("b", np.array([2**31 - 10], np.int32)),
                 graph.add_constant("m", np.array([1 << 30], np.int32)),
                 graph.add_constant("s", np.array([0], np.int32))]
    graph.outputs = [graph.add_node("qlinear", [x, *constants], {
        "input_zero_point": 0, "output_zero_point": 0, "output_min": 0, "output_max": 255,
        "output_dtype": "u8"}, name="dense").output]
    with pytest.raises(QCompilerError, match=r"%dense \(qlinear\) failed: an int32 accumulator"):
        run(graph, np.full((1, 4), 255, np.uint8))


def test_intermediate_values_are_freed_unless_kept(digits_integer_graph):
    graph, x = digits_integer_graph
    interpreter = Interpreter(graph)
    interpreter.run(x)
    produced = {v.name for node in graph for v in node.outputs}
    assert produced & set(interpreter.env) == {v.name for v in graph.outputs}
    interpreter.run(x, keep_values=True)
    assert produced <= set(interpreter.env)
