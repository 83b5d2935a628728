"""quantize_weights_grouped: the simulated int4 weights are exactly the numpy helpers' codes,
AWQ and GPTQ lower the encoder's output error below round-to-nearest (per layer and end to
end), and bad options are clear errors naming the option."""

import numpy as np
import pytest
import torch
from oracles import run
from transformer_models import outlier_encoder

import qcompiler as qc
from qcompiler.errors import OptionError, PassError
from qcompiler.ir import Graph
from qcompiler.ir.fake_quant_ops import fake_quant_grouped
from qcompiler.numerics import grouped_quant as gq
from qcompiler.passes import quantize_weights_grouped


@pytest.fixture(scope="module")
def encoder():
    return outlier_encoder()


def output_error(graph, quantized, batches):
    want = np.concatenate([run(graph, b)[0].numpy() for b in batches])
    got = np.concatenate([run(quantized, b)[0].numpy() for b in batches])
    return float(np.mean((want - got) ** 2))


@pytest.mark.parametrize("asymmetric", [False, True])
def test_the_simulation_is_the_numpy_format_bit_for_bit(asymmetric):
    weight = np.random.default_rng(0).normal(size=(6, 64)).astype(np.float32)
    codes, scales, zeros = gq.round_to_nearest(weight, 4, 16, asymmetric)
    simulated = fake_quant_grouped(torch.from_numpy(weight), torch.from_numpy(scales),
                                   None if zeros is None else torch.from_numpy(zeros), bits=4,
                                   group_size=16)
    np.testing.assert_array_equal(simulated.numpy(), gq.dequantize_grouped(codes, scales, 16, zeros))


@pytest.mark.parametrize("group_size", [16, 32])
def test_awq_and_gptq_beat_round_to_nearest_end_to_end(encoder, group_size):
    graph, calibration, held_out = encoder
    errors = {}
    for method in ("rtn", "awq", "gptq"):
        result = quantize_weights_grouped(graph.copy(), method=method, group_size=group_size,
                                          calibration_data=calibration)
        result.graph.verify()
        assert sum(node.op == "fake_quant_grouped" for node in result.graph) == 13
        errors[method] = output_error(graph, result.graph, held_out)
    assert errors["awq"] < errors["rtn"] and errors["gptq"] < errors["rtn"]


@pytest.mark.parametrize("asymmetric", [False, True])
def test_gptq_codes_survive_the_simulation(encoder, asymmetric):
    graph, calibration, _ = encoder
    result = quantize_weights_grouped(graph.copy(), method="gptq", group_size=32,
                                      calibration_data=calibration, asymmetric=asymmetric)
    for node in result.graph:
        if node.op == "fake_quant_grouped":
            weight, scale = node.inputs[0].data, node.inputs[1].data
            zero = node.inputs[2].data if asymmetric else None
            assert len(node.inputs) == (3 if asymmetric else 2)
            # The stored weight is already on the grid: quantizing it again changes nothing.
            np.testing.assert_array_equal(gq.dequantize_grouped(
                gq.quantize_grouped(weight, scale, 4, 32, zero), scale, 32, zero), weight)


def test_sequential_gptq_reads_the_quantized_graph_and_beats_the_float_hessians(encoder):
    """Sequential GPTQ's later layers see the error of the earlier ones in their Hessians
    (so their weights differ from the one-run variant's) and the end-to-end error drops."""
    graph, calibration, held_out = encoder
    results = {sequential: quantize_weights_grouped(graph.copy(), method="gptq", group_size=16,
                                                    calibration_data=calibration,
                                                    sequential=sequential).graph
               for sequential in (False, True)}
    weights = {key: [n.inputs[0].data for n in g if n.op == "fake_quant_grouped"]
               for key, g in results.items()}
    np.testing.assert_array_equal(weights[False][0], weights[True][0])  # the first layers agree
    assert not np.array_equal(weights[False][-1], weights[True][-1])
    assert output_error(graph, results[True], held_out) < output_error(graph, results[False], held_out)


