"""The symbolic batch dimension (`qcompiler.ir.dims`): its type, shape inference with it, the
verifier, the text form, and capture with a dynamic batch.

The oracle for inference is concrete inference: a graph with N, specialised to a batch size
(`Graph.at_batch`), must verify, i.e. running every op on meta tensors of that size gives
exactly the symbolic types with N replaced; and the torch backend run at that size returns
those shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from oracles import Lambda
from strategies import assert_same_structure, graphs, random_inputs
from torch import nn

import qcompiler as qc
from qcompiler.errors import CaptureError, ParseError, UnsupportedOpError, VerificationError
from qcompiler.ir import BATCH, Dim, Graph
from qcompiler.ir.dims import bind_sizes, parse_dim, shape_at
from qcompiler.ir.text import parse

N = BATCH


# ---- the Dim type ------------------------------------------------------------------------------


def test_a_dim_prints_parses_and_multiplies():
    assert (str(N), str(N * 12), str(3 * N)) == ("N", "N*12", "N*3")
    assert parse_dim("N*12") == Dim("N", 12) and parse_dim("7") == 7 and parse_dim("N") == N
    assert N * 2 * 3 == Dim("N", 6) and N != 1 and N == Dim("N")
    assert shape_at((N, 3, N * 4), 5) == (5, 3, 20)
    with pytest.raises(ValueError, match=r"bad dimension '3\*N'"):
        parse_dim("3*N")
    with pytest.raises(ValueError, match="factor must be a positive int"):
        Dim("N", 0)


def test_a_dim_has_no_number_until_a_batch_size_is_given():
    with pytest.raises(TypeError, match=r"symbolic dimension N\*4 has no value until the graph runs"):
        int(N * 4)
    with pytest.raises(TypeError, match="symbolic dimension N has no value"):
        np.zeros((N, 3))
    graph = Graph()
    x = graph.add_input("x", (N, 3))
    with pytest.raises(TypeError, match=r"%x: f32\[N,3\] has a symbolic shape; its element count "
                                        r"is numel_at"):
        x.numel  # noqa: B018
    assert x.numel_at(4) == 12 and not x.is_static and not graph.is_static


def test_binding_sizes_checks_every_input_against_one_batch():
    sizes: dict[str, int] = {}
    assert bind_sizes((N, 3), (4, 3), sizes, "input %x") is None and sizes == {"N": 4}
    assert bind_sizes((N * 2, 3), (8, 3), sizes, "input %y") is None
    assert bind_sizes((N, 3), (5, 3), sizes, "input %z") == (
        "input %z has N = 5 on axis 0, but another input set N = 4")
    assert bind_sizes((N * 2,), (7,), {}, "input %w") == (
        "input %w has size 7 on axis 0, expected a positive multiple of 2 (N*2)")
    assert bind_sizes((N, 3), (2, 4), {}, "input %x") == "input %x has size 4 on axis 1, expected 3"


# ---- inference and the verifier ----------------------------------------------------------------


def _conv_graph() -> Graph:
    graph = Graph()
    x = graph.add_input("x", (N, 3, 8, 8))
    weight = graph.add_constant("w", np.ones((4, 3, 3, 3), np.float32))
    conv = graph.add_node("conv2d", [x, weight], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]})
    heads = graph.add_node("reshape", [conv.output], {"shape": [-1, 4, 64]})
    swapped = graph.add_node("permute", [heads.output], {"dims": [1, 0, 2]})
    merged = graph.add_node("reshape", [swapped.output], {"shape": [-1, 64]})
    doubled = graph.add_node("concat", [merged.output, merged.output], {"dim": 0})
    pooled = graph.add_node("mean", [doubled.output], {"dim": [0]})
    graph.outputs = [doubled.output, pooled.output]
    return graph.verify()


def test_inference_keeps_the_batch_symbolic_through_reshapes_and_concat():
    graph = _conv_graph()
    assert [v.type_str for node in graph for v in node.outputs] == [
        "f32[N,4,8,8]", "f32[N,4,64]", "f32[4,N,64]", "f32[N*4,64]", "f32[N*8,64]", "f32[64]"]
    for batch in (1, 3, 8):
        concrete = graph.at_batch(batch).verify()
        assert concrete.is_static and concrete.outputs[0].shape == (8 * batch, 64)
        x = torch.randn(batch, 3, 8, 8)
        doubled, pooled = qc.to_torch(graph)(x)
        assert doubled.shape == (8 * batch, 64) and pooled.shape == (64,)


@pytest.mark.parametrize("op, attrs, partner, message", [
    ("reshape", {"shape": [2, 4, 64]}, None,
     r"op 'reshape' cannot take inputs \(f32\[N,4,8,8\]\).*shape '\[2, 4, 64\]' is invalid.*"
     r"at N = 5 and 7: an attribute that fixes the batch size, such as a reshape to a literal "
     r"batch, must write -1 for the batch"),
    ("add", {}, (3, 4, 8, 8), r"op 'add' cannot take inputs \(f32\[N,4,8,8\], f32\[3,4,8,8\]\)"),
    ("concat", {"dim": 0}, (1, 4, 8, 8),
     r"op 'concat': output 0 output axis 0 is not a multiple of N \(size 6 at N=5, 8 at N=7\)"),
])
def test_inference_refuses_what_holds_at_one_batch_size_only(op, attrs, partner, message):
    graph = _conv_graph()
    conv = graph.nodes[0].output
    inputs = [conv] if partner is None else [conv, graph.add_constant("p", np.ones(partner, np.float32))]
    with pytest.raises(VerificationError, match=message):
        graph.add_node(op, inputs, attrs)


def test_verify_names_a_wrong_symbolic_type_and_per_channel_qparams_along_the_batch():
    graph = _conv_graph()
    graph.nodes[0].output.shape = (4, 4, 8, 8)
    with pytest.raises(VerificationError, match=r"node %conv2d \(conv2d\): outputs are recorded as "
                                                r"\[\(\(4, 4, 8, 8\), 'f32'\)\] but the op gives "
                                                r"\[\(\(Dim\('N'\), 4, 8, 8\), 'f32'\)\]"):
        graph.verify()
    graph = _conv_graph()
    graph.inputs[0].qparams = qc.QParams(np.ones(2, np.float32), np.zeros(2, np.int32), axis=0)
    with pytest.raises(VerificationError, match=r"per-channel qparams of %x run along axis 0 of "
                                                r"f32\[N,3,8,8\], whose size is symbolic"):
        graph.verify()


def test_text_round_trips_symbolic_types_and_refuses_a_symbolic_constant():
    graph = _conv_graph()
    text = str(graph)
    assert "graph main(%x: f32[N,3,8,8])" in text and ": f32[N*4,64]" in text
    assert_same_structure(parse(text, {"w": graph.values["w"].data}), graph)
    with pytest.raises(ParseError, match=r"line 2: constant %c has a symbolic shape f32\[N\]"):
        parse("graph g(%x: f32[N]) {\n  %c = const dense<[1.0]> : f32[N]\n  return %x\n}")


@settings(max_examples=40, deadline=None)
@given(graph=graphs(max_nodes=8, special_floats=False, batch=True))
def test_random_symbolic_graphs_round_trip_and_agree_with_concrete_inference(graph):
    assert_same_structure(parse(str(graph), {v.name: v.data for v in graph.constants}), graph)
    module = qc.to_torch(graph, trainable=False)
    for batch in (1, 3, 8):
        graph.at_batch(batch).verify()  # symbolic types are the concrete ones at every size
        with torch.no_grad():
            outputs = module(*random_inputs(graph, seed=batch, batch=batch))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        assert [tuple(o.shape) for o in outputs] == [shape_at(v.shape, batch) for v in graph.outputs]


# ---- capture -----------------------------------------------------------------------------------


def _assert_any_batch(model, graph, make_input, batches=(1, 3, 8)):
    module = qc.to_torch(graph)
    for batch in batches:
        inputs = make_input(batch)
        with torch.no_grad():
            expected, got = model(*inputs), module(*inputs)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_capture_makes_the_batch_symbolic_even_from_a_batch_of_one():
    model = Lambda(lambda m, x: m.fc(x.view(x.shape[0], -1)).relu(), fc=nn.Linear(12, 5)).eval()
    graph = qc.trace(model, (torch.randn(1, 3, 4),))
    assert [v.type_str for v in graph.inputs] == ["f32[N,3,4]"]
    assert next(n for n in graph if n.op == "reshape").attrs == {"shape": [-1, 12]}
    _assert_any_batch(model, graph, lambda b: (torch.randn(b, 3, 4),))
    static = qc.trace(model, (torch.randn(1, 3, 4),), dynamic_batch=False)
    assert static.is_static and static.inputs[0].shape == (1, 3, 4)


def test_multi_head_attention_merges_the_batch_with_the_heads():
    model = Lambda(lambda m, x: m.attention(x, x, x, need_weights=False)[0],
                    attention=nn.MultiheadAttention(16, 4, batch_first=True)).eval()
    graph = qc.trace(model, (torch.randn(2, 5, 16),))
    assert {"f32[5,N*4,4]", "f32[N*4,5,4]", "f32[N*5,16]"} <= {v.type_str for v in graph.values.values()}
    _assert_any_batch(model, graph, lambda b: (torch.randn(b, 5, 16),))


def test_inputs_without_the_batch_stay_static():
    model = Lambda(lambda m, x, table, scale: x * scale + table.mean()).eval()
    graph = qc.trace(model, (torch.randn(3, 4), torch.randn(5), torch.tensor(2.0)))
    assert [v.type_str for v in graph.inputs] == ["f32[N,4]", "f32[5]", "f32[]"]


@pytest.mark.parametrize("forward, message", [
    (lambda m, x: m.fc(x.reshape(4, 12)),
     r"Lambda cannot take any batch size: its code fixes the batch dimension to 4 at "
     r"tests/ir/test_symbolic_batch\.py:\d+: `\(lambda m, x: m\.fc\(x\.reshape\(4, 12\)\),`\. Write "
     r"the batch as -1 or x\.shape\[0\].*qc\.trace\(model, inputs, dynamic_batch=False\)"),
    (lambda m, x: m.fc(x.flatten(1)) * (2 if x.shape[0] == 4 else 1),
     r"fixes the batch dimension to 4 at tests/ir/test_symbolic_batch\.py:\d+: .*x\.shape\[0\] == 4"),
])
def test_a_model_that_fixes_its_batch_is_refused_naming_the_line(forward, message):
    model = Lambda(forward, fc=nn.Linear(12, 3)).eval()
    with pytest.raises(CaptureError, match=message):
        qc.trace(model, (torch.randn(4, 3, 4),), dynamic_batch=True)
    assert qc.trace(model, (torch.randn(4, 3, 4),), dynamic_batch=False).inputs[0].shape == (4, 3, 4)
    with pytest.warns(UserWarning, match=message.split(" at ")[0] + r".*Captured Lambda at the "
                      r"example inputs' batch size, 4, instead of any batch"):
        graph = qc.trace(model, (torch.randn(4, 3, 4),))  # the default: static, with a warning
    assert graph.inputs[0].shape == (4, 3, 4)


@pytest.mark.parametrize("forward, message", [
    (lambda m, x: x.unbind(0)[0], r"fixes the batch dimension to 3 at .*: `\(lambda m, x: x\.unbind\(0\)"),
    (lambda m, x: torch.cat([x, m.row]), r"node %cat .*: its size N \+ 1 is not a multiple of the "
                                         r"batch size N .*the graph needs a fixed batch size"),
    (lambda m, x: x[:2] * 2, r"unsupported op aten\.slice\.Tensor \(node %slice .*\) at any batch "
                             r"size: slicing along the batch dimension \(N\)"
                             r" has no IR form at an unknown batch size"),
    (lambda m, x: x + torch.zeros(x.shape[0], 4), r"unsupported op aten\.zeros\.default .* at any "
                                                  r"batch size: its arguments depend on the batch size"),
    (lambda m, x: m.row.expand(x.shape[0], 4) + x, r"aten\.expand\.default .* at any batch size: its "
                                                    r"arguments depend on the batch size"),
])
def test_ops_that_need_a_fixed_batch_are_named(forward, message):
    model = Lambda(forward).eval()
    model.register_buffer("row", torch.randn(1, 4))
    with pytest.raises((CaptureError, UnsupportedOpError), match=message):
        qc.trace(model, (torch.randn(3, 4),), dynamic_batch=True)
    with pytest.warns(UserWarning, match="instead of any batch"):
        graph = qc.trace(model, (torch.randn(3, 4),))  # the default: static, with a warning
    assert graph.is_static


def test_interpreter_runs_any_batch_and_checks_the_inputs_agree():
    graph = Graph()
    x, y = graph.add_input("x", (N, 2), "i8"), graph.add_input("y", (N, 2), "i8")
    graph.outputs = [graph.add_node("concat", [x, y], {"dim": 1}).output]
    a = np.arange(6, dtype=np.int8).reshape(3, 2)
    assert qc.backends.interpreter.run(graph, a, a).shape == (3, 4)
    with pytest.raises(qc.QCompilerError, match=r"input %y expects i8\[N,2\], got int8\[2, 2\] \(input "
                                                r"%y has N = 2 on axis 0, but another input set N = 3\)"):
        qc.backends.interpreter.run(graph, a, a[:2])
