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


def test_the_simulation_is_the_numpy_format_bit_for_bit():
    weight = np.random.default_rng(0).normal(size=(6, 64)).astype(np.float32)
    codes, scales = gq.round_to_nearest(weight, 4, 16)
    simulated = fake_quant_grouped(torch.from_numpy(weight), torch.from_numpy(scales), bits=4,
                                   group_size=16)
    np.testing.assert_array_equal(simulated.numpy(), gq.dequantize_grouped(codes, scales, 16))


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


def test_gptq_codes_survive_the_simulation(encoder):
    graph, calibration, _ = encoder
    result = quantize_weights_grouped(graph.copy(), method="gptq", group_size=32,
                                      calibration_data=calibration)
    for node in result.graph:
        if node.op == "fake_quant_grouped":
            weight, scale = node.inputs[0].data, node.inputs[1].data
            # The stored weight is already on the grid: quantizing it again changes nothing.
            np.testing.assert_array_equal(gq.dequantize_grouped(
                gq.quantize_grouped(weight, scale, 4, 32), scale, 32), weight)


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
