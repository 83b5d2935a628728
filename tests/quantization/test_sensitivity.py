"""sensitivity_analysis: a layer made fragile on purpose ranks first in both modes, and
excluding what the report names improves the whole quantized model; the layer grouping
matches insert_fake_quant's placement; bad input is refused."""

import numpy as np
import pytest
import torch
from torch import nn

import qcompiler as qc
from qcompiler.errors import QuantizationError
from qcompiler.numerics.quant import sqnr_db
from qcompiler.quantization.sensitivity import quantized_layers, run_with_quantizers, sensitivity_analysis

PER_TENSOR = qc.QuantConfig.preset("int8-per-tensor")


def fragile_model():
    """conv -> relu -> conv -> relu -> pool -> linear, where the second conv has one huge
    weight: per-tensor int8 then rounds all its other weights to zero. The huge weight
    feeds a channel that the ReLU always zeroes, so the output ranges stay normal."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    with torch.no_grad():
        model[2].weight[0] = -1000.0
        model[2].bias[0] = -100.0
    return model


def data(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 8, 8, generator=generator) for _ in range(count)]


@pytest.fixture(scope="module")
def setting():
    model = fragile_model()
    calibration = data(2, seed=1)
    graph = qc.trace(model, (calibration[0],))
    quantized = qc.quantize(graph, calibration, config=PER_TENSOR, equalize=False,
                            bias_correction=False, progress=False)
    return model, graph, quantized, calibration


def whole_model_sqnr(model, quantized, batches):
    with torch.no_grad():
        reference = torch.cat([model(x) for x in batches]).numpy()
        got = torch.cat([qc.to_torch(quantized)(x) for x in batches]).numpy()
    return sqnr_db(reference, got)


def test_layers_group_each_node_with_its_weight_and_fused_output_quantizers(setting):
    _, _, quantized, _ = setting
    layers = {layer.name: layer for layer in quantized_layers(quantized)}
    convs = [name for name, layer in layers.items() if layer.op == "conv2d"]
    assert len(convs) == 2
    for name in convs:
        layer = layers[name]
        assert len(layer.quantizers) == 2 and len(layer.fused) == 1  # weight + after the ReLU
        assert quantized.values[layer.fused[0]].producer.op == "relu"
    assert [layer.op for layer in layers.values()][0] == "input"
    every = sorted(fq for layer in layers.values() for fq in layer.quantizers)
    assert every == sorted(n.name for n in quantized if n.op == "fake_quant")


@pytest.mark.parametrize("mode", ["one_quantized", "one_float"])
def test_the_fragile_layer_ranks_first_and_excluding_it_helps(setting, mode):
    model, graph, quantized, calibration = setting
    report = sensitivity_analysis(quantized, data(2, seed=3), mode=mode, reference=model, progress=False)
    fragile = report.rows[0]
    assert fragile.layer.op == "conv2d" and fragile.layer.name == quantized_layers(quantized)[2].name
    if mode == "one_quantized":  # quantized alone it destroys the output; the others do not
        # (measured 15 dB against 48-69 dB: the classifier's bias dominates the outputs)
        assert fragile.sqnr_db < 20 and all(row.sqnr_db > 40 for row in report.rows[1:])
        assert fragile.kl > 100 * max(row.kl for row in report.rows[1:])
    else:  # the whole network is as bad as that layer, and fine without it
        assert report.quantized_sqnr_db < 20 and report.gain_db(fragile) > 20
        assert 100 * fragile.kl < min(row.kl for row in report.rows[1:])

    excluded = report.to_exclusions(top_k=1)
    assert excluded == [fragile.layer.name, *fragile.layer.fused]
    config = report.exclude_in(PER_TENSOR, top_k=1)
    assert config.exclude_nodes == frozenset(excluded)
    requantized = qc.quantize(graph, calibration, config=config, equalize=False, bias_correction=False,
                              progress=False)
    held_out = data(2, seed=4)
    before, after = whole_model_sqnr(model, quantized, held_out), whole_model_sqnr(model, requantized,
                                                                                   held_out)
    assert after > before + 20, (before, after)


def test_threshold_selection_follows_the_mode(setting):
    model, _, quantized, _ = setting
    solo = sensitivity_analysis(quantized, data(1, seed=3), mode="one_quantized", progress=False)
    assert solo.to_exclusions(below_db=20) == solo.to_exclusions(top_k=1)
    assert solo.to_exclusions(below_db=-100) == []
    with pytest.raises(QuantizationError, match="gain_above_db selects by the gain"):
        solo.to_exclusions(gain_above_db=1)
    with pytest.raises(QuantizationError, match="choose the layers to exclude"):
        solo.to_exclusions()
    leave_out = sensitivity_analysis(quantized, data(1, seed=3), mode="one_float", progress=False)
    assert leave_out.to_exclusions(gain_above_db=20) == leave_out.to_exclusions(top_k=1)
    with pytest.raises(QuantizationError, match="below_db selects by the SQNR"):
        leave_out.to_exclusions(below_db=5)


def test_markdown_table_lists_every_layer_in_rank_order(setting):
    _, _, quantized, _ = setting
    report = sensitivity_analysis(quantized, data(1, seed=3), progress=False)
    table = report.to_markdown()
    lines = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(lines) == len(report.rows)
    assert [line.split(" | ")[1] for line in lines] == [row.layer.name for row in report.rows]
    assert "gain (dB)" in table and str(report) == table
    assert report.to_markdown(limit=2).endswith(f"({len(report.rows) - 2} more rows)")


def test_default_reference_is_the_graph_with_quantizers_bypassed(setting):
    model, graph, quantized, _ = setting
    batch = data(1, seed=5)[0]
    float_outputs = run_with_quantizers(quantized, [batch], set())
    with torch.no_grad():
        np.testing.assert_allclose(float_outputs[0], model(batch).numpy(), rtol=1e-4, atol=1e-4)
    every = {n.name for n in quantized if n.op == "fake_quant"}
    with torch.no_grad():
        np.testing.assert_array_equal(run_with_quantizers(quantized, [batch], every)[0],
                                      qc.to_torch(quantized)(batch).numpy())


def test_refuses_bad_input(setting):
    _, graph, quantized, _ = setting
    with pytest.raises(QuantizationError, match="has no fake_quant nodes: sensitivity analysis needs"):
        sensitivity_analysis(graph, data(1, seed=0))
    with pytest.raises(QuantizationError, match="mode='both'.: choose one of one_quantized, one_float"):
        sensitivity_analysis(quantized, data(1, seed=0), mode="both")
    with pytest.raises(QuantizationError, match="needs calibration_data"):
        sensitivity_analysis(quantized, None)
    with pytest.raises(QuantizationError, match="calibration_data is empty"):
        sensitivity_analysis(quantized, [])
    with pytest.raises(QuantizationError, match="takes a float Graph or a torch.nn.Module, got str"):
        sensitivity_analysis(quantized, data(1, seed=0), reference="model")
    uncalibrated = qc.passes.insert_fake_quant(graph.copy()).graph
    with pytest.raises(QuantizationError, match="sensitivity_analysis needs a calibrated graph"):
        sensitivity_analysis(uncalibrated, data(1, seed=0))