def test_padding_tokens_are_left_out_of_the_statistics():
    """The recorded statistics with the mask equal those of the real tokens alone."""
    from qcompiler.ir.evaluate import input_batches
    from qcompiler.quantization.linear_inputs import (
        find_token_mask,
        linear_input_groups,
        record_linear_inputs,
    )
    graph = Graph("masked")
    ids = graph.add_input("input_ids", [2, 3], "i64")
    mask = graph.add_input("attention_mask", [2, 3], "i64")
    table = graph.add_constant("table", np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    embedded = graph.add_node("embedding", [ids, table], name="embed")
    weight = graph.add_constant("w", np.ones((2, 4), np.float32))
    linear = graph.add_node("linear", [embedded.output, weight], name="fc")
    graph.outputs = [linear.output, graph.add_node("cast", [mask], {"dtype": "f32"}, name="m").output]
    assert find_token_mask(graph) == 1
    tokens = torch.tensor([[1, 2, 0], [3, 0, 0]])
    real = torch.tensor([[1, 1, 0], [1, 0, 0]])
    (value, _), = linear_input_groups(graph)
    batches = input_batches([(tokens, real)], graph)
    stats = record_linear_inputs(graph, batches, [value], hessian=True, token_mask=1)[value.name]
    rows = table.data[[1, 2, 3]].astype(np.float64)
    assert stats.tokens == 3
    np.testing.assert_allclose(stats.gram, rows.T @ rows)
    np.testing.assert_allclose(stats.abs_mean, np.abs(rows).mean(0))


def test_activations_can_be_quantized_afterwards(encoder):
    graph, calibration, held_out = encoder
    int4 = quantize_weights_grouped(graph.copy(), method="awq", group_size=32,
                                    calibration_data=calibration).graph
    both = qc.quantize(int4, calibration, config="w8a16", bias_correction=False)
    assert sum(node.op == "fake_quant_grouped" for node in both) == 13
    assert output_error(graph, both, held_out) < 2 * output_error(graph, int4, held_out) + 1e-6


def test_bad_options_are_named(encoder):
    graph, calibration, _ = encoder
    with pytest.raises(OptionError, match=r"group_size=24\) does not divide the 32 input features "
                                          r"of node %layers.0.query \(linear\).*e.g. 32"):
        quantize_weights_grouped(graph.copy(), method="rtn", group_size=24)
    with pytest.raises(OptionError, match=r"method='awq'\) needs calibration_data"):
        quantize_weights_grouped(method="awq")
    with pytest.raises(OptionError, match=r"method='gtpq'\): choose one of rtn, awq, gptq"):
        quantize_weights_grouped(method="gtpq")
    with pytest.raises(OptionError, match=r"bits=16\): weights take 2..8 bits"):
        quantize_weights_grouped(bits=16)
    with pytest.raises(OptionError, match=r"token_mask='mask'\): graph .* has no such input; its "
                                          r"inputs are "):
        quantize_weights_grouped(graph.copy(), method="gptq", group_size=32,
                                 calibration_data=calibration, token_mask="mask")


def test_a_conv_layer_is_refused_by_name():
    graph = Graph("conv")
    x = graph.add_input("x", [1, 4, 8, 8])
    weight = graph.add_constant("conv.weight", np.ones((4, 4, 1, 1), np.float32))
    conv = graph.add_node("conv2d", [x, weight], {"stride": [1, 1], "padding": [0, 0],
                                                   "dilation": [1, 1]}, name="conv")
    graph.outputs = [conv.output]
    with pytest.raises(PassError, match=r"layer 'conv' is conv2d; quantize_weights_grouped\(layers=...\) "
                                        "applies to linear layers"):
        quantize_weights_grouped(graph, method="rtn", group_size=4, layers=["conv"])
