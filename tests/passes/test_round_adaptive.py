"""round_adaptive (AdaRound): lowers the layer output error below round-to-nearest's on
held-out data (its claim), leaves every weight exactly on its quantization grid, and
refuses what it cannot do. The numeric helpers are checked against independent
computations (torch's convolutions, the IR's own quantizer)."""

import numpy as np
import pytest
import torch
from torch import nn

from qcompiler.backends.torch import to_torch
from qcompiler.errors import PassError, QuantizationError
from qcompiler.frontends.torch_export.capture import trace
from qcompiler.ir import Graph
from qcompiler.ir.pipeline import Pipeline
from qcompiler.numerics import adaround
from qcompiler.numerics.quant import fake_quantize, quant_range, quantize
from qcompiler.passes import round_adaptive
from qcompiler.passes.insert_fake_quant import insert_fake_quant
from qcompiler.quantization.calibrate import calibrate
from qcompiler.quantization.config import QScheme, QuantConfig

W4 = QuantConfig(weight=QScheme(4, symmetric=True, per_channel=False, narrow_range=True))
W4_PER_CHANNEL = QuantConfig.preset("w4a8")
FAST = {"iterations": 200, "rows": 1024, "progress": False}


# ---- numeric helpers -------------------------------------------------------------------------


def test_rectified_sigmoid_reaches_zero_and_one_and_inverts_the_initialisation():
    h = adaround.rectified_sigmoid(torch.tensor([-20.0, 0.0, 20.0]))
    assert h.tolist() == [0.0, 0.5, 1.0]
    remainder = np.linspace(0.0, 0.999, 50)
    v = adaround.initial_rounding_variable(remainder)
    np.testing.assert_allclose(adaround.rectified_sigmoid(torch.from_numpy(v)).numpy(), remainder,
                               atol=1e-6)


def test_regularizer_is_zero_at_hard_choices_and_largest_at_one_half():
    for beta in (2.0, 20.0):
        assert float(adaround.rounding_regularizer(torch.tensor([0.0, 1.0]), beta)) == 0.0
        assert float(adaround.rounding_regularizer(torch.tensor([0.5]), beta)) == 1.0
        assert float(adaround.rounding_regularizer(torch.tensor([0.05]), beta)) < 1.0


def test_beta_is_off_during_warmup_then_anneals_from_start_to_end():
    settings = adaround.AdaRoundSettings(iterations=100, warmup=0.2)
    assert adaround.annealed_beta(19, settings) is None
    assert adaround.annealed_beta(20, settings) == 20.0
    betas = [adaround.annealed_beta(i, settings) for i in range(20, 101)]
    assert betas[-1] == pytest.approx(2.0) and all(a > b for a, b in zip(betas, betas[1:], strict=False))


def test_floor_plus_half_remainder_is_the_ir_quantizer_away_from_ties():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    scale = (np.abs(weight).reshape(6, -1).max(1) / 7).astype(np.float32)
    zero_point = np.zeros(6, np.int32)
    ours = adaround.nearest_integers(weight, scale, zero_point, 0, -7, 7)
    np.testing.assert_array_equal(ours, quantize(weight, scale, zero_point, -7, 7, axis=0))


