"""Near-dead channels (pretrained EfficientNet-style stems: after batch-norm folding some
channels have weights ~1e-9 but biases of -1 to -7): calibration widens their weight scale so
that the int32 bias fits (`weight_scales_fitting_bias`), they compute their bias alone, and
the model lowers to integers exactly as simulated. When an accumulator can still overflow, the
error names the real cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qcompiler as qc
from qcompiler.backends.simulation_agreement import compare_with_simulation
from qcompiler.numerics.integer_params import (
    BIAS_LIMIT,
    bias_scales,
    quantize_bias,
    weight_scales_fitting_bias,
)
from qcompiler.numerics.quant import MIN_SCALE

DEAD = [5, 6, 7]


def efficientnet_stem() -> nn.Module:
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                         nn.SiLU(), nn.Conv2d(8, 4, 1))
    bn = stem[1]
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.8, 1.2, 0.9, 1.1, 1e-9, 2e-9, 1e-9]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0, 0.2, -1.0, -4.0, -7.0]))
        bn.running_var.fill_(1.0)
    return stem.eval()


def images(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 3, 16, 16, generator=generator) for _ in range(count)]


def test_weight_scales_grow_just_enough_for_the_bias_to_fit():
    bias = np.array([0.5, -7.0, 3.0])
    scales = np.array([0.01, MIN_SCALE, MIN_SCALE], np.float32)
    fitted = weight_scales_fitting_bias(bias, 1 / 255, scales)
    assert fitted[0] == scales[0]  # fits already: unchanged
    integers, saturated = quantize_bias(bias, 1 / 255, fitted, 3)
    assert saturated == 0 and (np.abs(integers) <= BIAS_LIMIT).all()
    assert np.abs(integers[1:]).max() > BIAS_LIMIT * 0.99  # no coarser than needed
    per_tensor = weight_scales_fitting_bias(bias, 1 / 255, np.array([MIN_SCALE], np.float32))
    assert per_tensor.shape == (1,) and per_tensor[0] >= 7.0 / (1 / 255 * BIAS_LIMIT)
    assert (np.abs(bias / bias_scales(1 / 255, per_tensor, 3)) <= BIAS_LIMIT).all()


def test_a_stem_with_near_dead_channels_lowers_and_matches_the_simulation():
    model = efficientnet_stem()
    data = images(4)
    pipeline = qc.Pipeline(qc.pipelines.ptq_steps(data, bias_correction=False))
    quantized, records = pipeline.run_with_report(qc.trace(model, (data[0],)))
    notes = "; ".join(note for record in records for note in record.notes)
    assert "3 channel(s) (5, 6, 7) would exceed 2**30 on the grid s_in * s_w" in notes
    assert "3 channel(s) have weights below half a step (near-dead)" in notes
    integer = qc.lower_to_integer(quantized)  # before: refused, "use fewer ... bits"
    conv = next(node for node in integer if node.op == "qconv2d")
    assert (conv.inputs[1].data[DEAD] == 0).all()  # they compute their bias alone
    for batch in images(3, seed=1):
        agreement = compare_with_simulation(quantized, (batch,), precision="float64")
        assert all(output.differing == 0 for output in agreement.outputs)


def test_the_overflow_error_names_a_bias_that_does_not_fit_its_grid():
    """A graph whose weight scales come from elsewhere (here: forced back to float32 eps)."""
    quantized = qc.quantize(efficientnet_stem(), images(2), bias_correction=False, progress=False)
    weight_fq = next(node for node in quantized if node.op == "fake_quant" and node.attrs["axis"] == 0)
    scale = weight_fq.inputs[1]
    scale.data = np.where(np.arange(8) >= 5, np.float32(MIN_SCALE), scale.data).astype(np.float32)
    q = weight_fq.output.qparams
    weight_fq.output.qparams = qc.QParams(scale.data, q.zero_point, q.bits, q.signed, q.axis,
                                          q.narrow_range)
    with pytest.raises(qc.QuantizationError, match=r"could wrap; the cause is its int32 bias: "
                       r"channel 6 holds -2147483648 .* \(a near-dead channel: weights near zero, a "
                       r"bias that is not\)\. Calibrate with qc\.quantize"):
        qc.lower_to_integer(quantized)
