"""convert_batchnorm_to_conv: a batch norm that cannot fold (after a ReLU, on an input, after a
linear layer's ReLU) becomes a depthwise 1x1 conv computing the same function, which then
quantizes and lowers to integers like any layer (before, strict lowering refused it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qcompiler as qc
from qcompiler.backends.simulation_agreement import compare_with_simulation
from qcompiler.ir import Graph
from qcompiler.passes import convert_batchnorm_to_conv, fold_batchnorm, insert_fake_quant


def trained_batchnorm(model: nn.Module) -> nn.Module:
    """Give every batch norm statistics and affine parameters that are not the identity."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator))
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.randn(channels, generator=generator))
                module.bias.copy_(torch.randn(channels, generator=generator))
    return model


def crepe_block(dims: int) -> nn.Module:
    """conv -> ReLU -> BN (CREPE's layer order), then max pooling, as in pitch CNNs."""
    if dims == 2:
        return nn.Sequential(nn.Conv2d(1, 4, (5, 1), padding=(2, 0)), nn.ReLU(), nn.BatchNorm2d(4),
                             nn.MaxPool2d((2, 1)), nn.Conv2d(4, 4, (3, 1), padding=(1, 0)),
                             nn.ReLU(), nn.BatchNorm2d(4))
    if dims == 1:
        return nn.Sequential(nn.Conv1d(1, 4, 5, padding=2), nn.ReLU(), nn.BatchNorm1d(4),
                             nn.MaxPool1d(2))
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 3))


SHAPES = {2: (2, 1, 16, 1), 1: (2, 1, 16), 0: (2, 6)}


@pytest.mark.parametrize("dims", [2, 1, 0])
def test_unfoldable_batch_norms_become_depthwise_convs_with_the_same_function(dims):
    model = trained_batchnorm(crepe_block(dims)).eval()
    inputs = (torch.randn(SHAPES[dims], generator=torch.Generator().manual_seed(0)),)
    graph = qc.Pipeline([fold_batchnorm]).run(qc.trace(model, inputs))
    norms = [node.name for node in graph if node.op == "batch_norm"]
    assert norms, "the block's batch norms follow ReLUs: fold_batchnorm must leave them"
    result = qc.Pipeline([convert_batchnorm_to_conv]).run_with_report(graph)
    converted, records = result
    assert records[0].modified and records[0].notes[0].startswith(
        f"{len(norms)} batch norm(s) that could not fold became depthwise 1x1 convolutions")
    assert not any(node.op == "batch_norm" for node in converted)
    for name in norms:  # the layer takes over the batch norm's name
        layer = converted.values[name].producer
        conv = layer if layer.op.startswith("conv") else layer.inputs[0].producer
        assert conv.op.startswith("conv") and conv.attrs["groups"] == conv.inputs[1].shape[0]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(SHAPES[dims], generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(qc.to_torch(converted)(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 1, 0])
def test_they_lower_to_integers_exactly_as_simulated(dims):
    model = trained_batchnorm(crepe_block(dims)).eval()
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(SHAPES[dims], generator=generator) for _ in range(4)]
    quantized = qc.quantize(model, data, progress=False)
    integer = qc.lower_to_integer(quantized)  # strict: before, "batch_norm has no integer form"
    assert not any(node.op == "batch_norm" for node in integer)
    for batch in data:
        agreement = compare_with_simulation(quantized, (batch,), precision="float64")
        assert all(output.differing == 0 for output in agreement.outputs)


def test_a_batch_norm_with_statistics_from_an_input_is_left_with_a_note():
    graph = Graph("bn")
    x = graph.add_input("x", (2, 3, 4, 4))
    var = graph.add_input("var", (3,))
    ones = graph.add_constant("ones", np.ones(3, np.float32))
    graph.outputs = [graph.add_node("batch_norm", [x, ones, ones, ones, var], name="bn").output]
    result = convert_batchnorm_to_conv(graph)
    assert not result.modified
    assert result.notes == ["batch_norm %bn left in place: its running_var %var is not a constant"]


def test_strict_lowering_of_a_batch_norm_says_how_to_convert_it():
    model = trained_batchnorm(crepe_block(2)).eval()
    graph = qc.Pipeline([fold_batchnorm]).run(qc.trace(model, (torch.randn(SHAPES[2]),)))
    fake_quant = insert_fake_quant(graph).graph
    calibrated = qc.Pipeline([qc.passes.calibrate(calibration_data=[torch.randn(SHAPES[2])])]).run(
        fake_quant)
    with pytest.raises(qc.IntegerOnlyError, match=r"batch_norm has no integer form .*run "
                       r"qc\.passes\.convert_batchnorm_to_conv before insert_fake_quant"):
        qc.lower_to_integer(calibrated)