@pytest.mark.parametrize("op, groups", [("conv2d", 1), ("conv2d", 4), ("conv1d", 2), ("linear", 1)])
def test_sampled_rows_times_weights_are_the_layer_outputs(op, groups):
    """All rows, in order, through layer_outputs equal torch's own conv/linear."""
    torch.manual_seed(0)
    attrs = {"stride": [2] * (1 if op == "conv1d" else 2), "padding": [1] * (1 if op == "conv1d" else 2),
             "dilation": [1] * (1 if op == "conv1d" else 2), "groups": groups}
    if op == "conv2d":
        x, weight = torch.randn(3, 8, 7, 6), torch.randn(12, 8 // groups, 3, 2)
        reference = torch.nn.functional.conv2d(x, weight, None, 2, 1, 1, groups)
    elif op == "conv1d":
        x, weight = torch.randn(3, 8, 9), torch.randn(6, 8 // groups, 3)
        reference = torch.nn.functional.conv1d(x, weight, None, 2, 1, 1, groups)
    else:
        attrs = {}
        x, weight = torch.randn(3, 5, 8), torch.randn(6, 8)
        reference = torch.nn.functional.linear(x, weight)
    batches = [x[:2], x[2:]]
    if op == "linear":
        expected = reference.reshape(-1, 6)
    else:
        channels = reference.shape[1]
        expected = reference.reshape(3, channels, -1).transpose(1, 2).reshape(-1, channels)
    generator = torch.Generator().manual_seed(0)
    (rows,) = adaround.sample_rows([batches], op, attrs, tuple(weight.shape), 10_000, generator)
    got = adaround.layer_outputs(rows, torch.from_numpy(
        adaround.group_weight_matrix(weight.numpy(), groups if op != "linear" else 1)), None, None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ---- the pass --------------------------------------------------------------------------------


def conv_relu(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1)).eval()


def batches(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 4, 8, 8, generator=generator) for _ in range(count)]


def quantized(model, calibration, config=W4):
    float_graph = trace(model, (calibration[0],))
    return float_graph, calibrate(insert_fake_quant(config=config)(float_graph.copy()).graph,
                                  calibration, config)


def output_error(graph, float_graph, data):
    with torch.no_grad():
        return float(sum(((to_torch(graph)(x) - to_torch(float_graph)(x)) ** 2).mean() for x in data))


@pytest.mark.parametrize("config", [W4, W4_PER_CHANNEL], ids=["per-tensor", "per-channel"])
def test_output_error_on_held_out_data_is_below_round_to_nearest(config):
    float_graph, nearest = quantized(conv_relu(), batches(4, seed=1), config)
    result = round_adaptive(nearest.copy(), calibration_data=batches(4, seed=1), **FAST)
    assert result.modified and result.notes[0] == "AdaRound changed the weights of 2 of 2 layer(s)"
    result.graph.verify()
    held_out = batches(4, seed=2)
    before, after = output_error(nearest, float_graph, held_out), output_error(result.graph, float_graph,
                                                                               held_out)
    assert after < 0.9 * before, (before, after)


def test_float_inputs_mode_also_beats_round_to_nearest():
    float_graph, nearest = quantized(conv_relu(), batches(4, seed=1))
    result = round_adaptive(nearest.copy(), calibration_data=batches(4, seed=1), inputs="float", **FAST)
    held_out = batches(4, seed=2)
    assert output_error(result.graph, float_graph, held_out) < output_error(nearest, float_graph, held_out)


def test_weights_lie_exactly_on_the_grid_and_qparams_are_unchanged():
    _, nearest = quantized(conv_relu(), batches(2, seed=1), W4_PER_CHANNEL)
    graph = round_adaptive(nearest.copy(), calibration_data=batches(2, seed=1), **FAST).graph
    weight_fqs = [n for n in graph if n.op == "fake_quant" and n.inputs[0].is_constant]
    assert [fq.inputs[0].name.endswith(".adarounded") for fq in weight_fqs] == [True, True]
    for fq in weight_fqs:
        weight, scale, zero_point = fq.inputs[0].data, fq.inputs[1].data, fq.inputs[2].data
        qmin, qmax = quant_range(fq.attrs["bits"], fq.attrs["signed"], fq.attrs["narrow_range"])
        np.testing.assert_array_equal(fake_quantize(weight, scale, zero_point, qmin, qmax, 0), weight)
        through_torch = torch.fake_quantize_per_channel_affine(
            torch.from_numpy(weight), torch.from_numpy(scale), torch.from_numpy(zero_point), 0, qmin, qmax)
        np.testing.assert_array_equal(through_torch.numpy(), weight)
        before = nearest.values[fq.name]
        assert fq.output.qparams == before.qparams
        np.testing.assert_array_equal(scale, before.producer.inputs[1].data)


def test_runs_in_a_pipeline_and_leaves_the_input_graph_alone():
    _, nearest = quantized(conv_relu(), batches(2, seed=1))
    text = str(nearest)
    result = Pipeline([round_adaptive(calibration_data=batches(2, seed=1), **FAST)]).run(nearest)
    assert str(nearest) == text and str(result) != text


def test_same_seed_same_rounding():
    _, nearest = quantized(conv_relu(), batches(2, seed=1))
    runs = [round_adaptive(nearest.copy(), calibration_data=batches(2, seed=1), iterations=50,
                           progress=False).graph for _ in range(2)]
    assert str(runs[0]) == str(runs[1])


def test_shared_weights_keep_round_to_nearest_with_a_note():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(6, 6)

        def forward(self, x):
            return self.layer(torch.relu(self.layer(x)))

    torch.manual_seed(0)
    data = [torch.randn(8, 6)]
    _, graph = quantized(Twice().eval(), data)
    result = round_adaptive(graph, calibration_data=data, **FAST)
    assert not result.modified
    assert result.notes[0] == "no layer with a fake-quantized constant weight to round"
    assert any("is shared with other nodes" in note for note in result.notes)


def test_conv_transpose_is_skipped_with_a_note():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(4, 3, 2, stride=2)).eval()
    _, graph = quantized(model, batches(1, seed=0))
    result = round_adaptive(graph, calibration_data=batches(1, seed=0), **FAST)
    assert not result.modified
    assert any(note.endswith("kept round-to-nearest: conv_transpose2d is not handled")
               for note in result.notes)


