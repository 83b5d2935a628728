"""correct_bias: lowers the mean output error of a quantized network on held-out data
(its claim), applies the layer-by-layer correction that an independent run of the
corrected graph confirms, agrees with the data-free version on data drawn from the
batch-norm statistics, and refuses what it cannot do."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from qcompiler.backends.torch import to_torch
from qcompiler.errors import QuantizationError
from qcompiler.examples import models
from qcompiler.frontends.torch_export.capture import trace
from qcompiler.ir import Graph
from qcompiler.ir.edit import layer_bias
from qcompiler.ir.pipeline import Pipeline
from qcompiler.passes.correct_bias import CorrectBias, correct_bias
from qcompiler.passes.fold_batchnorm import fold_batchnorm
from qcompiler.passes.insert_fake_quant import insert_fake_quant
from qcompiler.quantization.calibrate import calibrate
from qcompiler.quantization.config import QScheme, QuantConfig

BATCH = 64
# Per-tensor 4-bit weights: rounding errors large enough to bias every output channel.
W4_PER_TENSOR = QuantConfig(weight=QScheme(4, symmetric=True, per_channel=False, narrow_range=True))


def digit_batches():
    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0 - 0.5).astype(np.float32)).unsqueeze(1)
    batches = [images[i:i + BATCH] for i in range(0, len(images) - BATCH + 1, BATCH)]
    return batches[:4], batches[-2:]  # calibration, held out


@pytest.fixture(scope="module")
def quantized_digits_cnn():
    """(float graph, calibrated W4 graph, calibration batches, held-out batches); tests copy
    the graphs before changing them."""
    calibration, held_out = digit_batches()
    model, _ = models.digits_cnn(batch=BATCH)
    float_graph = fold_batchnorm(trace(model, (calibration[0],))).graph
    quantized = calibrate(insert_fake_quant(config=W4_PER_TENSOR)(float_graph.copy()).graph,
                          calibration, W4_PER_TENSOR)
    return float_graph, quantized, calibration, held_out


def mean_output_error(graph, float_graph, batches):
    """|E[y_quantized - y_float]| per output, averaged: the error bias correction targets."""
    with torch.no_grad():
        differences = torch.cat([to_torch(graph)(b) - to_torch(float_graph)(b) for b in batches])
    return float(differences.mean(dim=0).abs().mean())


def test_lowers_the_mean_output_error_on_held_out_digits(quantized_digits_cnn):
    float_graph, quantized, calibration, held_out = quantized_digits_cnn
    corrected = quantized.copy()
    result = correct_bias(calibration_data=calibration)(corrected)
    assert result.modified and result.notes[0] == "corrected the bias of 6 layer(s)"
    corrected.verify()
    before = mean_output_error(quantized, float_graph, held_out)
    after = mean_output_error(corrected, float_graph, held_out)
    # Measured: 4.7e-3 -> 1.6e-4 (outputs ~7e-2 in size).
    assert after < before / 5


def layer_inputs(graph, batches):
    """An independent run of `graph` (torch backend) returning every weighted layer's input."""
    probe = graph.copy()
    layers = [n for n in probe if n.op in ("conv2d", "linear")]
    probe.outputs = [n.inputs[0] for n in layers]
    module = to_torch(probe)
    with torch.no_grad():
        runs = [module(b) for b in batches]
    return {layer.name: [run[i] for run in runs] for i, layer in enumerate(layers)}


def test_each_correction_is_the_mean_error_on_inputs_from_corrected_earlier_layers(quantized_digits_cnn):
    # The oracle: run the *corrected* graph independently; each layer's bias change
    # must be -E[(W_q - W) x] over the inputs that corrected graph produces. A pass
    # that measured all layers on the uncorrected network would fail here.
    _, quantized, calibration, _ = quantized_digits_cnn
    corrected = correct_bias(calibration_data=calibration)(quantized.copy()).graph
    inputs = layer_inputs(corrected, calibration)
    for node in corrected:
        if node.op not in ("conv2d", "linear"):
            continue
        original = quantized.values[node.name].producer
        fq = node.inputs[1].producer
        error_weight = to_torch_weight(fq) - torch.from_numpy(fq.inputs[0].data)
        axis = 1 if node.op == "conv2d" else -1
        with torch.no_grad():
            errors = [run_layer(node, x, error_weight) for x in inputs[node.name]]
        expected = torch.cat([e.movedim(axis, -1).reshape(-1, e.shape[axis]) for e in errors]).mean(0)
        old = layer_bias(original).data if layer_bias(original) is not None \
            else np.zeros(expected.shape[0], np.float32)
        np.testing.assert_allclose(old - layer_bias(node).data, expected.numpy(), rtol=1e-4, atol=1e-6)


def to_torch_weight(fq):
    from qcompiler.ir.ops import run_op
    return run_op("fake_quant", [torch.from_numpy(v.data) for v in fq.inputs], fq.attrs)[0]


