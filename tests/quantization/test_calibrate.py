"""Calibration: ranges computed independently, every bad input refused with an exact message,
and the caller's graph untouched after an error; the data-free path from BN statistics."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qcompiler as qc
from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph, structurally_equal
from qcompiler.numerics.quant import choose_qparams, sqnr_db
from qcompiler.passes import fold_batchnorm, insert_fake_quant
from qcompiler.quantization.calibrate import calibrate
from qcompiler.quantization.config import QuantConfig
from qcompiler.quantization.data_free import batchnorm_statistics, transport_statistics
from qcompiler.quantization.quantizers import find_uncalibrated, require_calibrated

CONV = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}
RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
BIAS = RNG.standard_normal(4).astype(np.float32)
GAMMA = np.array([1.0, -0.5, 2.0, 0.3], np.float32)
BETA = np.array([0.5, 1.0, -1.0, 2.0], np.float32)



def conv_relu(batch_norm: bool = False) -> Graph:
    g = Graph()
    x = g.add_input("x", (2, 3, 8, 8))
    conv = g.add_node("conv2d", [x, g.add_constant("conv.weight", WEIGHT),
                                 g.add_constant("conv.bias", BIAS)], CONV, name="conv")
    out = conv.output
    if batch_norm:
        params = [g.add_constant(f"bn.{name}", data) for name, data in
                  (("weight", GAMMA), ("bias", BETA), ("mean", np.full(4, 0.1, np.float32)),
                   ("var", np.full(4, 2.0, np.float32)))]
        out = g.add_node("batch_norm", [out, *params], name="bn").output
    g.outputs = [g.add_node("relu", [out], name="relu").output]
    return g


def batches(count=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=generator) * (i + 1) for i in range(count)]


MINMAX = QuantConfig(activation_observer="minmax")  # the ranges these tests compute by hand


@pytest.fixture
def fake_quant_graph():
    return insert_fake_quant(conv_relu()).graph


def test_ranges_match_an_independent_computation(fake_quant_graph):
    data = batches()
    calibrated = calibrate(fake_quant_graph, iter(data), MINMAX, progress=False)  # a one-shot iterator
    assert not find_uncalibrated(calibrated)
    require_calibrated(calibrated)
    outputs = [F.relu(F.conv2d(x, torch.from_numpy(WEIGHT), torch.from_numpy(BIAS), padding=1))
               for x in data]
    expected = {
        "x.fq": choose_qparams(min(x.min() for x in data), max(x.max() for x in data),
                               signed=False),
        "relu.fq": choose_qparams(0.0, max(float(y.max()) for y in outputs), signed=False),
    }
    for name, (scale, zero_point) in expected.items():
        node = calibrated.values[name].producer
        np.testing.assert_allclose(node.inputs[1].data, scale, rtol=1e-6)
        np.testing.assert_array_equal(node.inputs[2].data, zero_point)
        assert node.output.qparams.scale == node.inputs[1].data  # qparams mirror the constants
    weight_fq = calibrated.values["conv"].producer.inputs[1].producer
    per_channel = np.abs(WEIGHT).reshape(4, -1).max(axis=1) / 127  # symmetric narrow int8
    np.testing.assert_allclose(weight_fq.inputs[1].data, per_channel, rtol=1e-6)
    assert weight_fq.output.qparams.axis == 0 and weight_fq.output.qparams.qmin == -127
    # The calibrated graph runs, and its output is near the float output.
    run = qc.to_torch(calibrated)(data[2]).detach().numpy()
    assert sqnr_db(outputs[2].numpy(), run) > 35  # measured 40.8 dB


def test_the_configured_observer_is_used(fake_quant_graph):
    data = batches()
    minmax = calibrate(fake_quant_graph, data, MINMAX)
    clipped = calibrate(fake_quant_graph, data, QuantConfig(
        activation_observer="percentile", activation_observer_options={"percentile": 90}))
    assert clipped.values["relu.fq"].qparams.scale[0] < 0.5 * minmax.values["relu.fq"].qparams.scale[0]


def test_by_default_a_rare_outlier_does_not_set_the_activation_range(fake_quant_graph):
    data = [x / (i % 3 + 1) for i, x in enumerate(batches(count=40))]  # 15,360 inputs
    spiked = [x.clone() for x in data]
    spiked[0][0, 0, 0, 0] = 1000.0  # one element in 15,360: below the top 0.01%
    default = calibrate(fake_quant_graph, spiked).values["x.fq"].qparams
    minmax = calibrate(fake_quant_graph, spiked, MINMAX).values["x.fq"].qparams
    assert minmax.scale[0] > 1000 / 255
    typical = float(max(x.abs().max() for x in data))
    assert default.scale[0] < 1.1 * typical * 2 / 255  # the range of the other values


def assert_refused(graph, data, message, **kwargs):
    before = str(graph)
    with pytest.raises(QuantizationError, match=message):
        calibrate(graph, data, **kwargs)
    assert str(graph) == before and len(find_uncalibrated(graph)) == 3  # nothing half-done


@pytest.mark.parametrize(("data", "message"), [
    ([], "calibration_data is empty: give at least one batch"),
    (iter([]), "calibration_data is empty"),
    ([torch.zeros(2, 3, 8, 8, dtype=torch.float64)],
     r"calibration batch 0: input %x expects f32\[2,3,8,8\], got f64\[2,3,8,8\]"),
    ([torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 8, 8)],
     r"calibration batch 1: input %x expects f32\[2,3,8,8\], got f32\[1,3,8,8\]"),
    ([(torch.zeros(2, 3, 8, 8), torch.zeros(1))],
     r"calibration batch 0 has 2 tensor\(s\) but graph main takes 1 input\(s\) "
     r"\(%x: f32\[2,3,8,8\]\)"),
    ([{"x": torch.zeros(2, 3, 8, 8)}], "calibration batch 0 is a dict; expected a tensor or a tuple"),
    ([[[1.0, 2.0]]], r"calibration batch 0: input %x is a list, expected a tensor of f32\[2,3,8,8\]"),
    ([torch.full((2, 3, 8, 8), float("nan"))], "calibration batch 0: input %x contains NaN or Inf"),
])
def test_bad_calibration_data_is_refused(fake_quant_graph, data, message):
    assert_refused(fake_quant_graph, data, message)


def test_numpy_batches_are_accepted(fake_quant_graph):
    array = np.linspace(-1, 1, 384, dtype=np.float32).reshape(2, 3, 8, 8)
    from_numpy = calibrate(fake_quant_graph, [array])
    from_torch = calibrate(fake_quant_graph, [torch.from_numpy(array.copy())])
    assert not find_uncalibrated(from_numpy)
    assert structurally_equal(from_numpy, from_torch)


def test_nan_in_an_activation_names_the_node():
    g = Graph()
    x = g.add_input("x", (2, 3, 8, 8))
    zero = g.add_constant("zero", np.zeros(1, np.float32))
    ratio = g.add_node("div", [x, zero], name="ratio")
    g.outputs = [g.add_node("sigmoid", [ratio.output], name="gate").output]
    graph = insert_fake_quant(g).graph
    before = str(graph)
    with pytest.raises(QuantizationError, match=r"calibration batch 0: node %ratio \(div\) produced "
                                                "NaN; check the model and the data"):
        calibrate(graph, [torch.zeros(2, 3, 8, 8)])  # 0 / 0
    assert str(graph) == before


def test_nan_in_a_weight_names_the_constant_and_its_layer():
    g = conv_relu()
    bad = WEIGHT.copy()
    bad[0, 0, 0, 0] = np.inf
    g.values["conv.weight"].data = bad
    graph = insert_fake_quant(g).graph
    assert_refused(graph, batches(), r"weight %conv.weight \(used by %conv\) contains NaN or Inf in "
                                     "1 of 108 values; fix the model's parameters")


def test_graph_without_fake_quants_and_per_channel_activations_are_refused():
    with pytest.raises(QuantizationError, match="graph main has no fake_quant nodes to calibrate; "
                                                "run qcompiler.passes.insert_fake_quant first"):
        calibrate(conv_relu(), batches())
    g = Graph()
    x = g.add_input("x", (2, 3))
    scale = g.add_constant("s", np.full(3, np.nan, np.float32))
    zero_point = g.add_constant("z", np.zeros(3, np.int32))
    g.outputs = [g.add_node("fake_quant", [x, scale, zero_point], {"axis": 1}, name="fq").output]
    with pytest.raises(QuantizationError, match=r"node %fq \(fake_quant\) quantizes an activation "
                                                "per channel; activations are quantized per tensor"):
        calibrate(g, [torch.zeros(2, 3)])


def test_require_calibrated_names_the_first_uncalibrated_node(fake_quant_graph):
    with pytest.raises(QuantizationError, match=r"lowering needs a calibrated graph, but node %x.fq "
                                                r"\(fake_quant\) \(and 2 more\) has no scale yet"):
        require_calibrated(fake_quant_graph, "lowering")


def expected_data_free_scale(sigmas=3.0):
    return float(np.maximum(BETA + sigmas * np.abs(GAMMA), 0).max()) / 255


def test_data_free_ranges_from_batchnorm_statistics_unfolded_and_folded():
    unfolded = conv_relu(batch_norm=True)
    # Unfolded: the batch norm is quantized as its own op, fused with the relu after it.
    calibrated = calibrate(insert_fake_quant(unfolded.copy()).graph, None)
    assert calibrated.values["relu.fq"].qparams.scale[0] == pytest.approx(expected_data_free_scale())
    # Folded: statistics recorded before folding are keyed by the layer output that survives.
    statistics = batchnorm_statistics(unfolded)
    assert set(statistics) == {"bn", "conv"}
    folded = insert_fake_quant(fold_batchnorm(unfolded.copy()).graph).graph
    calibrated = calibrate(folded, None, statistics=statistics, sigmas=2.0)
    assert calibrated.values["relu.fq"].qparams.scale[0] == pytest.approx(expected_data_free_scale(2.0))
    # The graph input has no statistics: its range comes from synthetic N(0, 1) inputs.
    lo = -float(calibrated.values["x.fq"].qparams.scale[0] * calibrated.values["x.fq"].qparams.zero_point[0])
    assert -6 < lo < -2
    with pytest.raises(QuantizationError, match="calibration_data is None, so ranges must come from "
                                                "batch-norm statistics, but graph main has no "
                                                "batch_norm and none were given"):
        calibrate(folded, None)


def test_statistics_follow_a_per_channel_rescaling():
    g = Graph()
    x = g.add_input("x", (2, 3, 8, 8))
    conv1 = g.add_node("conv2d", [x, g.add_constant("w1", WEIGHT), g.add_constant("b1", BIAS)],
                       CONV, name="conv1")
    relu = g.add_node("relu", [conv1.output], name="relu")
    w2 = RNG.standard_normal((2, 4, 1, 1)).astype(np.float32)
    conv2 = g.add_node("conv2d", [relu.output, g.add_constant("w2", w2)],
                       {**CONV, "padding": [0, 0]}, name="conv2")
    g.outputs = [conv2.output]
    # What cross-layer equalization does: channel c of conv1 divided by s_c, conv2 compensates.
    s = np.array([2.0, 0.5, 4.0, 1.0], np.float32)
    rescaled = g.copy()
    rescaled.values["w1"].data = WEIGHT / s[:, None, None, None]
    rescaled.values["b1"].data = BIAS / s
    rescaled.values["w2"].data = w2 * s[None, :, None, None]
    statistics = {"conv1": (BETA.astype(np.float64), np.abs(GAMMA).astype(np.float64))}
    moved = transport_statistics(statistics, g, rescaled)
    np.testing.assert_allclose(moved["conv1"][0], BETA / s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(moved["conv1"][1], np.abs(GAMMA) / s, rtol=1e-4)


def test_qparams_mirror_the_constants_and_a_mismatch_is_reported(fake_quant_graph):
    from qcompiler.quantization.quantizers import fake_quant_problems

    assert fake_quant_problems(fake_quant_graph) == []  # uncalibrated: NaN scale, no qparams
    calibrated = calibrate(fake_quant_graph, batches())
    assert fake_quant_problems(calibrated) == []
    scale = calibrated.values["relu.fq.scale"]
    scale.data = scale.data * 2
    assert fake_quant_problems(calibrated) == [
        "node %relu.fq (fake_quant): output qparams do not match its scale/zero_point constants "
        "and attributes"]


def test_calibration_batches_may_carry_several_graph_batches():
    """A graph traced with batch 2 calibrates on 6-example batches: cut into 3 runs, the
    ranges equal those observed from the same examples fed 2 at a time."""
    g = Graph()
    x = g.add_input("x", (2, 3))
    w = g.add_constant("w", np.arange(12, dtype=np.float32).reshape(4, 3) / 7)
    g.outputs = [g.add_node("linear", [x, w], name="fc").output]
    fq = insert_fake_quant(g).graph
    data = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    whole = calibrate(fq, [data])
    pairs = calibrate(fq, [data[0:2], data[2:4], data[4:6]])
    assert str(whole) == str(pairs)


def test_calibration_batch_that_is_not_a_multiple_names_the_expected_type():
    g = Graph()
    x = g.add_input("x", (2, 3))
    g.outputs = [g.add_node("relu", [x], name="r").output]
    fq = insert_fake_quant(g).graph
    with pytest.raises(QuantizationError,
                       match=r"calibration batch 0: input %x expects f32\[2,3\], got f32\[3,3\]"):
        calibrate(fq, [torch.randn(3, 3)])