def hand_built_linear(axis, computed_bias):
    """linear(x.fq, fake_quant(w) {axis}, b) built directly in the IR, calibrated by hand;
    the bias is a constant or computed by a node."""
    rng = np.random.default_rng(0)
    graph = Graph("hand")
    x = graph.add_input("x", (8, 6))
    channels = 1 if axis is None else (4, 6)[axis]
    weight = graph.add_constant("w", rng.normal(size=(4, 6)).astype(np.float32))
    attrs = {"axis": axis, "bits": 4, "signed": True, "narrow_range": True, "symmetric": True}
    fq = graph.add_node("fake_quant", [weight, graph.add_constant("s", np.full(channels, 0.3, np.float32)),
                                       graph.add_constant("zp", np.zeros(channels, np.int32))], attrs,
                        name="w.fq")
    bias = graph.add_constant("b", np.zeros(4, np.float32))
    if computed_bias:
        bias = graph.add_node("relu", [bias], name="b.relu").output
    graph.outputs = [graph.add_node("linear", [x, fq.output, bias], name="y").output]
    return graph.verify()


@pytest.mark.parametrize("axis, computed_bias, why", [
    (1, False, "%y kept round-to-nearest: its weight is quantized per channel on axis 1, not 0"),
    (0, True, "%y kept round-to-nearest: its bias is not a constant"),
])
def test_unsupported_layers_keep_round_to_nearest_with_a_note(axis, computed_bias, why):
    graph = hand_built_linear(axis, computed_bias)
    text = str(graph)
    result = round_adaptive(graph, calibration_data=[torch.randn(8, 6)], **FAST)
    assert not result.modified and why in result.notes and str(graph) == text
    assert result.notes[0] == "no layer with a fake-quantized constant weight to round"


def test_a_hand_built_layer_with_a_constant_bias_is_rounded():
    graph = hand_built_linear(0, computed_bias=False)
    assert round_adaptive(graph, calibration_data=[torch.randn(8, 6)], **FAST).modified


# ---- refusals ----------------------------------------------------------------------------------


def test_refuses_without_calibration_data():
    _, graph = quantized(conv_relu(), batches(1, seed=0))
    with pytest.raises(QuantizationError, match="round_adaptive needs calibration_data"):
        round_adaptive(graph)


def test_refuses_a_graph_that_is_not_quantized():
    float_graph = trace(conv_relu(), (batches(1, seed=0)[0],))
    with pytest.raises(QuantizationError, match="is not quantized .it has no fake_quant nodes"):
        round_adaptive(float_graph, calibration_data=batches(1, seed=0))


