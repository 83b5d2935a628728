"""The int32 bias in fake-quant simulation (`fake_quant_bias`): simulation adds the bias the
integer kernel adds, from the live scale constants, with straight-through gradients."""

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.backends.simulation_agreement import compare_with_simulation
from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph
from qcompiler.ir.edit import layer_bias, set_layer_bias
from qcompiler.ir.evaluate import evaluate, is_fake_quant
from qcompiler.ir.ops import run_op
from qcompiler.numerics.integer_params import bias_scales, fake_quantize_bias, quantize_bias
from qcompiler.passes import insert_fake_quant, lower_to_integer
from qcompiler.quantization.calibrate import calibrate
from qcompiler.quantization.config import QScheme, QuantConfig
from qcompiler.quantization.quantizers import (
    fake_quant_problems,
    quantize_layer_bias,
)

CONV = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}


def conv_linear_graph(seed: int = 0, bias_gain: float = 1.0) -> Graph:
    """x -> conv (+bias) -> relu -> flatten -> linear (+bias)."""
    rng = np.random.default_rng(seed)
    g = Graph("conv_linear")
    x = g.add_input("x", (4, 2, 4, 4))
    w = g.add_constant("conv.weight", rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    b = g.add_constant("conv.bias", (rng.standard_normal(3) * bias_gain).astype(np.float32))
    conv = g.add_node("conv2d", [x, w, b], CONV, name="conv")
    relu = g.add_node("relu", [conv.output], name="relu")
    flat = g.add_node("flatten", [relu.output], {"start_dim": 1}, name="flat")
    fc_w = g.add_constant("fc.weight", rng.standard_normal((5, 48)).astype(np.float32))
    fc_b = g.add_constant("fc.bias", rng.standard_normal(5).astype(np.float32))
    g.outputs = [g.add_node("linear", [flat.output, fc_w, fc_b], name="fc").output]
    return g


def batches(count: int = 3, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 2, 4, 4, generator=generator) for _ in range(count)]


# ---- the op --------------------------------------------------------------------------------------


def test_op_adds_the_int32_grid_and_passes_gradients_straight_through():
    bias = torch.tensor([0.3125, -1.2, 7.0], requires_grad=True)
    input_scale, weight_scale = torch.tensor([0.5]), torch.tensor([0.25, 0.1, 1.0])
    [out] = run_op("fake_quant_bias", [bias, input_scale, weight_scale], {})
    expected = fake_quantize_bias(bias.detach().numpy(), input_scale.numpy(), weight_scale.numpy())
    np.testing.assert_array_equal(out.detach().numpy(), expected)
    # 0.3125 / 0.125 = 2.5 -> 2 (half to even): the grid value 0.25, not the float 0.3125.
    assert out[0].item() == 0.25
    out.backward(torch.tensor([1.0, 2.0, 3.0]))
    assert bias.grad.tolist() == [1.0, 2.0, 3.0]


def test_op_refuses_uncalibrated_scales_and_wrong_shapes():
    bias = torch.zeros(3)
    with pytest.raises(QuantizationError, match="fake_quant_bias reads a scale that is not calibrated"):
        run_op("fake_quant_bias", [bias, torch.tensor([float("nan")]), torch.ones(3)], {})
    with pytest.raises(ValueError, match=r"weight scale \[C\] or \[1\], got \[3\], \[1\] and \[2\]"):
        run_op("fake_quant_bias", [bias, torch.ones(1), torch.ones(2)], {})


# ---- insertion ---------------------------------------------------------------------------------


def test_each_lowered_layer_gets_a_fake_quant_bias_reading_its_input_and_weight_scales():
    result = insert_fake_quant(conv_linear_graph())
    graph = result.graph.verify()
    for name, source in (("conv", "x.fq"), ("fc", "relu.fq")):
        layer = graph.values[name].producer
        bias_fq = layer.inputs[2].producer
        assert bias_fq.op == "fake_quant_bias" and layer_bias(layer) is bias_fq.inputs[0]
        # The very constants calibration fills: nothing to keep in sync.
        assert bias_fq.inputs[1] is graph.values[source].producer.inputs[1]
        assert bias_fq.inputs[2] is layer.inputs[1].producer.inputs[1]
    assert "2 fake_quant_bias node(s)" in result.notes[0]
    assert fake_quant_problems(graph) == []