def run_layer(node, x, weight):
    from qcompiler.ir.ops import run_op
    return run_op(node.op, [x, weight], node.attrs)[0]


def test_uncalibrated_graph_is_refused_with_the_step_to_take(quantized_digits_cnn):
    float_graph, _, calibration, _ = quantized_digits_cnn
    graph = insert_fake_quant(float_graph.copy()).graph
    with pytest.raises(QuantizationError, match="correct_bias needs a calibrated graph"):
        correct_bias(graph, calibration_data=calibration)


def test_exactly_one_source_is_required():
    with pytest.raises(QuantizationError, match="needs exactly one source of input means"):
        correct_bias()
    with pytest.raises(QuantizationError, match="needs exactly one source of input means"):
        correct_bias(calibration_data=[torch.zeros(1)], statistics={})


def small_linear_graph(share_bias=False):
    """x -> linear(fc1) -> relu -> linear(fc2), per-tensor 4-bit weights, calibrated."""
    generator = np.random.default_rng(0)
    graph = Graph()
    x = graph.add_input("x", (32, 8))
    w1 = graph.add_constant("fc1.weight", generator.normal(size=(8, 8)).astype(np.float32))
    b1 = graph.add_constant("fc1.bias", generator.normal(size=8).astype(np.float32))
    h = graph.add_node("relu", [graph.add_node("linear", [x, w1, b1], name="fc1").output]).output
    w2 = graph.add_constant("fc2.weight", generator.normal(size=(8, 8)).astype(np.float32))
    y = graph.add_node("linear", [h, w2, b1 if share_bias else None], name="fc2").output
    graph.outputs = [y]
    data = [torch.from_numpy(generator.normal(1.0, 1.0, (32, 8)).astype(np.float32)) for _ in range(2)]
    quantized = calibrate(insert_fake_quant(config=W4_PER_TENSOR)(graph.copy()).graph, data, W4_PER_TENSOR)
    return graph, quantized, data


def test_a_layer_without_bias_gets_one():
    _, quantized, data = small_linear_graph()
    result = correct_bias(quantized, calibration_data=data)
    assert result.modified
    assert layer_bias(quantized.values["fc2"].producer) is quantized.values["fc2.bias.corrected"]


def test_a_shared_bias_is_not_corrected():
    # fc1 and fc2 share one bias constant: correcting it for one layer would shift the
    # other layer's output by a correction computed for different weights.
    _, quantized, data = small_linear_graph(share_bias=True)
    text = str(quantized)
    result = correct_bias(quantized, calibration_data=data)
    assert not result.modified and str(quantized) == text
    assert result.notes == [
        "corrected the bias of 0 layer(s)",
        "%fc1 not corrected: its bias %fc1.bias is not a constant of its own (shared or computed)",
        "%fc2 not corrected: its bias %fc1.bias is not a constant of its own (shared or computed)"]


def test_nothing_to_correct_without_fake_quantized_weights():
    graph, _, data = small_linear_graph()
    config = QuantConfig(exclude_op_types=["linear"])
    quantized = calibrate(insert_fake_quant(config=config)(graph).graph, data, config)
    result = correct_bias(quantized, calibration_data=data)
    assert not result.modified


def test_usable_in_a_pipeline():
    _, quantized, data = small_linear_graph()
    _, records = Pipeline([correct_bias(calibration_data=data)]).run_with_report(quantized)
    assert records[0].name == "correct_bias" and records[0].modified
    assert isinstance(correct_bias(calibration_data=data), CorrectBias)