def test_refuses_an_uncalibrated_graph_naming_the_node():
    float_graph = trace(conv_relu(), (batches(1, seed=0)[0],))
    graph = insert_fake_quant(config=W4)(float_graph).graph
    with pytest.raises(QuantizationError,
                       match="round_adaptive needs a calibrated graph, but node %input.fq"):
        round_adaptive(graph, calibration_data=batches(1, seed=0))


def test_refuses_empty_data_and_wrong_batches():
    _, graph = quantized(conv_relu(), batches(1, seed=0))
    with pytest.raises(QuantizationError, match="calibration_data is empty"):
        round_adaptive(graph.copy(), calibration_data=[])
    with pytest.raises(QuantizationError, match=r"input %input expects f32\[N,4,8,8\], got f32\[2,3\]"):
        round_adaptive(graph.copy(), calibration_data=[torch.zeros(2, 3)])


def test_refuses_bad_options():
    with pytest.raises(QuantizationError, match=r"round_adaptive\(inputs='both'\): choose 'quantized'"):
        round_adaptive(calibration_data=[], inputs="both")
    with pytest.raises(QuantizationError, match="iterations and batch_rows must be >= 1"):
        round_adaptive(calibration_data=[], iterations=0)
    with pytest.raises(PassError, match="pass 'round_adaptive' failed"):
        Pipeline([round_adaptive(calibration_data=None)]).run(trace(conv_relu(), (batches(1, 0)[0],)))


# ---- a trained network ---------------------------------------------------------------------------


@pytest.mark.slow
def test_digits_cnn_w4a8_accuracy_is_at_least_round_to_nearest():
    """Per-tensor 4-bit weights (after BN folding), 8-bit activations: round-to-nearest loses
    about 20-50 points on the trained digits CNN; AdaRound recovers them (measured: 77.7% ->
    97.5% with all 512 calibration images, 96.1% with the default max_examples=64; FP32 97.5%).
    One AdaRound run's test accuracy moves by about a point with its row-sampling seed (one
    test image is 0.28 points; on an AVX-512 Xeon seeds 0, 1, 2 gave 96.4%, 97.8% and 96.9%
    against FP32 97.8%), so the claim is checked on every seed (10 points over nearest) and
    on their mean (within 1 point of FP32)."""
    from qcompiler.examples.datasets import accuracy, train_digits_cnn
    from qcompiler.quantize import quantize

    model, split = train_digits_cnn(epochs=15)
    calibration = [split.train_images[i:i + 64] for i in range(0, 512, 64)]
    nearest = quantize(model, calibration, config=W4, equalize=False, bias_correction=False,
                       progress=False)
    with torch.no_grad():
        nearest_accuracy = accuracy(to_torch(nearest)(split.test_images), split.test_labels)
        float_accuracy = accuracy(model(split.test_images), split.test_labels)
    rounded_accuracies = []
    for seed in range(3):
        rounded = round_adaptive(nearest.copy(), calibration_data=calibration, max_examples=None,
                                 seed=seed, progress=False).graph
        with torch.no_grad():
            rounded_accuracies.append(accuracy(to_torch(rounded)(split.test_images), split.test_labels))
    assert min(rounded_accuracies) >= nearest_accuracy + 10, (nearest_accuracy, rounded_accuracies)
    assert np.mean(rounded_accuracies) >= float_accuracy - 1, (float_accuracy, rounded_accuracies)


def test_reads_only_the_batches_that_hold_max_examples():
    _, graph = quantized(conv_relu(), batches(1, seed=0))
    data = [batches(1, seed=0)[0], torch.zeros(2, 3)]  # the second batch is never read
    assert round_adaptive(graph.copy(), calibration_data=data, max_examples=16, **FAST).modified
    with pytest.raises(QuantizationError, match="calibration batch 1"):
        round_adaptive(graph.copy(), calibration_data=data, max_examples=17, **FAST)