def test_no_fake_quant_bias_where_lowering_keeps_the_bias_float():
    # An excluded layer, and weights quantized asymmetrically (lowering falls back): float bias.
    for config in (QuantConfig(exclude_nodes=["conv"]),
                   QuantConfig(weight=QScheme(8, symmetric=False, per_channel=True))):
        graph = insert_fake_quant(conv_linear_graph(), config=config).graph
        conv = graph.values["conv"].producer
        assert conv.inputs[2].is_constant, config
    g = Graph()
    x = g.add_input("x", (1, 2, 4, 4))
    w = g.add_constant("up.weight", np.ones((2, 2, 2, 2), np.float32))
    b = g.add_constant("up.bias", np.ones(2, np.float32))
    g.outputs = [g.add_node("conv_transpose2d", [x, w, b], {**CONV, "padding": [0, 0], "groups": 1,
                                                            "output_padding": [0, 0]}, name="up").output]
    graph = insert_fake_quant(g).graph
    assert graph.values["up"].producer.inputs[2].is_constant  # conv_transpose2d runs in float


# ---- calibration and simulation ---------------------------------------------------------------------


def test_simulation_adds_the_grid_of_the_calibrated_scales_and_follows_bias_changes():
    float_graph = conv_linear_graph(bias_gain=3.0)
    graph = insert_fake_quant(float_graph.copy()).graph
    # Calibration observes the float graph: with the quantizers bypassed (fake_quant_bias
    # among them) the conv output is the float conv's, bit for bit.
    x = batches(1, seed=5)[0]
    observed, = evaluate(graph, [x], [graph.values["conv"]], bypass=is_fake_quant)
    expected, = evaluate(float_graph, [x], [float_graph.values["conv"]])
    assert torch.equal(observed, expected)
    calibrated = calibrate(graph, batches(), progress=False)
    conv = calibrated.values["conv"].producer
    scales = calibrated.values["x.fq"].qparams.scale, conv.inputs[1].producer.inputs[1].data
    bias = layer_bias(conv).data

    def simulated_conv(bias_data: np.ndarray) -> np.ndarray:
        """The simulated conv output (before relu) with `bias_data` set as set_layer_bias does."""
        probe = calibrated.copy()
        set_layer_bias(probe, probe.values["conv"].producer, probe.add_constant("new", bias_data))
        assert "conv.bias" not in probe.values  # the replaced constant is removed
        probe.outputs = [probe.values["conv"]]
        with torch.no_grad():
            return qc.to_torch(probe, trainable=False)(x).numpy()

    without_bias = simulated_conv(np.zeros(3, np.float32))
    for new_bias in (bias, bias + 0.1234):  # a changed bias needs no recalibration
        grid = fake_quantize_bias(new_bias, *scales)
        assert np.abs(grid - new_bias).max() > 1e-5  # the check below can tell them apart
        added = simulated_conv(new_bias) - without_bias
        np.testing.assert_allclose(added, np.broadcast_to(grid[None, :, None, None], added.shape),
                                   rtol=0, atol=2e-6)


def test_a_quantized_layer_given_a_bias_gets_a_fake_quant_bias():
    float_graph = conv_linear_graph()
    conv = float_graph.values["conv"].producer
    conv.inputs[2].users.remove(conv)
    float_graph.remove_value(conv.inputs[2])
    conv.inputs = conv.inputs[:2]
    graph = insert_fake_quant(float_graph).graph
    conv = graph.values["conv"].producer
    assert layer_bias(conv) is None
    set_layer_bias(graph, conv, graph.add_constant("conv.bias.corrected", np.ones(3, np.float32)))
    assert quantize_layer_bias(graph, conv) is conv.inputs[2].producer
    assert conv.inputs[2].producer.op == "fake_quant_bias"
    assert quantize_layer_bias(graph, conv) is None  # it has one now
    assert layer_bias(conv).name == "conv.bias.corrected"
    assert fake_quant_problems(graph.verify()) == []