def bn_matched_graph(channels=16, spatial=6, batch=64, seed=0):
    """x -> conv0 (1x1) -> batch_norm -> relu -> conv1 (1x1). For x ~ N(0, 1) the conv0
    output of channel c is N(b0_c, |W0_c|^2), and the BN's running statistics are set
    to exactly that, so the BN output really is N(beta, gamma^2)."""
    generator = np.random.default_rng(seed)
    graph = Graph()
    x = graph.add_input("x", (batch, 4, spatial, spatial))
    attrs = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1]}
    w0 = generator.normal(size=(channels, 4, 1, 1)).astype(np.float32)
    b0 = generator.normal(size=channels).astype(np.float32)
    h = graph.add_node("conv2d", [x, graph.add_constant("conv0.weight", w0),
                                  graph.add_constant("conv0.bias", b0)], attrs, name="conv0").output
    bn_params = {"weight": generator.uniform(0.5, 1.5, channels),
                 "bias": generator.normal(0.3, 1.0, channels),
                 "running_mean": b0,
                 "running_var": (w0.reshape(channels, -1) ** 2).sum(1) - 1e-5}
    params = [graph.add_constant(f"bn.{k}", np.asarray(v, np.float32)) for k, v in bn_params.items()]
    h = graph.add_node("relu", [graph.add_node("batch_norm", [h, *params], name="bn").output]).output
    w1 = generator.normal(size=(8, channels, 1, 1)).astype(np.float32)
    graph.outputs = [graph.add_node("conv2d", [h, graph.add_constant("conv1.weight", w1)], attrs,
                                    name="conv1").output]
    data = [torch.randn(graph.inputs[0].shape, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    return graph, data


def test_analytical_matches_empirical_on_data_drawn_from_the_batchnorm_statistics():
    from qcompiler.quantization.data_free import batchnorm_statistics

    graph, data = bn_matched_graph()
    statistics = batchnorm_statistics(graph)  # before folding deletes the batch norm
    folded = fold_batchnorm(graph).graph
    quantized = calibrate(insert_fake_quant(config=W4_PER_TENSOR)(folded).graph, data, W4_PER_TENSOR)
    original_bias = np.zeros(8)  # conv1 has none

    analytical = correct_bias(statistics=statistics)(quantized.copy())
    assert analytical.notes == ["corrected the bias of 1 layer(s)",
                                "%conv0 not corrected: the mean of its input %x.fq does not follow "
                                "from the statistics"]
    empirical = correct_bias(calibration_data=data)(quantized.copy())
    analytical_shift = layer_bias(analytical.graph.values["conv1"].producer).data - original_bias
    empirical_shift = layer_bias(empirical.graph.values["conv1"].producer).data - original_bias
    # "Roughly": the empirical mean also includes uint8 activation rounding, the
    # corrected conv0 before it and sampling noise (9216 positions).
    assert np.abs(empirical_shift).max() > 0.05  # a visible correction to compare
    np.testing.assert_allclose(analytical_shift, empirical_shift, rtol=0.1,
                               atol=0.05 * np.abs(empirical_shift).max())


def test_analytical_input_means_follow_residual_adds_and_global_pooling():
    # x -> conv_a -> bn_a -> relu = h;  h -> conv_b -> bn_b = r;  (h + r) -> pool -> flatten -> fc.
    # E[fc input] = E[relu(bn_a)] + beta_b. The oracle: fc's analytical correction must be
    # -(W_q - W) times the mean fc input measured on data the statistics describe.
    from qcompiler.quantization.data_free import batchnorm_statistics

    graph, data = bn_matched_graph(channels=8)
    conv1 = graph.values["conv1"].producer  # reuse as conv_b (8 -> 8 channels)
    h = conv1.inputs[0]
    generator = np.random.default_rng(1)
    conv1.replace_input(conv1.inputs[1], graph.add_constant(
        "conv_b.weight", generator.normal(size=(8, 8, 1, 1)).astype(np.float32)))
    with torch.no_grad():  # give bn_b the statistics its input really has on `data`
        probe = graph.copy()
        probe.outputs = [probe.values["conv1"]]
        conv_b_out = torch.cat([to_torch(probe)(x) for x in data]).transpose(0, 1).reshape(8, -1)
    params = {"weight": generator.uniform(0.5, 1.5, 8), "bias": generator.normal(0, 1, 8),
              "running_mean": conv_b_out.mean(1).numpy(), "running_var": conv_b_out.var(1).numpy() - 1e-5}
    bn_b = graph.add_node("batch_norm", [conv1.output] + [graph.add_constant(f"bn_b.{k}", np.asarray(
        v, np.float32)) for k, v in params.items()], name="bn_b")
    pooled = graph.add_node("adaptive_avg_pool2d", [graph.add_node("add", [h, bn_b.output]).output],
                            {"output_size": [1, 1]})
    flat = graph.add_node("flatten", [pooled.output], {"start_dim": 1})
    fc_weight = graph.add_constant("fc.weight", generator.normal(size=(5, 8)).astype(np.float32))
    graph.outputs = [graph.add_node("linear", [flat.output, fc_weight], name="fc").output]

    statistics = batchnorm_statistics(graph)
    float_graph = fold_batchnorm(graph).graph
    quantized = calibrate(insert_fake_quant(config=W4_PER_TENSOR)(float_graph.copy()).graph, data,
                          W4_PER_TENSOR)
    corrected = correct_bias(statistics=statistics)(quantized.copy()).graph
    probe = float_graph.copy()
    probe.outputs = [probe.values["flatten"]]
    with torch.no_grad():
        measured_mean = torch.cat([to_torch(probe)(x) for x in data]).mean(0).numpy()
    fq = corrected.values["fc"].producer.inputs[1].producer
    error_weight = to_torch_weight(fq).numpy() - fq.inputs[0].data
    # 2% of the correction's size: the clipped-normal mean is exact only in expectation,
    # and the sample means (9216 positions) carry about 1% noise.
    expected = -(error_weight @ measured_mean)
    np.testing.assert_allclose(layer_bias(corrected.values["fc"].producer).data, expected,
                               atol=0.02 * np.abs(expected).max())