def test_a_fake_quant_bias_on_the_wrong_scale_is_reported_and_refused_by_lowering():
    graph = calibrate(insert_fake_quant(conv_linear_graph()).graph, batches(), progress=False)
    bias_fq = graph.values["fc"].producer.inputs[2].producer
    bias_fq.replace_input(bias_fq.inputs[1], graph.values["x.fq"].producer.inputs[1])
    assert fake_quant_problems(graph) == [
        f"{bias_fq.describe()} does not read the scales of the fake_quants of node %fc (linear)'s "
        "input and weight; re-run insert_fake_quant"]
    with pytest.raises(QuantizationError, match=r"node %fc.bias.fq \(fake_quant_bias\) rounds the bias "
                                                r"of node %fc \(linear\) with scales that are not"):
        lower_to_integer(graph)


# ---- lowering: the int32 bias is the simulation's --------------------------------------------------


def test_int32_bias_is_the_simulated_bias_divided_by_its_step():
    graph = calibrate(insert_fake_quant(conv_linear_graph(bias_gain=3.0)).graph, batches(),
                      progress=False)
    integer = lower_to_integer(graph).graph
    for name in ("conv", "fc"):
        layer = graph.values[name].producer
        bias_fq = layer.inputs[2].producer
        step = bias_scales(bias_fq.inputs[1].data, bias_fq.inputs[2].data, len(bias_fq.inputs[0].data))
        [simulated] = run_op("fake_quant_bias", [torch.from_numpy(v.data) for v in bias_fq.inputs], {})
        bias_q = integer.values[f"{name}.bias_q"].data
        np.testing.assert_array_equal(np.rint(simulated.numpy().astype(np.float64) / step), bias_q)
        np.testing.assert_array_equal(bias_q, quantize_bias(bias_fq.inputs[0].data, bias_fq.inputs[1].data,
                                                            bias_fq.inputs[2].data, len(bias_q))[0])


def test_with_the_int32_bias_a_layer_agrees_with_the_simulation_element_for_element():
    """A 1-input linear layer: accumulation is exact in float32 too, so the only difference
    left between simulation and the integer kernel would be the bias. With fake_quant_bias
    every element agrees; simulating the float bias instead (negative control) does not."""
    rng = np.random.default_rng(0)
    g = Graph("one_linear")
    x = g.add_input("x", (512, 1))
    w = g.add_constant("fc.weight", rng.standard_normal((64, 1)).astype(np.float32))
    b = g.add_constant("fc.bias", rng.standard_normal(64).astype(np.float32))
    g.outputs = [g.add_node("linear", [x, w, b], name="fc").output]
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(512, 1, generator=generator) for _ in range(2)]
    graph = calibrate(insert_fake_quant(g).graph, data, progress=False)
    agreement = compare_with_simulation(graph, (data[1],))
    [layer] = [layer for layer in agreement.layers if layer.op == "qlinear"]
    assert layer.local.elements == 512 * 64 and layer.local.differing == 0
    float_bias = graph.copy()
    bias_fq = float_bias.values["fc"].producer.inputs[2].producer
    float_bias.replace_all_uses(bias_fq.output, bias_fq.inputs[0])
    float_bias.remove_node(bias_fq)
    [layer] = [layer for layer in compare_with_simulation(float_bias, (data[1],)).layers
               if layer.op == "qlinear"]
    assert layer.local.differing * layer.local.elements >= 10  # 13 of 32,768 here


def test_a_layer_that_falls_back_to_float_adds_the_simulated_bias():
    graph = calibrate(insert_fake_quant(conv_linear_graph()).graph, batches(), progress=False)
    fc = graph.values["fc"].producer
    fq = graph.values["fc.fq"].producer  # drop the output quantization: fc has no integer form
    graph.outputs = [fc.output]
    graph.remove_node(fq)
    graph.remove_unused_constants()
    result = lower_to_integer(graph, strict=False)
    fallback = result.graph.values["fc"].producer
    assert fallback.op == "linear" and any("%fc (linear" in note for note in result.notes)
    bias_fq = fc.inputs[2].producer
    np.testing.assert_array_equal(fallback.inputs[2].data,
                                  fake_quantize_bias(*(v.data for v in bias_fq.inputs)))
